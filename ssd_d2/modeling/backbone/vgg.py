from typing import Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.layers import ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, Backbone

from ...config import height_width, resolve_image_size
from ..layers import check_rgb, init_convs

__all__ = ["L2Norm", "VGG16SSD"]

# VGG16 conv1_1 ... conv5_3: output channels, "M" a 2x2/2 max pool, "C" the same with
# ceil_mode (so that 75 -> 38 at 300, giving the paper's 38x38 conv4_3 map).
_VGG16_LAYOUT = [64, 64, "M", 128, 128, "M", 256, 256, 256, "C", 512, 512, 512, "M", 512, 512, 512]
_CONV4_3_LAYOUT_INDEX = 12  # conv4_3 in _VGG16_LAYOUT

# Extra layers after fc7: (1x1 channels, 3x3 channels, stride, padding) per level.
_EXTRAS = {
    300: [(256, 512, 2, 1), (128, 256, 2, 1), (128, 256, 1, 0), (128, 256, 1, 0)],
    512: [(256, 512, 2, 1), (128, 256, 2, 1), (128, 256, 2, 1), (128, 256, 2, 1), (128, 256, 1, 1)],
}


def _scaled(channels: int, width_mult: float) -> int:
    return max(8, int(round(channels * width_mult)))


def _conv(in_channels, out_channels, norm: str, **kwargs) -> List[nn.Module]:
    """A conv and its ReLU, with a norm layer between them when ``norm`` is set."""
    layers = [nn.Conv2d(in_channels, out_channels, **kwargs)]
    if norm:
        layers.append(get_norm(norm, out_channels))
    return layers + [nn.ReLU(inplace=True)]


def _vgg16_layers(width_mult: float, norm: str) -> Tuple[nn.Sequential, int]:
    """VGG16 up to fc7, and the index of the layer whose output is conv4_3's."""
    layers: List[nn.Module] = []
    in_channels = 3
    conv4_3_index = -1
    for i, v in enumerate(_VGG16_LAYOUT):
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        elif v == "C":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True))
        else:
            out_channels = _scaled(v, width_mult)
            layers += _conv(in_channels, out_channels, norm, kernel_size=3, padding=1)
            in_channels = out_channels
        if i == _CONV4_3_LAYOUT_INDEX:
            conv4_3_index = len(layers) - 1
    # pool5 keeps the resolution; fc6 and fc7 become a dilated 3x3 and a 1x1 conv.
    fc_channels = _scaled(1024, width_mult)
    layers.append(nn.MaxPool2d(kernel_size=3, stride=1, padding=1))
    fc = _conv(in_channels, fc_channels, norm, kernel_size=3, padding=6, dilation=6)
    fc += _conv(fc_channels, fc_channels, norm, kernel_size=1)
    # ImageNet VGG16 files give conv1-conv5 (torchvision's vgg16_features has no fc6/fc7):
    # fc6 and fc7 start from torchvision SSD's Xavier init (lufficc/SSD loads them from
    # vgg16_reducedfc.pth instead, which then overwrites this).
    init_convs(nn.Sequential(*fc), nn.init.xavier_uniform_)
    return nn.Sequential(*layers, *fc), conv4_3_index


class L2Norm(nn.Module):
    """Channel-wise L2 normalisation with a learned scale (ParseNet), for conv4_3, whose
    activations are larger than those of the later maps (SSD paper, 3.1)."""

    def __init__(self, channels: int, initial_scale: float = 20.0):
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), float(initial_scale)))

    def forward(self, x):
        return F.normalize(x, dim=1) * self.weight.view(1, -1, 1, 1)


