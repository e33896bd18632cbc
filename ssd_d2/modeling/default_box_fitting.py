"""
Default boxes fitted to a data set: which ground-truth boxes a config's default boxes can match
(some default box at IoU >= MODEL.SSD.IOU_THRESHOLD, in the model's own matching arithmetic),
and a search for per-level sizes, aspect ratios and an input size that match more of them within
a budget of default boxes.

The search is greedy and deterministic. For each candidate input size (the config's, and sizes
in the data's image proportions), the backbone gives the feature maps; each level starts with
its two squares only; then, while the budget allows, the aspect-ratio pair that matches the most
new ground truth per default box is added to its level, its sizes re-chosen; last, each level
trades ratios for others while that matches more. A level has SSD's box set (two squares plus
an r:1, 1:r pair per ratio), so the head is built from the fitted config as from any other.
"""

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from detectron2.modeling import build_backbone
from detectron2.structures import Boxes

from ..config import height_width, resolve_image_size
from .anchor_generator import SSDDefaultBoxGenerator
from .matching import (
    MATCHING_ARITHMETICS,
    MatchingArithmetic,
    in_units,
    matching_iou,
    positive_iou_threshold,
)

__all__ = ["LevelBoxes", "DefaultBoxSet", "CoverageTable", "default_box_set_from_config"]
__all__ += ["feature_map_sizes", "matched_ground_truth", "coverage_table", "fit_default_boxes"]
__all__ += [
    "candidate_input_sizes",
    "unmatchable_ground_truth",
    "SIZE_BINS",
    "ASPECT_BINS",
    "ASPECT_RATIO_CHOICES",
]

# Coverage tables: object size sqrt(width * height) in the data set's image pixels, and shape
# height / width (tall objects > 1).
SIZE_BINS = (0, 16, 32, 64, 128, math.inf)
ASPECT_BINS = (0, 0.5, 2, 4, math.inf)
# The aspect ratios the search may give a level (each adds an r:1 and a 1:r box).
ASPECT_RATIO_CHOICES = (1.5, 2, 2.5, 3, 4, 5, 6, 8)
# Candidate min sizes: a geometric grid, four per octave, from 4 pixels up to the input side.
_SIZES_PER_OCTAVE = 4
_MIN_BOX_SIZE = 4.0
# Ratio of the second square's side to the first (sqrt(max_size / min_size)), in grid steps.
_SECOND_SQUARE_STEPS = (1, 2, 3, 4)
# Ground-truth boxes per IoU block (bounds the memory of the exact coverage).
_CHUNK = 256


@dataclass
class LevelBoxes:
    """One feature level's default boxes: its steps and SSD's box set per location."""

    step: Tuple[float, float]  # (step_y, step_x), input pixels between box centres
    min_size: float
    max_size: float
    aspect_ratios: List[float] = field(default_factory=list)

    @property
    def boxes_per_location(self) -> int:
        return 2 + 2 * len(self.aspect_ratios)


@dataclass
class DefaultBoxSet:
    """A network input size, its feature map sizes and each level's default boxes."""

    image_size: Tuple[int, int]  # (height, width)
    feature_sizes: List[Tuple[int, int]]
    levels: List[LevelBoxes]
    clamp: str = "center_and_size"

    @property
    def num_boxes(self) -> int:
        return sum(
            h * w * lv.boxes_per_location for (h, w), lv in zip(self.feature_sizes, self.levels)
        )

    def generator(self) -> SSDDefaultBoxGenerator:
        """The model's default-box generator for this set."""
        return SSDDefaultBoxGenerator(
            image_size=self.image_size,
            steps=[list(lv.step) for lv in self.levels],
            min_sizes=[lv.min_size for lv in self.levels],
            max_sizes=[lv.max_size for lv in self.levels],
            aspect_ratios=[list(lv.aspect_ratios) for lv in self.levels],
            clamp=self.clamp,
        )

    def config_values(self) -> Dict:
        """MODEL.SSD's keys for this set: IMAGE_SIZE, IMAGE_HEIGHT_WIDTH and DEFAULT_BOXES."""
        height, width = self.image_size
        steps = []
        for step_y, step_x in (lv.step for lv in self.levels):
            steps.append(
                _number(step_y) if step_y == step_x else [_number(step_y), _number(step_x)]
            )
        return {
            "IMAGE_SIZE": height if height == width else 0,
            "IMAGE_HEIGHT_WIDTH": [] if height == width else [height, width],
            "DEFAULT_BOXES": {
                "STEPS": steps,
                "MIN_SIZES": [_number(lv.min_size) for lv in self.levels],
                "MAX_SIZES": [_number(lv.max_size) for lv in self.levels],
                "ASPECT_RATIOS": [[_number(r) for r in lv.aspect_ratios] for lv in self.levels],
            },
        }


