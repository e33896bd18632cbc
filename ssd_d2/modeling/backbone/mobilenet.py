from functools import partial
from typing import Callable, Dict, List, Optional

import torch
from torch import nn
from torchvision.models import mobilenet_v2, mobilenet_v3_large
from torchvision.ops.misc import Conv2dNormActivation

from detectron2.layers import ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, Backbone

__all__ = [
    "MobileNetV2SSDLite",
    "MobileNetV3SSDLite",
    "build_mobilenet_v2_ssdlite_backbone",
    "build_mobilenet_v3_ssdlite_backbone",
    "get_norm_layer",
]

# Output names, finest level first: two maps of the MobileNet body, then the extra layers.
_OUT_FEATURES = ["c4", "c5", "extra1", "extra2", "extra3", "extra4"]


def get_norm_layer(norm: str, eps: float, momentum: float) -> Callable[[int], nn.Module]:
    """
    A ``channels -> module`` factory (what torchvision's MobileNets take as ``norm_layer``)
    for a Detectron2 norm name ("BN", "SyncBN", "FrozenBN", ...), with the given epsilon and
    momentum where the layer has them: torchvision's SSDLite trains with non-default ones.
    """
    if not norm:
        raise ValueError(
            'The SSDLite MobileNet backbones and SSDLiteHead need a norm layer ("BN", '
            '"SyncBN", "FrozenBN", ...); got none.'
        )

    def make(channels: int) -> nn.Module:
        layer = get_norm(norm, channels)
        if hasattr(layer, "eps"):
            layer.eps = eps
        if hasattr(layer, "momentum"):
            layer.momentum = momentum
        return layer

    return make


def _extra_block(
    in_channels: int,
    hidden_channels: int,
    out_channels: int,
    norm_layer: Callable[[int], nn.Module],
    project_activation: Optional[Callable[..., nn.Module]],
) -> nn.Sequential:
    """SSDLite extra layer (MobileNetV2 paper, 6.2): 1x1 -> depthwise 3x3 / 2 -> 1x1."""
    conv = partial(Conv2dNormActivation, norm_layer=norm_layer)
    return nn.Sequential(
        conv(in_channels, hidden_channels, kernel_size=1, activation_layer=nn.ReLU6),
        conv(
            hidden_channels,
            hidden_channels,
            kernel_size=3,
            stride=2,
            groups=hidden_channels,
            activation_layer=nn.ReLU6,
        ),
        conv(hidden_channels, out_channels, kernel_size=1, activation_layer=project_activation),
    )


def _last_strided_block(features: nn.Sequential) -> int:
    """Index of the last block that halves the resolution (MobileNet's stride 16 -> 32 block)."""
    strided = [
        i
        for i, block in enumerate(features)
        if any(isinstance(m, nn.Conv2d) and max(m.stride) > 1 for m in block.modules())
    ]
    return strided[-1]


class _SSDLiteBackbone(Backbone):
    """
    A MobileNet body split into two stages (outputs "c4" at stride 16 and "c5" at stride 32)
    followed by the SSDLite extra layers ("extra1" ... "extra4"), one output per level.
    """

    def __init__(self, stages: List[nn.Module], extras: List[nn.Module], channels: List[int]):
        super().__init__()
        # The peers' module nesting (features.0 / features.1), so that their weights load by
        # renaming prefixes only.
        self.features = nn.Sequential(*stages)
        self.extra = nn.ModuleList(extras)
        self._out_features = list(_OUT_FEATURES)
        self._out_feature_channels = dict(zip(_OUT_FEATURES, channels))
        # Nominal strides; at 320 the maps are 20, 10, 5, 3, 2, 1 and the default-box STEPS
        # of the config give the exact geometry.
        self._out_feature_strides = {name: 2 ** (4 + i) for i, name in enumerate(_OUT_FEATURES)}

    def forward(self, x) -> Dict[str, torch.Tensor]:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(
                f"{type(self).__name__} expects (N, 3, H, W) images, got {tuple(x.shape)}."
            )
        outputs = []
        for block in list(self.features) + list(self.extra):
            x = block(x)
            outputs.append(x)
        return dict(zip(self._out_features, outputs))


