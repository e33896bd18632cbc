"""
Draw a config's default boxes (SSD's anchors) over an image, one panel per feature level:
the level's grid of box centres, every default box of the cell under one or more points, and,
for an image with ground truth, the default boxes of the level that match it in training.

    python -m ssd_d2.tools.visualize_default_boxes --config-file configs/ssd160_shapes_demo.yaml \\
        --dataset ssd_shapes_val --index 3 --output default_boxes.png

The image is shown as the network sees it: resized to MODEL.SSD.IMAGE_SIZE squared. Matches
follow the model's own rule (SSD.label_anchors): IoU >= MODEL.SSD.IOU_THRESHOLD, and each
ground-truth box also takes its best default box over all levels.
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
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from detectron2.data import DatasetCatalog
from detectron2.data.detection_utils import read_image
from detectron2.modeling import build_model
from detectron2.structures import Boxes, BoxMode, Instances

from ssd_d2.config import load_config

from .common import add_box, panel_grid_figure, save_figure

__all__ = ["LevelDefaultBoxes", "default_boxes_by_level", "draw_default_boxes", "main"]

# One colour per box shape of a cell, in the generator's order: the min-size square, the
# sqrt(min * max) square, then r:1 and 1:r for each aspect ratio.
_SHAPE_COLORS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4"]
_MATCH_COLOR = "#ffe119"
# A dark edge around white lines, which then show on light and dark pixels alike.
_OUTLINE = [patheffects.Stroke(linewidth=3.5, foreground="black"), patheffects.Normal()]
_PANEL_INCHES = 3.6
_DPI = 100


@dataclass
class LevelDefaultBoxes:
    """The default boxes of one feature level, in network-input pixels (XYXY)."""

    name: str  # the backbone output, e.g. "conv4_3"
    grid: Tuple[int, int]  # feature map height and width
    step: float
    boxes_per_cell: int
    cells: List[Tuple[int, int]]  # (row, column) of the cells shown
    cell_boxes: torch.Tensor  # (len(cells) * boxes_per_cell, 4), cell by cell
    cell_box_sizes: List[Tuple[float, float]]  # (width, height) of each box of a cell
    matched_boxes: torch.Tensor  # (M, 4) default boxes of this level matched to ground truth


def default_boxes_by_level(
    cfg,
    points: Sequence[Tuple[float, float]] = ((0.5, 0.5),),
    gt_boxes: Optional[torch.Tensor] = None,
) -> List[LevelDefaultBoxes]:
    """
    The default boxes of every level of the model that ``cfg`` describes.

    Args:
        cfg: an SSD config.
        points: (x, y) as fractions of the image; at each level, the boxes of the cell
            containing each point are returned.
        gt_boxes: (G, 4) XYXY ground-truth boxes in network-input pixels (IMAGE_SIZE
            squared), or None.
    """
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg).eval()
    size = cfg.MODEL.SSD.IMAGE_SIZE
    in_features = list(cfg.MODEL.SSD.IN_FEATURES)
    with torch.no_grad():
        features = model.backbone(torch.zeros(1, 3, size, size))
    features = [features[f] for f in in_features]
    anchors = model.anchor_generator(features)  # per level, (H * W * A) boxes

    matched = torch.zeros(sum(len(a) for a in anchors), dtype=torch.bool)
    if gt_boxes is not None and len(gt_boxes):
        instances = Instances((size, size))
        instances.gt_boxes = Boxes(torch.as_tensor(gt_boxes, dtype=torch.float32))
        instances.gt_classes = torch.zeros(len(gt_boxes), dtype=torch.long)
        labels, _ = model.label_anchors(Boxes.cat(anchors), [instances])
        matched = labels[0] > 0

    levels, start = [], 0
    for name, feature, level_anchors, step, sizes in zip(
        in_features,
        features,
        anchors,
        model.anchor_generator.steps,
        model.anchor_generator.cell_sizes,
    ):
        height, width = feature.shape[-2:]
        per_cell = len(level_anchors) // (height * width)
        cells = []
        for x, y in points:
            cell = (min(int(y * height), height - 1), min(int(x * width), width - 1))
            if cell not in cells:
                cells.append(cell)
        boxes = level_anchors.tensor.view(height, width, per_cell, 4)
        level_matched = matched[start : start + len(level_anchors)]
        start += len(level_anchors)
        levels.append(
            LevelDefaultBoxes(
                name=name,
                grid=(height, width),
                step=step,
                boxes_per_cell=per_cell,
                cells=cells,
                cell_boxes=torch.cat([boxes[r, c] for r, c in cells]),
                cell_box_sizes=list(sizes),
                matched_boxes=level_anchors.tensor[level_matched],
            )
        )
    return levels


def _shape_name(width: float, height: float, index: int) -> str:
    if index == 0:
        return "min size"
    if index == 1:
        return "sqrt(min*max)"
    ratio = width / height
    return f"{ratio:.3g}:1" if ratio >= 1 else f"1:{1 / ratio:.3g}"


def draw_default_boxes(
    levels: List[LevelDefaultBoxes],
    image: np.ndarray,
    gt_boxes: Optional[torch.Tensor] = None,
    title: str = "",
) -> Figure:
    """
    One panel per level over ``image`` (RGB, network-input size): the grid of box centres,
    the chosen cells' boxes coloured by shape, the ground truth (white) and the level's
    matched default boxes (yellow, dashed). Box patches carry gid "default_box",
    "matched_box" or "gt_box".
    """
    size = image.shape[0]
    ncols = min(len(levels), 3 if len(levels) <= 6 else 4)
    nrows = math.ceil(len(levels) / ncols)
    # Fixed margins in inches: two title lines above each panel, the figure title at the top,
    # the legend at the bottom.
    fig = panel_grid_figure(
        nrows,
        ncols,
        _PANEL_INCHES,
        title_inches=0.45,
        top_inches=0.45,
        bottom_inches=0.4,
        gap_inches=0.15,
        dpi=_DPI,
    )
    fig_height = fig.get_figheight()
    # The image in grey, squeezed into mid-tones: coloured, white and yellow boxes all stand
    # out on any picture.
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    background = (0.5 * grey + 50).astype(np.uint8)
    max_shapes = max(level.boxes_per_cell for level in levels)
    for i, level in enumerate(levels):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        ax.imshow(background, cmap="gray", vmin=0, vmax=255, extent=(0, size, size, 0))
        height, width = level.grid
        # Grid lines between cells, unless they would be under 4 pixels apart.
        if level.step / size * _PANEL_INCHES * _DPI >= 4:
            for k in range(1, width):
                ax.axvline(k * level.step, color="black", linewidth=0.4, alpha=0.35)
            for k in range(1, height):
                ax.axhline(k * level.step, color="black", linewidth=0.4, alpha=0.35)
        centres_x = (np.arange(width) + 0.5) * level.step
        centres_y = (np.arange(height) + 0.5) * level.step
        cx, cy = np.meshgrid(centres_x, centres_y)
        ax.plot(cx.ravel(), cy.ravel(), ".", color="black", markersize=1.5, alpha=0.6)
        for box in level.matched_boxes.tolist():
            add_box(ax, box, _MATCH_COLOR, "matched_box", linewidth=1.2, linestyle="--")
        if gt_boxes is not None:
            for box in torch.as_tensor(gt_boxes).tolist():
                add_box(ax, box, "white", "gt_box", linewidth=2.0, path_effects=_OUTLINE)
        for row, col in level.cells:
            ax.add_patch(
                Rectangle(
                    (col * level.step, row * level.step),
                    level.step,
                    level.step,
                    facecolor="black",
                    alpha=0.35,
                    gid="cell",
                )
            )
        for j, box in enumerate(level.cell_boxes.tolist()):
            color = _SHAPE_COLORS[(j % level.boxes_per_cell) % len(_SHAPE_COLORS)]
            add_box(ax, box, color, "default_box", linewidth=1.8)
        matches = f", {len(level.matched_boxes)} matched" if gt_boxes is not None else ""
        ax.set_title(
            f"{level.name}: {height}x{width}, step {level.step:g}\n"
            f"{level.boxes_per_cell} boxes per cell{matches}",
            fontsize=10,
        )
        ax.set_xlim(-0.5, size + 0.5)
        ax.set_ylim(size + 0.5, -0.5)
        ax.set_xticks([])
        ax.set_yticks([])

    longest = max(levels, key=lambda level: level.boxes_per_cell)
    handles = [
        Line2D([], [], color=_SHAPE_COLORS[j], linewidth=2, label=_shape_name(w, h, j))
        for j, (w, h) in enumerate(longest.cell_box_sizes[:max_shapes])
    ]
    if gt_boxes is not None:
        handles.append(
            Line2D([], [], color="white", linewidth=2, label="ground truth", path_effects=_OUTLINE)
        )
        handles.append(
            Line2D([], [], color=_MATCH_COLOR, linewidth=1.5, linestyle="--", label="matched")
        )
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=9, frameon=False)
    if title:
        fig.suptitle(title, fontsize=11, y=1 - 0.12 / fig_height, va="top")
    return fig


def _parse_point(text: str) -> Tuple[float, float]:
    try:
        x, y = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected X,Y (fractions of the image), got {text!r}")
    if not (0 <= x <= 1 and 0 <= y <= 1):
        raise argparse.ArgumentTypeError(f"X and Y must be in [0, 1], got {text!r}")
    return x, y


def build_argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ssd_d2.tools.visualize_default_boxes",
        description="Draw a config's default boxes over an image, one panel per feature level.",
    )
    parser.add_argument("--config-file", required=True, metavar="FILE", help="config file")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--input", metavar="IMAGE", help="an image file")
    source.add_argument(
        "--dataset",
        metavar="NAME",
        help="a registered data set: draws its image --index with its ground truth and matches",
    )
    parser.add_argument("--index", type=int, default=0, help="image index in --dataset")
    parser.add_argument(
        "--points",
        nargs="+",
        type=_parse_point,
        default=[(0.5, 0.5)],
        metavar="X,Y",
        help="show the boxes of the cell under each point (fractions of the image; "
        "default: the centre)",
    )
    parser.add_argument("--output", required=True, metavar="FILE.png", help="picture to write")
    parser.add_argument(
        "--opts", nargs=argparse.REMAINDER, default=[], metavar="KEY VALUE", help="overrides"
    )
    return parser


def _load_dataset_image(name: str, index: int):
    """The RGB image and the XYXY boxes of image ``index`` of data set ``name``."""
    dicts = DatasetCatalog.get(name)
    if not 0 <= index < len(dicts):
        raise IndexError(f"--index {index}: data set {name!r} has {len(dicts)} images")
    record = dicts[index]
    image = read_image(record["file_name"], format="RGB")
    boxes = [
        BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS)
        for a in record.get("annotations", [])
        if not a.get("iscrowd", 0)
    ]
    source = f"{name} #{index} ({os.path.basename(record['file_name'])})"
    return image, torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), source


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_argument_parser()
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config_file, args.opts)
    except FileNotFoundError as e:
        parser.error(str(e))
    size = cfg.MODEL.SSD.IMAGE_SIZE

    gt_boxes = None
    if args.dataset:
        if args.dataset not in DatasetCatalog.list():
            parser.error(f"--dataset {args.dataset!r} is not a registered data set")
        try:
            image, gt_boxes, source = _load_dataset_image(args.dataset, args.index)
        except (IndexError, FileNotFoundError) as e:
            parser.error(str(e))
        height, width = image.shape[:2]
        gt_boxes[:, 0::2] *= size / width
        gt_boxes[:, 1::2] *= size / height
    elif args.input:
        try:
            image = read_image(args.input, format="RGB")
        except (OSError, ValueError) as e:
            parser.error(f"cannot read --input {args.input}: {e}")
        source = os.path.basename(args.input)
    else:
        image = np.full((size, size, 3), 200, dtype=np.uint8)
        source = "blank image"
    image = cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)

    levels = default_boxes_by_level(cfg, args.points, gt_boxes)
    title = f"{os.path.basename(args.config_file)}: default boxes at {size}x{size}, {source}"
    fig = draw_default_boxes(levels, image, gt_boxes, title=title)
    save_figure(fig, args.output, dpi=_DPI)
    for level in levels:
        print(
            f"{level.name}: {level.grid[0]}x{level.grid[1]} cells, {level.boxes_per_cell} "
            f"boxes per cell, {len(level.matched_boxes)} matched"
        )
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
