import math
from typing import List

from torch import nn
from torchvision.ops.misc import Conv2dNormActivation

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.utils.registry import Registry

from .backbone.mobilenet import get_norm_layer

__all__ = ["SSD_HEAD_REGISTRY", "SSDConvHead", "SSDLiteHead", "build_ssd_head"]

SSD_HEAD_REGISTRY = Registry("SSD_HEAD")
SSD_HEAD_REGISTRY.__doc__ = """
Registry for SSD heads: given per-level feature maps, return per-level class logits
(N, A_i * (K + 1), H_i, W_i) and box deltas (N, A_i * 4, H_i, W_i). A head is built as
``head(cfg, input_shapes, num_anchors)`` (``@configurable``) or with explicit arguments.
"""


@SSD_HEAD_REGISTRY.register()
class SSDConvHead(nn.Module):
    """
    The SSD paper's head: on each level, one 3x3 conv for the class logits and one for the
    box deltas of that level's default boxes (their count differs per level).
    """

    @configurable
    def __init__(
        self,
        in_channels: List[int],
        num_anchors: List[int],
        num_classes: int,
        *,
        prior_prob: float = 0.0,
    ):
        """
        Args:
            in_channels: channels of each level's feature map.
            num_anchors: default boxes per location of each level.
            num_classes: foreground classes; the logits have num_classes + 1 channels per box.
            prior_prob: if > 0, the class logits start at this probability of foreground
                (:func:`init_class_prior`); 0 keeps the published initialisation.
        """
        super().__init__()
        if len(in_channels) != len(num_anchors):
            raise ValueError(
                f"SSD head: {len(in_channels)} feature levels but default boxes for "
                f"{len(num_anchors)} levels."
            )
        self.num_classes = num_classes
        self.cls_score = nn.ModuleList(
            nn.Conv2d(c, a * (num_classes + 1), kernel_size=3, padding=1)
            for c, a in zip(in_channels, num_anchors)
        )
        self.bbox_pred = nn.ModuleList(
            nn.Conv2d(c, a * 4, kernel_size=3, padding=1) for c, a in zip(in_channels, num_anchors)
        )
        for layer in list(self.cls_score) + list(self.bbox_pred):
            # Xavier init with zero bias, as the published SSD implementations use.
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
        init_class_prior(self.cls_score, num_classes, prior_prob)

    @classmethod
    def from_config(cls, cfg, input_shapes: List[ShapeSpec], num_anchors: List[int]):
        return {
            "in_channels": [s.channels for s in input_shapes],
            "num_anchors": num_anchors,
            "num_classes": cfg.MODEL.SSD.NUM_CLASSES,
            "prior_prob": cfg.MODEL.SSD.PRIOR_PROB,
        }

    def forward(self, features):
        logits = [layer(x) for layer, x in zip(self.cls_score, features)]
        deltas = [layer(x) for layer, x in zip(self.bbox_pred, features)]
        return logits, deltas


# MODEL.SSD.HEAD_LAYOUT: the details in which the peers' SSDLite predictors differ.
_SSDLITE_HEAD_LAYOUTS = {
    # torchvision's ssdlite320_mobilenet_v3_large.
    "torchvision": {
        "depthwise_bias": False,
        "plain_last_level": False,
        "init": "normal",
        "norm_eps": 0.001,
        "norm_momentum": 0.03,
    },
    # lufficc/SSD's SSDLiteBoxPredictor (mobilenet_v2_ssd320_voc0712).
    "lufficc": {
        "depthwise_bias": True,
        "plain_last_level": True,
        "init": "xavier",
        "norm_eps": 1e-5,
        "norm_momentum": 0.1,
    },
}


