from functools import partial
from typing import Dict, List

import torch
from torch import nn
from torchvision.models import mobilenet_v2, mobilenet_v3_large
from torchvision.ops.misc import Conv2dNormActivation

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone

from ..layers import check_rgb, get_norm_layer, init_convs

__all__ = ["MobileNetV2SSDLite", "MobileNetV3SSDLite"]

# Output names, finest level first: two maps of the MobileNet body, then the extra layers.
_OUT_FEATURES = ["c4", "c5", "extra1", "extra2", "extra3", "extra4"]


class _SSDLiteBackbone(Backbone):
    """
    A MobileNet body in two stages ("c4" at stride 16, "c5" at 32), then the SSDLite extra
    layers ("extra1" ... "extra4", (hidden, out) channels each), one output per level. The
    peers' module nesting (features.0 / features.1): their weights load by renaming prefixes.
    """

    def __init__(self, stages, channels: List[int], extras, norm_layer, project_activation):
        super().__init__()
        self.features = nn.Sequential(*stages)
        conv = partial(Conv2dNormActivation, norm_layer=norm_layer)
        self.extra = nn.ModuleList()
        for hidden, out in extras:
            # SSDLite's extra layer (MobileNetV2 paper, 6.2): 1x1, depthwise 3x3 / 2, 1x1.
            self.extra.append(
                nn.Sequential(
                    conv(channels[-1], hidden, kernel_size=1, activation_layer=nn.ReLU6),
                    conv(hidden, hidden, 3, stride=2, groups=hidden, activation_layer=nn.ReLU6),
                    conv(hidden, out, kernel_size=1, activation_layer=project_activation),
                )
            )
            channels = channels + [out]
        self._out_features = list(_OUT_FEATURES)
        self._out_feature_channels = dict(zip(_OUT_FEATURES, channels))
        # Nominal strides; at 320 the maps are 20, 10, 5, 3, 2, 1 and the default-box STEPS
        # of the config give the exact geometry.
        self._out_feature_strides = {name: 2 ** (4 + i) for i, name in enumerate(_OUT_FEATURES)}

    def forward(self, x) -> Dict[str, torch.Tensor]:
        outputs = []
        for block in list(self.features) + list(self.extra):
            x = block(x)
            outputs.append(x)
        return dict(zip(self._out_features, outputs))


# MODEL.MOBILENET.V2_LAYOUT: the peers' MobileNetV2 SSDLites differ after "c5" and in the norm
# layers' epsilon and momentum; the body is torchvision's MobileNetV2 in both.
_V2_LAYOUTS = {
    # lufficc/SSD's mobilenet_v2_ssd320_voc0712: inverted residual extras, whose projections
    # are linear bottlenecks (no activation), ending in 64 channels; PyTorch's norm defaults.
    "lufficc": dict(
        extras=[(256, 512), (128, 256), (128, 256), (64, 64)],
        project_activation=None,
        norm_eps=1e-5,
        norm_momentum=0.1,
    ),
    # mmdetection's SSDLite (SSDNeck with use_depthwise): 1x1 to half the output, then a
    # depthwise separable conv, every conv followed by norm and ReLU6, ending in 128 channels.
    "mmdetection": dict(
        extras=[(out // 2, out) for out in (512, 256, 256, 128)],
        project_activation=nn.ReLU6,
        norm_eps=1e-3,
        norm_momentum=0.03,
    ),
}


class MobileNetV2SSDLite(_SSDLiteBackbone):
    """
    MobileNetV2 SSDLite in lufficc/SSD's layout (mobilenet_v2_ssd320_voc0712) or mmdetection's
    (``layout``, one of :data:`_V2_LAYOUTS`): "c4" is the output of the last stride-16 block,
    "c5" the final 1x1 conv, then the layout's extras and norm epsilon and momentum.
    """

    def __init__(self, norm: str = "BN", layout: str = "lufficc"):
        if layout not in _V2_LAYOUTS:
            raise ValueError(
                f"MODEL.MOBILENET.V2_LAYOUT = {layout!r}; choose one of {sorted(_V2_LAYOUTS)}."
            )
        settings = _V2_LAYOUTS[layout]
        norm_layer = get_norm_layer(norm, settings["norm_eps"], settings["norm_momentum"])
        features = mobilenet_v2(weights=None, norm_layer=norm_layer).features
        # Both peers' first map is the input of block 14, the one that goes to stride 32.
        stages = [features[:14], features[14:]]
        channels = [features[13].out_channels, features[-1].out_channels]
        super().__init__(
            stages, channels, settings["extras"], norm_layer, settings["project_activation"]
        )
        # torchvision's MobileNetV2 init, which lufficc applies to its extras as well.
        init_convs(self.extra, partial(nn.init.kaiming_normal_, mode="fan_out"))


class MobileNetV3SSDLite(_SSDLiteBackbone):
    """
    MobileNetV3-Large SSDLite in torchvision's ``ssdlite320_mobilenet_v3_large`` layout: "c4"
    is the 1x1 expansion inside block 13, the one that goes to stride 32 (MobileNetV3 paper,
    6.3), "c5" the final 1x1 conv. ``reduced_tail`` halves the channels after "c4" (paper,
    table 6), as torchvision's COCO model does; ImageNet MobileNetV3-Large weights need False.
    """

    def __init__(
        self,
        norm: str = "BN",
        reduced_tail: bool = True,
        norm_eps: float = 0.001,
        norm_momentum: float = 0.03,
    ):
        norm_layer = get_norm_layer(norm, norm_eps, norm_momentum)
        features = mobilenet_v3_large(
            weights=None, norm_layer=norm_layer, reduced_tail=reduced_tail
        ).features
        expansion = features[13].block[0]
        stages = [
            nn.Sequential(*features[:13], expansion),
            nn.Sequential(features[13].block[1:], *features[14:]),
        ]
        channels = [expansion.out_channels, features[-1].out_channels]
        extras = [(out // 2, out) for out in (512, 256, 256, 128)]
        super().__init__(stages, channels, extras, norm_layer, nn.ReLU6)
        # torchvision's SSDLite trains from scratch with N(0, 0.03) conv weights everywhere.
        init_convs(self, partial(nn.init.normal_, mean=0.0, std=0.03))


@BACKBONE_REGISTRY.register()
def build_mobilenet_v2_ssdlite_backbone(cfg, input_shape: ShapeSpec) -> MobileNetV2SSDLite:
    check_rgb(input_shape, "build_mobilenet_v2_ssdlite_backbone")
    return MobileNetV2SSDLite(norm=cfg.MODEL.MOBILENET.NORM, layout=cfg.MODEL.MOBILENET.V2_LAYOUT)


@BACKBONE_REGISTRY.register()
def build_mobilenet_v3_ssdlite_backbone(cfg, input_shape: ShapeSpec) -> MobileNetV3SSDLite:
    check_rgb(input_shape, "build_mobilenet_v3_ssdlite_backbone")
    return MobileNetV3SSDLite(
        norm=cfg.MODEL.MOBILENET.NORM, reduced_tail=cfg.MODEL.MOBILENET.REDUCED_TAIL
    )
