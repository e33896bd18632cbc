import math
from functools import partial
from typing import List

from torch import nn
from torchvision.ops.misc import Conv2dNormActivation

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.utils.registry import Registry

from .layers import get_norm_layer, init_convs

__all__ = ["SSD_HEAD_REGISTRY", "SSDConvHead", "SSDLiteHead", "build_ssd_head"]

SSD_HEAD_REGISTRY = Registry("SSD_HEAD")
SSD_HEAD_REGISTRY.__doc__ = """SSD heads, ``head(cfg, input_shapes, num_anchors)``: feature maps
-> per level, class logits (N, A_i * (K + 1), H_i, W_i) and box deltas (N, A_i * 4, H_i, W_i)."""


class _PerLevelHead(nn.Module):
    """A class predictor (``cls_score``) and a box predictor (``bbox_pred``) per level."""

    def __init__(self, in_channels: List[int], num_anchors: List[int], num_classes: int):
        super().__init__()
        if len(in_channels) != len(num_anchors):
            raise ValueError(
                f"SSD head: {len(in_channels)} feature levels but default boxes for "
                f"{len(num_anchors)} levels."
            )
        self.num_classes = num_classes

    def forward(self, features):
        logits = [layer(x) for layer, x in zip(self.cls_score, features)]
        deltas = [layer(x) for layer, x in zip(self.bbox_pred, features)]
        return logits, deltas


@SSD_HEAD_REGISTRY.register()
class SSDConvHead(_PerLevelHead):
    """The SSD paper's head: one 3x3 conv for the class logits and one for the box deltas
    on each level, Xavier-initialised with zero biases as the published models are."""

    @configurable
    def __init__(self, in_channels, num_anchors, num_classes, *, prior_prob: float = 0.0):
        """prior_prob: if > 0, the class logits start at this foreground probability
        (:func:`init_class_prior`); 0 keeps the published initialisation."""
        super().__init__(in_channels, num_anchors, num_classes)
        levels = list(zip(in_channels, num_anchors))
        self.cls_score = nn.ModuleList(
            nn.Conv2d(c, a * (num_classes + 1), kernel_size=3, padding=1) for c, a in levels
        )
        self.bbox_pred = nn.ModuleList(nn.Conv2d(c, a * 4, 3, padding=1) for c, a in levels)
        init_convs(self, nn.init.xavier_uniform_)
        init_class_prior(self.cls_score, num_classes, prior_prob)

    @classmethod
    def from_config(cls, cfg, input_shapes: List[ShapeSpec], num_anchors: List[int]):
        return {
            "in_channels": [s.channels for s in input_shapes],
            "num_anchors": num_anchors,
            "num_classes": cfg.MODEL.SSD.NUM_CLASSES,
            "prior_prob": cfg.MODEL.SSD.PRIOR_PROB,
        }


# MODEL.SSD.HEAD_LAYOUT: the details in which the peers' SSDLite predictors differ.
_SSDLITE_HEAD_LAYOUTS = {
    # torchvision's ssdlite320_mobilenet_v3_large.
    "torchvision": dict(
        depthwise_bias=False,
        plain_last_level=False,
        init="normal",
        norm_eps=1e-3,
        norm_momentum=0.03,
    ),
    # lufficc/SSD's SSDLiteBoxPredictor (mobilenet_v2_ssd320_voc0712).
    "lufficc": dict(
        depthwise_bias=True, plain_last_level=True, init="xavier", norm_eps=1e-5, norm_momentum=0.1
    ),
}


@SSD_HEAD_REGISTRY.register()
class SSDLiteHead(_PerLevelHead):
    """
    The SSDLite head (MobileNetV2 paper, 6.2): class logits and box deltas each from a
    depthwise 3x3 conv + norm + ReLU6 and a 1x1 conv, far cheaper than SSDConvHead's dense
    3x3 convs on wide MobileNet maps.
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
            plain_last_level: predict the last level with a plain 1x1 conv (lufficc/SSD
                does: its last map is 1x1).
            init: "normal" (N(0, 0.03), torchvision's) or "xavier" (lufficc's) for every conv.
            prior_prob: as in :class:`SSDConvHead`.
        """
        super().__init__(in_channels, num_anchors, num_classes)
        if init not in ("normal", "xavier"):
            raise ValueError(f"SSDLiteHead: init must be 'normal' or 'xavier', got {init!r}.")
        norm_layer = get_norm_layer(norm, norm_eps, norm_momentum)

        def predictor(level: int, channels: int, out_channels: int) -> nn.Module:
            if plain_last_level and level == len(in_channels) - 1:
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

        levels = list(enumerate(zip(in_channels, num_anchors)))
        self.cls_score = nn.ModuleList(
            predictor(i, c, a * (num_classes + 1)) for i, (c, a) in levels
        )
        self.bbox_pred = nn.ModuleList(predictor(i, c, a * 4) for i, (c, a) in levels)
        init_convs(
            self,
            partial(nn.init.normal_, std=0.03) if init == "normal" else nn.init.xavier_uniform_,
        )
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


def init_class_prior(convs: List[nn.Conv2d], num_classes: int, prior_prob: float) -> None:
    """
    Start the class logits of ``convs`` (K + 1 per default box, background first) at
    foreground probability ``prior_prob``, as RetinaNet does: small weights and a background
    bias of log(K (1 - p) / p). Trained from scratch, the published initialisation puts a
    loss of ~15 per positive on the first iteration (the demo model), which the first tens of
    iterations spend unlearning; this one starts at -log(p / K). 0 leaves the convs as they are.
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
    """The head named by ``MODEL.SSD.HEAD_NAME`` for the given levels."""
    name = cfg.MODEL.SSD.HEAD_NAME
    if name not in SSD_HEAD_REGISTRY:
        raise ValueError(
            f"MODEL.SSD.HEAD_NAME = {name!r} is not a registered SSD head; choose one of "
            f"{sorted(k for k, _ in SSD_HEAD_REGISTRY)}."
        )
    return SSD_HEAD_REGISTRY.get(name)(cfg, input_shapes, num_anchors)
