"""
Two more generated data sets, each far from ``ssd_shapes`` and ``toy_signs`` along axes where
users' data differ, so that a recipe is judged on four sets and not tuned to one:

* ``sparse_clutter``: four shape classes; 40% of the images hold no object and the others 1-3;
  objects from 3 pixels to a third of the shorter side (log-uniform); dense clutter of lines,
  curves, dots and blobs; low contrast and strong noise (sigma up to 24).
* ``many_classes``: nine classes (ssd_shapes' five and toy_signs' four, all filled); one or two
  objects per image, none empty; 12 pixels to half the shorter side; light clutter and noise.

Registered on import as ``<name>_train`` (1,500 images) and ``<name>_val`` (300), each generated
on its first use into ``$SSD_D2_DATASETS/<name>`` (else ``$DETECTRON2_DATASETS/<name>``, else
``datasets/<name>``) as JPEGs plus a COCO json:

    python train_net.py --config-file configs/ssd160_sparse_clutter_demo.yaml
"""

import dataclasses
import functools
from typing import Dict, Optional, Tuple

import cv2
import numpy as np

from .shapes import (
    SHAPE_CLASSES,
    _add_noise,
    _contrasting_color,
    _draw_background,
    _draw_shape_mask,
    generated_dataset_root,
    generated_splits,
    paint_objects,
    register_generated_splits,
    write_generated_dataset,
)
from .toy_signs import TOY_SIGN_CLASSES, _draw_sign_mask

__all__ = ["FAMILY", "FamilyMember", "family_splits", "generate_family_member"]
__all__ += ["register_shape_family"]


@dataclasses.dataclass(frozen=True)
class FamilyMember:
    """How one generated set is drawn (sizes in pixels of the drawn image)."""

    classes: Tuple[str, ...]
    # Seeds of the train and val splits, fixed: every training seed sees the same images.
    split_seeds: Tuple[int, int]
    image_sides: Tuple[int, int]
    empty_fraction: float
    num_objects: Tuple[int, int]
    min_object_size: float
    max_object_fraction: float  # of the shorter side
    # Extra clutter strokes and dots drawn over ssd_shapes' background, at most.
    max_clutter: int
    max_noise_sigma: float
    min_contrast: float
    max_hidden_fraction: float = 0.6
    # Bump when the drawing changes, so that an older cache is detected.
    version: int = 1


FAMILY: Dict[str, FamilyMember] = {
    "sparse_clutter": FamilyMember(
        classes=SHAPE_CLASSES[:4],
        split_seeds=(200, 201),
        image_sides=(240, 400),
        empty_fraction=0.4,
        num_objects=(1, 3),
        min_object_size=3.0,
        max_object_fraction=1 / 3,
        max_clutter=40,
        max_noise_sigma=24.0,
        min_contrast=80.0,
    ),
    "many_classes": FamilyMember(
        classes=SHAPE_CLASSES + TOY_SIGN_CLASSES,
        split_seeds=(300, 301),
        image_sides=(240, 400),
        empty_fraction=0.0,
        num_objects=(1, 2),
        min_object_size=12.0,
        max_object_fraction=0.5,
        max_clutter=6,
        max_noise_sigma=6.0,
        min_contrast=120.0,
    ),
}


def family_splits(name: str, train_images: int = 1500, val_images: int = 300) -> Dict[str, Dict]:
    """Data set name -> {"dirname", "seed", "num_images"} of member ``name``'s two splits."""
    train_seed, val_seed = FAMILY[name].split_seeds
    seeds = {f"{name}_train": train_seed, f"{name}_val": val_seed}
    sizes = {f"{name}_train": train_images, f"{name}_val": val_images}
    return generated_splits(seeds, sizes)


def generate_family_member(name: str, output_dir: str, num_images: int, seed: int) -> str:
    """Draw ``num_images`` images of member ``name`` into ``output_dir`` (see
    write_generated_dataset); the same arguments give byte-identical files."""
    member = FAMILY[name]
    draw = functools.partial(_draw_member_image, member)
    description = f"{name}: synthetic shapes drawn by ssd_d2"
    classes = (member.classes, "shape")
    return write_generated_dataset(
        output_dir, num_images, seed, draw, description, member.version, classes
    )


