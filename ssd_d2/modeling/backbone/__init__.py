from .mobilenet import (
    MobileNetV2SSDLite,
    MobileNetV3SSDLite,
    build_mobilenet_v2_ssdlite_backbone,
    build_mobilenet_v3_ssdlite_backbone,
)
from .vgg import VGG16SSD, L2Norm, build_vgg16_ssd_backbone