class MobileNetV2SSDLite(_SSDLiteBackbone):
    """
    MobileNetV2 SSDLite in lufficc/SSD's layout (mobilenet_v2_ssd320_voc0712): "c4" is the
    96-channel output of the last stride-16 block, "c5" the final 1280-channel 1x1 conv, and
    the extras are inverted residual blocks with linear 1x1 projections (512, 256, 256, 64
    channels; hidden widths 256, 128, 128, 64).
    """

    # (hidden, out) channels of the extra layers, as lufficc sizes them.
    EXTRAS = [(256, 512), (128, 256), (128, 256), (64, 64)]

    def __init__(self, norm: str = "BN", norm_eps: float = 1e-5, norm_momentum: float = 0.1):
        """
        Args:
            norm: a Detectron2 norm for every layer ("BN", "SyncBN", "FrozenBN", ...).
            norm_eps, norm_momentum: of the norm layers; the defaults are PyTorch's, which
                lufficc/SSD uses.
        """
        norm_layer = get_norm_layer(norm, norm_eps, norm_momentum)
        features = mobilenet_v2(weights=None, norm_layer=norm_layer).features
        # lufficc's first map is the input of the block that goes to stride 32.
        split = _last_strided_block(features)
        stages = [features[:split], features[split:]]
        channels = [features[split - 1].out_channels, features[-1].out_channels]
        extras = []
        in_channels = channels[-1]
        for hidden, out in self.EXTRAS:
            # No activation after the projection: an inverted residual's linear bottleneck.
            extras.append(_extra_block(in_channels, hidden, out, norm_layer, None))
            in_channels = out
            channels.append(out)
        for module in extras:
            # torchvision's MobileNetV2 init, which lufficc applies to its extras as well.
            for m in module.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out")
        super().__init__(stages, extras, channels)


class MobileNetV3SSDLite(_SSDLiteBackbone):
    """
    MobileNetV3-Large SSDLite in torchvision's ``ssdlite320_mobilenet_v3_large`` layout:
    "c4" is the 1x1 expansion inside the block that goes to stride 32 (MobileNetV3 paper,
    6.3), "c5" the final 1x1 conv, and the extras have 512, 256, 256, 128 channels with half
    as many hidden channels.
    """

    EXTRA_CHANNELS = [512, 256, 256, 128]

    def __init__(
        self,
        norm: str = "BN",
        reduced_tail: bool = True,
        norm_eps: float = 0.001,
        norm_momentum: float = 0.03,
    ):
        """
        Args:
            norm: a Detectron2 norm for every layer ("BN", "SyncBN", "FrozenBN", ...).
            reduced_tail: halve the channels of the blocks after "c4" (MobileNetV3 paper,
                table 6), as torchvision's COCO model does; ImageNet-pretrained
                MobileNetV3-Large weights need False.
            norm_eps, norm_momentum: of the norm layers; the defaults are torchvision's SSDLite.
        """
        norm_layer = get_norm_layer(norm, norm_eps, norm_momentum)
        features = mobilenet_v3_large(
            weights=None, norm_layer=norm_layer, reduced_tail=reduced_tail
        ).features
        split = _last_strided_block(features)
        c4_block = features[split]
        assert not c4_block.use_res_connect, "a strided block has no residual connection"
        expansion = c4_block.block[0]
        stages = [
            nn.Sequential(*features[:split], expansion),
            nn.Sequential(c4_block.block[1:], *features[split + 1 :]),
        ]
        channels = [expansion.out_channels, features[-1].out_channels]
        extras = []
        in_channels = channels[-1]
        for out in self.EXTRA_CHANNELS:
            extras.append(_extra_block(in_channels, out // 2, out, norm_layer, nn.ReLU6))
            in_channels = out
            channels.append(out)
        super().__init__(stages, extras, channels)
        # torchvision's SSDLite trains from scratch with N(0, 0.03) conv weights everywhere.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, mean=0.0, std=0.03)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)


def _check_rgb(input_shape: ShapeSpec, name: str):
    if input_shape.channels != 3:
        raise ValueError(
            f"{name} takes 3-channel images; MODEL.PIXEL_MEAN has {input_shape.channels} values."
        )


@BACKBONE_REGISTRY.register()
def build_mobilenet_v2_ssdlite_backbone(cfg, input_shape: ShapeSpec) -> MobileNetV2SSDLite:
    """MobileNetV2 SSDLite backbone (lufficc/SSD's layout)."""
    _check_rgb(input_shape, "build_mobilenet_v2_ssdlite_backbone")
    return MobileNetV2SSDLite(norm=cfg.MODEL.MOBILENET.NORM)


@BACKBONE_REGISTRY.register()
def build_mobilenet_v3_ssdlite_backbone(cfg, input_shape: ShapeSpec) -> MobileNetV3SSDLite:
    """MobileNetV3-Large SSDLite backbone (torchvision's ssdlite320_mobilenet_v3_large layout)."""
    _check_rgb(input_shape, "build_mobilenet_v3_ssdlite_backbone")
    return MobileNetV3SSDLite(
        norm=cfg.MODEL.MOBILENET.NORM, reduced_tail=cfg.MODEL.MOBILENET.REDUCED_TAIL
    )
