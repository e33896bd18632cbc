"""
The picture tools: default boxes per level, augmented training samples, training curves and
per-class AP with precision-recall curves. Each computes its data in a function tested here
with exact numbers, and its command writes a PNG of the expected size that is not blank.
"""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.layers import ShapeSpec
from detectron2.structures import Boxes, BoxMode, pairwise_iou

from ssd_d2.data.datasets import SHAPE_CLASSES, register_shapes_dataset
from ssd_d2.modeling.anchor_generator import SSDDefaultBoxGenerator
from ssd_d2.tools import (
    demo,
    plot_evaluation,
    plot_metrics,
    visualize_data,
    visualize_default_boxes,
)

from ..conftest import CONFIG_DIR, load_config

DEMO_CONFIG = f"{CONFIG_DIR}/ssd160_shapes_demo.yaml"
DATASET = "ssd_shapes_visual_tools_test"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A registered ssd_shapes split of 4 images."""
    root = tmp_path_factory.mktemp("shapes")
    register_shapes_dataset(
        root=str(root), splits={DATASET: {"dirname": "tiny", "seed": 4, "num_images": 4}}
    )
    return DATASET


def _check_png(path, size):
    """A PNG of ``size`` (width, height) with something drawn on it."""
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == size
        pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    assert pixels.std() > 20
    assert (pixels.min(axis=2) < 200).mean() > 0.02  # not a white page


def _patches(ax, gid):
    return [p for p in ax.patches if p.get_gid() == gid]


# Default boxes ---------------------------------------------------------------------------


def test_default_boxes_of_the_cells_under_points():
    cfg = load_config("ssd160_shapes_demo")
    levels = visualize_default_boxes.default_boxes_by_level(cfg, points=[(0.5, 0.5), (0.1, 0.9)])

    assert [level.name for level in levels] == list(cfg.MODEL.SSD.IN_FEATURES)
    assert [level.grid for level in levels] == [(20, 20), (10, 10), (5, 5), (3, 3), (1, 1)]
    # Two squares plus two boxes per aspect ratio: [2], [2, 3], [2, 3], [2], [2].
    assert [level.boxes_per_cell for level in levels] == [4, 6, 6, 4, 4]
    assert levels[0].cells == [(10, 10), (18, 2)]
    assert levels[3].cells == [(1, 1), (2, 0)]
    assert levels[4].cells == [(0, 0)]  # both points are in the only cell

    generator = SSDDefaultBoxGenerator(cfg, [ShapeSpec(channels=1)] * 5)
    features = [torch.zeros(1, 1, h, w) for h, w in (level.grid for level in levels)]
    for level, anchors, num_anchors in zip(levels, generator(features), generator.num_anchors):
        # The generator's own boxes for these cells, and as many as it has per cell.
        assert len(level.cell_boxes) == len(level.cells) * num_anchors
        height, width = level.grid
        grid = anchors.tensor.view(height, width, num_anchors, 4)
        expected = torch.cat([grid[r, c] for r, c in level.cells])
        torch.testing.assert_close(level.cell_boxes, expected)
        centres = Boxes(level.cell_boxes).get_centers().view(len(level.cells), num_anchors, 2)
        step_y, step_x = level.step
        for (row, col), cell_centres in zip(level.cells, centres):
            expected_centre = torch.tensor([(col + 0.5) * step_x, (row + 0.5) * step_y])
            torch.testing.assert_close(cell_centres, expected_centre.expand_as(cell_centres))
        assert len(level.matched_boxes) == 0

    fig = visualize_default_boxes.draw_default_boxes(levels, np.zeros((160, 160, 3), np.uint8))
    axes = fig.get_axes()
    assert len(axes) == 5
    for ax, level in zip(axes, levels):
        assert len(_patches(ax, "default_box")) == len(level.cell_boxes)
        assert len(_patches(ax, "cell")) == len(level.cells)
        assert not _patches(ax, "matched_box") and not _patches(ax, "gt_box")


def test_default_boxes_matched_to_a_ground_truth_box():
    cfg = load_config("ssd160_shapes_demo")
    # Exactly the 56-pixel square of conv8_2's centre cell (MIN_SIZES[2] = 56, step 32).
    gt = torch.tensor([[52.0, 52.0, 108.0, 108.0]])
    levels = visualize_default_boxes.default_boxes_by_level(cfg, gt_boxes=gt)

    assert gt[0].tolist() in levels[2].matched_boxes.tolist()
    for level in levels:
        if len(level.matched_boxes):
            assert (pairwise_iou(Boxes(level.matched_boxes), Boxes(gt)) >= 0.5).all()
    # Far too large or too small for the 56-pixel box: conv4_3's 12-pixel and conv10_2's
    # 120-pixel boxes reach no IoU of 0.5 with it.
    assert len(levels[0].matched_boxes) == 0 and len(levels[4].matched_boxes) == 0

    fig = visualize_default_boxes.draw_default_boxes(levels, np.zeros((160, 160, 3), np.uint8), gt)
    for ax, level in zip(fig.get_axes(), levels):
        assert len(_patches(ax, "matched_box")) == len(level.matched_boxes)
        assert len(_patches(ax, "gt_box")) == 1


def test_ssd512_default_boxes_per_level():
    levels = visualize_default_boxes.default_boxes_by_level(load_config("ssd512_voc"))
    assert [level.grid[0] for level in levels] == [64, 32, 16, 8, 4, 2, 1]
    total = sum(level.grid[0] * level.grid[1] * level.boxes_per_cell for level in levels)
    assert total == 24564  # the paper's SSD512


def test_visualize_default_boxes_command(dataset, tmp_path, capsys):
    output = tmp_path / "boxes.png"
    args = ["--config-file", DEMO_CONFIG, "--output", str(output)]
    assert visualize_default_boxes.main([*args, "--dataset", dataset, "--index", "1"]) == 0
    _check_png(output, (1140, 870))  # 3 x 2 panels of 3.6 inches and titles, at 100 dpi
    assert "conv4_3: 20x20 cells, 4 boxes per cell" in capsys.readouterr().out

    for bad in (["--input", str(tmp_path / "missing.jpg")], ["--dataset", dataset, "--index", "9"]):
        with pytest.raises(SystemExit) as e:
            visualize_default_boxes.main([*args, *bad])
        assert e.value.code == 2
    assert f"--index 9: data set {dataset!r} has 4 images" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        visualize_default_boxes.main([*args, "--points", "2,0.5"])


# Augmented training samples --------------------------------------------------------------


def test_augmented_samples(dataset):
    cfg = load_config("ssd160_shapes_demo")
    dicts = DatasetCatalog.get(dataset)
    indices = [i for i, d in enumerate(dicts) if d["annotations"]][:2]
    rows = visualize_data.augmented_samples(cfg, dicts, indices, samples_per_image=3, seed=1)

    assert len(rows) == 2 and all(len(row) == 4 for row in rows)
    for index, row in zip(indices, rows):
        original, augmented = row[0], row[1:]
        annotations = dicts[index]["annotations"]
        expected = [
            BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in annotations
        ]
        np.testing.assert_allclose(original.boxes, np.array(expected, dtype=np.float32))
        assert original.classes.tolist() == [a["category_id"] for a in annotations]
        assert original.image.shape == (dicts[index]["height"], dicts[index]["width"], 3)
        for sample in augmented:
            assert sample.image.shape == (160, 160, 3)  # resized to MODEL.SSD.IMAGE_SIZE
            assert ((sample.boxes >= 0) & (sample.boxes <= 160)).all()
            assert set(sample.classes.tolist()) <= set(original.classes.tolist())

    again = visualize_data.augmented_samples(cfg, dicts, indices, samples_per_image=3, seed=1)
    for row, row_again in zip(rows, again):
        for sample, sample_again in zip(row, row_again):
            np.testing.assert_array_equal(sample.image, sample_again.image)
            np.testing.assert_array_equal(sample.boxes, sample_again.boxes)

    fig = visualize_data.draw_samples(rows, SHAPE_CLASSES)
    axes = fig.get_axes()
    samples = [sample for row in rows for sample in row]
    assert len(axes) == len(samples)
    for ax, sample in zip(axes, samples):
        assert len(_patches(ax, "gt_box")) == len(sample.boxes)
        assert [t.get_text() for t in ax.texts] == [SHAPE_CLASSES[c] for c in sample.classes]


def test_visualize_data_command(dataset, tmp_path, capsys):
    output = tmp_path / "samples.png"
    args = ["--config-file", DEMO_CONFIG, "--dataset", dataset, "--output", str(output)]
    assert visualize_data.main([*args, "--indices", "0", "1", "--samples", "3"]) == 0
    _check_png(output, (1115, 665))  # 4 x 2 panels of 2.6 inches, titles, at 100 dpi
    assert "image 0: " in capsys.readouterr().out

    with pytest.raises(SystemExit) as e:
        visualize_data.main([*args[:2], "--dataset", "no_such_set", "--output", str(output)])
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        visualize_data.main([*args, "--indices", "4"])
    assert f"--indices [4]: data set {dataset!r} has 4 images" in capsys.readouterr().err


# Training curves ---------------------------------------------------------------------------


def _write_metrics(path):
    records = [
        {"iteration": 19, "total_loss": 5.0, "loss_cls": 3.0, "loss_box_reg": 2.0, "lr": 0.001},
        {"iteration": 39, "total_loss": 4.0, "loss_cls": 2.5, "loss_box_reg": 1.5, "lr": 0.002},
        {"iteration": 39, "bbox/AP": 10.0, "bbox/AP50": 20.0, "bbox/AP-circle": 15.0},
        # Resumed from iteration 20: iteration 39 again, with other values.
        {"iteration": 39, "total_loss": 3.5, "loss_cls": 2.0, "loss_box_reg": 1.5, "lr": 0.002},
        {"iteration": 59, "total_loss": 3.0, "loss_cls": 1.8, "loss_box_reg": 1.2, "lr": 0.0002},
        {"iteration": 59, "bbox/AP": 30.0, "bbox/AP50": 50.0, "bbox/AP-circle": 40.0},
    ]
    lines = [json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + '\n{"iteration": 79, "total_lo')  # killed mid-line


def test_load_and_plot_metrics(tmp_path):
    _write_metrics(tmp_path / "metrics.json")
    metrics = plot_metrics.load_metrics(str(tmp_path))  # the folder holding metrics.json
    assert sorted(metrics) == [
        "bbox/AP", "bbox/AP-circle", "bbox/AP50", "loss_box_reg", "loss_cls", "lr", "total_loss"
    ]  # fmt: skip
    iterations, values = metrics["total_loss"]
    assert iterations.tolist() == [19, 39, 59] and values.tolist() == [5.0, 3.5, 3.0]
    assert metrics["bbox/AP"][0].tolist() == [39, 59]
    assert metrics["bbox/AP"][1].tolist() == [10.0, 30.0]
    assert metrics["lr"][1].tolist() == [0.001, 0.002, 0.0002]

    fig = plot_metrics.plot_metrics(metrics)
    panels = {ax.get_title(): ax for ax in fig.get_axes()}
    assert list(panels) == ["loss", "learning rate", "evaluation", "AP per class"]
    labels = {title: [line.get_label() for line in ax.get_lines()] for title, ax in panels.items()}
    assert labels["loss"] == ["total_loss", "loss_box_reg", "loss_cls"]
    assert labels["evaluation"] == ["bbox/AP", "bbox/AP50"]
    assert labels["AP per class"] == ["circle"]
    np.testing.assert_array_equal(panels["loss"].get_lines()[0].get_ydata(), [5.0, 3.5, 3.0])
    assert panels["loss"].get_yscale() == "log"


def test_load_metrics_rejects_a_corrupt_file(tmp_path):
    (tmp_path / "metrics.json").write_text('{"iteration": 1, "lr": 0.1}\nnot json\n{}\n')
    with pytest.raises(ValueError, match="line 2 is not JSON"):
        plot_metrics.load_metrics(str(tmp_path / "metrics.json"))
    with pytest.raises(FileNotFoundError):
        plot_metrics.load_metrics(str(tmp_path / "nothing"))


def test_plot_metrics_command(tmp_path, capsys):
    _write_metrics(tmp_path / "metrics.json")
    output = tmp_path / "curves.png"
    assert plot_metrics.main([str(tmp_path), "--output", str(output)]) == 0
    _check_png(output, (1200, 760))  # 2 x 2 panels
    assert "last: total_loss 3, lr 0.0002, bbox/AP 30" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        plot_metrics.main([str(tmp_path / "missing"), "--output", str(output)])
    assert e.value.code == 2


# Per-class AP and precision-recall ----------------------------------------------------------


def _ground_truth():
    # (image id, category id, XYWH box)
    boxes = [(1, 1, [10, 10, 30, 30]), (2, 1, [50, 50, 20, 20])]
    boxes += [(2, 2, [0, 0, 40, 40]), (2, 2, [60, 60, 30, 30])]
    annotations = [
        {"id": i + 1, "image_id": image_id, "category_id": c, "bbox": box, "iscrowd": 0}
        for i, (image_id, c, box) in enumerate(boxes)
    ]
    for annotation in annotations:
        annotation["area"] = annotation["bbox"][2] * annotation["bbox"][3]
    return {
        "images": [{"id": i, "width": 100, "height": 100} for i in (1, 2)],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "c"}],
    }


def test_evaluate_detections_per_class():
    detections = [
        # Class a: both boxes found, nothing else: AP 1.
        {"image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 30], "score": 0.9},
        {"image_id": 2, "category_id": 1, "bbox": [50, 50, 20, 20], "score": 0.8},
        # Class b: a false positive ranked above one of its two boxes: precision 1/2 up to
        # recall 1/2, so COCO's 101-point AP is 51 * 0.5 / 101 at every IoU threshold.
        {"image_id": 2, "category_id": 2, "bbox": [45, 0, 10, 10], "score": 0.95},
        {"image_id": 2, "category_id": 2, "bbox": [0, 0, 40, 40], "score": 0.9},
        # Class c has no ground truth: no AP.
        {"image_id": 1, "category_id": 3, "bbox": [0, 0, 5, 5], "score": 0.5},
    ]
    curves = plot_evaluation.evaluate_detections(_ground_truth(), detections)

    assert curves.class_names == ["a", "b", "c"]
    np.testing.assert_allclose(curves.ap, [1.0, 25.5 / 101, np.nan])
    np.testing.assert_allclose(curves.ap50, [1.0, 25.5 / 101, np.nan])
    assert curves.recall.shape == (101,)
    np.testing.assert_array_equal(curves.precision50[0], np.ones(101))
    np.testing.assert_array_equal(curves.precision50[1], [0.5] * 51 + [0.0] * 50)
    assert np.isnan(curves.precision50[2]).all()
    assert curves.stats["AP"] == pytest.approx((1.0 + 25.5 / 101) / 2)

    fig = plot_evaluation.plot_evaluation(curves)
    bars_ax, pr_ax = fig.get_axes()
    widths = [p.get_width() for p in _patches(bars_ax, "ap_bar")]
    np.testing.assert_allclose(widths, [100.0, 2550 / 101, 0.0])
    assert [line.get_gid() for line in pr_ax.get_lines()].count("pr_curve") == 2

    # Restricted to image 1, class b has no ground truth left.
    only_first = plot_evaluation.evaluate_detections(_ground_truth(), detections, image_ids=[1])
    np.testing.assert_allclose(only_first.ap, [1.0, np.nan, np.nan])
    # No detections at all: AP 0 wherever there is ground truth.
    nothing = plot_evaluation.evaluate_detections(_ground_truth(), [])
    np.testing.assert_allclose(nothing.ap, [0.0, 0.0, np.nan])


def test_plot_evaluation_command(dataset, tmp_path, capsys):
    output = tmp_path / "ap.png"
    args = ["--config-file", DEMO_CONFIG, "--dataset", dataset, "--output", str(output)]

    # Saved detections: the ground truth itself, so every class present has AP 100.
    ground_truth = plot_evaluation.coco_ground_truth(dataset)
    results = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1}
        for a in ground_truth["annotations"]
    ]
    (tmp_path / "results.json").write_text(json.dumps(results))
    assert plot_evaluation.main([*args, "--results", str(tmp_path / "results.json")]) == 0
    _check_png(output, (1300, 440))
    out = capsys.readouterr().out
    assert out.startswith("AP 100.0 AP50 100.0")
    classes = MetadataCatalog.get(dataset).thing_classes
    assert sum(f"  {name}: AP 100.0," in out for name in classes) == len(
        {a["category_id"] for a in ground_truth["annotations"]}
    )

    # The model (random weights) on the first two images.
    output.unlink()
    assert plot_evaluation.main([*args, "--max-images", "2"]) == 0
    _check_png(output, (1300, 440))
    out = capsys.readouterr().out
    assert all(f"  {name}: AP " in out for name in MetadataCatalog.get(dataset).thing_classes)

    with pytest.raises(SystemExit) as e:
        plot_evaluation.main([*args, "--results", str(tmp_path / "missing.json")])
    assert e.value.code == 2
    # Checked before the data set is loaded: an unregistered one is not what is reported.
    with pytest.raises(SystemExit) as e:
        plot_evaluation.main(
            [*args[:2], "--dataset", "no_such_set", *args[4:], "--max-images", "0"]
        )
    assert e.value.code == 2 and "--max-images must be >= 1" in capsys.readouterr().err


@pytest.mark.parametrize(
    "tool", [demo, visualize_default_boxes, visualize_data, plot_metrics, plot_evaluation]
)
def test_every_tool_has_help(tool, capsys):
    with pytest.raises(SystemExit) as e:
        tool.main(["--help"])
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: python -m {tool.__name__}")


def test_non_square_default_boxes_picture(tmp_path):
    cfg = load_config("ssd160x288_shapes_demo")
    levels = visualize_default_boxes.default_boxes_by_level(cfg, points=[(1.0, 1.0)])
    assert [level.grid for level in levels] == [(20, 36), (10, 18), (5, 9), (3, 5), (1, 3)]
    assert levels[3].step == (53.333333, 57.6) and levels[3].cells == [(2, 4)]
    fig = visualize_default_boxes.draw_default_boxes(levels, np.zeros((160, 288, 3), np.uint8))
    for ax, level in zip(fig.get_axes(), levels):
        # Panels as wide as the input, the bottom-right cell a step_x by step_y rectangle.
        assert ax.get_xlim() == (-0.5, 288.5) and ax.get_ylim() == (160.5, -0.5)
        (cell,) = _patches(ax, "cell")
        (row, col), (step_y, step_x) = level.cells[0], level.step
        assert cell.get_xy() == (col * step_x, row * step_y)
        assert (cell.get_width(), cell.get_height()) == (step_x, step_y)
    output = str(tmp_path / "boxes.png")
    config_file = os.path.join(CONFIG_DIR, "ssd160x288_shapes_demo.yaml")
    assert visualize_default_boxes.main(["--config-file", config_file, "--output", output]) == 0
    _check_png(output, (1140, 550))  # 3 x 2 panels of 3.6 x 2.0 inches and titles, at 100 dpi
