"""
benchmarks/recipe_seeds.py: the figures read from a run's metrics.json, the stall rule and
the table on fabricated metrics; end to end (a 20-iteration run on tiny toy_signs splits) with
`pytest -m slow`.
"""

import json
import math
import os
import subprocess
import sys

import pytest

from benchmarks import recipe_seeds
from benchmarks.recipe_seeds import markdown_table, parse_args, summarize_metrics

REPO_ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def fabricated_metrics(iterations, box_loss, evaluation=True):
    """metrics.json lines as Detectron2 writes them: every 20 iterations, then the evaluation."""
    lines = []
    for iteration in range(19, iterations, 20):
        box = box_loss(iteration)
        lines.append(
            {
                "iteration": iteration,
                "loss_box_reg": box,
                "loss_cls": 2 * box,
                "total_loss": 3 * box,
                "lr": 0.003,
                "time": 0.3 + 0.01 * (iteration % 3),
            }
        )
    if evaluation:
        lines.append(
            {"bbox/AP": 40.0, "bbox/AP50": 70.0, "bbox/AP75": 45.0, "iteration": iterations}
        )
    return lines


def test_figures_of_a_run_that_learns():
    row = summarize_metrics(fabricated_metrics(1000, lambda i: 3.0 * 0.5 ** ((i + 1) / 500)))
    assert row["iterations"] == 1000
    assert (row["AP"], row["AP50"], row["AP75"]) == (40.0, 70.0, 45.0)
    # The first line logged at or after 250 completed iterations is iteration 259 (260 done).
    assert row["losses"]["250"]["box"] == pytest.approx(3.0 * 0.5 ** (260 / 500))
    assert row["losses"]["250"]["total"] == pytest.approx(9.0 * 0.5 ** (260 / 500))
    assert row["losses"]["500"]["box"] == pytest.approx(1.5)
    assert row["losses"]["1000"]["box"] == pytest.approx(0.75)
    assert row["losses"]["250"]["iteration"] == 260
    assert row["losses"]["end"] == {
        "total": pytest.approx(2.25),
        "box": pytest.approx(0.75),
        "iteration": 1000,
    }
    # Times 0.30, 0.31, 0.32 in turn over 50 lines.
    assert row["s_per_iter"] == pytest.approx(0.31)
    assert row["losses"]["100"]["iteration"] == 100
    assert row["stalled"] is False


def test_stall_rule():
    def stalled(box_loss, iterations=1000):
        return summarize_metrics(fabricated_metrics(iterations, box_loss))["stalled"]

    # The user's run: box loss 2.1-2.3 from iteration 100 to the end.
    assert stalled(lambda i: 2.3 - 2e-4 * i) is True
    # The line at 100 done holds 2.0; at the end above half of it, or at most half.
    assert stalled(lambda i: 2.0 if i < 500 else 1.01) is True
    assert stalled(lambda i: 2.0 if i < 500 else 1.0) is False
    # A run that ends before iteration 100, or at it, cannot tell.
    assert stalled(lambda i: 2.0, iterations=80) is None
    assert stalled(lambda i: 2.0, iterations=100) is None


def test_figures_of_a_short_run_without_evaluation():
    row = summarize_metrics(fabricated_metrics(100, lambda i: 1.0, evaluation=False))
    assert row["iterations"] == 100 and row["AP50"] is None and row["stalled"] is None
    assert row["losses"]["250"] == {"total": None, "box": None, "iteration": None}
    assert row["losses"]["end"] == {"total": 3.0, "box": 1.0, "iteration": 100}
    # A run that failed before its first log line.
    empty = summarize_metrics([])
    assert empty["iterations"] == 0 and empty["s_per_iter"] is None and empty["stalled"] is None


def _run(dataset, seed, ap50, box_end, returncode=0):
    row = summarize_metrics(fabricated_metrics(1000, lambda i: 2.0 if i < 999 else box_end))
    row.update(dataset=dataset, seed=seed, AP50=ap50, returncode=returncode, wall_s=600.0)
    return row


