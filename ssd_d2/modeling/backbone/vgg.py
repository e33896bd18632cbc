from typing import Dict, List

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone

__all__ = ["L2Norm", "VGG16SSD", "build_vgg16_ssd_backbone"]

# VGG16 conv1_1 ... conv5_3: output channels, "M" a 2x2/2 max pool, "C" the same with
# ceil_mode (so that 75 -> 38 at 300, giving the paper's 38x38 conv4_3 map).
_VGG16_LAYOUT = [64, 64, "M", 128, 128, "M", 256, 256, 256, "C", 512, 512, 512, "M", 512, 512, 512]
_CONV4_3_INDEX = 22  # index in the layer list below of the ReLU after conv4_3

# Extra layers after fc7: (1x1 channels, 3x3 channels, stride, padding) per level.
_EXTRAS = {
    300: [(256, 512, 2, 1), (128, 256, 2, 1), (128, 256, 1, 0), (128, 256, 1, 0)],
    512: [(256, 512, 2, 1), (128, 256, 2, 1), (128, 256, 2, 1), (128, 256, 2, 1), (128, 256, 1, 1)],
}


def _vgg16_layers() -> nn.Sequential:
    layers: List[nn.Module] = []
    in_channels = 3
    for v in _VGG16_LAYOUT:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        elif v == "C":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True))
        else:
            layers += [nn.Conv2d(in_channels, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            in_channels = v
    # pool5 keeps the resolution; fc6 and fc7 become a dilated 3x3 and a 1x1 conv.
    layers += [
        nn.MaxPool2d(kernel_size=3, stride=1, padding=1),
        nn.Conv2d(512, 1024, kernel_size=3, padding=6, dilation=6),
        nn.ReLU(inplace=True),
        nn.Conv2d(1024, 1024, kernel_size=1),
        nn.ReLU(inplace=True),
    ]
    return nn.Sequential(*layers)


class L2Norm(nn.Module):
    """
    Channel-wise L2 normalisation with a learned per-channel scale (ParseNet), applied to
    conv4_3 because its activations are larger than those of the later maps (SSD paper, 3.1).
    """

    def __init__(self, channels: int, initial_scale: float = 20.0):
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), float(initial_scale)))

    def forward(self, x):
        return F.normalize(x, dim=1) * self.weight.view(1, -1, 1, 1)


class VGG16SSD(Backbone):
    """
    The VGG16 backbone of SSD300 / SSD512: conv4_3 (L2-normalised), fc7 and the extra
    layers, one output per level. Layer indices in ``vgg`` follow the published SSD
    checkpoints' ``vgg.N`` numbering, which keeps weight conversion a renaming.
    """

    def __init__(self, image_size: int = 300):
        super().__init__()
        if image_size not in _EXTRAS:
            raise ValueError(
                f"MODEL.SSD.IMAGE_SIZE = {image_size}: the VGG16 SSD backbone has extra layers "
                f"for {sorted(_EXTRAS)} only."
            )
        self.vgg = _vgg16_layers()
        self.l2_norm = L2Norm(512)
        extras = []
        in_channels = 1024
        for mid, out, stride, padding in _EXTRAS[image_size]:
            # SSD512's last extra layer is a 4x4 conv that turns 2x2 into 1x1.
            kernel = 4 if (image_size == 512 and stride == 1) else 3
            extras.append(
                nn.Sequential(
                    nn.Conv2d(in_channels, mid, kernel_size=1),
                    nn.ReLU(inplace=True),
                    nn.Conv2d(mid, out, kernel_size=kernel, stride=stride, padding=padding),
                    nn.ReLU(inplace=True),
                )
            )
            in_channels = out
        self.extras = nn.ModuleList(extras)

        names = ["conv4_3", "fc7"] + [f"conv{8 + i}_2" for i in range(len(extras))]
        channels = [512, 1024] + [spec[1] for spec in _EXTRAS[image_size]]
        self._out_features = names
        # Nominal strides (powers of two); the default-box steps of the config give the
        # exact geometry (e.g. 100 and 300 at SSD300's last levels).
        self._out_feature_strides = {name: 2 ** (3 + i) for i, name in enumerate(names)}
        self._out_feature_channels = dict(zip(names, channels))

    def forward(self, x) -> Dict[str, torch.Tensor]:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"VGG16SSD expects (N, 3, H, W) images, got {tuple(x.shape)}.")
        outputs = []
        for i, layer in enumerate(self.vgg):
            x = layer(x)
            if i == _CONV4_3_INDEX:
                outputs.append(self.l2_norm(x))
        outputs.append(x)  # fc7
        for extra in self.extras:
            x = extra(x)
            outputs.append(x)
        return dict(zip(self._out_features, outputs))

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(
                channels=self._out_feature_channels[name],
                stride=self._out_feature_strides[name],
            )
            for name in self._out_features
        }


@BACKBONE_REGISTRY.register()
def build_vgg16_ssd_backbone(cfg, input_shape: ShapeSpec) -> VGG16SSD:
    """The VGG16 SSD backbone for ``MODEL.SSD.IMAGE_SIZE`` (300 or 512)."""
    if input_shape.channels != 3:
        raise ValueError(
            f"build_vgg16_ssd_backbone takes 3-channel images; MODEL.PIXEL_MEAN has "
            f"{input_shape.channels} values."
        )
    return VGG16SSD(image_size=cfg.MODEL.SSD.IMAGE_SIZE)
