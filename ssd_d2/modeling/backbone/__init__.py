from .extra_levels import SSDExtraLevels
from .mobilenet import MobileNetV2SSDLite, MobileNetV3SSDLite
from .resnet import TorchvisionResNet
from .vgg import VGG16SSD, L2Norm