def test_table(tmp_path, capsys):
    report = {
        "runs": [
            _run("ssd_shapes", 0, 70.0, 0.5),
            _run("ssd_shapes", 1, 10.0, 1.9),
            _run("ssd_shapes", 2, 50.0, 0.5),
            _run("toy_signs", 0, None, 1.9, returncode=1),
        ]
    }
    lines = markdown_table(report).splitlines()
    assert lines[0] == (
        "| data set | seed | AP50 | AP | AP75 | total loss 100 / end "
        "| box loss 100 / 250 / 500 / 1000 / end | stalled | s/iter | wall min | exit |"
    )
    assert lines[2] == (
        "| ssd_shapes | 0 | 70.0 | 40.0 | 45.0 | 6.00 / 1.50 | 2.00 / 2.00 / 2.00 / 0.50 / 0.50 "
        "| no | 0.310 | 10.0 | 0 |"
    )
    assert lines[3].startswith("| ssd_shapes | 1 | 10.0 |") and "| yes |" in lines[3]
    assert lines[5].startswith("| toy_signs | 0 | - |") and lines[5].endswith("| 1 |")
    # Per data set: min / median / max AP50; a run without evaluation counts as 0.
    assert lines[-2:] == [
        "| ssd_shapes | 3 | 10.0 | 50.0 | 70.0 | 1 |",
        "| toy_signs | 1 | 0.0 | 0.0 | 0.0 | 1 |",
    ]

    # --report prints the same table from the JSON.
    results = tmp_path / "recipe_seeds.json"
    results.write_text(json.dumps(report))
    assert recipe_seeds.main(["--report", str(results)]) == 0
    assert capsys.readouterr().out == markdown_table(report) + "\n"


def test_command_lines():
    args = parse_args(["--seeds", "3", "--datasets", "second", "SOLVER.MAX_ITER", "20"])
    assert args.seeds == [3] and args.datasets == ["toy_signs"]
    assert args.opts == ["SOLVER.MAX_ITER", "20"]
    command = recipe_seeds.train_command("toy_signs", args.config, 3, "/out/x", args)
    assert command[1:3] == ["-m", "benchmarks.toy_signs"]
    assert command[command.index("--num-gpus") + 1] == "1"
    tail = command[command.index("--config-file") :]
    assert tail == [
        "--config-file",
        args.config,
        "SEED",
        "3",
        "OUTPUT_DIR",
        "/out/x",
        "MODEL.SSD.NUM_CLASSES",
        "4",
        "DATASETS.TRAIN",
        "('toy_signs_train',)",
        "DATASETS.TEST",
        "('toy_signs_val',)",
    ]
    command = recipe_seeds.train_command("ssd_shapes", args.config, 0, "/out/y", args)
    assert command[1].endswith("train_net.py") and "DATASETS.TRAIN" not in command
    # The family's other members train with train_net.py as it is, their data named.
    command = recipe_seeds.train_command("many_classes", args.config, 2, "/out/z", args)
    assert command[1].endswith("train_net.py")
    assert command[-6:] == [
        "MODEL.SSD.NUM_CLASSES",
        "9",
        "DATASETS.TRAIN",
        "('many_classes_train',)",
        "DATASETS.TEST",
        "('many_classes_val',)",
    ]
    # An upper-case value of an option is not taken for the start of the opts.
    args = parse_args(["--output", "OUT.JSON", "--datasets", "ssd_shapes", "--num-gpus", "2"])
    assert args.output == "OUT.JSON" and args.datasets == ["ssd_shapes"] and args.opts == []
    command = recipe_seeds.train_command("ssd_shapes", args.config, 0, "/out/y", args)
    assert command[command.index("--num-gpus") + 1] == "2"
    with pytest.raises(SystemExit):
        parse_args(["SOLVER.MAX_ITER"])


@pytest.mark.slow
def test_one_seed_on_toy_signs_end_to_end(tmp_path):
    results = tmp_path / "recipe_seeds.json"
    env = dict(os.environ, SSD_D2_DATASETS=str(tmp_path / "datasets"), OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "benchmarks.recipe_seeds", "--seeds", "1"]
    command += ["--datasets", "second", "--output", str(results), "--work-dir", str(tmp_path)]
    command += ["--toy-signs-train-images", "24", "--toy-signs-val-images", "12"]
    command += ["SOLVER.MAX_ITER", "20", "SOLVER.IMS_PER_BATCH", "4"]
    command += ["DATALOADER.NUM_WORKERS", "0"]
    result = subprocess.run(
        command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(results.read_text())
    [row] = report["runs"]
    assert (row["dataset"], row["seed"], row["returncode"], row["iterations"]) == (
        "toy_signs",
        1,
        0,
        20,
    )
    assert 0.0 <= row["AP50"] <= 100.0 and 0.0 <= row["AP"] <= row["AP50"]
    end = row["losses"]["end"]
    assert math.isfinite(end["total"]) and 0 < end["box"] < end["total"]
    assert row["losses"]["250"]["box"] is None and row["stalled"] is None
    assert row["s_per_iter"] > 0 and row["wall_s"] > 0
    # The run trained and evaluated on the tiny toy_signs splits, with 4 classes and its seed.
    config = (tmp_path / "toy_signs_seed1" / "config.yaml").read_text()
    assert "NUM_CLASSES: 4" in config and "SEED: 1" in config
    log = (tmp_path / "toy_signs_seed1" / "log.txt").read_text()
    assert "Loaded 24 images in COCO format" in log and "Loaded 12 images in COCO format" in log
    assert "| toy_signs | 1 |" in result.stdout
