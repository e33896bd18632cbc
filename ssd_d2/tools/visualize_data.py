"""
Draw a grid of training samples as the model receives them: each row is one image of a data
set, first as annotated, then after SSDDatasetMapper's augmentations (photometric distortion,
zoom out, min-IoU crop, flip, resize), several times, with the boxes that survive them.

    python -m ssd_d2.tools.visualize_data --config-file configs/ssd160_shapes_demo.yaml \\
        --dataset ssd_shapes_train --num-images 3 --samples 4 --output samples.png

Use it to check a data set's annotations and the augmentation settings (INPUT.SSD.*).
"""

import argparse
import os
import random
import sys
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from matplotlib import patheffects
from matplotlib.figure import Figure

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.structures import BoxMode

from ssd_d2.config import load_config
from ssd_d2.data import SSDDatasetMapper

from .common import add_box, panel_grid_figure, save_figure

__all__ = ["Sample", "augmented_samples", "draw_samples", "main"]

_CELL_INCHES = 2.6
_DPI = 100


class Sample:
    """One image to draw: RGB pixels, XYXY boxes and their class indices."""

    def __init__(self, image: np.ndarray, boxes: np.ndarray, classes: np.ndarray, title: str):
        self.image = image
        self.boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        self.classes = np.asarray(classes, dtype=np.int64).reshape(-1)
        self.title = title


def _to_rgb(image: np.ndarray, image_format: str) -> np.ndarray:
    if image_format == "BGR":
        return image[:, :, ::-1]
    if image_format != "RGB":
        raise ValueError(f"INPUT.FORMAT {image_format!r}: only RGB and BGR can be drawn")
    return image


def augmented_samples(
    cfg, dataset_name: str, indices: Sequence[int], samples_per_image: int, seed: int = 0
) -> List[List[Sample]]:
    """
    For each index of ``dataset_name``: the image as annotated, then ``samples_per_image``
    outputs of ``SSDDatasetMapper(cfg, is_train=True)``. The same seed gives the same samples.
    """
    dicts = DatasetCatalog.get(dataset_name)
    mapper = SSDDatasetMapper(cfg, is_train=True)
    image_format = cfg.INPUT.FORMAT
    # The augmentations draw from numpy's and Python's global generators, as in a data loader.
    np.random.seed(seed)
    random.seed(seed)
    torch.manual_seed(seed)
    rows = []
    for index in indices:
        record = dicts[index]
        annotations = [a for a in record.get("annotations", []) if not a.get("iscrowd", 0)]
        boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in annotations]
        image = read_image(record["file_name"], format="RGB")
        name = os.path.basename(record["file_name"])
        row = [
            Sample(
                image,
                np.array(boxes),
                np.array([a["category_id"] for a in annotations]),
                f"#{index} {name}, as annotated",
            )
        ]
        for k in range(samples_per_image):
            mapped = mapper(record)
            instances = mapped["instances"]
            image = mapped["image"].permute(1, 2, 0).numpy()
            row.append(
                Sample(
                    _to_rgb(image, image_format),
                    instances.gt_boxes.tensor.numpy(),
                    instances.gt_classes.numpy(),
                    f"augmented {k + 1}",
                )
            )
        rows.append(row)
    return rows


def _class_colors(num_classes: int) -> List[Tuple[float, float, float]]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if num_classes <= 10 else "tab20"]
    return [cmap(i % cmap.N)[:3] for i in range(max(num_classes, 1))]


