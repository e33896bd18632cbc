"""``ssd_shapes``: shapes of five classes on cluttered backgrounds, drawn so that SSD trains and
evaluates without a download; JPEGs and a COCO json, read with Detectron2's ``load_coco_json``."""

import functools
import json
import logging
import os
import shutil
import tempfile
import uuid
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

__all__ = ["SHAPE_CLASSES", "SHAPES_SPLITS", "ensure_split", "generate_shapes_dataset"]
__all__ += ["register_shapes_dataset", "shapes_dataset_root", "paint_objects"]
__all__ += ["register_generated_splits", "write_generated_dataset"]
__all__ += ["generated_dataset_root", "generated_splits"]

logger = logging.getLogger(__name__)

# The thing classes, in category id order (COCO ids 1..5).
SHAPE_CLASSES = ("circle", "square", "triangle", "star", "ellipse")

# Data set name -> sub-folder of the cache root, seed, image count.
SHAPES_SPLITS = {
    "ssd_shapes_train": {"dirname": "train", "seed": 0, "num_images": 2000},
    "ssd_shapes_val": {"dirname": "val", "seed": 1, "num_images": 300},
}

# Bump when the drawing changes, so that an older cache is detected.
_GENERATOR_VERSION = 2
_ANNOTATIONS_FILE = "annotations.json"
_IMAGES_DIRNAME = "images"
# Shape vertices go to OpenCV in fixed point with this many fractional bits (sub-pixel shapes).
_SHIFT = 4
# Image sides, shapes per image, share of empty images, shape diameters (pixels; fraction of the
# shorter side), the share of a shape hidden before it is not annotated, least RGB contrast.
_IMAGE_SIDES = (240, 400)
_MAX_SHAPES = 6
_EMPTY_FRACTION = 0.08
_MIN_SHAPE_SIZE, _MAX_SHAPE_FRACTION = 20, 0.6
_MAX_HIDDEN_FRACTION = 0.6
_MIN_CONTRAST = 120.0
_JPEG_QUALITY = 90


def shapes_dataset_root(root: Optional[str] = None) -> str:
    """The absolute cache folder (metadata paths survive a chdir): ``root``, else
    ``$SSD_D2_DATASETS``, else ``$DETECTRON2_DATASETS/ssd_shapes``, else ``datasets/ssd_shapes``."""
    if root is None:
        default = os.path.join(os.environ.get("DETECTRON2_DATASETS", "datasets"), "ssd_shapes")
        root = os.environ.get("SSD_D2_DATASETS", default)
    return os.path.abspath(os.path.expanduser(os.fspath(root)))


def generate_shapes_dataset(output_dir: str, num_images: int, seed: int) -> str:
    """Draw ``num_images`` ssd_shapes images into ``output_dir`` (see write_generated_dataset);
    the same arguments give byte-identical files."""
    description = "ssd_shapes: synthetic shapes drawn by ssd_d2"
    classes = (SHAPE_CLASSES, "shape")
    return write_generated_dataset(
        output_dir, num_images, seed, _draw_random_image, description, _GENERATOR_VERSION, classes
    )


def _draw_random_image(rng: np.random.Generator):
    # Width and height drawn independently: both aspect ratio and scale vary.
    width, height = (int(v) for v in rng.integers(_IMAGE_SIDES[0], _IMAGE_SIDES[1] + 1, 2))
    num_shapes = 0 if rng.random() < _EMPTY_FRACTION else int(rng.integers(1, _MAX_SHAPES + 1))
    return _draw_image(
        rng,
        height,
        width,
        num_shapes,
        min_shape_size=_MIN_SHAPE_SIZE,
        max_shape_size=_MAX_SHAPE_FRACTION * min(height, width),
        max_hidden_fraction=_MAX_HIDDEN_FRACTION,
        min_contrast=_MIN_CONTRAST,
    )