@SSD_HEAD_REGISTRY.register()
class SSDLiteHead(nn.Module):
    """
    The SSDLite head (MobileNetV2 paper, 6.2): on each level, the class logits and the box
    deltas each come from a separable predictor, a depthwise 3x3 conv + norm + ReLU6 followed
    by a 1x1 conv. Far cheaper than SSDConvHead's dense 3x3 convs on wide MobileNet maps.
    """

    @configurable
    def __init__(
        self,
        in_channels: List[int],
        num_anchors: List[int],
        num_classes: int,
        *,
        norm: str = "BN",
        norm_eps: float = 0.001,
        norm_momentum: float = 0.03,
        depthwise_bias: bool = False,
        plain_last_level: bool = False,
        init: str = "normal",
        prior_prob: float = 0.0,
    ):
        """
        Args:
            in_channels: channels of each level's feature map.
            num_anchors: default boxes per location of each level.
            num_classes: foreground classes; the logits have num_classes + 1 channels per box.
            norm: a Detectron2 norm after each depthwise conv ("BN", "SyncBN", "FrozenBN", ...).
            norm_eps, norm_momentum: of those norm layers.
            depthwise_bias: give the depthwise convs a bias (lufficc/SSD does).
            plain_last_level: predict the last level with a plain 1x1 conv instead of a
                separable predictor (lufficc/SSD does: its last map is 1x1).
            init: "normal" (N(0, 0.03) weights, torchvision's) or "xavier" (Xavier uniform,
                lufficc's) for every conv, with zero biases.
            prior_prob: as in :class:`SSDConvHead`.
        """
        super().__init__()
        if len(in_channels) != len(num_anchors):
            raise ValueError(
                f"SSD head: {len(in_channels)} feature levels but default boxes for "
                f"{len(num_anchors)} levels."
            )
        if init not in ("normal", "xavier"):
            raise ValueError(f"SSDLiteHead: init must be 'normal' or 'xavier', got {init!r}.")
        self.num_classes = num_classes
        norm_layer = get_norm_layer(norm, norm_eps, norm_momentum)
        num_levels = len(in_channels)

        def predictor(level: int, channels: int, out_channels: int) -> nn.Module:
            if plain_last_level and level == num_levels - 1:
                return nn.Conv2d(channels, out_channels, kernel_size=1)
            depthwise = Conv2dNormActivation(
                channels,
                channels,
                kernel_size=3,
                groups=channels,
                norm_layer=norm_layer,
                activation_layer=nn.ReLU6,
                bias=depthwise_bias,
            )
            return nn.Sequential(depthwise, nn.Conv2d(channels, out_channels, kernel_size=1))

        self.cls_score = nn.ModuleList(
            predictor(level, c, a * (num_classes + 1))
            for level, (c, a) in enumerate(zip(in_channels, num_anchors))
        )
        self.bbox_pred = nn.ModuleList(
            predictor(level, c, a * 4) for level, (c, a) in enumerate(zip(in_channels, num_anchors))
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                if init == "normal":
                    nn.init.normal_(m.weight, mean=0.0, std=0.03)
                else:
                    nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        # The last conv of each class predictor gives the logits.
        logit_convs = [p if isinstance(p, nn.Conv2d) else p[-1] for p in self.cls_score]
        init_class_prior(logit_convs, num_classes, prior_prob)

    @classmethod
    def from_config(cls, cfg, input_shapes: List[ShapeSpec], num_anchors: List[int]):
        layout = cfg.MODEL.SSD.HEAD_LAYOUT
        if layout not in _SSDLITE_HEAD_LAYOUTS:
            raise ValueError(
                f"MODEL.SSD.HEAD_LAYOUT = {layout!r}; choose one of "
                f"{sorted(_SSDLITE_HEAD_LAYOUTS)}."
            )
        return {
            "in_channels": [s.channels for s in input_shapes],
            "num_anchors": num_anchors,
            "num_classes": cfg.MODEL.SSD.NUM_CLASSES,
            "norm": cfg.MODEL.SSD.HEAD_NORM,
            "prior_prob": cfg.MODEL.SSD.PRIOR_PROB,
            **_SSDLITE_HEAD_LAYOUTS[layout],
        }

    def forward(self, features):
        logits = [layer(x) for layer, x in zip(self.cls_score, features)]
        deltas = [layer(x) for layer, x in zip(self.bbox_pred, features)]
        return logits, deltas


def init_class_prior(convs: List[nn.Conv2d], num_classes: int, prior_prob: float) -> None:
    """
    Start the class logits of ``convs`` (K + 1 per default box, background first) at
    probability ``prior_prob`` of foreground, as RetinaNet does for its classifier: small
    weights, and a background bias of log(K (1 - p) / p). Trained from scratch, the published
    initialisation's random logits put a loss of ~15 per positive on the first iteration
    (the demo model), which the first tens of iterations spend unlearning; this one starts
    at -log(p / K) per positive. ``prior_prob`` 0 leaves the convs as they are.
    """
    if prior_prob == 0:
        return
    if not 0 < prior_prob < 1:
        raise ValueError(f"MODEL.SSD.PRIOR_PROB must be in [0, 1), got {prior_prob}.")
    background_bias = math.log(num_classes * (1 - prior_prob) / prior_prob)
    for conv in convs:
        nn.init.normal_(conv.weight, std=0.01)
        bias = conv.bias.detach().view(-1, num_classes + 1)
        bias.zero_()
        bias[:, 0] = background_bias


def build_ssd_head(cfg, input_shapes: List[ShapeSpec], num_anchors: List[int]) -> nn.Module:
    """Build the head named by ``MODEL.SSD.HEAD_NAME`` for the given levels."""
    name = cfg.MODEL.SSD.HEAD_NAME
    if name not in SSD_HEAD_REGISTRY:
        raise ValueError(
            f"MODEL.SSD.HEAD_NAME = {name!r} is not a registered SSD head; choose one of "
            f"{sorted(k for k, _ in SSD_HEAD_REGISTRY)}."
        )
    return SSD_HEAD_REGISTRY.get(name)(cfg, input_shapes, num_anchors)
