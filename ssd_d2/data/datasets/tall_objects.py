"""
``ssd_tall_objects``: small, tall objects on wide (16:9) images, the case that SSD's published
default boxes (squares and boxes up to 3:1 over a square input) cover badly. Three classes,
each with its own shape: poles (thin, 4-6 times as tall as wide), people (2.4-3.2) and trees
(1.6-2.2), from a few to a few dozen pixels wide, on the cluttered backgrounds of ssd_shapes.

Registered on import as ``ssd_tall_objects_train`` (600 images) and ``ssd_tall_objects_val``
(150), each generated on its first use into ``$SSD_D2_DATASETS/ssd_tall_objects`` (else
``$DETECTRON2_DATASETS/ssd_tall_objects``, else ``datasets/ssd_tall_objects``) as JPEGs plus a
COCO json:

    python train_net.py --config-file configs/ssd160_tall_objects_demo.yaml
"""

from typing import Dict, Optional

import cv2
import numpy as np

from .shapes import (
    _SHIFT,
    _add_noise,
    _contrasting_color,
    _draw_background,
    generated_dataset_root,
    generated_splits,
    paint_objects,
    register_generated_splits,
    write_generated_dataset,
)

__all__ = ["TALL_OBJECT_CLASSES", "TALL_OBJECTS_TRAIN", "TALL_OBJECTS_VAL"]
__all__ += ["tall_objects_splits", "tall_objects_root", "generate_tall_objects"]
__all__ += ["register_tall_objects"]

# The thing classes, in category id order (COCO ids 1..3).
TALL_OBJECT_CLASSES = ("pole", "person", "tree")
TALL_OBJECTS_TRAIN, TALL_OBJECTS_VAL = "ssd_tall_objects_train", "ssd_tall_objects_val"
_SPLIT_SEEDS = {TALL_OBJECTS_TRAIN: 200, TALL_OBJECTS_VAL: 201}

# Bump when the drawing changes, so that a cache written by an older version is detected.
_GENERATOR_VERSION = 1
# Image widths (the height is 9/16 of the width) and objects per image.
_WIDTHS = (288, 352)
_NUM_OBJECTS = (3, 10)
# Per class: object widths in pixels and height / width, both log-uniform.
_CLASS_SHAPES = {
    "pole": {"width": (10, 20), "aspect": (4.0, 6.0)},
    "person": {"width": (10, 32), "aspect": (2.4, 3.2)},
    "tree": {"width": (16, 44), "aspect": (1.6, 2.2)},
}
_MAX_HIDDEN_FRACTION = 0.6
_MIN_CONTRAST = 120.0


def tall_objects_splits(train_images: int = 600, val_images: int = 150) -> Dict[str, Dict]:
    """Data set name -> {"dirname", "seed", "num_images"} of the two splits (see
    :func:`~ssd_d2.data.datasets.shapes.generated_splits`)."""
    sizes = {TALL_OBJECTS_TRAIN: train_images, TALL_OBJECTS_VAL: val_images}
    return generated_splits(_SPLIT_SEEDS, sizes)


def tall_objects_root(root: Optional[str] = None) -> str:
    """The cache folder, absolute: ``root`` if given, else ``$SSD_D2_DATASETS/ssd_tall_objects``,
    else ``$DETECTRON2_DATASETS/ssd_tall_objects``, else ``./datasets/ssd_tall_objects``."""
    return generated_dataset_root(root, "ssd_tall_objects")


def generate_tall_objects(output_dir: str, num_images: int, seed: int) -> str:
    """Draw ``num_images`` images into ``output_dir/images/*.jpg`` and write their boxes to
    ``output_dir/annotations.json`` (COCO format, written last); returns its path. The same
    arguments give byte-identical files; image i depends on ``seed`` and i only."""
    description = "ssd_tall_objects: small, tall objects on 16:9 images, drawn by ssd_d2"
    classes = (TALL_OBJECT_CLASSES, "object")
    return write_generated_dataset(
        output_dir, num_images, seed, _draw_image, description, _GENERATOR_VERSION, classes
    )


