"""The SSD training augmentations (SSD paper, 2.2) as Detectron2 Augmentations, drawing from
numpy's global RNG (seeded per sample by the training loader) in ``get_transform`` only."""

import itertools
import random
from typing import Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch

from detectron2.data import transforms as T
from detectron2.projects.point_rend import ColorAugSSDTransform
from detectron2.structures import Boxes, pairwise_iou

from ..config import height_width, resolve_image_size

__all__ = ["SeededColorAugSSDTransform", "RandomPhotometricDistortion", "RandomChannelSwap"]
__all__ += ["ChannelSwapTransform", "ExpandTransform", "RandomExpand", "SSDCropTransform"]
__all__ += ["MinIoURandomCrop", "OpenCVResizeTransform", "FixedSizeResize"]
__all__ += ["build_ssd_train_augmentations"]


class SeededColorAugSSDTransform(ColorAugSSDTransform):
    """Detectron2's SSD colour distortion with its random choices (the parent draws them from
    Python's ``random`` while transforming) fixed by ``seed``. ``hue_delta``: OpenCV units."""

    def __init__(self, img_format: str, seed: int, hue_delta: int = 9, **kwargs):
        super().__init__(img_format, hue_delta=hue_delta, **kwargs)
        self.seed = seed
        self.img_format = img_format  # for the repr

    def apply_image(self, img, interp=None):
        state = random.getstate()
        random.seed(self.seed)
        try:
            return super().apply_image(img)
        finally:
            random.setstate(state)

    # The parent's per-value maps as 256-entry tables, one lookup per pixel: same, faster.

    def convert(self, img, alpha=1, beta=0):
        if img.dtype != np.uint8:
            return super().convert(img, alpha, beta)
        table = super().convert(np.arange(256, dtype=np.uint8), alpha, beta)
        return cv2.LUT(np.ascontiguousarray(img), table)

    def hue(self, img):
        if img.dtype != np.uint8:
            return super().hue(img)
        if random.randrange(2):
            shift = random.randint(-self.hue_delta, self.hue_delta)
            img = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
            table = ((np.arange(256) + shift) % 180).astype(np.uint8)
            img[:, :, 0] = cv2.LUT(np.ascontiguousarray(img[:, :, 0]), table)
            return cv2.cvtColor(img, cv2.COLOR_HSV2BGR)
        return img


class RandomPhotometricDistortion(T.Augmentation):
    """SSD's photometric distortion: brightness, then contrast, saturation and hue (contrast
    first or last), each with probability 0.5; ``hue_delta`` in degrees, as lufficc/SSD."""

    def __init__(
        self,
        image_format: str,
        brightness_delta: float = 32,
        contrast_range: Tuple[float, float] = (0.5, 1.5),
        saturation_range: Tuple[float, float] = (0.5, 1.5),
        hue_delta: float = 18,
    ):
        super().__init__()
        self._init(locals())

    def get_transform(self, image):
        return SeededColorAugSSDTransform(
            self.image_format,
            seed=int(np.random.randint(np.iinfo(np.int32).max)),
            brightness_delta=self.brightness_delta,
            contrast_low=self.contrast_range[0],
            contrast_high=self.contrast_range[1],
            saturation_low=self.saturation_range[0],
            saturation_high=self.saturation_range[1],
            # OpenCV stores the hue of 8-bit images in [0, 180): one unit is 2 degrees.
            hue_delta=int(round(self.hue_delta / 2)),
        )


class ChannelSwapTransform(T.Transform):
    """Reorder the channels of the image: output channel i is input channel ``order[i]``."""

    def __init__(self, order: Tuple[int, ...]):
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img):
        # One OpenCV pass: about 10 times faster than numpy's fancy indexing.
        out = np.empty(img.shape, dtype=img.dtype)
        pairs = [v for i, source in enumerate(self.order) for v in (int(source), i)]
        cv2.mixChannels([np.ascontiguousarray(img)], [out], pairs)
        return out

    def apply_coords(self, coords):
        return coords

    def inverse(self):
        return ChannelSwapTransform(tuple(int(i) for i in np.argsort(self.order)))


class RandomChannelSwap(T.Augmentation):
    """With probability ``prob``, one of the six channel permutations (the identity included):
    lufficc/SSD's "RandomLightingNoise", which the SSD paper does not describe."""

    _ORDERS = tuple(itertools.permutations(range(3)))

    def __init__(self, prob: float = 0.5):
        super().__init__()
        self._init(locals())

    def get_transform(self, image):
        if self._rand_range() >= self.prob:
            return T.NoOpTransform()
        order = self._ORDERS[np.random.randint(len(self._ORDERS))]
        return T.NoOpTransform() if order == (0, 1, 2) else ChannelSwapTransform(order)


