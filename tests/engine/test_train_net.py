"""
train_net.py end to end on the embedded data set, on the CPU: two gloo processes, resume,
--eval-only, and data-parallel training (two processes on one machine, or two machines of one
process) equal to single-process training.
"""

import json
import os
import re
import socket
import subprocess
import sys

import torch

REPO_ROOT = os.path.join(os.path.dirname(__file__), "..", "..")

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


DEMO_CONFIG = os.path.join(REPO_ROOT, "configs", "ssd160_shapes_demo.yaml")


def _start_train_net(tmp_path, opts, flags=(), num_gpus=1, config_file=DEMO_CONFIG):
    env = dict(os.environ, SSD_D2_DATASETS=str(tmp_path / "datasets"), OMP_NUM_THREADS="1")
    command = [
        sys.executable,
        os.path.join(REPO_ROOT, "train_net.py"),
        "--config-file",
        config_file,
        "--num-gpus",
        str(num_gpus),
        # A free port, not Detectron2's default port of the user, which other runs may hold.
        "--dist-url",
        "auto",
        *flags,
        *opts,
    ]
    return subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _train_net(tmp_path, opts, flags=(), num_gpus=1, config_file=DEMO_CONFIG):
    process = _start_train_net(tmp_path, opts, flags, num_gpus, config_file)
    out, _ = process.communicate(timeout=900)
    assert process.returncode == 0, out[-8000:]
    return out


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


# Without augmentation, BatchNorm or data loader randomness, the only difference between the
# runs below is how the batch is split across processes.
DETERMINISTIC = [
    *SMALL_RUN,
    "SOLVER.IMS_PER_BATCH",
    "8",
    "SOLVER.MAX_ITER",
    "3",
    "SOLVER.CLIP_GRADIENTS.ENABLED",
    "False",
    # AdamW divides by the root of the second moment, which turns the rounding differences of
    # near-zero gradients into visible weight differences; SGD does not.
    "SOLVER.OPTIMIZER",
    "SGD",
    # In float32: bfloat16 rounding of the convolutions (the config's SOLVER.AMP on a CPU)
    # would swamp the summation-order differences this compares.
    "SOLVER.AMP.ENABLED",
    "False",
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
    "SOLVER.CHECKPOINT_PERIOD",
    "1",
]


def _assert_same_weights(run_a, run_b):
    def load(path):
        return torch.load(path, map_location="cpu", weights_only=True)["model"]

    a, b = load(run_a / "model_final.pth"), load(run_b / "model_final.pth")
    assert a.keys() == b.keys()
    # Only the order of the gradient sums differs between the runs. Training from scratch at
    # this learning rate amplifies such rounding (1e-8 after one step, 1e-4 after three on the
    # development machine), so the difference is measured against how far the last two steps
    # moved the weights: a different split of the batch would differ by about that much.
    after_first_step = load(run_a / "model_0000000.pth")
    moved = max((a[k] - after_first_step[k]).abs().max().item() for k in a)
    difference = max((b[k] - a[k]).abs().max().item() for k in a)
    assert moved > 0.1
    assert difference < 1e-3 * moved, (difference, moved)


def test_two_processes_and_two_machines_of_batch_4_train_like_one_of_batch_8(tmp_path):
    _train_net(tmp_path, [*DETERMINISTIC, "OUTPUT_DIR", str(tmp_path / "one")], num_gpus=1)
    _train_net(tmp_path, [*DETERMINISTIC, "OUTPUT_DIR", str(tmp_path / "two")], num_gpus=2)
    _assert_same_weights(tmp_path / "one", tmp_path / "two")

    # Two machines of one process each, as a cluster starts them: one launch per machine,
    # meeting at machine 0's address (here both on this host).
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    opts = [*DETERMINISTIC, "OUTPUT_DIR", str(tmp_path / "machines")]
    machines = []
    for rank in (0, 1):
        flags = ["--num-machines", "2", "--machine-rank", str(rank)]
        flags += ["--dist-url", f"tcp://127.0.0.1:{port}"]
        machines.append(_start_train_net(tmp_path, opts, flags))
    logs = [machine.communicate(timeout=900)[0] for machine in machines]
    for machine, log in zip(machines, logs):
        assert machine.returncode == 0, log[-5000:]
    assert "World size: 2" in logs[0]
    _assert_same_weights(tmp_path / "one", tmp_path / "machines")
