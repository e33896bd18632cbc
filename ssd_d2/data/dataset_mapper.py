import copy
from typing import List, Union

import numpy as np
import torch

from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import Boxes, BoxMode, Instances

from .transforms import build_ssd_train_augmentations

__all__ = ["SSDDatasetMapper"]


class SSDDatasetMapper:
    """
    Map a Detectron2 dataset dict to the input of the SSD model, like Detectron2's
    ``DatasetMapper`` but with the SSD augmentations and boxes only:

    1. read the image in ``image_format`` (the model's ``INPUT.FORMAT``);
    2. training: apply the augmentations to the image and its boxes (crowd annotations are
       skipped), drop the boxes that the crop removed or that became empty, and store them as
       ``instances`` (``gt_boxes``, ``gt_classes``). An image left without boxes is kept, with
       empty instances: a valid negative;
    3. test: apply the augmentations (none by default) to the image only and drop the
       annotations. The image keeps its size: the SSD model resizes any input itself.

    The returned ``image`` is a CHW uint8 tensor.
    """

    @configurable
    def __init__(
        self,
        is_train: bool,
        *,
        augmentations: List[Union[T.Augmentation, T.Transform]],
        image_format: str,
    ):
        """
        Args:
            is_train: whether to map annotations to training instances.
            augmentations: applied in order to the image and, in training, its boxes.
            image_format: the format the image is read in, e.g. "RGB".
        """
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        augmentations = build_ssd_train_augmentations(cfg) if is_train else []
        return {
            "is_train": is_train,
            "augmentations": augmentations,
            "image_format": cfg.INPUT.FORMAT,
        }

    def __call__(self, dataset_dict):
        """
        Args:
            dataset_dict (dict): one image in Detectron2's dataset format. Not modified.

        Returns:
            dict: the input dict's fields plus "image" and, in training, "instances"; without
            "annotations".
        """
        dataset_dict = copy.deepcopy(dataset_dict)
        image = utils.read_image(dataset_dict["file_name"], format=self.image_format)
        utils.check_image_size(dataset_dict, image)
        annotations = dataset_dict.pop("annotations", None)

        if not self.is_train:
            aug_input = T.AugInput(image)
            self.augmentations(aug_input)
            dataset_dict["image"] = _to_chw_tensor(aug_input.image)
            return dataset_dict

        annotations = [a for a in annotations or [] if a.get("iscrowd", 0) == 0]
        boxes = _boxes_xyxy_abs(annotations)
        classes = np.array([a["category_id"] for a in annotations], dtype=np.int64)

        aug_input = T.AugInput(image, boxes=boxes)
        self.augmentations(aug_input)
        image = aug_input.image
        image_size = image.shape[:2]

        gt_boxes = Boxes(torch.as_tensor(aug_input.boxes, dtype=torch.float32).reshape(-1, 4))
        gt_boxes.clip(image_size)
        # The SSD crop marks the boxes whose centre it removed as zero-area boxes.
        keep = gt_boxes.nonempty(threshold=1e-5)
        instances = Instances(image_size)
        instances.gt_boxes = gt_boxes[keep]
        instances.gt_classes = torch.as_tensor(classes)[keep]

        dataset_dict["image"] = _to_chw_tensor(image)
        dataset_dict["instances"] = instances
        return dataset_dict


def _boxes_xyxy_abs(annotations) -> np.ndarray:
    """The annotations' boxes as an Nx4 float32 XYXY_ABS array, one conversion per box mode."""
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