class VGG16SSD(Backbone):
    """
    The VGG16 backbone of SSD300 / SSD512: conv4_3 (L2-normalised when there is no norm
    layer), fc7 and the extra layers, one output per level. Without a norm, the indices in
    ``vgg`` are the published checkpoints' ``vgg.N``: weight conversion is a renaming.
    """

    def __init__(
        self,
        image_size: Union[int, Tuple[int, int]] = 300,
        width_mult: float = 1.0,
        norm: str = "",
        out_features: Optional[List[str]] = None,
    ):
        """
        Args:
            image_size: the input, a square's side or (height, width): from a shorter side
                of 512 up the SSD512 extra layers are used, below it SSD300's.
            width_mult: scales every layer's channels (below 1: fast demo models).
            norm: a Detectron2 norm after every conv, or "" (the published model).
            out_features: the levels to build and output; default all. Smaller inputs need
                fewer levels (the last ones would shrink below 1x1).
        """
        super().__init__()
        image_size = height_width(image_size)
        extras_layout = _EXTRAS[512] if min(image_size) >= 512 else _EXTRAS[300]
        all_names = ["conv4_3", "fc7"] + [f"conv{8 + i}_2" for i in range(len(extras_layout))]
        out_features = list(out_features or all_names)
        unknown = [f for f in out_features if f not in all_names]
        if unknown:
            raise ValueError(
                f"MODEL.SSD.IN_FEATURES names {unknown}, which VGG16SSD at {image_size[0]}x"
                f"{image_size[1]} pixels does not output; it has {all_names}."
            )
        num_levels = max(all_names.index(f) for f in out_features) + 1
        extras_layout = extras_layout[: max(0, num_levels - 2)]
        self.vgg, self._conv4_3_index = _vgg16_layers(width_mult, norm)
        conv4_3_channels = _scaled(512, width_mult)
        # L2Norm evens out conv4_3's larger activations; with a norm layer after every conv
        # the levels are already on one scale, and rescaling every location to the same
        # norm would only amplify background noise.
        self.l2_norm = nn.Identity() if norm else L2Norm(conv4_3_channels)
        extras = []
        in_channels = _scaled(1024, width_mult)
        channels = [conv4_3_channels, in_channels]
        for mid, out, stride, padding in extras_layout:
            mid, out = _scaled(mid, width_mult), _scaled(out, width_mult)
            # SSD512's last extra layer is a 4x4 conv that turns 2x2 into 1x1.
            kernel = 4 if (image_size == (512, 512) and stride == 1) else 3
            extras.append(
                nn.Sequential(
                    *_conv(in_channels, mid, norm, kernel_size=1),
                    *_conv(mid, out, norm, kernel_size=kernel, stride=stride, padding=padding),
                )
            )
            in_channels = out
            channels.append(out)
        self.extras = nn.ModuleList(extras)
        # The extra layers are in no ImageNet file: Xavier-uniform weights and zero biases,
        # as lufficc/SSD, ssd.pytorch and torchvision initialise them.
        init_convs(self.extras, nn.init.xavier_uniform_)

        self._out_features = out_features
        # Nominal strides (powers of two); the default-box steps of the config give the
        # exact geometry (e.g. 100 and 300 at SSD300's last levels).
        self._out_feature_strides = {name: 2 ** (3 + i) for i, name in enumerate(all_names)}
        self._out_feature_channels = dict(zip(all_names, channels))

    def forward(self, x) -> Dict[str, torch.Tensor]:
        outputs = []
        for i, layer in enumerate(self.vgg):
            x = layer(x)
            if i == self._conv4_3_index:
                outputs.append(self.l2_norm(x))
        outputs.append(x)  # fc7
        for extra in self.extras:
            x = extra(x)
            outputs.append(x)
        outputs = dict(zip(self._out_feature_channels, outputs))
        return {name: outputs[name] for name in self._out_features}


@BACKBONE_REGISTRY.register()
def build_vgg16_ssd_backbone(cfg, input_shape: ShapeSpec) -> VGG16SSD:
    check_rgb(input_shape, "build_vgg16_ssd_backbone")
    return VGG16SSD(
        image_size=resolve_image_size(cfg),
        width_mult=cfg.MODEL.VGG.WIDTH_MULT,
        norm=cfg.MODEL.VGG.NORM,
        out_features=cfg.MODEL.SSD.IN_FEATURES,
    )