def write_generated_dataset(
    output_dir: str,
    num_images: int,
    seed: int,
    draw_image,
    description: str,
    version: int,
    classes: Tuple[Sequence[str], str],
) -> str:
    """``draw_image(rng) -> (BGR image, COCO annotations)`` as ``output_dir/images/*.jpg`` and
    ``output_dir/annotations.json``; returns its path. One random stream per image (image i does
    not depend on ``num_images``); the json comes last, so its presence means completeness.
    ``classes``: (the class names in category id order from 1, their supercategory); the json's
    info records ``description``, the generator ``version``, ``seed`` and ``num_images``."""
    info = {"description": description, "version": version, "seed": seed, "num_images": num_images}
    names, supercategory = classes
    categories = [
        {"id": i + 1, "name": name, "supercategory": supercategory} for i, name in enumerate(names)
    ]
    image_dir = os.path.join(output_dir, _IMAGES_DIRNAME)
    os.makedirs(image_dir, exist_ok=True)
    images, annotations = [], []
    for index, image_seed in enumerate(np.random.SeedSequence(seed).spawn(num_images)):
        image, objects = draw_image(np.random.default_rng(image_seed))
        image_id = index + 1
        file_name = f"{image_id:06d}.jpg"
        path = os.path.join(image_dir, file_name)
        if not cv2.imwrite(path, image, [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY]):
            raise IOError(f"Could not write {path}")
        height, width = image.shape[:2]
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for obj in objects:
            obj.update(id=len(annotations) + 1, image_id=image_id, iscrowd=0)
            annotations.append(obj)
    dataset = dict(info=info, licenses=[], images=images, annotations=annotations)
    dataset["categories"] = categories
    json_file = os.path.join(output_dir, _ANNOTATIONS_FILE)
    with open(json_file + ".tmp", "w") as f:
        json.dump(dataset, f)
    os.replace(json_file + ".tmp", json_file)
    return json_file


def _draw_image(
    rng: np.random.Generator,
    height: int,
    width: int,
    num_shapes: int,
    *,
    min_shape_size: float,
    max_shape_size: float,
    max_hidden_fraction: float,
    min_contrast: float,
):
    """A BGR uint8 image and the COCO annotations (without ids) of its visible shapes."""
    image = _draw_background(rng, height, width)
    draw = functools.partial(_draw_random_shape, sizes=(min_shape_size, max_shape_size))
    color = functools.partial(_contrasting_color, min_contrast=min_contrast)
    objects = paint_objects(rng, image, num_shapes, draw, color, max_hidden_fraction)
    return _add_noise(rng, image), objects


def _draw_random_shape(rng: np.random.Generator, mask: np.ndarray, sizes) -> int:
    height, width = mask.shape
    category = int(rng.integers(len(SHAPE_CLASSES)))
    # Log-uniform size: small objects (SSD's weak spot) as common as large ones.
    size = float(np.exp(rng.uniform(np.log(sizes[0]), np.log(sizes[1]))))
    # Up to 30% of a shape may lie outside the image (a truncated object, still annotated).
    cx = rng.uniform(0.2 * size, width - 0.2 * size)
    cy = rng.uniform(0.2 * size, height - 0.2 * size)
    _draw_shape_mask(rng, mask, SHAPE_CLASSES[category], cx, cy, size)
    return category


def paint_objects(rng, image, num_objects, draw_mask, pick_color, max_hidden_fraction):
    """
    Paint objects into ``image`` (BGR, in place): each is drawn by ``draw_mask(rng, mask) ->
    category`` into a cleared mask, then filled with ``pick_color(rng, mean colour under it)``.
    Returns the COCO annotations (without ids) of those with more than 1 - max_hidden_fraction
    of their pixels visible: the box is the whole object's extent, the area the visible one.
    """
    # owner[y, x]: 1 + the index of the object seen at that pixel (0: background).
    owner = np.zeros(image.shape[:2], dtype=np.uint16)
    mask = np.empty(image.shape[:2], dtype=np.uint8)
    drawn = []
    for index in range(num_objects):
        mask.fill(0)
        category = draw_mask(rng, mask)
        x, y, w, h = cv2.boundingRect(mask)
        if w == 0 or h == 0:
            continue
        inside = mask[y : y + h, x : x + w].astype(bool)
        image_box = image[y : y + h, x : x + w]
        image_box[inside] = pick_color(rng, image_box[inside].mean(axis=0))
        owner[y : y + h, x : x + w][inside] = index + 1
        drawn.append((index + 1, category, int(inside.sum()), [x, y, w, h]))
    visible_area = np.bincount(owner.ravel(), minlength=num_objects + 1)
    return [
        {"category_id": category + 1, "bbox": box, "area": int(visible_area[owner_id])}
        for owner_id, category, area, box in drawn
        if visible_area[owner_id] >= (1.0 - max_hidden_fraction) * area
    ]