def _number(value: float):
    """A YAML-friendly number: an int when whole, else rounded to 6 decimals."""
    value = round(float(value), 6)
    return int(value) if value == int(value) else value


def feature_map_sizes(cfg, image_size: Tuple[int, int]) -> List[Tuple[int, int]]:
    """The (height, width) of each MODEL.SSD.IN_FEATURES map that ``cfg``'s backbone makes from
    an ``image_size`` input, found by running the backbone once on zeros."""
    cfg = cfg.clone()
    cfg.defrost()
    height, width = image_size
    cfg.MODEL.SSD.IMAGE_SIZE, cfg.MODEL.SSD.IMAGE_HEIGHT_WIDTH = 0, [height, width]
    cfg.MODEL.DEVICE = "cpu"
    backbone = build_backbone(cfg).eval()
    with torch.no_grad():
        features = backbone(torch.zeros(1, 3, height, width))
    return [tuple(features[name].shape[-2:]) for name in cfg.MODEL.SSD.IN_FEATURES]


def default_box_set_from_config(cfg) -> DefaultBoxSet:
    """``cfg``'s input size and default boxes, its feature maps from its backbone."""
    image_size = resolve_image_size(cfg)
    generator = SSDDefaultBoxGenerator(cfg, [])
    boxes = cfg.MODEL.SSD.DEFAULT_BOXES
    levels = [
        LevelBoxes(tuple(step), float(mn), float(mx), [float(r) for r in ratios])
        for step, mn, mx, ratios in zip(
            generator.steps, boxes.MIN_SIZES, boxes.MAX_SIZES, boxes.ASPECT_RATIOS
        )
    ]
    return DefaultBoxSet(image_size, feature_map_sizes(cfg, image_size), levels, boxes.CLAMP)


def matched_ground_truth(
    gt_boxes: Tensor,
    box_set: DefaultBoxSet,
    iou_threshold: float = 0.5,
    matching: str = "lufficc",
) -> Tensor:
    """
    (N,) bool: which of ``gt_boxes`` ((N, 4) XYXY, network-input pixels of
    ``box_set.image_size``) some default box of ``box_set`` overlaps at IoU >=
    ``iou_threshold``, the IoU computed as the model's MODEL.SSD.MATCHING computes it.
    """
    return _best_iou(gt_boxes, box_set, MATCHING_ARITHMETICS[matching]) >= positive_iou_threshold(
        iou_threshold, MATCHING_ARITHMETICS[matching]
    )


def _best_iou(gt_boxes: Tensor, box_set: DefaultBoxSet, arithmetic: MatchingArithmetic) -> Tensor:
    generator = box_set.generator()
    anchors = Boxes.cat(generator([torch.empty(1, 0, h, w) for h, w in box_set.feature_sizes]))
    gt_boxes = torch.as_tensor(gt_boxes, dtype=torch.float32).reshape(-1, 4)
    best = torch.zeros(len(gt_boxes))
    anchors_in_units = generator.in_units(anchors) if arithmetic.unit_boxes else None
    for start in range(0, len(gt_boxes), _CHUNK):
        end = start + _CHUNK
        chunk = Boxes(gt_boxes[start:end])
        iou = matching_iou(arithmetic, chunk, box_set.image_size, anchors, anchors_in_units)
        if iou.shape[1]:
            best[start:end] = iou.max(dim=1).values
    return best


