from typing import List

from torch import nn

from detectron2.layers import ShapeSpec
from detectron2.utils.registry import Registry

__all__ = ["SSD_HEAD_REGISTRY", "SSDConvHead", "build_ssd_head"]

SSD_HEAD_REGISTRY = Registry("SSD_HEAD")
SSD_HEAD_REGISTRY.__doc__ = """
Registry for SSD heads: given per-level feature maps, return per-level class logits
(N, A_i * (K + 1), H_i, W_i) and box deltas (N, A_i * 4, H_i, W_i).
"""


@SSD_HEAD_REGISTRY.register()
class SSDConvHead(nn.Module):
    """
    The SSD paper's head: on each level, one 3x3 conv for the class logits and one for the
    box deltas of that level's default boxes (their count differs per level).
    """

    def __init__(self, in_channels: List[int], num_anchors: List[int], num_classes: int):
        """
        Args:
            in_channels: channels of each level's feature map.
            num_anchors: default boxes per location of each level.
            num_classes: foreground classes; the logits have num_classes + 1 channels per box.
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

    def forward(self, features):
        logits = [layer(x) for layer, x in zip(self.cls_score, features)]
        deltas = [layer(x) for layer, x in zip(self.bbox_pred, features)]
        return logits, deltas


def build_ssd_head(cfg, input_shapes: List[ShapeSpec], num_anchors: List[int]) -> nn.Module:
    """Build the head named by ``MODEL.SSD.HEAD_NAME`` for the given levels."""
    name = cfg.MODEL.SSD.HEAD_NAME
    if name not in SSD_HEAD_REGISTRY:
        raise ValueError(
            f"MODEL.SSD.HEAD_NAME = {name!r} is not a registered SSD head; choose one of "
            f"{sorted(k for k, _ in SSD_HEAD_REGISTRY)}."
        )
    return SSD_HEAD_REGISTRY.get(name)(
        in_channels=[s.channels for s in input_shapes],
        num_anchors=num_anchors,
        num_classes=cfg.MODEL.SSD.NUM_CLASSES,
    )
