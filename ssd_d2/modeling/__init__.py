# Importing these modules registers the SSD components in Detectron2's registries.
from .anchor_generator import SSDDefaultBoxGenerator
from .backbone import VGG16SSD, MobileNetV2SSDLite, MobileNetV3SSDLite
from .head import SSD_HEAD_REGISTRY, SSDConvHead, SSDLiteHead, build_ssd_head
from .meta_arch import SSD, resize_to_network_size