@dataclass
class CoverageTable:
    """Ground truth counted by size bin (rows) and aspect bin (columns), and how many matched."""

    size_bins: Sequence[float]
    aspect_bins: Sequence[float]
    total: np.ndarray  # (sizes, aspects) int
    matched: np.ndarray  # (sizes, aspects) int

    @property
    def share(self) -> float:
        return float(self.matched.sum() / max(self.total.sum(), 1))

    def format(self) -> str:
        """The table as text: each cell "matched/total share"."""
        columns = [
            _bin_name(lo, hi, "h/w ") for lo, hi in zip(self.aspect_bins, self.aspect_bins[1:])
        ]
        rows = [["size \\ shape"] + columns + ["all"]]
        for i, (lo, hi) in enumerate(zip(self.size_bins, self.size_bins[1:])):
            cells = [_cell(m, t) for m, t in zip(self.matched[i], self.total[i])]
            rows.append([_bin_name(lo, hi, "", " px")] + cells)
            rows[-1].append(_cell(self.matched[i].sum(), self.total[i].sum()))
        rows.append(["all"] + [_cell(m, t) for m, t in zip(self.matched.sum(0), self.total.sum(0))])
        rows[-1].append(_cell(self.matched.sum(), self.total.sum()))
        widths = [max(len(row[j]) for row in rows) for j in range(len(rows[0]))]
        return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows)


def _cell(matched: int, total: int) -> str:
    return "-" if total == 0 else f"{matched}/{total} {100 * matched / total:.0f}%"


def _bin_name(lo: float, hi: float, prefix: str = "", unit: str = "") -> str:
    if lo == 0:
        return f"{prefix}<{hi:g}{unit}"
    if math.isinf(hi):
        return f"{prefix}>={lo:g}{unit}"
    return f"{prefix}{lo:g}-{hi:g}{unit}"


def coverage_table(
    object_sizes: Tensor,
    matched: Tensor,
    size_bins: Sequence[float] = SIZE_BINS,
    aspect_bins: Sequence[float] = ASPECT_BINS,
) -> CoverageTable:
    """``matched`` ((N,) bool) counted by the bins of ``object_sizes`` ((N, 2) width, height:
    the objects' sizes in their own images, so that tables of two input sizes compare)."""
    sizes = torch.as_tensor(object_sizes, dtype=torch.float64).reshape(-1, 2)
    side = (sizes[:, 0] * sizes[:, 1]).sqrt().numpy()
    aspect = (sizes[:, 1] / sizes[:, 0].clamp(min=1e-9)).numpy()
    rows = np.digitize(side, size_bins[1:-1], right=False)
    cols = np.digitize(aspect, aspect_bins[1:-1], right=False)
    total = np.zeros((len(size_bins) - 1, len(aspect_bins) - 1), dtype=np.int64)
    hit = np.zeros_like(total)
    np.add.at(total, (rows, cols), 1)
    np.add.at(hit, (rows, cols), torch.as_tensor(matched).numpy().astype(np.int64))
    return CoverageTable(tuple(size_bins), tuple(aspect_bins), total, hit)