class ExpandTransform(T.PadTransform):
    """Pad with a per-channel ``pad_value`` (the pixel mean: zero after mean subtraction)."""

    def apply_image(self, img):
        h, w = img.shape[:2]
        fill = np.asarray(self.pad_value, dtype=np.float64)
        if np.issubdtype(img.dtype, np.integer):
            fill = np.round(fill)
        canvas_shape = (h + self.y0 + self.y1, w + self.x0 + self.x1) + img.shape[2:]
        canvas = np.empty(canvas_shape, dtype=img.dtype)
        # Fill one row, then copy it: much faster than broadcasting a per-channel value.
        canvas[0] = fill.astype(img.dtype)
        canvas[1:] = canvas[0]
        canvas[self.y0 : self.y0 + h, self.x0 : self.x0 + w] = img
        return canvas


class RandomExpand(T.Augmentation):
    """SSD's zoom-out onto a ``fill`` canvas up to ``max_ratio`` times larger: the small objects
    SSD otherwise sees too rarely (SSD paper, 3.6: +2-3% mAP)."""

    def __init__(self, max_ratio: float = 4.0, fill: Sequence[float] = (0, 0, 0), prob=0.5):
        super().__init__()
        assert max_ratio >= 1.0, max_ratio
        fill = tuple(float(v) for v in fill)
        self._init(locals())

    def get_transform(self, image):
        if self._rand_range() >= self.prob:
            return T.NoOpTransform()
        h, w = image.shape[:2]
        ratio = np.random.uniform(1.0, self.max_ratio)
        canvas_h, canvas_w = int(h * ratio), int(w * ratio)
        # Integer offsets: pixels and boxes then move by exactly the same amount.
        top = np.random.randint(canvas_h - h + 1)
        left = np.random.randint(canvas_w - w + 1)
        return ExpandTransform(
            left, top, canvas_w - w - left, canvas_h - h - top, w, h, pad_value=self.fill
        )


class SSDCropTransform(T.CropTransform):
    """A crop that keeps a box only if its centre lies strictly inside (SSD paper, 2.2). One box
    out per box in: the others become zero-area boxes, for the dataset mapper to drop."""

    def apply_box(self, box: np.ndarray) -> np.ndarray:
        box = np.asarray(box)
        crop = np.array([self.x0, self.y0, self.x0 + self.w, self.y0 + self.h])
        keep = _centers_inside(box, crop)
        cropped = box - np.array([self.x0, self.y0, self.x0, self.y0], dtype=box.dtype)
        cropped[:, 0::2] = cropped[:, 0::2].clip(0, self.w)
        cropped[:, 1::2] = cropped[:, 1::2].clip(0, self.h)
        cropped[~keep] = 0
        return cropped


def _centers_inside(boxes: np.ndarray, rects: np.ndarray) -> np.ndarray:
    """Whether each box centre is strictly inside each XYXY rect, shape ``rects.shape[:-1] +
    (len(boxes),)``; float64, so that crop sampling and ``apply_box`` agree exactly."""
    boxes = boxes.astype(np.float64).reshape(-1, 4)
    rects = rects.astype(np.float64)[..., None, :]
    centers = (boxes[:, :2] + boxes[:, 2:]) / 2
    return ((centers > rects[..., :2]) & (centers < rects[..., 2:])).all(axis=-1)


class MinIoURandomCrop(T.Augmentation):
    """SSD's random crop: a mode ("whole image", a min IoU, "any crop"), then the first of
    ``max_trials`` integer crops whose IoU with *some* box (Caffe SSD, lufficc/SSD; mmdetection:
    every box) reaches it and that holds a box centre; none: another mode (ssd.pytorch)."""

    def __init__(
        self,
        min_ious: Sequence[float] = (0.1, 0.3, 0.7, 0.9),
        min_crop_size: float = 0.3,
        aspect_ratio_range: Tuple[float, float] = (0.5, 2.0),
        max_trials: int = 50,
        max_mode_draws: int = 100,
    ):
        super().__init__()
        self._init(locals())
        # The "whole image" mode, then the IoU-constrained ones, then "any crop".
        self.modes = (None,) + tuple(float(v) for v in min_ious) + (-float("inf"),)

    def get_transform(self, image, boxes):
        h, w = image.shape[:2]
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        if len(boxes) == 0:
            return T.NoOpTransform()
        for _ in range(self.max_mode_draws):
            min_iou = self.modes[np.random.randint(len(self.modes))]
            if min_iou is None:  # the "whole image" mode
                return T.NoOpTransform()
            rect = self._sample_crop(h, w, boxes, min_iou)
            if rect is not None:
                x0, y0, x1, y1 = rect
                return SSDCropTransform(x0, y0, x1 - x0, y1 - y0, orig_w=w, orig_h=h)
        return T.NoOpTransform()

    def _sample_crop(self, h: int, w: int, boxes: np.ndarray, min_iou: float) -> Optional[tuple]:
        """The first accepted of ``max_trials`` crops sampled at once (integer XYXY), or None."""
        n = self.max_trials
        crop_w = np.random.uniform(self.min_crop_size * w, w, size=n)
        crop_h = np.random.uniform(self.min_crop_size * h, h, size=n)
        left = np.random.uniform(0, w - crop_w)
        top = np.random.uniform(0, h - crop_h)
        # The constraints are checked on the integer crop that is actually cut.
        rects = np.floor(np.stack([left, top, left + crop_w, top + crop_h], axis=1))

        low, high = self.aspect_ratio_range
        accepted = (crop_h / crop_w >= low) & (crop_h / crop_w <= high)
        accepted &= (rects[:, 2] > rects[:, 0]) & (rects[:, 3] > rects[:, 1])
        accepted &= _centers_inside(boxes, rects).any(axis=1)
        if min_iou > -float("inf"):
            iou = pairwise_iou(Boxes(torch.from_numpy(rects)), Boxes(torch.from_numpy(boxes)))
            accepted &= iou.numpy().max(axis=1) >= min_iou
        if not accepted.any():
            return None
        return tuple(int(v) for v in rects[accepted.argmax()])


