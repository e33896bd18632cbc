"""Coverage of ground truth by default boxes, and the search for fitted ones, on boxes made by
hand: exact shares, both IoU arithmetics, the grid's limit, the search's own count."""

import numpy as np
import pytest
import torch

from ssd_d2.modeling.default_box_fitting import (
    DefaultBoxSet,
    LevelBoxes,
    _fit_at_size,
    coverage_table,
    matched_ground_truth,
    unmatchable_ground_truth,
)
from ssd_d2.modeling.matching import MATCHING_ARITHMETICS


def _one_level(ratios=()):
    """A 16x16 input, one 2x2 level (step 8), squares of side 8 (min 8, max 8)."""
    return DefaultBoxSet((16, 16), [(2, 2)], [LevelBoxes((8.0, 8.0), 8.0, 8.0, list(ratios))])


# Default boxes centred at 4 and 12: [0, 0, 8, 8] ... [8, 8, 16, 16].
GT = torch.tensor(
    [
        [0, 0, 8, 8],  # a default box itself: IoU 1
        [0, 0, 8, 4],  # half of one: IoU exactly 0.5 in pixels, just under with lufficc's eps
        [2, 2, 6, 6],  # a quarter: IoU 0.25
        [8, 8, 16, 16],  # another default box
    ],
    dtype=torch.float32,
)


def test_matched_share_by_arithmetic():
    box_set = _one_level()
    assert box_set.num_boxes == 8
    pixels = matched_ground_truth(GT, box_set, 0.5, "torchvision")
    assert pixels.tolist() == [True, True, False, True]
    units = matched_ground_truth(GT, box_set, 0.5, "lufficc")
    assert units.tolist() == [True, False, False, True]
    # NVIDIA's strictly-above rule drops the exact 0.5 too.
    assert matched_ground_truth(GT, box_set, 0.5, "nvidia").tolist() == [True, False, False, True]


def test_aspect_ratio_pair_matches_half_box():
    # Min size 8 with ratio 4: 16x4 and 4x16 boxes.
    box_set = _one_level([4.0])
    assert box_set.num_boxes == 2 * 2 * 4
    tall = torch.tensor([[2.0, 0.0, 6.0, 16.0]])  # the 4x16 box at column 0
    assert matched_ground_truth(tall, box_set, 0.5, "torchvision").tolist() == [True]
    assert matched_ground_truth(tall, _one_level(), 0.5, "torchvision").tolist() == [False]


def test_coverage_table_counts():
    sizes = torch.tensor([[8, 8], [8, 4], [4, 20], [40, 40], [10, 50]], dtype=torch.float32)
    matched = torch.tensor([True, False, True, True, False])
    table = coverage_table(sizes, matched, size_bins=(0, 16, np.inf), aspect_bins=(0, 2, np.inf))
    # sqrt(w h): 8, 5.7, 8.9, 40, 22.4; h / w: 1, 0.5, 5, 1, 5.
    assert table.total.tolist() == [[2, 1], [1, 1]]
    assert table.matched.tolist() == [[1, 1], [1, 0]]
    assert table.share == pytest.approx(3 / 5)
    text = table.format()
    assert "1/2 50%" in text and "3/5 60%" in text


def test_unmatchable_by_the_grid():
    box_set = _one_level()
    gt = torch.tensor(
        [
            [7, 7, 9, 9],  # 2x2 midway between four centres: 4 px off on each axis
            [3, 3, 5, 5],  # 2x2 on a centre: a 2x2 default box would match it
            [4, 4, 12, 12],  # 8x8 midway: IoU of an 8x8 box 4 px off both ways is 16/112
        ],
        dtype=torch.float32,
    )
    assert unmatchable_ground_truth(gt, box_set, 0.5).tolist() == [True, False, True]


def test_search_count_equals_exact_coverage():
    # Tall boxes on a 32x32 input with 4x4 and 2x2 levels: the search's four-centre count must
    # equal the exact all-pairs coverage of the boxes it returns.
    rng = np.random.default_rng(0)
    widths = rng.uniform(4, 12, 60)
    heights = widths * rng.uniform(2, 5, 60)
    x0, y0 = rng.uniform(0, 32 - widths), rng.uniform(0, 1, 60) * (32 - np.minimum(heights, 31))
    gt = np.stack([x0, y0, x0 + widths, np.minimum(y0 + heights, 32)], 1)
    gt = torch.tensor(gt, dtype=torch.float32)
    arithmetic = MATCHING_ARITHMETICS["lufficc"]
    count, levels = _fit_at_size(
        gt, (32, 32), [(4, 4), (2, 2)], "center_and_size", arithmetic, 0.5, 200, [8, 16]
    )
    box_set = DefaultBoxSet((32, 32), [(4, 4), (2, 2)], levels)
    assert box_set.num_boxes <= 200
    assert any(level.aspect_ratios for level in levels)
    assert count == int(matched_ground_truth(gt, box_set, 0.5, "lufficc").sum())
    squares_only = DefaultBoxSet(
        (32, 32),
        [(4, 4), (2, 2)],
        [LevelBoxes(lv.step, lv.min_size, lv.max_size, []) for lv in levels],
    )
    assert count > int(matched_ground_truth(gt, squares_only, 0.5, "lufficc").sum())


def test_budget_below_two_boxes_per_location():
    gt = torch.tensor([[0.0, 0.0, 8.0, 8.0]])
    arithmetic = MATCHING_ARITHMETICS["lufficc"]
    assert _fit_at_size(gt, (16, 16), [(2, 2)], "none", arithmetic, 0.5, 7, [8]) is None