def unmatchable_ground_truth(
    gt_boxes: Tensor, box_set: DefaultBoxSet, iou_threshold: float = 0.5
) -> Tensor:
    """(N,) bool: the ``gt_boxes`` that no level's grid can match, whatever the box shapes: a
    default box of the ground truth's own size at the nearest centre of any level (half a step
    off at most, on each axis) stays under ``iou_threshold``."""
    gt = torch.as_tensor(gt_boxes, dtype=torch.float64).reshape(-1, 4)
    width, height = gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1]
    cx, cy = (gt[:, 0] + gt[:, 2]) / 2, (gt[:, 1] + gt[:, 3]) / 2
    best = torch.zeros(len(gt), dtype=torch.float64)
    for (rows, cols), level in zip(box_set.feature_sizes, box_set.levels):
        step_y, step_x = level.step
        dx = (cx - _nearest_centre(cx, step_x, cols)).abs()
        dy = (cy - _nearest_centre(cy, step_y, rows)).abs()
        overlap = (width - dx).clamp(min=0) * (height - dy).clamp(min=0)
        best = torch.maximum(best, overlap / (2 * width * height - overlap).clamp(min=1e-9))
    return best < iou_threshold


def _nearest_centre(coordinate: Tensor, step: float, cells: int) -> Tensor:
    index = (coordinate / step - 0.5).round().clamp(0, cells - 1)
    return (index + 0.5) * step


class _LevelCandidates:
    """
    For one level at one input size: which ground truth each candidate box shape matches. The
    best default box of one shape for a ground truth sits at one of the 2 x 2 centres around
    the ground truth's centre (the overlap of equal boxes shrinks with the distance on each
    axis), so each shape costs four IoUs per ground truth, in the model's arithmetic, on the
    generator's own boxes.
    """

    def __init__(self, gt: Tensor, image_size, grid, step, sizes, clamp, arithmetic, threshold):
        self.sizes = sizes
        rows, cols = grid
        step_y, step_x = step
        cx, cy = (gt[:, 0] + gt[:, 2]) / 2, (gt[:, 1] + gt[:, 3]) / 2
        col0 = (cx / step_x - 0.5).floor().long()
        row0 = (cy / step_y - 0.5).floor().long()
        # (N, 4) candidate cells (row * cols + col).
        cells = torch.stack(
            [
                (row0 + dr).clamp(0, rows - 1) * cols + (col0 + dc).clamp(0, cols - 1)
                for dr in (0, 1)
                for dc in (0, 1)
            ],
            dim=1,
        )
        gt_units = in_units(Boxes(gt), image_size) if arithmetic.unit_boxes else gt
        num_ratios = len(ASPECT_RATIO_CHOICES)
        # squares[i]: (N,) matched by the square of side sizes[i]; pairs[i][j]: by the r:1 and
        # 1:r boxes of min size sizes[i], ratio ASPECT_RATIO_CHOICES[j].
        self.squares, self.pairs = [], []
        for size in sizes:
            generator = SSDDefaultBoxGenerator(
                image_size=image_size,
                steps=[list(step)],
                min_sizes=[size],
                max_sizes=[size],
                aspect_ratios=[list(ASPECT_RATIO_CHOICES)],
                clamp=clamp,
            )
            anchors = Boxes.cat(generator([torch.empty(1, 0, rows, cols)]))
            boxes = generator.in_units(anchors) if arithmetic.unit_boxes else anchors.tensor
            boxes = boxes.view(rows * cols, 2 + 2 * num_ratios, 4)[cells]  # (N, 4, A, 4)
            iou = _paired_iou(gt_units, boxes, arithmetic.eps).amax(dim=1)  # (N, A)
            hit = iou >= threshold
            self.squares.append(hit[:, 0])
            self.pairs.append([hit[:, 2 + 2 * j] | hit[:, 3 + 2 * j] for j in range(num_ratios)])

    def matched(self, size_index: int, second: int, ratio_indices: Sequence[int]) -> Tensor:
        hit = self.squares[size_index] | self.squares[min(size_index + second, len(self.sizes) - 1)]
        for j in ratio_indices:
            hit = hit | self.pairs[size_index][j]
        return hit


