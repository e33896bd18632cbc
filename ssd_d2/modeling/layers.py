from typing import Callable

import torch
from torch import nn

from detectron2.layers import ShapeSpec, get_norm

__all__ = ["check_rgb", "get_norm_layer", "init_convs"]


def check_rgb(input_shape: ShapeSpec, name: str) -> None:
    """The SSD backbones take 3-channel images: 3 values in MODEL.PIXEL_MEAN. (The SSD checks
    each image against MODEL.PIXEL_MEAN.)"""
    if input_shape.channels != 3:
        raise ValueError(
            f"{name} takes 3-channel images; MODEL.PIXEL_MEAN has {input_shape.channels}."
        )


def get_norm_layer(norm: str, eps: float, momentum: float) -> Callable[[int], nn.Module]:
    """A ``channels -> module`` factory (torchvision's ``norm_layer``) for a Detectron2 norm
    name, with epsilon and momentum set: torchvision's SSDLite trains with non-default ones."""
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


def init_convs(module: nn.Module, weight_init: Callable[[torch.Tensor], object]) -> None:
    """``weight_init`` on the weight of every conv in ``module``, and zero biases."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            weight_init(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
