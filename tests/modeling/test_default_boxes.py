import math
import os

import pytest
import torch
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.image_list import ImageList

from ssd_d2.modeling import SSDDefaultBoxGenerator

from ..conftest import CONFIG_DIR, load_config

SSD300_MAPS = [38, 19, 10, 5, 3, 1]
SSD512_MAPS = [64, 32, 16, 8, 4, 2, 1]


def _feature_maps(sizes):
    return [torch.zeros(1, 1, s, s) for s in sizes]


def _generator(config_name):
    return SSDDefaultBoxGenerator(load_config(config_name), [])


@pytest.mark.parametrize(
    "config_name, maps, expected",
    [
        ("ssd300_voc", SSD300_MAPS, 8732),
        ("ssd300_coco", SSD300_MAPS, 8732),
        ("ssd512_voc", SSD512_MAPS, 24564),
        ("ssd512_coco", SSD512_MAPS, 24564),
    ],
)
def test_box_counts_match_the_paper(config_name, maps, expected):
    boxes = _generator(config_name)(_feature_maps(maps))
    assert sum(len(b) for b in boxes) == expected


def test_voc_ssd300_boxes_by_hand():
    generator = _generator("ssd300_voc")
    assert generator.num_anchors == [4, 6, 6, 6, 4, 4]
    boxes = generator(_feature_maps(SSD300_MAPS))
    assert [len(b) for b in boxes] == [5776, 2166, 600, 150, 36, 4]

    # First location of the first level: centre (4, 4), step 8, sizes 30 and 60.
    s = math.sqrt(30 * 60)
    w2, h2 = 30 * math.sqrt(2), 30 / math.sqrt(2)
    expected = torch.tensor(
        [
            [4 - 15, 4 - 15, 4 + 15, 4 + 15],
            [4 - s / 2, 4 - s / 2, 4 + s / 2, 4 + s / 2],
            [4 - w2 / 2, 4 - h2 / 2, 4 + w2 / 2, 4 + h2 / 2],
            [4 - h2 / 2, 4 - w2 / 2, 4 + h2 / 2, 4 + w2 / 2],
        ]
    )
    torch.testing.assert_close(boxes[0].tensor[:4], expected, atol=1e-4, rtol=0)
    # Second location of the first level is one step (8 px) to the right.
    torch.testing.assert_close(
        boxes[0].tensor[4:8], expected + torch.tensor([8.0, 0, 8, 0]), atol=1e-4, rtol=0
    )
    # First location of the second row: one step down (38 locations per row, 4 boxes each).
    torch.testing.assert_close(
        boxes[0].tensor[38 * 4 : 38 * 4 + 4],
        expected + torch.tensor([0, 8.0, 0, 8]),
        atol=1e-4,
        rtol=0,
    )

    # The single 1x1 location of the last level: centre 150, sizes 264 and 315; the 2:1 box
    # is 373 px wide and is clipped to the 300-px image, keeping its centre.
    s = math.sqrt(264 * 315)
    w2, h2 = 264 * math.sqrt(2), 264 / math.sqrt(2)
    expected = torch.tensor(
        [
            [150 - 132, 150 - 132, 150 + 132, 150 + 132],
            [150 - s / 2, 150 - s / 2, 150 + s / 2, 150 + s / 2],
            [0, 150 - h2 / 2, 300, 150 + h2 / 2],
            [150 - h2 / 2, 0, 150 + h2 / 2, 300],
        ]
    )
    assert w2 > 300
    torch.testing.assert_close(boxes[5].tensor, expected, atol=1e-4, rtol=0)


def _torchvision_coco_ssd300_boxes():
    generator = DefaultBoxGenerator(
        [[2], [2, 3], [2, 3], [2, 3], [2], [2]],
        scales=[0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05],
        steps=[8, 16, 32, 64, 100, 300],
    )
    images = ImageList(torch.zeros(1, 3, 300, 300), [(300, 300)])
    return generator(images, _feature_maps(SSD300_MAPS))[0]


