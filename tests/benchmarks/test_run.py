"""
The benchmark's bf16 additions: matching bf16 detections to fp32 ones
(benchmarks/bf16_detections.py), the bf16 tables of the report (benchmarks/report.py), and when
the bf16 rows are on (benchmarks/run.py).
"""

import pytest
import torch

from detectron2.structures import Boxes, Instances

from benchmarks.bf16_detections import detection_agreement, match_detections
from benchmarks.report import markdown_tables
from benchmarks.run import parse_args
from ssd_d2.modeling.precision import cpu_has_fast_bf16


def _detections(boxes, scores, classes):
    return Instances(
        (200, 200),
        pred_boxes=Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)),
        scores=torch.tensor(scores, dtype=torch.float32),
        pred_classes=torch.tensor(classes, dtype=torch.int64),
    )


def test_identical_detections_match_one_to_one():
    boxes = [[0, 0, 100, 100], [50, 50, 150, 120], [10, 20, 60, 90]]
    a = _detections(boxes, [0.5, 0.9, 0.7], [1, 2, 1])
    # In descending score order of the reference.
    assert match_detections(a, a) == [(1, 1), (2, 2), (0, 0)]


def test_shift_across_the_iou_threshold():
    a = _detections([[0, 0, 100, 100]], [0.8], [3])
    # Shifted by 4 px: IoU 9600 / 10400 = 0.923; by 6 px: 9400 / 10600 = 0.887.
    assert match_detections(a, _detections([[4, 0, 104, 100]], [0.8], [3])) == [(0, 0)]
    assert match_detections(a, _detections([[6, 0, 106, 100]], [0.8], [3])) == []
    assert match_detections(a, _detections([[6, 0, 106, 100]], [0.8], [3]), 0.85) == [(0, 0)]


def test_other_class_does_not_match():
    a = _detections([[0, 0, 100, 100]], [0.8], [3])
    assert match_detections(a, _detections([[0, 0, 100, 100]], [0.8], [4])) == []


def test_extra_detections_and_greedy_by_score():
    a = _detections([[0, 0, 100, 100], [1, 0, 101, 100]], [0.6, 0.9], [0, 0])
    # One detection of b near both of a's: the higher-scored one of a takes it.
    b = _detections([[1, 0, 101, 100], [120, 120, 180, 180]], [0.9, 0.5], [0, 0])
    assert match_detections(a, b) == [(1, 0)]
    # b's extra detections change nothing; a detection of b is taken once only.
    b = _detections(
        [[120, 120, 180, 180], [0, 0, 100, 100], [1, 0, 101, 100], [0, 0, 100, 100]],
        [0.5, 0.6, 0.9, 0.3],
        [0, 0, 0, 1],
    )
    assert match_detections(a, b) == [(1, 2), (0, 1)]
    assert match_detections(a, _detections([], [], [])) == []
    assert match_detections(_detections([], [], []), b) == []


def test_agreement_counts_a_score_across_the_threshold_as_matched():
    fp32 = [
        _detections([[0, 0, 100, 100], [0, 0, 50, 50]], [0.31, 0.2], [1, 1]),
        _detections([[10, 10, 60, 60]], [0.9], [2]),
    ]
    bf16 = [
        _detections([[0, 0, 100, 100], [0, 0, 50, 50]], [0.29, 0.21], [1, 1]),
        _detections([[10, 10, 60, 60], [100, 100, 150, 150]], [0.88, 0.5], [1, 2]),
    ]
    counts = detection_agreement(fp32, bf16, 0.3)
    assert (counts["reference"], counts["other"], counts["matched"]) == (2, 2, 1)
    assert counts["matched_share"] == 0.5
    assert counts["max_score_diff"] == pytest.approx(0.02, abs=1e-6)
    counts = detection_agreement(fp32, bf16, 0.01)
    assert (counts["reference"], counts["other"], counts["matched"]) == (3, 4, 2)


def _timing_row(precision, **extra):
    row = {"precision": precision, "ssd_d2_ms": 40.0, "torchvision_ms": 80.0, "ratio": 0.5}
    row.update(extra)
    return row


def test_report_keeps_the_fp32_tables_and_adds_bf16_ones():
    inference = {
        "model": "ssd300_vgg16",
        "regime": "trained",
        "batch": 8,
        "ssd_d2_images_per_s": 200.0,
        "detections": {"ssd_d2": 7, "torchvision": 7},
    }
    bf16_times = {"ssd_d2_fp32_ms": 100.0, "torchvision_fp32_ms": 160.0}
    bf16_times.update(ratio_vs_torchvision_fp32=0.25, ratio_vs_ssd_d2_fp32=0.4)
    report = {
        "inference": [
            _timing_row("fp32", **inference),
            _timing_row("bf16", **inference, **bf16_times),
        ],
        "train": [_timing_row("fp32"), _timing_row("bf16", **bf16_times)],
        "bf16_detections": {"skipped": "no weights"},
    }
    tables = markdown_tables(report)
    # The fp32 tables come out as they do without bf16 rows, which get tables of their own.
    fp32_only = {
        k: [r for r in report[k] if r["precision"] == "fp32"] for k in ("inference", "train")
    }
    for table in markdown_tables(fp32_only).strip().split("\n\n"):
        assert table in tables
    assert "| ssd300_vgg16 | trained | 8 | fp32 | 40.0 | 80.0 | 0.50 | 200.0 | 7 / 7 |" in tables
    assert "| ssd300_vgg16 | trained | 8 | bf16 |" not in tables
    assert (
        "| ssd300_vgg16 | trained | 8 | 40.0 | 100.0 | 80.0 | 160.0 | 0.50 | 0.25 | 0.40 | 7 / 7 |"
        in tables
    )
    assert "| bf16 | 40 | 100 | 80 | 160 | 0.50 | 0.25 | 0.40 |" in tables
    assert "| fp32 | 40 | 80 | 0.50 |" in tables
    assert "skipped (no weights)" in tables


def test_bf16_rows_default_to_what_the_cpu_has():
    assert parse_args([]).bf16 == cpu_has_fast_bf16()
    assert parse_args(["--no-bf16"]).bf16 is False
    with pytest.raises(SystemExit):
        parse_args(["--device", "cuda", "--bf16"])
    assert parse_args(["--device", "cuda"]).bf16 is False
