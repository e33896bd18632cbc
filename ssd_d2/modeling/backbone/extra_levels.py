from typing import Dict, List

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, Backbone

from ...config import resolve_image_size
from ..layers import init_convs

__all__ = ["SSDExtraLevels", "extra_level_names"]


def extra_level_names(count: int) -> List[str]:
    """The output names of the extra levels, coarser and coarser: extra1, extra2, ..."""
    return [f"extra{i + 1}" for i in range(count)]


class SSDExtraLevels(Backbone):
    """
    SSD's extra levels on top of any Detectron2 backbone, as Detectron2's FPN wraps its ResNet:
    the ``bottom`` backbone's ``in_features``, then extra levels, each a 1x1 conv that narrows
    the channels and a 3x3 conv (SSD paper, figure 2; NVIDIA's SSD300 adds a norm after both),
    fed from the last of ``in_features``. Outputs the named bottom features and extra1, ...
    """

    def __init__(
        self,
        bottom: Backbone,
        in_features: List[str],
        out_channels: List[int],
        mid_channels: List[int],
        strides: List[int],
        paddings: List[int],
        norm: str = "",
    ):
        """
        Args:
            bottom: the backbone extended; ``in_features`` name some of its outputs.
            out_channels, mid_channels, strides, paddings: per extra level, the channels of its
                3x3 and 1x1 convs, and the 3x3 conv's stride and padding.
            norm: a Detectron2 norm after each conv ("" for none, with conv biases instead).
        """
        super().__init__()
        num_levels = len(out_channels)
        if not (len(mid_channels) == len(strides) == len(paddings) == num_levels):
            raise ValueError(
                "MODEL.SSD.EXTRA_LEVELS needs one entry per extra level in OUT_CHANNELS, "
                f"MID_CHANNELS, STRIDES and PADDINGS; got {num_levels}, {len(mid_channels)}, "
                f"{len(strides)} and {len(paddings)}."
            )
        available = bottom.output_shape()
        missing = [f for f in in_features if f not in available]
        if not in_features or missing:
            raise ValueError(
                f"MODEL.SSD.IN_FEATURES names {missing or 'no feature'} of the backbone that "
                f"SSD's extra levels extend ({type(bottom).__name__}), which outputs "
                f"{list(available)}; name some of those (and set the backbone's own "
                "OUT_FEATURES to include them), then the extra levels "
                f"{extra_level_names(num_levels)}."
            )
        self.bottom, self.in_features = bottom, list(in_features)
        last = available[in_features[-1]]
        channels, stride = last.channels, last.stride
        extras, shapes = [], {f: available[f] for f in in_features}
        for name, out, mid, s, p in zip(
            extra_level_names(num_levels), out_channels, mid_channels, strides, paddings
        ):

            def conv(c_in, c_out, **kwargs):
                return Conv2d(
                    c_in,
                    c_out,
                    bias=not norm,
                    norm=get_norm(norm, c_out),
                    activation=F.relu,
                    **kwargs,
                )

            extras.append(
                nn.Sequential(
                    conv(channels, mid, kernel_size=1),
                    conv(mid, out, kernel_size=3, stride=s, padding=p),
                )
            )
            channels, stride = out, stride * s
            shapes[name] = ShapeSpec(channels=out, stride=stride)
        self.extras = nn.ModuleList(extras)
        # No ImageNet file has them: Xavier-uniform, as every published SSD starts them.
        init_convs(self.extras, nn.init.xavier_uniform_)
        self._out_features = list(shapes)
        self._out_feature_channels = {f: s.channels for f, s in shapes.items()}
        self._out_feature_strides = {f: s.stride for f, s in shapes.items()}

    @property
    def size_divisibility(self) -> int:
        return self.bottom.size_divisibility

    def forward(self, x) -> Dict[str, torch.Tensor]:
        bottom = self.bottom(x)
        outputs = {f: bottom[f] for f in self.in_features}
        x = outputs[self.in_features[-1]]
        for name, extra in zip(self._out_features[len(self.in_features) :], self.extras):
            x = extra(x)
            outputs[name] = x
        return outputs


@BACKBONE_REGISTRY.register()
def build_ssd_extra_levels_backbone(cfg, input_shape: ShapeSpec) -> SSDExtraLevels:
    """MODEL.SSD.EXTRA_LEVELS.BOTTOM (a BACKBONE_REGISTRY name) with SSD's extra levels; of
    MODEL.SSD.IN_FEATURES, the names extra1, ... are the extra levels, the rest its features."""
    levels = cfg.MODEL.SSD.EXTRA_LEVELS
    registered = [name for name, _ in BACKBONE_REGISTRY]
    if levels.BOTTOM not in registered or levels.BOTTOM == "build_ssd_extra_levels_backbone":
        raise ValueError(
            f"MODEL.SSD.EXTRA_LEVELS.BOTTOM = {levels.BOTTOM!r} is not a backbone SSD's extra "
            f"levels can extend; the registered backbones are {registered}."
        )
    bottom = BACKBONE_REGISTRY.get(levels.BOTTOM)(cfg, input_shape)
    height, width = resolve_image_size(cfg)
    divisor = bottom.size_divisibility
    if divisor and (height % divisor or width % divisor):
        raise ValueError(
            f"The network input {height}x{width} (MODEL.SSD.IMAGE_SIZE / IMAGE_HEIGHT_WIDTH) is "
            f"not divisible by {divisor}, as the backbone {levels.BOTTOM} needs (it merges its "
            f"levels at several strides): choose multiples of {divisor}, e.g. 320 or 512."
        )
    extras = extra_level_names(len(levels.OUT_CHANNELS))
    in_features = list(cfg.MODEL.SSD.IN_FEATURES)
    if in_features[len(in_features) - len(extras) :] != extras:
        raise ValueError(
            f"MODEL.SSD.IN_FEATURES = {in_features} must end with the extra levels {extras} "
            "(one per entry of MODEL.SSD.EXTRA_LEVELS.OUT_CHANNELS), after the backbone's "
            "features they extend."
        )
    return SSDExtraLevels(
        bottom,
        in_features[: len(in_features) - len(extras)],
        out_channels=levels.OUT_CHANNELS,
        mid_channels=levels.MID_CHANNELS,
        strides=levels.STRIDES,
        paddings=levels.PADDINGS,
        norm=levels.NORM,
    )