def _draw_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A colour gradient with smooth blobs, random lines and curves: clutter, no shapes."""
    # A coarse grid (colour ramp plus blobs) upsampled: no per-pixel arithmetic.
    grid_h, grid_w = (int(v) for v in rng.integers(2, 8, 2))
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(angle) * np.linspace(-0.5, 0.5, grid_w)[None, :]
    ramp = ramp + np.sin(angle) * np.linspace(-0.5, 0.5, grid_h)[:, None]
    start, end = rng.uniform(0, 255, (2, 3))
    grid = (start + end) / 2 + ramp[..., None] * (end - start)
    grid += rng.normal(0, rng.uniform(0, 40), grid.shape)
    grid = np.clip(grid, 0, 255).astype(np.uint8)
    image = cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)

    for _ in range(int(rng.integers(0, 5))):
        p0 = rng.integers(0, (width, height)).tolist()
        p1 = rng.integers(0, (width, height)).tolist()
        color = rng.integers(0, 256, 3).tolist()
        cv2.line(image, p0, p1, color, int(rng.integers(1, 4)), cv2.LINE_AA)
    for _ in range(int(rng.integers(0, 4))):
        # An open random walk: clutter that is neither straight nor one of the classes.
        steps = rng.normal(0, 0.08 * min(height, width), (int(rng.integers(4, 12)), 2))
        points = np.cumsum(steps, axis=0) + rng.uniform(0, (width, height))
        color = rng.integers(0, 256, 3).tolist()
        cv2.polylines(
            image, [points.astype(np.int32)], False, color, int(rng.integers(1, 4)), cv2.LINE_AA
        )
    return image


def _draw_shape_mask(
    rng: np.random.Generator, mask: np.ndarray, name: str, cx: float, cy: float, size: float
) -> None:
    """Fill the pixels of one shape of diameter ``size`` centred at (cx, cy) in ``mask``."""
    scale = 1 << _SHIFT
    center = (int(round(cx * scale)), int(round(cy * scale)))
    radius = size / 2
    rotation = rng.uniform(0, 2 * np.pi)
    if name == "circle":
        cv2.circle(mask, center, int(round(radius * scale)), 1, -1, cv2.LINE_8, _SHIFT)
        return
    if name == "ellipse":
        # Minor axis well below the major one, so that an ellipse never passes for a circle.
        axes = (int(round(radius * scale)), int(round(radius * rng.uniform(0.3, 0.65) * scale)))
        cv2.ellipse(mask, center, axes, np.degrees(rotation), 0, 360, 1, -1, cv2.LINE_8, _SHIFT)
        return

    radii = radius
    if name == "square":
        angles = rotation + np.arange(4) * np.pi / 2
    elif name == "triangle":
        # Roughly equilateral: vertex angles jittered so that triangles are not all alike.
        angles = rotation + np.arange(3) * 2 * np.pi / 3 + rng.uniform(-0.25, 0.25, 3)
    elif name == "star":
        angles = rotation + np.arange(10) * np.pi / 5
        radii = np.tile([radius, radius * rng.uniform(0.38, 0.5)], 5)
    points = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)
    cv2.fillPoly(mask, [np.round(points * scale).astype(np.int32)], 1, cv2.LINE_8, _SHIFT)


def _contrasting_color(
    rng: np.random.Generator, background: np.ndarray, min_contrast: float
) -> np.ndarray:
    """A random colour at least ``min_contrast`` away (RGB distance) from ``background``."""
    for _ in range(10):
        color = rng.integers(0, 256, 3)
        if np.linalg.norm(color - background) >= min_contrast:
            return color.astype(np.uint8)
    # Rare (mid-grey backgrounds): the per-channel opposite extreme is always far enough.
    return np.where(background < 128, 255, 0).astype(np.uint8)


def _add_noise(rng: np.random.Generator, image: np.ndarray, max_sigma: float = 6.0) -> np.ndarray:
    """Gaussian noise over everything (sigma up to ``max_sigma``), and sometimes a slight blur."""
    # Luminance noise: a third of the random numbers (the largest cost) of per-channel noise.
    noise = rng.standard_normal(image.shape[:2] + (1,), dtype=np.float32)
    noise *= rng.uniform(0, max_sigma)
    noisy = image.astype(np.float32)
    noisy += noise
    image = np.clip(noisy, 0, 255, out=noisy).astype(np.uint8)
    if rng.random() < 0.25:
        image = cv2.GaussianBlur(image, (3, 3), 0)
    return image


def _is_complete(split_dir: str) -> bool:
    return os.path.isfile(os.path.join(split_dir, _ANNOTATIONS_FILE))


def ensure_split(split_dir, seed, num_images, generate, version, name):
    """Generate a split with ``generate(output_dir, num_images, seed)`` into ``split_dir`` unless
    it is there; return its json path. Concurrent callers (the ranks of a run) each draw into a
    temporary folder and rename it into place: the first wins. A split made with another
    ``version``, seed or size is an error. ``name`` names the data in messages."""
    json_file = os.path.join(split_dir, _ANNOTATIONS_FILE)
    if not _is_complete(split_dir):
        parent, dirname = os.path.split(split_dir)
        os.makedirs(parent, exist_ok=True)
        tmp_dir = tempfile.mkdtemp(prefix=f".{dirname}.tmp-", dir=parent)
        try:
            logger.info(f"Generating {num_images} {name} images into {split_dir} ...")
            generate(tmp_dir, num_images, seed)
            _move_into_place(tmp_dir, split_dir, name)
        finally:
            shutil.rmtree(tmp_dir, ignore_errors=True)
    with open(json_file) as f:
        info = json.load(f).get("info", {})
    expected = {"version": version, "seed": seed, "num_images": num_images}
    found = {key: info.get(key) for key in expected}
    if found != expected:
        raise RuntimeError(
            f"{json_file} holds {name} data made with {found}, but {expected} is asked "
            f"for. Delete {split_dir} to regenerate it, or use another root."
        )
    return json_file


def _move_into_place(tmp_dir: str, split_dir: str, name: str) -> None:
    for _ in range(5):
        try:
            os.rename(tmp_dir, split_dir)
            return
        except OSError:
            if _is_complete(split_dir):
                return  # another process finished first
        # A folder without the json is no split: set it aside (a complete one equals ours).
        stale_dir = f"{split_dir}.stale-{uuid.uuid4().hex}"
        try:
            os.rename(split_dir, stale_dir)
        except FileNotFoundError:
            continue
        logger.warning(f"Removing the incomplete {name} folder {split_dir}")
        shutil.rmtree(stale_dir, ignore_errors=True)
    raise RuntimeError(f"Could not move {tmp_dir} into place at {split_dir}")


def _load_generated_split(name, split_dir, split, generate, version, data_name) -> List[Dict]:
    json_file = ensure_split(
        split_dir, split["seed"], split["num_images"], generate, version, data_name
    )
    return load_coco_json(json_file, os.path.join(split_dir, _IMAGES_DIRNAME), name)


def generated_splits(seeds: Dict[str, int], sizes: Dict[str, int]) -> Dict[str, Dict]:
    """Data set name -> {"dirname", "seed", "num_images"} for the names of ``seeds``; the folder
    names carry seed and size, so that splits of other sizes are cached side by side."""
    return {
        name: {
            "dirname": f"{name.rsplit('_', 1)[1]}-seed{seed}-{sizes[name]}",
            "seed": seed,
            "num_images": sizes[name],
        }
        for name, seed in seeds.items()
    }


def generated_dataset_root(root: Optional[str], folder: str) -> str:
    """A generated data set's cache folder, absolute: ``root`` if given, else
    ``$SSD_D2_DATASETS/<folder>``, else ``$DETECTRON2_DATASETS/<folder>``, else
    ``./datasets/<folder>``."""
    if root is None:
        parent = os.environ.get("SSD_D2_DATASETS", os.environ.get("DETECTRON2_DATASETS"))
        root = os.path.join(parent or "datasets", folder)
    return os.path.abspath(os.path.expanduser(os.fspath(root)))


def register_generated_splits(
    root: str, splits: Dict, generate, version: int, data_name: str, thing_classes, replace=False
) -> None:
    """
    Register each of ``splits`` (name -> {"dirname", "seed", "num_images"}) under ``root`` as
    a COCO data set made by ``generate`` on its first ``DatasetCatalog.get``. Names already
    registered are left alone, or with ``replace`` registered anew.
    """
    for name, split in splits.items():
        if name in DatasetCatalog.list():
            if not replace:
                continue
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        split_dir = os.path.join(root, split["dirname"])
        load = functools.partial(
            _load_generated_split, name, split_dir, split, generate, version, data_name
        )
        DatasetCatalog.register(name, load)
        # COCOEvaluator opens json_file when built, after DefaultTrainer.test's loader wrote it.
        MetadataCatalog.get(name).set(
            json_file=os.path.join(split_dir, _ANNOTATIONS_FILE),
            image_root=os.path.join(split_dir, _IMAGES_DIRNAME),
            evaluator_type="coco",
            thing_classes=list(thing_classes),
            # Set before load_coco_json sets the same, for detections made without loading.
            thing_dataset_id_to_contiguous_id={i + 1: i for i in range(len(thing_classes))},
        )


def register_shapes_dataset(root: Optional[str] = None, splits: Optional[Dict] = None) -> None:
    """Register ``splits`` (default ``SHAPES_SPLITS``) under ``shapes_dataset_root(root)``, each
    generated on its first ``DatasetCatalog.get``; names already registered are left alone."""
    splits = SHAPES_SPLITS if splits is None else splits
    root = shapes_dataset_root(root)
    register_generated_splits(
        root, splits, generate_shapes_dataset, _GENERATOR_VERSION, "ssd_shapes", SHAPE_CLASSES
    )
