"""
``toy_signs``: a second generated detection data set, unlike ``ssd_shapes`` in what a detector
learns from: four other classes (cross, ring, hexagon, arrow), saturated colours drawn filled
or as outlines, more and smaller objects (2-12 per image, 16-96 pixels), 4:3 images on a
desaturated striped or checked background with line, dot and text clutter.

Registered on import as ``toy_signs_train`` (1,500 images) and ``toy_signs_val`` (300), each
generated on its first use into ``$SSD_D2_DATASETS/toy_signs`` (else
``$DETECTRON2_DATASETS/toy_signs``, else ``datasets/toy_signs``) as JPEGs plus a COCO json:

    python train_net.py --config-file configs/ssd160_toy_signs_demo.yaml
"""

import functools
from typing import Dict, Optional

import cv2
import numpy as np

# Drawing and caching helpers of the embedded set, shared rather than copied.
from .shapes import (
    _SHIFT,
    _add_noise,
    _contrasting_color,
    generated_dataset_root,
    generated_splits,
    paint_objects,
    register_generated_splits,
    write_generated_dataset,
)

__all__ = [
    "TOY_SIGN_CLASSES",
    "TOY_SIGNS_TRAIN",
    "TOY_SIGNS_VAL",
    "toy_signs_splits",
    "toy_signs_root",
    "generate_toy_signs",
    "register_toy_signs",
]


# The thing classes, in category id order (COCO ids 1..4).
TOY_SIGN_CLASSES = ("cross", "ring", "hexagon", "arrow")
TOY_SIGNS_TRAIN, TOY_SIGNS_VAL = "toy_signs_train", "toy_signs_val"
# Data set seeds, fixed: every training seed of a benchmark sees the same images.
_SPLIT_SEEDS = {TOY_SIGNS_TRAIN: 100, TOY_SIGNS_VAL: 101}

# Bump when the drawing changes, so that a cache written by an older version is detected.
_GENERATOR_VERSION = 1
# Image widths (the height is 3/4 of the width), objects per image and object diameters in
# pixels (log-uniform); an object drawn as an outline with this probability; one covered by
# later ones over more than this fraction of its pixels is not annotated (still drawn); the
# smallest RGB distance between an object's colour and the mean colour of what it covers.
_WIDTHS = (256, 384)
_NUM_OBJECTS = (2, 12)
_OBJECT_SIZES = (16, 96)
_OUTLINE_FRACTION = 0.35
_MAX_HIDDEN_FRACTION = 0.6
_MIN_CONTRAST = 120.0


def toy_signs_splits(train_images: int = 1500, val_images: int = 300) -> Dict[str, Dict]:
    """Data set name -> {"dirname", "seed", "num_images"} of the two splits (see
    :func:`~ssd_d2.data.datasets.shapes.generated_splits`)."""
    return generated_splits(
        _SPLIT_SEEDS, {TOY_SIGNS_TRAIN: train_images, TOY_SIGNS_VAL: val_images}
    )


def toy_signs_root(root: Optional[str] = None) -> str:
    """
    The cache folder, absolute: ``root`` if given, else ``$SSD_D2_DATASETS/toy_signs``, else
    ``$DETECTRON2_DATASETS/toy_signs``, else ``./datasets/toy_signs``.
    """
    return generated_dataset_root(root, "toy_signs")


def generate_toy_signs(output_dir: str, num_images: int, seed: int) -> str:
    """
    Draw ``num_images`` images into ``output_dir/images/*.jpg`` and write their boxes to
    ``output_dir/annotations.json`` (COCO format, written last); returns its path. The same
    arguments give byte-identical files; image i depends on ``seed`` and i only.
    """
    description = "toy_signs: synthetic signs drawn by ssd_d2"
    classes = (TOY_SIGN_CLASSES, "sign")
    return write_generated_dataset(
        output_dir, num_images, seed, _draw_sign_image, description, _GENERATOR_VERSION, classes
    )


def _draw_sign_image(rng: np.random.Generator):
    width = int(rng.integers(_WIDTHS[0], _WIDTHS[1] + 1))
    image = _draw_background(rng, width * 3 // 4, width)
    num_objects = int(rng.integers(_NUM_OBJECTS[0], _NUM_OBJECTS[1] + 1))
    color = functools.partial(_saturated_color, min_contrast=_MIN_CONTRAST)
    objects = paint_objects(rng, image, num_objects, _draw_random_sign, color, _MAX_HIDDEN_FRACTION)
    return _add_noise(rng, image), objects


def _draw_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """
    Two near-grey tones in stripes or checks at a random angle and period, then grey clutter:
    lines, dots and text. Nothing in it is saturated, unlike the objects.
    """
    tones = rng.uniform(30, 225, (2, 1)) + rng.uniform(-12, 12, (2, 3))
    angle = rng.uniform(0, np.pi)
    period = rng.uniform(8, 48)
    y, x = np.mgrid[:height, :width].astype(np.float32)
    u = (x * np.cos(angle) + y * np.sin(angle)) / period
    v = (y * np.cos(angle) - x * np.sin(angle)) / period
    pattern = np.floor(u) if rng.random() < 0.5 else np.floor(u) + np.floor(v)
    image = np.clip(tones[(pattern % 2).astype(np.intp)], 0, 255).astype(np.uint8)
    image = cv2.GaussianBlur(image, (5, 5), 0)

    def grey():
        return [int(rng.integers(0, 256))] * 3

    for _ in range(int(rng.integers(3, 15))):
        p0 = rng.integers(0, (width, height)).tolist()
        p1 = (np.array(p0) + rng.integers(-60, 61, 2)).tolist()
        cv2.line(image, p0, p1, grey(), int(rng.integers(1, 3)), cv2.LINE_AA)
    for _ in range(int(rng.integers(0, 20))):
        center = rng.integers(0, (width, height)).tolist()
        cv2.circle(image, center, int(rng.integers(1, 4)), grey(), -1, cv2.LINE_AA)
    for _ in range(int(rng.integers(0, 4))):
        text = "".join(chr(c) for c in rng.integers(65, 91, int(rng.integers(2, 7))))
        origin = rng.integers(0, (width, height)).tolist()
        scale = rng.uniform(0.4, 1.2)
        cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, grey(), 1, cv2.LINE_AA)
    return image


