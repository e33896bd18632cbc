from .mobilenet import MobileNetV2SSDLite, MobileNetV3SSDLite
from .vgg import VGG16SSD, L2Norm