def draw_samples(rows: List[List[Sample]], class_names: Sequence[str], title: str = "") -> Figure:
    """
    A grid with one row per image. Box patches carry gid "gt_box"; each box is labelled with
    its class name, and each panel's title gives its size and number of boxes.
    """
    nrows, ncols = len(rows), max(len(row) for row in rows)
    # Fixed margins in inches: two title lines above each panel, the figure title on top.
    fig = panel_grid_figure(
        nrows,
        ncols,
        _CELL_INCHES,
        title_inches=0.45,
        top_inches=0.4 if title else 0.0,
        bottom_inches=0.15,
        gap_inches=0.15,
        dpi=_DPI,
    )
    fig_height = fig.get_figheight()
    colors = _class_colors(len(class_names))
    outline = [patheffects.withStroke(linewidth=2.5, foreground="black")]
    for r, row in enumerate(rows):
        for c, sample in enumerate(row):
            ax = fig.add_subplot(nrows, ncols, r * ncols + c + 1)
            height, width = sample.image.shape[:2]
            ax.imshow(sample.image, extent=(0, width, height, 0))
            for box, cls in zip(sample.boxes.tolist(), sample.classes.tolist()):
                color = colors[cls % len(colors)]
                x0, y0, x1, y1 = box
                add_box(ax, box, color, "gt_box", linewidth=2, path_effects=outline)
                label = class_names[cls] if cls < len(class_names) else str(cls)
                # Above the box, or inside it where the image ends.
                inside = y0 < 0.08 * height
                ax.text(
                    x0,
                    y0,
                    label,
                    fontsize=8,
                    color="white",
                    va="top" if inside else "bottom",
                    ha="left",
                    bbox=dict(facecolor=color, edgecolor="none", pad=1.0, alpha=0.85),
                    clip_on=True,
                )
            ax.set_xlim(0, width)
            ax.set_ylim(height, 0)
            ax.set_xticks([])
            ax.set_yticks([])
            boxes = len(sample.boxes)
            ax.set_title(
                f"{sample.title}\n{width}x{height}, {boxes} box{'es' if boxes != 1 else ''}",
                fontsize=9,
            )
    if title:
        fig.suptitle(title, fontsize=11, y=1 - 0.1 / fig_height, va="top")
    return fig


def build_argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ssd_d2.tools.visualize_data",
        description="Draw training samples after SSD's augmentations, with their boxes.",
    )
    parser.add_argument("--config-file", required=True, metavar="FILE", help="config file")
    parser.add_argument(
        "--dataset", metavar="NAME", help="registered data set (default: DATASETS.TRAIN[0])"
    )
    parser.add_argument(
        "--indices", nargs="+", type=int, metavar="N", help="image indices in the data set"
    )
    parser.add_argument(
        "--num-images", type=int, default=3, help="without --indices: this many random images"
    )
    parser.add_argument("--samples", type=int, default=4, help="augmented samples per image")
    parser.add_argument("--seed", type=int, default=0, help="seed of the image choice and samples")
    parser.add_argument("--output", required=True, metavar="FILE.png", help="picture to write")
    parser.add_argument(
        "--opts", nargs=argparse.REMAINDER, default=[], metavar="KEY VALUE", help="overrides"
    )
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_argument_parser()
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config_file, args.opts)
    except FileNotFoundError as e:
        parser.error(str(e))
    name = args.dataset or (cfg.DATASETS.TRAIN[0] if len(cfg.DATASETS.TRAIN) else None)
    if name is None:
        parser.error("no --dataset given and the config has no DATASETS.TRAIN")
    if name not in DatasetCatalog.list():
        parser.error(f"data set {name!r} is not registered")
    if args.samples < 0 or args.num_images < 1:
        parser.error("--samples must be >= 0 and --num-images >= 1")
    try:
        num_images = len(DatasetCatalog.get(name))
    except FileNotFoundError as e:
        parser.error(f"data set {name!r}: {e}")
    if args.indices:
        bad = [i for i in args.indices if not 0 <= i < num_images]
        if bad:
            parser.error(f"--indices {bad}: data set {name!r} has {num_images} images")
        indices = args.indices
    else:
        rng = np.random.default_rng(args.seed)
        count = min(args.num_images, num_images)
        indices = sorted(rng.choice(num_images, size=count, replace=False).tolist())

    rows = augmented_samples(cfg, name, indices, args.samples, seed=args.seed)
    class_names = MetadataCatalog.get(name).get("thing_classes", [])
    title = f"{name}: images {indices} as annotated, then after SSDDatasetMapper (training)"
    fig = draw_samples(rows, class_names, title=title)
    save_figure(fig, args.output, dpi=_DPI)
    for index, row in zip(indices, rows):
        counts = ", ".join(str(len(s.boxes)) for s in row[1:])
        print(f"image {index}: {len(row[0].boxes)} boxes; augmented: {counts}")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
