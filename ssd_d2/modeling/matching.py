from typing import NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from detectron2.structures import Boxes, pairwise_iou
from detectron2.structures.boxes import pairwise_intersection

__all__ = ["MatchingArithmetic", "MATCHING_ARITHMETICS", "unit_box_iou", "in_units"]
__all__ += ["matching_iou", "positive_iou_threshold"]


class MatchingArithmetic(NamedTuple):
    """How a peer computes the IoU that SSD's matching compares with the threshold. The
    matches are the same in exact arithmetic (but for eps); published weights were trained
    with one of these roundings, which pick differently between default boxes of equal IoU."""

    # IoU of boxes divided by the input's width and height (True), or of pixel boxes.
    unit_boxes: bool
    # Added to the union (in the boxes' units): lowers every IoU a little.
    eps: float
    # A default box is positive when its IoU is > the threshold (True) or >= it.
    strictly_above: bool
    # Among a ground truth's default boxes of equal best IoU, it takes the first in NVIDIA's
    # order (a level's boxes size by size, True) or in ssd_d2's (location by location).
    ties_size_first: bool


# MODEL.SSD.MATCHING: whose arithmetic the matching reproduces.
MATCHING_ARITHMETICS = {
    # torchvision's SSD (and Detectron2's pairwise_iou): pixels, IoU >= threshold.
    "torchvision": MatchingArithmetic(
        unit_boxes=False, eps=0.0, strictly_above=False, ties_size_first=False
    ),
    # lufficc/SSD (ssd.utils.box_utils.iou_of): unit boxes, eps 1e-5, IoU >= threshold.
    "lufficc": MatchingArithmetic(
        unit_boxes=True, eps=1e-5, strictly_above=False, ties_size_first=False
    ),
    # NVIDIA's SSD300-ResNet50 (ssd.utils.Encoder.encode): unit boxes, IoU > threshold, its
    # default boxes' order.
    "nvidia": MatchingArithmetic(
        unit_boxes=True, eps=0.0, strictly_above=True, ties_size_first=True
    ),
}


def in_units(boxes: Boxes, image_size: Tuple[int, int]) -> Tensor:
    """XYXY pixel ``boxes`` of an image of ``image_size`` (height, width) as fractions of its
    width and height, as the peers divide their ground truth."""
    height, width = image_size
    scale = torch.tensor([width, height, width, height], dtype=boxes.tensor.dtype)
    return boxes.tensor / scale.to(boxes.device)


def unit_box_iou(boxes1: Tensor, boxes2: Tensor, eps: float) -> Tensor:
    """
    (N, M) IoU of XYXY ``boxes1`` and ``boxes2`` with ``eps`` added to the union, in the
    peers' order of float32 operations: intersection / (area1 + area2 - intersection + eps).
    """
    boxes1, boxes2 = Boxes(boxes1), Boxes(boxes2)
    intersection = pairwise_intersection(boxes1, boxes2)
    return intersection / (boxes1.area()[:, None] + boxes2.area() - intersection + eps)


def positive_iou_threshold(iou_threshold: float, arithmetic: MatchingArithmetic) -> float:
    """The least IoU that makes a default box positive: ``iou_threshold`` itself, or for an
    arithmetic that wants IoU strictly above it, the next float32 after it (IoUs are float32)."""
    if not arithmetic.strictly_above:
        return iou_threshold
    t = torch.tensor(iou_threshold, dtype=torch.float32)
    return torch.nextafter(t, torch.tensor(float("inf"))).item()


def matching_iou(
    arithmetic: MatchingArithmetic,
    gt_boxes: Boxes,
    image_size: Tuple[int, int],
    default_boxes: Boxes,
    default_boxes_in_units: Optional[Tensor],
) -> Tensor:
    """(G, R) IoU of ``gt_boxes`` (pixels of an input of ``image_size``, (height, width)) with
    the default boxes, as ``arithmetic`` computes it: in pixels, or with both in [0, 1] units
    (``default_boxes_in_units``: the generator's ``in_units`` of ``default_boxes``)."""
    if arithmetic.unit_boxes:
        gt_in_units = in_units(gt_boxes, image_size)
        return unit_box_iou(gt_in_units, default_boxes_in_units, arithmetic.eps)
    return pairwise_iou(gt_boxes, default_boxes)
