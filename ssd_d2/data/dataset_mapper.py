import copy
from typing import List, Optional, Union

import numpy as np
import torch
from PIL import ExifTags, Image

from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import Boxes, BoxMode, Instances
from detectron2.utils.file_io import PathManager

from ..config import resolve_image_size
from .transforms import build_ssd_train_augmentations

__all__ = ["SSDDatasetMapper", "UnreadableImageError", "read_image"]

# PIL modes of images with more than 8 bits per channel (16-bit PNG and TIFF open as "I").
_HIGH_BIT_DEPTH_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")
# How to display an image of each EXIF orientation but 1 (as stored), as Detectron2 does.
_EXIF_TRANSPOSES = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


class UnreadableImageError(OSError):
    """An image file that exists but cannot be decoded (truncated, corrupt, not an image)."""

    def __init__(self, file_name: str, reason: str):
        super().__init__(f"Cannot read image {file_name}: {reason}")
        self.file_name = file_name
        self.reason = reason


def read_image(file_name: str, format: Optional[str] = None) -> np.ndarray:
    """The image reader of ssd_d2 (training, evaluation, tools, export): Detectron2's, but 16-bit
    images are scaled to 8 bits instead of saturating, and a file that cannot be wholly decoded
    (truncated data fails now, not as a partly grey image) raises UnreadableImageError."""
    try:
        with PathManager.open(file_name, "rb") as f:
            image = Image.open(f)
            image.load()
    except FileNotFoundError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise UnreadableImageError(file_name, f"{type(e).__name__}: {e}") from e
    transpose = _EXIF_TRANSPOSES.get(exif_orientation(image))
    if transpose is not None:  # nearly always None: no copy of the pixels then
        image = image.transpose(transpose)
    if image.mode in _HIGH_BIT_DEPTH_MODES:
        # PIL's convert() would clip 16-bit values at 255: scale 0..65535 to 0..255 instead.
        pixels = np.asarray(image, dtype=np.float64) * (255.0 / 65535.0)
        image = Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8), mode="L")
    return utils.convert_PIL_to_numpy(image, format)


def exif_orientation(image: Image.Image) -> int:
    """The image's EXIF orientation, 1 (as stored) without one."""
    try:
        return int(image.getexif().get(ExifTags.Base.Orientation, 1))
    except Exception:  # a malformed EXIF block: ignored, as by PIL's reader and Detectron2
        return 1


class SSDDatasetMapper:
    """Detectron2's ``DatasetMapper`` for SSD: the image (CHW uint8) read with :func:`read_image`,
    in training scaled down to ``max_input_size`` if larger and augmented with its non-crowd
    boxes into ``instances`` (possibly empty); at test time the model resizes it."""

    @configurable
    def __init__(
        self,
        is_train: bool,
        *,
        augmentations: List[Union[T.Augmentation, T.Transform]],
        image_format: str,
        max_input_size: Optional[int] = None,
    ):
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.max_input_size = max_input_size

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        return {
            "is_train": is_train,
            "augmentations": build_ssd_train_augmentations(cfg) if is_train else [],
            "image_format": cfg.INPUT.FORMAT,
            # Crops keep >= 0.3 of a side: 4x loses nothing, and 8000x8000 photos take gigabytes.
            "max_input_size": 4 * max(resolve_image_size(cfg)),
        }

    def __call__(self, dataset_dict):
        """The dict (not modified) with "image", in training "instances", no "annotations"."""
        dataset_dict = copy.deepcopy(dataset_dict)
        image = read_image(dataset_dict["file_name"], format=self.image_format)
        utils.check_image_size(dataset_dict, image)
        annotations = dataset_dict.pop("annotations", None) or []
        annotations = [a for a in annotations if a.get("iscrowd", 0) == 0] if self.is_train else []

        aug_input = T.AugInput(image, boxes=_boxes_xyxy_abs(annotations) if self.is_train else None)
        height, width = image.shape[:2]
        if self.is_train and self.max_input_size and max(height, width) > self.max_input_size:
            scale = self.max_input_size / max(height, width)
            new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
            aug_input.transform(T.ResizeTransform(height, width, new_h, new_w, Image.BILINEAR))
        self.augmentations(aug_input)
        dataset_dict["image"] = _to_chw_tensor(aug_input.image)
        if not self.is_train:
            return dataset_dict

        image_size = aug_input.image.shape[:2]
        gt_boxes = Boxes(torch.as_tensor(aug_input.boxes, dtype=torch.float32).reshape(-1, 4))
        gt_boxes.clip(image_size)
        # The SSD crop marks the boxes whose centre it removed as zero-area boxes.
        keep = gt_boxes.nonempty(threshold=1e-5)
        instances = Instances(image_size)
        instances.gt_boxes = gt_boxes[keep]
        classes = torch.as_tensor([a["category_id"] for a in annotations], dtype=torch.int64)
        instances.gt_classes = classes[keep]
        dataset_dict["instances"] = instances
        return dataset_dict


def _boxes_xyxy_abs(annotations) -> np.ndarray:
    # One conversion per box mode, not per box.
    boxes = np.array([a["bbox"] for a in annotations], dtype=np.float64).reshape(-1, 4)
    modes = np.array([int(a["bbox_mode"]) for a in annotations], dtype=np.int64)
    for mode in np.unique(modes):
        if mode != BoxMode.XYXY_ABS:
            selected = modes == mode
            boxes[selected] = BoxMode.convert(boxes[selected], BoxMode(mode), BoxMode.XYXY_ABS)
    return boxes.astype(np.float32)


def _to_chw_tensor(image: np.ndarray) -> torch.Tensor:
    # A tensor, not a numpy array: the data loader moves tensors through shared memory.
    return torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
