from typing import List, Tuple

import torch
from torch import Tensor
from torchvision.ops import nms

__all__ = ["grouped_nms"]

# grouped_nms stays scriptable (torch.jit.script): the TorchScript export (ssd_d2.export) runs
# it scripted, so that an exported model makes the same run-time choices as eager inference.
# Tracing it would freeze the candidate counts of the traced example.

# Elements of the IoU matrix computed at once: bounds the memory of the worst case (every
# class of every image full of candidates) to a few hundred MB of temporaries.
_IOU_CHUNK_ELEMENTS = 1 << 22


def grouped_nms(
    boxes: Tensor, scores: Tensor, score_threshold: float, iou_threshold: float
) -> Tuple[Tensor, Tensor]:
    """
    Greedy NMS of many small groups (SSD's candidates: one group per image and class), with
    the decisions of torchvision's ``nms`` run on each group separately.

    SSD's per-class top-k leaves up to a few hundred candidates in each of hundreds of
    groups. One NMS call over all of them (the coordinate-offset trick of ``batched_nms``)
    compares every pair across groups, and masking the candidates group by group reads all
    of them once per group. Here the groups are slices: on the CPU, torchvision's NMS kernel
    runs on each non-empty group; on a GPU, the IoUs within every group
    are one batched tensor operation and the greedy pass walks the ranks of all groups at once.

    Args:
        boxes: (G, k, 4) XYXY candidates; each group sorted by decreasing score.
        scores: (G, k) their scores.
        score_threshold: candidates with a score <= this are dropped.
        iou_threshold: a candidate whose IoU with a kept, higher-scored candidate of its group
            is > this is suppressed.

    Returns:
        group and rank indices of the kept candidates, in decreasing score.
    """
    valid = scores > score_threshold
    if boxes.device.type == "cpu":
        group_idx, rank_idx = _nms_each_group(boxes, scores, valid, iou_threshold)
    else:
        group_idx, rank_idx = _nms_all_groups(boxes, valid, iou_threshold)
    order = scores[group_idx, rank_idx].argsort(descending=True)
    return group_idx[order], rank_idx[order]


def _nms_each_group(boxes: Tensor, scores: Tensor, valid: Tensor, iou_threshold: float):
    # Sorted scores: each group's candidates are a prefix of it.
    counts: List[int] = valid.sum(dim=1).tolist()
    group_idx, rank_idx = [valid.new_zeros(0, dtype=torch.long)], [
        valid.new_zeros(0, dtype=torch.long)
    ]
    for group, count in enumerate(counts):
        if count:
            keep = nms(boxes[group, :count].float(), scores[group, :count], iou_threshold)
            group_idx.append(torch.full_like(keep, group))
            rank_idx.append(keep)
    return torch.cat(group_idx), torch.cat(rank_idx)


def _nms_all_groups(boxes: Tensor, valid: Tensor, iou_threshold: float):
    # Skip the ranks that no group reaches.
    valid = valid[:, : int(valid.sum(dim=1).max()) if valid.numel() else 0]
    depth = valid.shape[1]
    groups = valid.any(dim=1).nonzero().flatten()
    valid = valid[groups]
    overlaps = _iou_above(boxes[groups, :depth].float(), iou_threshold)

    keep = torch.zeros_like(valid)
    suppressed = ~valid
    for rank in range(depth):
        kept = ~suppressed[:, rank]
        keep[:, rank] = kept
        suppressed |= overlaps[:, rank] & kept[:, None]
    group_idx, rank_idx = keep.nonzero().unbind(dim=1)
    return groups[group_idx], rank_idx


def _iou_above(
    boxes: Tensor, threshold: float, chunk_elements: int = _IOU_CHUNK_ELEMENTS
) -> Tensor:
    """
    (G, k, k) bool: IoU of candidates i and j of each group > threshold, computed as
    torchvision's NMS kernels do (intersection / (area_i + area_j - intersection)).
    """
    num_groups, k, _ = boxes.shape
    area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    result = torch.empty((num_groups, k, k), dtype=torch.bool, device=boxes.device)
    step = max(1, chunk_elements // max(1, k * k))
    for start in range(0, num_groups, step):
        b, a = boxes[start : start + step], area[start : start + step]
        top_left = torch.max(b[:, :, None, :2], b[:, None, :, :2])
        bottom_right = torch.min(b[:, :, None, 2:], b[:, None, :, 2:])
        wh = (bottom_right - top_left).clamp(min=0)
        inter = wh[..., 0] * wh[..., 1]
        result[start : start + step] = inter / (a[:, :, None] + a[:, None, :] - inter) > threshold
    return result