def _draw_random_sign(rng: np.random.Generator, mask: np.ndarray) -> int:
    height, width = mask.shape
    category = int(rng.integers(len(TOY_SIGN_CLASSES)))
    size = float(np.exp(rng.uniform(np.log(_OBJECT_SIZES[0]), np.log(_OBJECT_SIZES[1]))))
    # Whole objects only: the margin keeps outlines and antialiasing inside too.
    cx = rng.uniform(size / 2 + 2, width - size / 2 - 2)
    cy = rng.uniform(size / 2 + 2, height - size / 2 - 2)
    # Thin outlines (a tenth of the size, at least 2 pixels) or filled.
    thickness = max(2, int(round(size / 10))) if rng.random() < _OUTLINE_FRACTION else -1
    _draw_sign_mask(rng, mask, TOY_SIGN_CLASSES[category], cx, cy, size, thickness)
    return category


def _draw_sign_mask(
    rng: np.random.Generator,
    mask: np.ndarray,
    name: str,
    cx: float,
    cy: float,
    size: float,
    thickness: int,
) -> None:
    """Set the pixels of one sign of diameter ``size`` at (cx, cy); thickness -1 fills it."""
    scale = 1 << _SHIFT
    radius = size / 2
    if name == "ring":
        center = (int(round(cx * scale)), int(round(cy * scale)))
        # The hole is at least 45% of the diameter, so that a filled ring is never a disc.
        for r, value in ((radius, 1), (radius * rng.uniform(0.45, 0.6), 0)):
            r_fixed = int(round((r - max(thickness, 0) / 2) * scale))
            cv2.circle(mask, center, r_fixed, value if thickness < 0 else 1, thickness, 8, _SHIFT)
        return
    if name == "hexagon":
        points = [(np.cos(a), np.sin(a)) for a in np.arange(6) * np.pi / 3]
    elif name == "cross":
        # A plus sign with arms of half-width t.
        t = rng.uniform(0.25, 0.35)
        points = [(1, -t), (1, t), (t, t), (t, 1), (-t, 1), (-t, t)]
        points += [(-1, t), (-1, -t), (-t, -t), (-t, -1), (t, -1), (t, -t)]
    elif name == "arrow":
        # Shaft from the tail to 0.1, head from there to the tip.
        shaft, head = rng.uniform(0.15, 0.22), rng.uniform(0.5, 0.6)
        points = [(-1, -shaft), (0.1, -shaft), (0.1, -head), (1, 0), (0.1, head), (0.1, shaft)]
        points += [(-1, shaft)]
    else:
        raise ValueError(f"Unknown sign {name!r}")
    rotation = rng.uniform(0, 2 * np.pi)
    rotate = np.array([[np.cos(rotation), -np.sin(rotation)], [np.sin(rotation), np.cos(rotation)]])
    # An outline is drawn centred on the polygon: shrink it so that the object keeps its size.
    polygon_radius = radius - max(thickness, 0) / 2
    points = np.array(points, dtype=np.float64) @ rotate.T * polygon_radius + (cx, cy)
    points = [np.round(points * scale).astype(np.int32)]
    if thickness < 0:
        cv2.fillPoly(mask, points, 1, cv2.LINE_8, _SHIFT)
    else:
        cv2.polylines(mask, points, True, 1, thickness, cv2.LINE_8, _SHIFT)


def _saturated_color(
    rng: np.random.Generator, background: np.ndarray, min_contrast: float
) -> np.ndarray:
    """A saturated, bright BGR colour at least ``min_contrast`` away from ``background``."""
    for _ in range(10):
        hsv = np.array([[[rng.integers(0, 180), rng.integers(200, 256), rng.integers(180, 256)]]])
        color = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2BGR)[0, 0]
        if np.linalg.norm(color.astype(np.float64) - background) >= min_contrast:
            return color
    # A channel-wise opposite extreme; it is saturated unless the background is mid-grey.
    return _contrasting_color(rng, background, min_contrast)


def register_toy_signs(
    root: Optional[str] = None, splits: Optional[Dict] = None, replace: bool = False
) -> None:
    """
    Register the splits under ``root`` (see :func:`toy_signs_root`), each generated on its first
    ``DatasetCatalog.get``. Names already registered are left alone, or with ``replace``
    registered anew (other sizes, another root).

    Args:
        splits: data set name -> {"dirname", "seed", "num_images"}; default
            :func:`toy_signs_splits`.
    """
    splits = toy_signs_splits() if splits is None else splits
    register_generated_splits(
        toy_signs_root(root),
        splits,
        generate_toy_signs,
        _GENERATOR_VERSION,
        "toy_signs",
        TOY_SIGN_CLASSES,
        replace=replace,
    )
