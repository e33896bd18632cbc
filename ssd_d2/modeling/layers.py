from typing import Callable, Union

import torch
from torch import nn

from detectron2.layers import ShapeSpec, get_norm

__all__ = ["check_rgb", "get_norm_layer", "init_convs"]


def check_rgb(images: Union[ShapeSpec, torch.Tensor], name: str) -> None:
    """The SSD backbones take (N, 3, H, W) images: 3 values in MODEL.PIXEL_MEAN."""
    if isinstance(images, ShapeSpec) and images.channels != 3:
        raise ValueError(f"{name} takes 3-channel images; MODEL.PIXEL_MEAN has {images.channels}.")
    if isinstance(images, torch.Tensor) and (images.dim() != 4 or images.shape[1] != 3):
        raise ValueError(f"{name} expects (N, 3, H, W) images, got {tuple(images.shape)}.")


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