class OpenCVResizeTransform(T.ResizeTransform):
    """Detectron2's ResizeTransform with OpenCV's bilinear resize for images (lufficc/SSD's):
    tens of times faster than PIL's on the large, strided arrays zoom out and crop leave."""

    def __init__(self, h: int, w: int, new_h: int, new_w: int):
        super().__init__(h, w, new_h, new_w, interp=None)

    def apply_image(self, img, interp=None):
        if img.shape[:2] != (self.h, self.w):
            raise ValueError(f"Expected an image of {self.h}x{self.w}, got {img.shape[:2]}.")
        # OpenCV would copy a flipped view (negative strides) first: resize the unflipped pixels
        # and flip the small result (equal up to one rounding level, about 15 times faster).
        mirrored = img.strides[1] < 0
        if mirrored:
            img = img[:, ::-1]
        resized = cv2.resize(img, (self.new_w, self.new_h), interpolation=cv2.INTER_LINEAR)
        resized = resized.reshape((self.new_h, self.new_w) + img.shape[2:])
        return np.ascontiguousarray(resized[:, ::-1]) if mirrored else resized


class FixedSizeResize(T.Augmentation):
    """Resize to ``size``, a square's side or (height, width) (:class:`OpenCVResizeTransform`)."""

    def __init__(self, size: Union[int, Tuple[int, int]]):
        super().__init__()
        self.size = height_width(size)

    def get_transform(self, image):
        return OpenCVResizeTransform(*image.shape[:2], *self.size)


def build_ssd_train_augmentations(cfg) -> list:
    """The SSD training augmentations of ``cfg.INPUT.SSD``, ending with the resize to the
    network size (:func:`resolve_image_size`; none at test time: the model resizes any input
    itself)."""
    ssd = cfg.INPUT.SSD
    augmentations = []
    if ssd.PHOTOMETRIC.ENABLED:
        augmentations.append(
            RandomPhotometricDistortion(
                cfg.INPUT.FORMAT,
                brightness_delta=ssd.PHOTOMETRIC.BRIGHTNESS_DELTA,
                contrast_range=tuple(ssd.PHOTOMETRIC.CONTRAST_RANGE),
                saturation_range=tuple(ssd.PHOTOMETRIC.SATURATION_RANGE),
                hue_delta=ssd.PHOTOMETRIC.HUE_DELTA,
            )
        )
        if ssd.PHOTOMETRIC.CHANNEL_SWAP_PROB > 0:
            augmentations.append(RandomChannelSwap(ssd.PHOTOMETRIC.CHANNEL_SWAP_PROB))
    if ssd.EXPAND.ENABLED:
        # PIXEL_MEAN is in INPUT.FORMAT order, as the mapper reads images.
        augmentations.append(
            RandomExpand(ssd.EXPAND.MAX_RATIO, fill=cfg.MODEL.PIXEL_MEAN, prob=ssd.EXPAND.PROB)
        )
    if ssd.MIN_IOU_CROP.ENABLED:
        augmentations.append(
            MinIoURandomCrop(
                min_ious=tuple(ssd.MIN_IOU_CROP.MIN_IOUS),
                min_crop_size=ssd.MIN_IOU_CROP.MIN_CROP_SIZE,
                aspect_ratio_range=tuple(ssd.MIN_IOU_CROP.ASPECT_RATIO_RANGE),
                max_trials=ssd.MIN_IOU_CROP.MAX_TRIALS,
            )
        )
    if ssd.FLIP_PROB > 0:
        augmentations.append(T.RandomFlip(prob=ssd.FLIP_PROB))
    augmentations.append(FixedSizeResize(resolve_image_size(cfg)))
    return augmentations
