"""
Draw a config's default boxes (SSD's anchors) over an image resized to the network size, one
panel per feature level: the boxes of the cells under ``--points`` and, for a data set image,
the default boxes its ground truth matches in training (``label_anchors``).

    python -m ssd_d2.tools.visualize_default_boxes --config-file configs/ssd160_shapes_demo.yaml \\
        --dataset ssd_shapes_val --index 3 --output default_boxes.png
"""

import argparse
import math
import os
import sys
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from matplotlib import patheffects
from matplotlib.patches import Rectangle

from detectron2.data import transforms as T
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances

from ssd_d2.config import resolve_image_size
from ssd_d2.data.dataset_mapper import read_image
from ssd_d2.data.transforms import FixedSizeResize

from . import common

# One colour per box shape of a cell, in the generator's order: the min-size square, the
# sqrt(min * max) square, then r:1 and 1:r for each aspect ratio.
_SHAPE_COLORS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4"]
# A dark edge around white lines, which then show on light and dark pixels alike.
_OUTLINE = [patheffects.Stroke(linewidth=3.5, foreground="black"), patheffects.Normal()]


@dataclass
class LevelDefaultBoxes:
    """The default boxes of one feature level, in network-input pixels (XYXY)."""

    name: str  # the backbone output, e.g. "conv4_3"
    grid: Tuple[int, int]  # feature map height and width
    step: Tuple[float, float]  # (step_y, step_x)
    boxes_per_cell: int
    cells: List[Tuple[int, int]]  # (row, column) of the cells shown
    cell_boxes: torch.Tensor  # (len(cells) * boxes_per_cell, 4), cell by cell
    matched_boxes: torch.Tensor  # (M, 4) default boxes of this level matched to ground truth


