"""
Ground truth on a 300x300 input where the peers' IoU arithmetic decides the matches: integer
pixel boxes, some of them midway between two default boxes (mirror images about the box's
centre, of equal IoU in exact arithmetic) and some small ones at or near IoU 0.5 with a
default box.
"""

import numpy as np
import torch

SIZE = 300

# A 300x300 image with five objects on which lufficc/SSD's matching and a matching in pixels
# differ: the last box lies midway between two default boxes of SSD300's 38x38 level.
MIRROR_TIE_EXAMPLE = torch.tensor(
    [[24, 59, 79, 99], [20, 5, 203, 148], [88, 101, 192, 125], [6, 53, 144, 230],
     [124, 130, 158, 140]],
    dtype=torch.float32,
)  # fmt: skip


def _random_box(rng):
    w, h = rng.integers(4, 200, size=2)
    x, y = rng.integers(0, SIZE - w), rng.integers(0, SIZE - h)
    return [x, y, x + w, y + h]


def _mirror_box(rng):
    # Centre midway between two neighbouring centres of the 38x38 (step 8) or 19x19 (step 16)
    # level on one axis, on a centre on the other; even sides keep the corners integers.
    step = int(rng.choice([8, 16]))
    k = rng.integers(1, SIZE // step - 2)
    between, on = step * (k + 1), step * k + step // 2
    w, h = 2 * rng.integers(2, 25, size=2)
    if rng.integers(2):
        return [between - w // 2, on - h // 2, between + w // 2, on + h // 2]
    return [on - w // 2, between - h // 2, on + w // 2, between + h // 2]


def _near_half_box(rng, small_default_boxes):
    # A small default box rounded to pixels and moved by a third of its side: IoU 1/2 with it
    # in exact arithmetic where its corners are integers and its side a multiple of 3.
    box = small_default_boxes[rng.integers(len(small_default_boxes))]
    box = np.floor(box + 0.5)
    axis = rng.integers(2)
    shift = np.floor((box[axis + 2] - box[axis]) / 3 + 0.5) * rng.choice([-1, 1])
    box[axis] += shift
    box[axis + 2] += shift
    return box


def matching_cases(default_boxes: torch.Tensor, num_sets: int, seed: int, num_classes: int):
    """``num_sets`` (boxes (G, 4) XYXY pixels, 0-based classes (G,)), G from 1 to 8; the first
    is :data:`MIRROR_TIE_EXAMPLE`. ``default_boxes``: (R, 4) pixels on the 300x300 input."""
    rng = np.random.default_rng(seed)
    sides = default_boxes[:, 2:] - default_boxes[:, :2]
    inside = (default_boxes[:, :2] >= 20).all(1) & (default_boxes[:, 2:] <= SIZE - 20).all(1)
    small = default_boxes[inside & (sides.max(1).values <= 64)].double().numpy()
    sets = [MIRROR_TIE_EXAMPLE]
    while len(sets) < num_sets:
        boxes = []
        for _ in range(rng.integers(1, 9)):
            kind = rng.integers(3)
            if kind == 0:
                boxes.append(_random_box(rng))
            elif kind == 1:
                boxes.append(_mirror_box(rng))
            else:
                boxes.append(_near_half_box(rng, small))
        boxes = torch.tensor(np.clip(np.array(boxes, dtype=np.float64), 0, SIZE)).float()
        boxes = boxes[(boxes[:, 2:] > boxes[:, :2]).all(1)]
        if len(boxes):
            sets.append(boxes)
    return [(b, torch.tensor(rng.integers(0, num_classes, size=len(b)))) for b in sets]
