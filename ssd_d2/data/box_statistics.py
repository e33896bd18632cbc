"""The ground-truth boxes of a data set as the network sees them: each image stretched to the
network input (height, width) by the training resize, :class:`FixedSizeResize`."""

from typing import List, Tuple

import numpy as np

from detectron2.structures import BoxMode

from .transforms import FixedSizeResize

__all__ = ["DatasetBoxes", "dataset_boxes"]


class DatasetBoxes:
    """Every non-crowd ground-truth box of a list of dataset dicts, with its image's size."""

    def __init__(self, boxes: np.ndarray, image_sizes: np.ndarray):
        self.boxes = boxes  # (N, 4) XYXY, image pixels
        self.image_sizes = image_sizes  # (N, 2) height, width of each box's image

    def __len__(self) -> int:
        return len(self.boxes)

    @property
    def sizes(self) -> np.ndarray:
        """(N, 2) width and height of each box in its image's pixels."""
        return self.boxes[:, 2:] - self.boxes[:, :2]

    def typical_aspect(self) -> float:
        """The images' median width / height, each image counted once per box."""
        if not len(self):
            return 1.0
        return float(np.median(self.image_sizes[:, 1] / self.image_sizes[:, 0]))

    def at_input(self, image_size: Tuple[int, int]) -> np.ndarray:
        """(N, 4) XYXY boxes at the network input ``image_size`` (height, width): the boxes
        the training resize gives."""
        resize = FixedSizeResize(image_size)
        out = np.empty_like(self.boxes)
        # One transform per image size (many images share one).
        sizes, inverse = np.unique(self.image_sizes, axis=0, return_inverse=True)
        for i, (height, width) in enumerate(sizes):
            rows = np.flatnonzero(inverse.reshape(-1) == i)
            transform = resize.get_transform(np.empty((height, width, 0), dtype=np.uint8))
            out[rows] = transform.apply_box(self.boxes[rows])
        return out


def dataset_boxes(dicts: List[dict]) -> DatasetBoxes:
    """The boxes of ``dicts`` (Detectron2 dataset dicts with "height" and "width"); crowd
    annotations are left out, as the training matching leaves them out."""
    boxes, sizes = [], []
    for record in dicts:
        for annotation in record.get("annotations", []):
            if annotation.get("iscrowd", 0):
                continue
            box = BoxMode.convert(annotation["bbox"], annotation["bbox_mode"], BoxMode.XYXY_ABS)
            boxes.append(box)
            sizes.append((record["height"], record["width"]))
    return DatasetBoxes(
        np.array(boxes, dtype=np.float32).reshape(-1, 4),
        np.array(sizes, dtype=np.int64).reshape(-1, 2),
    )
