"""
Draw training samples as the model receives them: a row per image of a data set, as annotated,
then after SSDDatasetMapper's augmentations several times, with the boxes that survive. Use it
to check a data set's annotations and the augmentation settings (INPUT.SSD.*).

    python -m ssd_d2.tools.visualize_data --config-file configs/ssd160_shapes_demo.yaml \\
        --dataset ssd_shapes_train --num-images 3 --samples 4 --output samples.png
"""

import os
import random
import sys
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np
from matplotlib import patheffects

from detectron2.data import MetadataCatalog
from detectron2.data.detection_utils import convert_image_to_rgb

from ssd_d2.data import SSDDatasetMapper

from . import common


@dataclass
class Sample:
    """One image to draw: RGB pixels, XYXY boxes (N, 4) and their class indices (N,)."""

    image: np.ndarray
    boxes: np.ndarray
    classes: np.ndarray
    title: str


def augmented_samples(cfg, dicts: List[dict], indices, samples_per_image: int, seed=0):
    """Per index of the data set's ``dicts``, the image as annotated, then ``samples_per_image``
    outputs of ``SSDDatasetMapper(cfg, is_train=True)``; the same seed gives the same samples."""
    mapper = SSDDatasetMapper(cfg, is_train=True)
    # The augmentations draw from numpy's and Python's global generators, as in a data loader.
    np.random.seed(seed)
    random.seed(seed)
    rows = []
    for index in indices:
        name = os.path.basename(dicts[index]["file_name"])
        row = [Sample(*common.read_record(dicts[index]), f"#{index} {name}, as annotated")]
        for k in range(samples_per_image):
            mapped = mapper(dicts[index])
            image = convert_image_to_rgb(mapped["image"].permute(1, 2, 0), cfg.INPUT.FORMAT)
            boxes = mapped["instances"].gt_boxes.tensor.numpy()
            classes = mapped["instances"].gt_classes.numpy()
            row.append(Sample(image, boxes, classes, f"augmented {k + 1}"))
        rows.append(row)
    return rows


def draw_samples(rows: List[List[Sample]], class_names: Sequence[str], title: str = ""):
    """A grid of one row per image; boxes (patches of gid "gt_box") labelled with class names."""
    nrows, ncols = len(rows), max(len(row) for row in rows)
    # Two title lines above each panel, the figure title on top.
    fig = common.panel_grid_figure(nrows, ncols, 2.6, 0.45, 0.4 if title else 0.0, 0.15)
    colors = common.class_colors(len(class_names))
    outline = [patheffects.withStroke(linewidth=2.5, foreground="black")]
    for i, sample in enumerate(sample for row in rows for sample in row):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        height, width = sample.image.shape[:2]
        ax.imshow(sample.image, extent=(0, width, height, 0))
        for box, cls in zip(sample.boxes.tolist(), sample.classes.tolist()):
            color = colors[cls % len(colors)]
            common.add_box(ax, box, color, "gt_box", linewidth=2, path_effects=outline)
            label = class_names[cls] if cls < len(class_names) else str(cls)
            # Above the box, or inside it where the image ends.
            va = "top" if box[1] < 0.08 * height else "bottom"
            background = dict(facecolor=color, edgecolor="none", pad=1.0, alpha=0.85)
            ax.text(*box[:2], label, fontsize=8, color="w", va=va, bbox=background, clip_on=True)
        ax.set(xlim=(0, width), ylim=(height, 0), xticks=[], yticks=[])
        boxes = f"{len(sample.boxes)} box{'es' if len(sample.boxes) != 1 else ''}"
        ax.set_title(f"{sample.title}\n{width}x{height}, {boxes}", fontsize=9)
    common.add_title(fig, title)
    return fig


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = common.argument_parser("visualize_data", __doc__, picture=True)
    parser.add_argument("--dataset", metavar="NAME", help="data set (default: DATASETS.TRAIN[0])")
    parser.add_argument("--indices", nargs="+", type=int, metavar="N", help="image indices")
    parser.add_argument("--num-images", type=int, default=3, help="else this many random images")
    parser.add_argument("--samples", type=int, default=4, help="augmented samples per image")
    parser.add_argument("--seed", type=int, default=0, help="seed of the image choice and samples")
    args, cfg = common.parse_config(parser, argv)
    with common.usage_errors(parser, ValueError):
        if args.samples < 0 or args.num_images < 1:
            raise ValueError("--samples must be >= 0 and --num-images >= 1")
        train = cfg.DATASETS.TRAIN
        name, dicts = common.dataset_dicts(
            args.dataset, train, "DATASETS.TRAIN", args.indices or []
        )
    rng, count = np.random.default_rng(args.seed), min(args.num_images, len(dicts))
    indices = args.indices or sorted(rng.choice(len(dicts), size=count, replace=False).tolist())
    rows = augmented_samples(cfg, dicts, indices, args.samples, seed=args.seed)
    for index, row in zip(indices, rows):
        counts = ", ".join(str(len(s.boxes)) for s in row[1:])
        print(f"image {index}: {len(row[0].boxes)} boxes; augmented: {counts}")
    class_names = MetadataCatalog.get(name).get("thing_classes", [])
    title = f"{name}: images {indices} as annotated, then after SSDDatasetMapper (training)"
    common.save_figure(draw_samples(rows, class_names, title=title), args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