def _paired_iou(gt: Tensor, boxes: Tensor, eps: float) -> Tensor:
    """IoU of each ground truth ((N, 4)) with its candidates ((N, ..., 4)), in the float32
    operations of Detectron2's pairwise_iou (eps 0) or of :func:`unit_box_iou`."""
    gt = gt.view(gt.shape[0], *([1] * (boxes.dim() - 2)), 4)
    wh = (torch.min(gt[..., 2:], boxes[..., 2:]) - torch.max(gt[..., :2], boxes[..., :2])).clamp(
        min=0
    )
    inter = wh.prod(dim=-1)
    area_gt = (gt[..., 2] - gt[..., 0]) * (gt[..., 3] - gt[..., 1])
    area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    iou = inter / (area_gt + area - inter + eps)
    return torch.where(inter > 0, iou, torch.zeros_like(iou))


@dataclass
class _Level:
    size_index: int
    second: int  # the second square's side, in grid steps above the first
    ratios: List[int]  # indices into ASPECT_RATIO_CHOICES


def _fit_at_size(gt, image_size, feature_sizes, clamp, arithmetic, threshold, budget, start):
    """The greedy search at one input size: (matched count, levels), or None if even two
    boxes per location exceed ``budget``."""
    height, width = image_size
    cells = [h * w for h, w in feature_sizes]
    if 2 * sum(cells) > budget:
        return None
    octaves = math.log2(max(height, width) / _MIN_BOX_SIZE)
    sizes = [
        round(_MIN_BOX_SIZE * 2 ** (i / _SIZES_PER_OCTAVE), 2)
        for i in range(int(octaves * _SIZES_PER_OCTAVE) + 1)
    ]
    steps = [(height / h, width / w) for h, w in feature_sizes]
    candidates = [
        _LevelCandidates(gt, image_size, grid, step, sizes, clamp, arithmetic, threshold)
        for grid, step in zip(feature_sizes, steps)
    ]
    # Start from the config's sizes, on the grid.
    levels = [_Level(int(np.argmin([abs(math.log(s / mn)) for s in sizes])), 2, []) for mn in start]

    def level_hits(i, level):
        return candidates[i].matched(level.size_index, level.second, level.ratios)

    def union(skip=None):
        hit = torch.zeros(len(gt), dtype=torch.bool)
        for i, level in enumerate(levels):
            if i != skip:
                hit |= level_hits(i, level)
        return hit

    def best_sizes(i, ratios, others):
        # The level's sizes that match the most with ``ratios``, given the other levels:
        # (count, level), the first best (smallest sizes) on a tie.
        best = None
        for size_index in range(len(sizes)):
            for second in _SECOND_SQUARE_STEPS:
                level = _Level(size_index, second, ratios)
                count = int((others | level_hits(i, level)).sum())
                if best is None or count > best[0]:
                    best = (count, level)
        return best

    for _ in range(2):
        for i in range(len(levels)):
            levels[i] = best_sizes(i, levels[i].ratios, union(skip=i))[1]
    used = 2 * sum(cells)
    while True:
        covered = int(union().sum())
        best = None  # (gain per default box, level index, new level)
        for i, level in enumerate(levels):
            cost = 2 * cells[i]
            if used + cost > budget:
                continue
            others = union(skip=i)
            for j in range(len(ASPECT_RATIO_CHOICES)):
                if j not in level.ratios:
                    count, new_level = best_sizes(i, sorted(level.ratios + [j]), others)
                    gain = count - covered
                    if gain > 0 and (best is None or gain / cost > best[0]):
                        best = (gain / cost, i, new_level)
        if best is None:
            break
        _, i, levels[i] = best
        used += 2 * cells[i]
    # Then trade each level's ratios for others (same cost) while that matches more.
    for _ in range(2):
        for i, level in enumerate(levels):
            others = union(skip=i)
            best = best_sizes(i, level.ratios, others)
            for old in level.ratios:
                for j in range(len(ASPECT_RATIO_CHOICES)):
                    if j not in level.ratios:
                        ratios = sorted([r for r in level.ratios if r != old] + [j])
                        option = best_sizes(i, ratios, others)
                        best = option if option[0] > best[0] else best
            levels[i] = best[1]
    result = [
        LevelBoxes(
            step,
            sizes[lv.size_index],
            round(
                sizes[min(lv.size_index + lv.second, len(sizes) - 1)] ** 2 / sizes[lv.size_index], 2
            ),
            [float(ASPECT_RATIO_CHOICES[j]) for j in lv.ratios],
        )
        for step, lv in zip(steps, levels)
    ]
    return int(union().sum()), result


