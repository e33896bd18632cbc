# Importing these modules registers the SSD components in Detectron2's registries.
from .anchor_generator import SSDDefaultBoxGenerator
from .backbone import (
    VGG16SSD,
    MobileNetV2SSDLite,
    MobileNetV3SSDLite,
    build_mobilenet_v2_ssdlite_backbone,
    build_mobilenet_v3_ssdlite_backbone,
    build_vgg16_ssd_backbone,
)
from .head import SSD_HEAD_REGISTRY, SSDConvHead, SSDLiteHead, build_ssd_head
from .meta_arch import SSD