def _coco_ssd300_boxes(clamp):
    cfg = load_config("ssd300_coco", "MODEL.SSD.DEFAULT_BOXES.CLAMP", clamp)
    return torch.cat(
        [b.tensor for b in SSDDefaultBoxGenerator(cfg, [])(_feature_maps(SSD300_MAPS))]
    )


def test_size_clamp_equals_torchvision():
    ours, theirs = _coco_ssd300_boxes("size"), _torchvision_coco_ssd300_boxes()
    assert ours.shape == theirs.shape == (8732, 4)
    assert (ours - theirs).abs().max().item() <= 1e-4


def test_center_and_size_clamp_moves_the_centres_past_the_edge():
    assert load_config("ssd300_coco").MODEL.SSD.DEFAULT_BOXES.CLAMP == "center_and_size"
    ours, theirs = _coco_ssd300_boxes("center_and_size"), _torchvision_coco_ssd300_boxes()
    differs = (ours - theirs).abs().max(dim=1).values > 1e-4
    # Only the 10x10 level (step 32) has centres past 300 px: 9.5 * 32 = 304 in its last
    # row and column, 19 locations of 6 boxes. They move to 300, sizes unchanged.
    level_2 = slice(5776 + 2166, 5776 + 2166 + 600)
    assert differs.sum().item() == 19 * 6 == differs[level_2].sum().item()
    centres = lambda b: (b[:, :2] + b[:, 2:]) / 2  # noqa: E731
    assert set(centres(theirs[differs]).flatten().tolist()) <= {304.0} | set(
        centres(theirs[level_2]).flatten().tolist()
    )
    assert centres(ours[differs]).max().item() == pytest.approx(300)
    sizes = lambda b: b[:, 2:] - b[:, :2]  # noqa: E731
    torch.testing.assert_close(sizes(ours), sizes(theirs), atol=1e-4, rtol=0)


def test_no_clamp_keeps_boxes_wider_than_the_image():
    def widths(clamp):
        boxes = _coco_ssd300_boxes(clamp)
        return boxes[:, 2:] - boxes[:, :2]

    # The 1x1 level's 2:1 box is 261 * sqrt(2) = 369 px wide.
    assert widths("none").max().item() == pytest.approx(261 * math.sqrt(2), abs=1e-3)
    assert widths("size").max().item() == widths("center_and_size").max().item() == 300


def test_unknown_clamp_fails_clearly():
    cfg = load_config("ssd300_voc", "MODEL.SSD.DEFAULT_BOXES.CLAMP", "both")
    with pytest.raises(ValueError, match="MODEL.SSD.DEFAULT_BOXES.CLAMP.*center_and_size"):
        SSDDefaultBoxGenerator(cfg, [])


def test_the_old_clip_key_names_the_new_one(tmp_path):
    config = tmp_path / "old.yaml"
    config.write_text(
        '_BASE_: "{}"\nMODEL:\n  SSD:\n    DEFAULT_BOXES:\n      CLIP: True\n'.format(
            os.path.join(CONFIG_DIR, "ssd300_voc.yaml")
        )
    )
    cfg = load_config("ssd300_voc")
    with pytest.raises(KeyError, match='MODEL.SSD.DEFAULT_BOXES.CLAMP.*CLAMP: "size"'):
        cfg.merge_from_file(str(config))
    with pytest.raises(KeyError, match="MODEL.SSD.DEFAULT_BOXES.CLAMP"):
        load_config("ssd300_voc", "MODEL.SSD.DEFAULT_BOXES.CLIP", "False")


def test_steps_that_disagree_with_the_feature_maps_fail_clearly():
    cfg = load_config("ssd300_voc", "MODEL.SSD.DEFAULT_BOXES.STEPS", "[16, 32, 64, 128, 256, 300]")
    generator = SSDDefaultBoxGenerator(cfg, [])
    with pytest.raises(ValueError, match="STEPS"):
        generator(_feature_maps(SSD300_MAPS))