def default_boxes_by_level(cfg, points=((0.5, 0.5),), gt_boxes=None) -> List[LevelDefaultBoxes]:
    """Per level of ``cfg``'s model, the default boxes of the cells under ``points`` ((x, y)
    fractions of the image) and those that ``gt_boxes`` ((G, 4) XYXY) match."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.DEVICE = "cpu"
    model, size = build_model(cfg).eval(), resolve_image_size(cfg)
    with torch.no_grad():
        features = model.backbone(torch.zeros(1, 3, *size))
    features = [features[f] for f in cfg.MODEL.SSD.IN_FEATURES]
    anchors = model.anchor_generator(features)  # per level, (H * W * A) boxes
    matched = torch.zeros(sum(len(a) for a in anchors), dtype=torch.bool)
    if gt_boxes is not None and len(gt_boxes):
        instances = Instances(size)
        instances.gt_boxes = Boxes(torch.as_tensor(gt_boxes, dtype=torch.float32))
        instances.gt_classes = torch.zeros(len(gt_boxes), dtype=torch.long)
        matched = model.label_anchors(Boxes.cat(anchors), [instances])[0][0] > 0
    matched = matched.split([len(a) for a in anchors])

    levels, generator = [], model.anchor_generator
    for i, name in enumerate(cfg.MODEL.SSD.IN_FEATURES):
        height, width = features[i].shape[-2:]
        rows = [min(int(y * height), height - 1) for _, y in points]
        cols = [min(int(x * width), width - 1) for x, _ in points]
        cells = list(dict.fromkeys(zip(rows, cols)))  # each cell once, in order
        per_cell, step = generator.num_anchors[i], generator.steps[i]
        grid = anchors[i].tensor.view(height, width, per_cell, 4)
        boxes = torch.cat([grid[r, c] for r, c in cells])
        matched_boxes = anchors[i].tensor[matched[i]]
        levels.append(
            LevelDefaultBoxes(name, (height, width), step, per_cell, cells, boxes, matched_boxes)
        )
    return levels


def draw_default_boxes(levels: List[LevelDefaultBoxes], image: np.ndarray, gt_boxes=None, title=""):
    """
    One panel per level over ``image`` (RGB, network-input size): the chosen cells' boxes
    coloured by shape, the ground truth (white) and the level's matched default boxes (yellow,
    dashed). Patches carry gid "cell", "default_box", "matched_box" or "gt_box".
    """
    image_h, image_w = image.shape[:2]
    ncols = min(len(levels), 3 if len(levels) <= 6 else 4)
    nrows = math.ceil(len(levels) / ncols)
    # Two title lines above each panel, the figure title at the top.
    # Panels 3.6 inches on their longer side, in the input's proportions.
    scale = 3.6 / max(image_h, image_w)
    panel_w, panel_h = image_w * scale, image_h * scale
    fig = common.panel_grid_figure(nrows, ncols, (panel_w, panel_h), 0.45, 0.45, 0.15)
    # The image in grey mid-tones: coloured, white and yellow boxes all stand out on it.
    background = (0.5 * cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) + 50).astype(np.uint8)
    for i, level in enumerate(levels):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        ax.imshow(background, cmap="gray", vmin=0, vmax=255, extent=(0, image_w, image_h, 0))
        (height, width), (step_y, step_x) = level.grid, level.step
        for box in level.matched_boxes.tolist():
            common.add_box(ax, box, "#ffe119", "matched_box", linewidth=1.2, linestyle="--")
        for box in [] if gt_boxes is None else torch.as_tensor(gt_boxes).tolist():
            common.add_box(ax, box, "white", "gt_box", linewidth=2.0, path_effects=_OUTLINE)
        for row, col in level.cells:
            corner = (col * step_x, row * step_y)
            cell = Rectangle(corner, step_x, step_y, fc="k", alpha=0.35, gid="cell")
            ax.add_patch(cell)
        for j, box in enumerate(level.cell_boxes.tolist()):
            color = _SHAPE_COLORS[(j % level.boxes_per_cell) % len(_SHAPE_COLORS)]
            common.add_box(ax, box, color, "default_box", linewidth=1.8)
        matches = "" if gt_boxes is None else f", {len(level.matched_boxes)} matched"
        boxes = f"{level.boxes_per_cell} boxes per cell{matches}"
        step = f"{step_y:g}" if step_y == step_x else f"{step_y:g}x{step_x:g}"
        ax.set_title(f"{level.name}: {height}x{width}, step {step}\n{boxes}", fontsize=10)
        ax.set(xlim=(-0.5, image_w + 0.5), ylim=(image_h + 0.5, -0.5), xticks=[], yticks=[])
    common.add_title(fig, title, inches=0.12)
    return fig


def _point(text: str) -> Tuple[float, float]:
    try:
        x, y = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected X,Y (fractions of the image), got {text!r}")
    if not (0 <= x <= 1 and 0 <= y <= 1):
        raise argparse.ArgumentTypeError(f"X and Y must be in [0, 1], got {text!r}")
    return x, y


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = common.argument_parser("visualize_default_boxes", __doc__, picture=True)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--input", metavar="IMAGE", help="an image file (default: a blank one)")
    source.add_argument("--dataset", metavar="NAME", help="a data set: its image --index, matched")
    parser.add_argument("--index", type=int, default=0, help="image index in --dataset")
    points_help = "show the boxes of the cell under each point (fractions; default: the centre)"
    parser.add_argument(
        "--points", nargs="+", type=_point, default=[(0.5, 0.5)], metavar="X,Y", help=points_help
    )
    args, cfg = common.parse_config(parser, argv)
    size = resolve_image_size(cfg)
    image, gt_boxes, source = np.full((*size, 3), 200, dtype=np.uint8), None, "blank image"
    with common.usage_errors(parser, ValueError, OSError):  # OSError: an unreadable --input
        if args.dataset:
            dicts = common.dataset_dicts(args.dataset, [], "", [args.index], "--index")[1]
            record = dicts[args.index]
            image, gt_boxes, _ = common.read_record(record)
            source = f"{args.dataset} #{args.index} ({os.path.basename(record['file_name'])})"
        elif args.input:
            image, source = read_image(args.input, format="RGB"), os.path.basename(args.input)
    # The data mapper's resize to the network size, the boxes with it.
    resized = T.AugInput(image, boxes=gt_boxes)
    FixedSizeResize(size)(resized)
    gt_boxes = None if gt_boxes is None else torch.as_tensor(resized.boxes)
    levels = default_boxes_by_level(cfg, args.points, gt_boxes)
    for level in levels:
        counts = f"{level.boxes_per_cell} boxes per cell, {len(level.matched_boxes)} matched"
        print(f"{level.name}: {level.grid[0]}x{level.grid[1]} cells, {counts}")
    title = f"{os.path.basename(args.config_file)}: default boxes at {size[0]}x{size[1]}, {source}"
    fig = draw_default_boxes(levels, resized.image, gt_boxes, title=title)
    common.save_figure(fig, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