def candidate_input_sizes(image_size: Tuple[int, int], data_aspect: float) -> List[Tuple[int, int]]:
    """The input sizes the search tries: the config's, then the data's proportions (width /
    height ``data_aspect``) at the config's height and at 90% and 80% of it, in multiples of
    16 (a smaller input leaves more of the budget for box shapes on the finest level)."""
    height, width = image_size

    def rounded(value):
        return max(16, int(round(value / 16)) * 16)

    sizes = [(height, width)]
    for scale in (1.0, 0.9, 0.8):
        sizes.append((rounded(height * scale), rounded(height * scale * data_aspect)))
    return list(dict.fromkeys(sizes))


def fit_default_boxes(
    cfg,
    gt_boxes_for_size,
    budget: int,
    data_aspect: float,
    input_sizes: Optional[Sequence[Tuple[int, int]]] = None,
) -> Tuple[DefaultBoxSet, List[str]]:
    """
    Default boxes for ``cfg``'s model that match the most ground truth with at most ``budget``
    default boxes. ``gt_boxes_for_size((height, width))`` gives the ground truth ((N, 4) XYXY)
    at that network input; ``data_aspect`` is the images' typical width / height. Returns the
    best set (most matched, then fewest boxes, then the earlier input size) and one line per
    input size tried. ValueError when the budget is below two boxes per location at every size.
    """
    arithmetic = MATCHING_ARITHMETICS[cfg.MODEL.SSD.MATCHING]
    threshold = positive_iou_threshold(cfg.MODEL.SSD.IOU_THRESHOLD, arithmetic)
    clamp = cfg.MODEL.SSD.DEFAULT_BOXES.CLAMP
    start = list(cfg.MODEL.SSD.DEFAULT_BOXES.MIN_SIZES)
    sizes = input_sizes or candidate_input_sizes(resolve_image_size(cfg), data_aspect)
    best, report, least = None, [], None
    for image_size in sizes:
        image_size = height_width(image_size)
        try:
            feature_sizes = feature_map_sizes(cfg, image_size)
        except (RuntimeError, ValueError) as e:  # too small an input for the backbone
            report.append(f"{image_size[0]}x{image_size[1]}: skipped ({e})")
            continue
        minimum = 2 * sum(h * w for h, w in feature_sizes)
        least = minimum if least is None else min(least, minimum)
        gt = torch.as_tensor(gt_boxes_for_size(image_size), dtype=torch.float32).reshape(-1, 4)
        fitted = _fit_at_size(
            gt, image_size, feature_sizes, clamp, arithmetic, threshold, budget, start
        )
        if fitted is None:
            report.append(f"{image_size[0]}x{image_size[1]}: needs {minimum} boxes at least")
            continue
        count, levels = fitted
        box_set = DefaultBoxSet(image_size, feature_sizes, levels, clamp)
        report.append(
            f"{image_size[0]}x{image_size[1]}: {count}/{len(gt)} matched with "
            f"{box_set.num_boxes} default boxes"
        )
        key = (count, -box_set.num_boxes)
        if best is None or key > best[0]:
            best = (key, box_set)
    if least is None:
        raise ValueError(
            "the backbone runs at none of the input sizes tried:\n  " + "\n  ".join(report)
        )
    if best is None:
        raise ValueError(
            f"a budget of {budget} default boxes is below the minimum: two boxes (the two "
            f"squares) per location need {least} at the smallest input size tried. Give "
            f"--budget {least} or more."
        )
    return best[1], report
