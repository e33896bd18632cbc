"""
train_net.py end to end on the embedded data set, on the CPU: two gloo processes, resume,
--eval-only, and data-parallel training equal to single-process training.
"""

import json
import os
import re
import subprocess
import sys

import torch

REPO_ROOT = os.path.join(os.path.dirname(__file__), "..")

# A small, quick variant of the demo config: the 300-image validation split for training too
# (so that only it is generated), a few iterations, no data loader workers.
SMALL_RUN = [
    "DATASETS.TRAIN",
    "('ssd_shapes_val',)",
    "DATALOADER.NUM_WORKERS",
    "0",
    "SOLVER.IMS_PER_BATCH",
    "4",
    "SOLVER.WARMUP_ITERS",
    "1",
]


def _train_net(tmp_path, opts, flags=(), num_gpus=1):
    env = dict(os.environ, SSD_D2_DATASETS=str(tmp_path / "datasets"), OMP_NUM_THREADS="1")
    command = [
        sys.executable,
        os.path.join(REPO_ROOT, "train_net.py"),
        "--config-file",
        os.path.join(REPO_ROOT, "configs", "ssd160_shapes_demo.yaml"),
        "--num-gpus",
        str(num_gpus),
        *flags,
        *opts,
    ]
    result = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result.stdout + result.stderr


def _copypaste_results(log: str):
    """The numbers of Detectron2's last 'copypaste:' result line."""
    lines = re.findall(r"copypaste: ([0-9.,]+)\n", log)
    assert lines, log[-3000:]
    return [float(x) for x in lines[-1].split(",")]


def test_two_processes_train_resume_and_eval_only(tmp_path):
    out = tmp_path / "run"
    # No BatchNorm: each process keeps its own running statistics (Detectron2 does not
    # broadcast buffers), so evaluating with 2 processes would differ from the checkpoint's.
    common = [*SMALL_RUN, "OUTPUT_DIR", str(out), "SOLVER.CHECKPOINT_PERIOD", "2"]
    common += ["MODEL.VGG.NORM", ""]
    log = _train_net(tmp_path, [*common, "SOLVER.MAX_ITER", "2"], num_gpus=2)
    assert "World size: 2" in log and (out / "log.txt.rank1").exists()
    assert (out / "model_final.pth").exists()
    assert (out / "last_checkpoint").read_text().strip() == "model_final.pth"
    metrics = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    assert any("total_loss" in m for m in metrics)

    log = _train_net(tmp_path, [*common, "SOLVER.MAX_ITER", "4"], ["--resume"], num_gpus=2)
    assert "Starting training from iteration 2" in log
    checkpoint = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)
    assert checkpoint["iteration"] == 3
    assert "optimizer" in checkpoint["trainer"]["_trainer"]
    trained = _copypaste_results(log)

    log = _train_net(
        tmp_path, [*common, "MODEL.WEIGHTS", str(out / "model_final.pth")], ["--eval-only"]
    )
    assert _copypaste_results(log) == trained


def test_two_processes_of_batch_4_train_like_one_of_batch_8(tmp_path):
    # Without augmentation, BatchNorm or data loader randomness, the only difference is how
    # the batch is split across processes.
    deterministic = [
        *SMALL_RUN,
        "SOLVER.IMS_PER_BATCH",
        "8",
        "SOLVER.MAX_ITER",
        "3",
        # Batches of one aspect-ratio group would differ between the splits.
        "DATALOADER.ASPECT_RATIO_GROUPING",
        "False",
        "SOLVER.CLIP_GRADIENTS.ENABLED",
        "False",
        # AdamW divides by the root of the second moment, which turns the rounding
        # differences of near-zero gradients into visible weight differences; SGD does not.
        "SOLVER.OPTIMIZER",
        "SGD",
        "MODEL.VGG.NORM",
        "",
        "INPUT.SSD.PHOTOMETRIC.ENABLED",
        "False",
        "INPUT.SSD.EXPAND.ENABLED",
        "False",
        "INPUT.SSD.MIN_IOU_CROP.ENABLED",
        "False",
        "INPUT.SSD.FLIP_PROB",
        "0.0",
        "DATASETS.TEST",
        "()",
        "SEED",
        "7",
    ]
    _train_net(tmp_path, [*deterministic, "OUTPUT_DIR", str(tmp_path / "one")], num_gpus=1)
    _train_net(tmp_path, [*deterministic, "OUTPUT_DIR", str(tmp_path / "two")], num_gpus=2)
    one = torch.load(tmp_path / "one" / "model_final.pth", map_location="cpu", weights_only=True)
    two = torch.load(tmp_path / "two" / "model_final.pth", map_location="cpu", weights_only=True)
    assert one["model"].keys() == two["model"].keys()
    for name, weight in one["model"].items():
        # Only the order of the gradient sums differs; a different split of the batch would
        # change every weight far more.
        torch.testing.assert_close(two["model"][name], weight, rtol=1e-4, atol=1e-6)
