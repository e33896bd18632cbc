from .vgg import L2Norm, VGG16SSD, build_vgg16_ssd_backbone
