from typing import Callable, List, Tuple

import torch
from torch import Tensor
from torchvision.ops import nms

__all__ = ["grouped_nms", "rank_within_images", "select_detections"]

# grouped_nms stays scriptable: the TorchScript export runs it scripted, to make eager
# inference's run-time choices. The IoU elements computed at once bound the worst case (every
# class of every image full of candidates) to a few hundred MB of temporaries.
_IOU_CHUNK_ELEMENTS = 1 << 22


def select_detections(
    boxes: Tensor,
    scores: Tensor,
    topk: int,
    per_class_nms: Callable[[Tensor, Tensor], Tuple[Tensor, Tensor]],
    max_per_image: int,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """
    SSD's selection for a batch of boxes (N, R, 4) and foreground scores (N, R, K): the
    ``topk`` candidates of each image and class, ``per_class_nms`` on those groups (as
    :func:`grouped_nms` takes and returns them), each image's best ``max_per_image``. Returns
    boxes (M, 4), scores, classes and image indices (M,), in decreasing score.
    """
    num_images, num_boxes, num_classes = scores.shape
    k = min(topk, num_boxes)
    top_scores, top_anchor = scores.transpose(1, 2).topk(k, dim=2)  # (N, K, k)
    # Group g is image g // K, class g % K.
    top_scores = top_scores.reshape(-1, k)
    top_boxes = boxes.gather(1, top_anchor.reshape(num_images, -1, 1).expand(-1, -1, 4))
    top_boxes = top_boxes.view(-1, k, 4)
    group_idx, rank_idx = per_class_nms(top_boxes, top_scores)
    image_idx = torch.div(group_idx, num_classes, rounding_mode="floor")
    # Detections come in decreasing score, so each image's first ones are its best.
    keep = rank_within_images(image_idx, num_images) < max_per_image
    group_idx, rank_idx, image_idx = group_idx[keep], rank_idx[keep], image_idx[keep]
    classes = group_idx - image_idx * num_classes
    return top_boxes[group_idx, rank_idx], top_scores[group_idx, rank_idx], classes, image_idx


def rank_within_images(image_idx: Tensor, num_images: int) -> Tensor:
    """
    The 0-based position of each detection among its image's, in the given order: a
    cumulative count, not a loop over images, so that a trace keeps it for any batch size.
    """
    in_image = (image_idx[:, None] == torch.arange(num_images, device=image_idx.device)).long()
    return (in_image.cumsum(dim=0) * in_image).sum(dim=1) - 1


def grouped_nms(
    boxes: Tensor, scores: Tensor, score_threshold: float, iou_threshold: float
) -> Tuple[Tensor, Tensor]:
    """
    Greedy NMS of many small groups (SSD's candidates: one per image and class, (G, k, 4)
    boxes and (G, k) scores, each group sorted by decreasing score), with torchvision
    ``nms``'s decisions on each group: scores <= ``score_threshold`` dropped, IoU >
    ``iou_threshold`` with a kept one suppressed. Returns the group and rank indices of the
    kept candidates, in decreasing score.

    ``batched_nms`` over all groups would compare every pair across groups; here the CPU runs
    torchvision's kernel on each non-empty group, and a GPU computes the IoUs of all groups in
    one batched operation and walks the ranks of all groups at once.
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
    empty = valid.new_zeros(0, dtype=torch.long)
    group_idx, rank_idx = [empty], [empty]
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
    """(G, k, k) bool: IoU of candidates i and j of each group > threshold, computed as
    torchvision's NMS kernels do (intersection / (area_i + area_j - intersection))."""
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