def test_level_count_mismatch_fails_clearly():
    cfg = load_config("ssd300_voc", "MODEL.SSD.DEFAULT_BOXES.MIN_SIZES", "[30, 60, 111]")
    with pytest.raises(ValueError, match="MIN_SIZES"):
        SSDDefaultBoxGenerator(cfg, [])


def _non_square_generator(image_size, steps, min_sizes, max_sizes, clamp="center_and_size"):
    return SSDDefaultBoxGenerator(
        image_size=image_size,
        steps=steps,
        min_sizes=min_sizes,
        max_sizes=max_sizes,
        aspect_ratios=[[]] * len(steps),
        clamp=clamp,
    )


def test_non_square_boxes_by_hand():
    # A 16 x 32 (height x width) input, one 1x2 level: step 16, a 8-px and a 24-px square
    # (sqrt(8 * 72)); the 24-px square is 16 px high after the clamp, still 24 px wide.
    generator = _non_square_generator((16, 32), [16], [8], [72], clamp="size")
    (boxes,) = generator([torch.zeros(1, 1, 1, 2)])
    expected = torch.tensor(
        [
            [8 - 4, 8 - 4, 8 + 4, 8 + 4],
            [8 - 12, 8 - 8, 8 + 12, 8 + 8],
            [24 - 4, 8 - 4, 24 + 4, 8 + 4],
            [24 - 12, 8 - 8, 24 + 12, 8 + 8],
        ],
        dtype=torch.float32,
    )
    torch.testing.assert_close(boxes.tensor, expected, atol=1e-5, rtol=0)


def test_steps_per_axis_and_centres_clamped_to_each_side():
    # A 16 x 30 input, a 2x3 level with step_y 11 and step_x 13: centres at y 5.5, 16.5 and
    # x 6.5, 19.5, 32.5; the last row moves to the height (16), the last column to the
    # width (30), and no centre to the other side.
    generator = _non_square_generator((16, 30), [[11, 13]], [4], [4])
    (boxes,) = generator([torch.zeros(1, 1, 2, 3)])
    centres = boxes.get_centers()[0::2]  # the first box of each cell, row by row
    expected = torch.tensor(
        [[6.5, 5.5], [19.5, 5.5], [30, 5.5], [6.5, 16], [19.5, 16], [30, 16]], dtype=torch.float32
    )
    torch.testing.assert_close(centres, expected)
    sizes = boxes.tensor[:, 2:] - boxes.tensor[:, :2]
    assert (sizes == 4).all()


def test_steps_that_disagree_on_one_axis_name_it():
    # A 16 x 32 input and step 16: a 1x2 map fits, a 1x4 map has twice the columns.
    generator = _non_square_generator((16, 32), [16], [8], [16])
    with pytest.raises(ValueError, match=r"STEPS\[0\] puts its 4 columns .* about 8 here"):
        generator([torch.zeros(1, 1, 1, 4)])
    with pytest.raises(ValueError, match=r"STEPS\[0\] puts its 3 rows"):
        generator([torch.zeros(1, 1, 3, 2)])


def test_a_step_of_three_numbers_fails_clearly():
    with pytest.raises(ValueError, match=r"STEPS\[1\] = \[8, 8, 8\].*\[step_y, step_x\]"):
        _non_square_generator((16, 32), [16, [8, 8, 8]], [8, 8], [16, 16])


def test_square_steps_as_pairs_give_the_same_boxes():
    maps = _feature_maps(SSD300_MAPS)
    pairs = "[[8, 8], [16, 16], [32, 32], [64, 64], [100, 100], [300, 300]]"
    cfg = load_config("ssd300_voc", "MODEL.SSD.DEFAULT_BOXES.STEPS", pairs)
    for ours, theirs in zip(SSDDefaultBoxGenerator(cfg, [])(maps), _generator("ssd300_voc")(maps)):
        assert torch.equal(ours.tensor, theirs.tensor)