def _draw_image(rng: np.random.Generator):
    width = int(rng.integers(_WIDTHS[0], _WIDTHS[1] + 1))
    image = _draw_background(rng, width * 9 // 16, width)
    num_objects = int(rng.integers(_NUM_OBJECTS[0], _NUM_OBJECTS[1] + 1))
    objects = paint_objects(
        rng, image, num_objects, _draw_random_object, _pick_color, _MAX_HIDDEN_FRACTION
    )
    return _add_noise(rng, image), objects


def _pick_color(rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    return _contrasting_color(rng, background, _MIN_CONTRAST)


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def _draw_random_object(rng: np.random.Generator, mask: np.ndarray) -> int:
    image_h, image_w = mask.shape
    category = int(rng.integers(len(TALL_OBJECT_CLASSES)))
    name = TALL_OBJECT_CLASSES[category]
    width = _log_uniform(rng, *_CLASS_SHAPES[name]["width"])
    height = min(width * _log_uniform(rng, *_CLASS_SHAPES[name]["aspect"]), 0.9 * image_h)
    # Whole objects, standing anywhere in the image.
    x0 = rng.uniform(1, image_w - width - 1)
    y0 = rng.uniform(1, image_h - height - 1)
    _draw_object_mask(mask, name, x0, y0, width, height)
    return category


def _draw_object_mask(mask, name: str, x0: float, y0: float, width: float, height: float):
    """Set the pixels of one object whose box is (x0, y0, width, height)."""
    scale = 1 << _SHIFT

    def polygon(points):
        points = np.round(np.array(points) * scale).astype(np.int32)
        cv2.fillPoly(mask, [points], 1, cv2.LINE_8, _SHIFT)

    def ellipse(cx, cy, rx, ry):
        center = (int(round(cx * scale)), int(round(cy * scale)))
        axes = (int(round(rx * scale)), int(round(ry * scale)))
        cv2.ellipse(mask, center, axes, 0, 0, 360, 1, -1, cv2.LINE_8, _SHIFT)

    x1, y1, cx = x0 + width, y0 + height, x0 + width / 2
    if name == "pole":
        # A lamp head as wide as the box over a mast half as wide.
        polygon(
            [(cx - width / 4, y0 + width), (cx + width / 4, y0 + width)]
            + [(cx + width / 4, y1), (cx - width / 4, y1)]
        )
        ellipse(cx, y0 + width / 2, width / 2, width / 2)
    elif name == "person":
        # A head, a body as wide as the box, legs.
        head = width * 0.3
        ellipse(cx, y0 + head, head, head)
        ellipse(cx, y0 + 2 * head + (height * 0.45) / 2, width / 2, height * 0.45 / 2)
        polygon(
            [(cx - width / 3, y0 + height * 0.6), (cx + width / 3, y0 + height * 0.6)]
            + [(cx + width / 3, y1), (cx - width / 3, y1)]
        )
    elif name == "tree":
        # A crown (a triangle as wide as the box) over a trunk.
        crown = height * 0.75
        polygon([(cx, y0), (x1, y0 + crown), (x0, y0 + crown)])
        polygon(
            [(cx - width / 8, y0 + crown), (cx + width / 8, y0 + crown)]
            + [(cx + width / 8, y1), (cx - width / 8, y1)]
        )
    else:
        raise ValueError(f"Unknown object {name!r}")


def register_tall_objects(
    root: Optional[str] = None, splits: Optional[Dict] = None, replace: bool = False
) -> None:
    """Register the splits under ``root`` (see :func:`tall_objects_root`), each generated on
    its first ``DatasetCatalog.get``. Names already registered are left alone, or with
    ``replace`` registered anew (other sizes, another root).

    Args:
        splits: data set name -> {"dirname", "seed", "num_images"}; default
            :func:`tall_objects_splits`.
    """
    splits = tall_objects_splits() if splits is None else splits
    register_generated_splits(
        tall_objects_root(root),
        splits,
        generate_tall_objects,
        _GENERATOR_VERSION,
        "ssd_tall_objects",
        TALL_OBJECT_CLASSES,
        replace=replace,
    )