def _draw_member_image(member: FamilyMember, rng: np.random.Generator):
    width, height = (
        int(v) for v in rng.integers(member.image_sides[0], member.image_sides[1] + 1, 2)
    )
    image = _draw_background(rng, height, width)
    _draw_clutter(rng, image, member.max_clutter)
    num_objects = 0
    if rng.random() >= member.empty_fraction:
        num_objects = int(rng.integers(member.num_objects[0], member.num_objects[1] + 1))
    sizes = (member.min_object_size, member.max_object_fraction * min(height, width))
    draw = functools.partial(_draw_member_object, member.classes, sizes)
    color = functools.partial(_contrasting_color, min_contrast=member.min_contrast)
    objects = paint_objects(rng, image, num_objects, draw, color, member.max_hidden_fraction)
    return _add_noise(rng, image, member.max_noise_sigma), objects


def _draw_clutter(rng: np.random.Generator, image: np.ndarray, max_count: int) -> None:
    """Short strokes, open curves, dots and irregular blobs in random colours, in place: none is
    one of the classes, and some are as small as the smallest objects."""
    height, width = image.shape[:2]

    def color():
        return rng.integers(0, 256, 3).tolist()

    for _ in range(int(rng.integers(0, max_count + 1))):
        kind = rng.integers(4)
        start = rng.uniform(0, (width, height))
        if kind == 0:  # a short stroke
            end = start + rng.uniform(-40, 40, 2)
            points = [np.stack([start, end]).astype(np.int32)]
            cv2.polylines(image, points, False, color(), int(rng.integers(1, 3)), cv2.LINE_AA)
        elif kind == 1:  # an open random walk
            points = np.cumsum(rng.normal(0, 6, (int(rng.integers(3, 8)), 2)), axis=0) + start
            cv2.polylines(image, [points.astype(np.int32)], False, color(), 1, cv2.LINE_AA)
        elif kind == 2:  # a dot
            center = start.astype(int).tolist()
            cv2.circle(image, center, int(rng.integers(1, 4)), color(), -1, cv2.LINE_AA)
        else:  # an irregular blob: a star-shaped polygon with random radii
            angles = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(5, 9))))
            radii = rng.uniform(2, 14) * rng.uniform(0.3, 1.0, angles.size)
            points = start + np.stack([np.cos(angles), np.sin(angles)], axis=1) * radii[:, None]
            cv2.fillPoly(image, [points.astype(np.int32)], color(), cv2.LINE_AA)


def _draw_member_object(classes, sizes, rng: np.random.Generator, mask: np.ndarray) -> int:
    height, width = mask.shape
    category = int(rng.integers(len(classes)))
    size = float(np.exp(rng.uniform(np.log(sizes[0]), np.log(sizes[1]))))
    # Whole objects only, one pixel in from the border.
    cx = rng.uniform(size / 2 + 1, width - size / 2 - 1)
    cy = rng.uniform(size / 2 + 1, height - size / 2 - 1)
    name = classes[category]
    if name in TOY_SIGN_CLASSES:
        _draw_sign_mask(rng, mask, name, cx, cy, size, thickness=-1)
    else:
        _draw_shape_mask(rng, mask, name, cx, cy, size)
    return category


def register_shape_family(root: Optional[str] = None, replace: bool = False) -> None:
    """Register every member's two splits, each under ``<root or the default>/<name>`` and
    generated on its first ``DatasetCatalog.get``; names already registered are left alone,
    or with ``replace`` registered anew."""
    for name, member in FAMILY.items():
        register_generated_splits(
            generated_dataset_root(None if root is None else f"{root}/{name}", name),
            family_splits(name),
            functools.partial(generate_family_member, name),
            member.version,
            name,
            member.classes,
            replace=replace,
        )
