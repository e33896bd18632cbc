import random

import numpy as np
import pytest
import torch

from detectron2.data import transforms as T
from detectron2.structures import Boxes, pairwise_iou

from ssd_d2.data.transforms import (
    ChannelSwapTransform,
    ExpandTransform,
    FixedSizeResize,
    MinIoURandomCrop,
    RandomChannelSwap,
    RandomExpand,
    RandomPhotometricDistortion,
    SeededColorAugSSDTransform,
    SSDCropTransform,
)

IMAGE_SIZE = 64
# The expand fill of the property tests: differs from the black background and every box colour.
FILL = (1, 2, 3)


def _class_color(class_id):
    """A distinct colour per class, never black and never FILL."""
    return np.array([40 + 9 * class_id, 250 - 7 * class_id, 90 + 5 * class_id], dtype=np.uint8)


def _random_sample(rng, max_boxes=6):
    """
    A black image of random size with non-overlapping integer boxes, each painted as a solid
    rectangle of the colour of its class (distinct classes, so distinct colours).
    """
    h, w = rng.integers(40, 121, size=2)
    image = np.zeros((h, w, 3), dtype=np.uint8)
    boxes = []
    for _ in range(rng.integers(0, max_boxes + 1)):
        x0, y0 = rng.integers(0, w - 1), rng.integers(0, h - 1)
        x1 = rng.integers(x0 + 1, min(w, x0 + w // 2) + 1)
        y1 = rng.integers(y0 + 1, min(h, y0 + h // 2) + 1)
        box = np.array([x0, y0, x1, y1], dtype=np.float32)
        overlaps = [
            min(box[2], b[2]) > max(box[0], b[0]) and min(box[3], b[3]) > max(box[1], b[1])
            for b in boxes
        ]
        if not any(overlaps):
            boxes.append(box)
    boxes = np.array(boxes, dtype=np.float32).reshape(-1, 4)
    classes = rng.permutation(20)[: len(boxes)]
    for (x0, y0, x1, y1), c in zip(boxes.astype(int), classes):
        image[y0:y1, x0:x1] = _class_color(c)
    return image, boxes, classes


def _augment(augmentations, image, boxes, classes):
    """Apply the augmentations; drop the boxes the crop removed, as the mapper does."""
    aug_input = T.AugInput(image, boxes=boxes)
    T.AugmentationList(augmentations)(aug_input)
    out_boxes = Boxes(torch.as_tensor(aug_input.boxes).reshape(-1, 4))
    keep = out_boxes.nonempty(threshold=1e-5).numpy()
    return aug_input.image, aug_input.boxes[keep], classes[keep]


def _geometric_augmentations():
    return [RandomExpand(4.0, fill=FILL, prob=0.5), MinIoURandomCrop(), T.RandomFlip(prob=0.5)]


def test_boxes_move_exactly_as_pixels():
    # Expand, crop and flip shift and mirror by whole pixels: every kept box must cover exactly
    # the pixels of its class colour, no more, no less.
    rng = np.random.default_rng(0)
    np.random.seed(0)
    num_boxes_kept = 0
    for _ in range(2000):
        image, boxes, classes = _random_sample(rng)
        image, boxes, classes = _augment(_geometric_augmentations(), image, boxes, classes)
        h, w = image.shape[:2]
        assert np.array_equal(boxes, np.round(boxes))
        for (x0, y0, x1, y1), c in zip(boxes.astype(int), classes):
            assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
            is_color = (image == _class_color(c)).all(axis=2)
            assert is_color[y0:y1, x0:x1].all()
            assert is_color.sum() == (x1 - x0) * (y1 - y0)
        num_boxes_kept += len(boxes)
    assert num_boxes_kept > 2000


def test_full_chain_output_size_boxes_and_classes():
    rng = np.random.default_rng(1)
    np.random.seed(1)
    augmentations = _geometric_augmentations() + [FixedSizeResize(IMAGE_SIZE)]
    num_checked_colors = 0
    for _ in range(2000):
        image, boxes, classes = _random_sample(rng)
        image, boxes, classes = _augment(augmentations, image, boxes, classes)
        _assert_network_sized(image, boxes)
        # Classes stay paired with boxes: the centre of a box large enough to survive the
        # bilinear resize unblurred has its class colour.
        for (x0, y0, x1, y1), c in zip(boxes, classes):
            if x1 - x0 >= 5 and y1 - y0 >= 5:
                center = image[int((y0 + y1) / 2), int((x0 + x1) / 2)].astype(int)
                assert np.abs(center - _class_color(c)).max() <= 2
                num_checked_colors += 1
    assert num_checked_colors > 500


def _assert_network_sized(image, boxes):
    """An augmented sample: a uint8 image at the network size, non-empty boxes inside it."""
    assert image.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and image.dtype == np.uint8
    assert (boxes >= 0).all() and (boxes <= IMAGE_SIZE).all()
    assert (boxes[:, 2:] > boxes[:, :2]).all()


def test_full_chain_with_photometric_distortion():
    rng = np.random.default_rng(2)
    np.random.seed(2)
    augmentations = [RandomPhotometricDistortion("RGB")] + _geometric_augmentations()
    augmentations.append(FixedSizeResize(IMAGE_SIZE))
    for _ in range(300):
        image, boxes, classes = _random_sample(rng)
        image, boxes, _ = _augment(augmentations, image, boxes, classes)
        _assert_network_sized(image, boxes)


def test_photometric_distortion_is_reproducible_and_keeps_boxes():
    image = np.random.default_rng(0).integers(0, 256, size=(30, 40, 3), dtype=np.uint8)
    augmentation = RandomPhotometricDistortion("BGR", hue_delta=18)
    python_state = random.getstate()

    np.random.seed(3)
    transform = augmentation.get_transform(image)
    first = transform.apply_image(image)
    assert np.array_equal(transform.apply_image(image), first)
    np.random.seed(3)
    assert np.array_equal(augmentation.get_transform(image).apply_image(image), first)
    assert random.getstate() == python_state
    # Degrees to OpenCV's 8-bit hue units (2 degrees each).
    assert transform.hue_delta == 9
    boxes = np.array([[1.5, 2.0, 10.0, 20.0]], dtype=np.float32)
    assert np.array_equal(transform.apply_box(boxes), boxes)

    outputs = [augmentation.get_transform(image).apply_image(image) for _ in range(20)]
    assert any(not np.array_equal(out, image) for out in outputs)


def test_expand_transform_by_hand():
    image = np.full((2, 2, 3), 255, dtype=np.uint8)
    transform = ExpandTransform(2, 1, 3, 0, pad_value=(10.0, 20.0, 103.53))
    canvas = transform.apply_image(image)
    assert canvas.shape == (3, 7, 3)
    expected = np.tile(np.array([10, 20, 104], dtype=np.uint8), (3, 7, 1))
    expected[1:3, 2:4] = 255
    assert np.array_equal(canvas, expected)
    boxes = np.array([[0.0, 0.0, 2.0, 2.0], [0.5, 1.0, 1.0, 1.5]], dtype=np.float32)
    np.testing.assert_allclose(
        transform.apply_box(boxes), [[2.0, 1.0, 4.0, 3.0], [2.5, 2.0, 3.0, 2.5]]
    )


def test_expand_fills_with_the_mean_in_channel_order():
    np.random.seed(0)
    image = np.zeros((20, 30, 3), dtype=np.uint8)
    augmentation = RandomExpand(4.0, fill=(123, 117, 104), prob=1.0)
    for _ in range(50):
        canvas = augmentation.get_transform(image).apply_image(image)
        h, w = canvas.shape[:2]
        assert 20 <= h <= 80 and 30 <= w <= 120
        is_black = (canvas == 0).all(axis=2)
        is_mean = (canvas == np.array([123, 117, 104])).all(axis=2)
        assert is_black.sum() == 20 * 30
        assert is_mean.sum() == h * w - 20 * 30


def test_expand_probability():
    np.random.seed(0)
    image = np.zeros((10, 10, 3), dtype=np.uint8)
    assert isinstance(RandomExpand(prob=0.0).get_transform(image), T.NoOpTransform)
    transforms = [RandomExpand(prob=0.5).get_transform(image) for _ in range(400)]
    num_expanded = sum(isinstance(t, ExpandTransform) for t in transforms)
    assert 150 < num_expanded < 250


def test_crop_transform_by_hand():
    transform = SSDCropTransform(10, 20, 50, 40)  # the crop [10, 20, 60, 60]
    boxes = np.array(
        [
            [0, 0, 30, 30],  # centre (15, 15) above the crop: dropped
            [5, 25, 25, 45],  # centre (15, 35) inside: clipped on the left
            [50, 50, 80, 70],  # centre (65, 60) right of the crop: dropped
            [40, 30, 70, 70],  # centre (55, 50) inside: clipped right and bottom
            [10, 20, 60, 60],  # the crop itself
            [20, 20, 40, 20],  # centre (30, 20) on the crop's edge: dropped
        ],
        dtype=np.float32,
    )
    expected = [
        [0, 0, 0, 0],
        [0, 5, 15, 25],
        [0, 0, 0, 0],
        [30, 10, 50, 40],
        [0, 0, 50, 40],
        [0, 0, 0, 0],
    ]
    np.testing.assert_allclose(transform.apply_box(boxes), expected)
    image = np.arange(80 * 70).reshape(70, 80)
    assert np.array_equal(transform.apply_image(image), image[20:60, 10:60])


@pytest.mark.parametrize("min_iou", [0.1, 0.3, 0.5, 0.7, 0.9])
def test_accepted_crops_meet_the_min_iou(min_iou):
    rng = np.random.default_rng(0)
    np.random.seed(0)
    crop = MinIoURandomCrop()
    num_accepted = 0
    for _ in range(300):
        h, w = rng.integers(40, 121, size=2)
        # Boxes as large as the crops, so that high IoUs can be met.
        sizes = rng.uniform(0.3, 1.0, size=(rng.integers(1, 5), 2)) * [w, h]
        xy0 = rng.uniform(0, [w, h] - sizes)
        boxes = np.concatenate([xy0, xy0 + sizes], axis=1)
        rect = crop._sample_crop(h, w, boxes, min_iou)
        if rect is None:
            continue
        num_accepted += 1
        x0, y0, x1, y1 = rect
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        assert min(x1 - x0, y1 - y0) >= int(0.3 * min(w, h)) - 1
        rect_boxes = Boxes(torch.tensor([rect], dtype=torch.float64))
        assert pairwise_iou(rect_boxes, Boxes(torch.from_numpy(boxes))).max() >= min_iou
        centers = (boxes[:, :2] + boxes[:, 2:]) / 2
        assert ((centers > [x0, y0]) & (centers < [x1, y1])).all(axis=1).any()
    assert num_accepted >= 10


def test_crop_modes():
    np.random.seed(0)
    image = np.zeros((100, 120, 3), dtype=np.uint8)
    boxes = np.array([[10, 10, 50, 60], [60, 40, 110, 90]], dtype=np.float32)
    crop = MinIoURandomCrop()
    transforms = [crop.get_transform(image, boxes) for _ in range(700)]
    num_whole = sum(isinstance(t, T.NoOpTransform) for t in transforms)
    # The whole-image mode is one of 7; failed modes add a few more.
    assert 60 < num_whole < 250
    for t in transforms:
        if isinstance(t, SSDCropTransform):
            assert 0 <= t.x0 and t.x0 + t.w <= 120 and 0 <= t.y0 and t.y0 + t.h <= 100
            assert (t.apply_box(boxes)[:, 2:] > t.apply_box(boxes)[:, :2]).all(axis=1).any()


def test_crop_terminates_on_degenerate_inputs():
    np.random.seed(0)
    crop = MinIoURandomCrop(min_ious=(0.9,))
    image = np.zeros((100, 100, 3), dtype=np.uint8)
    no_boxes = np.zeros((0, 4), dtype=np.float32)
    assert isinstance(crop.get_transform(image, no_boxes), T.NoOpTransform)
    one_pixel = np.zeros((1, 1, 3), dtype=np.uint8)
    for _ in range(20):
        assert isinstance(crop.get_transform(one_pixel, [[0, 0, 1, 1]]), T.NoOpTransform)
        transform = crop.get_transform(image, [[50, 50, 50.5, 50.5]])
        kept = transform.apply_box(np.array([[50, 50, 50.5, 50.5]]))
        assert (kept[:, 2:] > kept[:, :2]).all()
        crop.get_transform(image, [[30, 30, 30, 40]])  # zero area

    augmentations = [RandomPhotometricDistortion("RGB")] + _geometric_augmentations()
    augmentations.append(FixedSizeResize(IMAGE_SIZE))
    for boxes in [no_boxes, np.array([[0, 0, 1, 1]], dtype=np.float32)]:
        for _ in range(20):
            aug_input = T.AugInput(one_pixel, boxes=boxes)
            T.AugmentationList(augmentations)(aug_input)
            assert aug_input.image.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)


@pytest.mark.parametrize("image_format", ["RGB", "BGR"])
def test_color_distortion_equals_detectron2s(image_format):
    # The tabulated brightness, contrast, saturation and hue give detectron2's results.
    from detectron2.projects.point_rend import ColorAugSSDTransform

    image = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    changed = 0
    for seed in range(40):
        ours = SeededColorAugSSDTransform(image_format, seed=seed, hue_delta=9)
        state = random.getstate()
        random.seed(seed)
        expected = ColorAugSSDTransform(image_format, hue_delta=9).apply_image(image.copy())
        random.setstate(state)
        result = ours.apply_image(image.copy())
        np.testing.assert_array_equal(result, expected)
        changed += not np.array_equal(result, image)
    assert changed > 30


def test_square_resize_of_a_flipped_view():
    image = np.random.default_rng(3).integers(0, 256, (150, 230, 3), dtype=np.uint8)
    mirrored_view = T.HFlipTransform(230).apply_image(image)
    assert mirrored_view.strides[1] < 0
    resize = FixedSizeResize(64).get_transform(mirrored_view)
    result = resize.apply_image(mirrored_view)
    expected = resize.apply_image(np.ascontiguousarray(mirrored_view))
    assert result.shape == (64, 64, 3) and result.flags["C_CONTIGUOUS"]
    assert np.abs(result.astype(int) - expected.astype(int)).max() <= 1
    assert not np.array_equal(result, resize.apply_image(image))  # it is mirrored


def test_channel_swap_permutes_channels_and_keeps_boxes():
    image = np.random.default_rng(0).integers(0, 256, (4, 5, 3), dtype=np.uint8)
    transform = ChannelSwapTransform((2, 0, 1))
    swapped = transform.apply_image(image)
    np.testing.assert_array_equal(swapped, image[:, :, [2, 0, 1]])
    np.testing.assert_array_equal(transform.inverse().apply_image(swapped), image)
    boxes = np.array([[1.0, 2.0, 3.0, 4.0]])
    np.testing.assert_array_equal(transform.apply_box(boxes), boxes)


def test_channel_swap_probability_zero_never_swaps():
    image = np.zeros((2, 2, 3), dtype=np.uint8)
    swap = RandomChannelSwap(0.0)
    assert all(isinstance(swap.get_transform(image), T.NoOpTransform) for _ in range(50))
