"""
Kill and resume: a train_net.py run killed with SIGKILL at a random moment and restarted with
--resume ends with the weights of a run that was never interrupted; and the training batches
are a function of the seed and the iteration only.
"""

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from ssd_d2.data.seeded_loader import SeededTrainingStream, SeededTrainLoader

REPO_ROOT = os.path.join(os.path.dirname(__file__), "..", "..")

MAX_ITER = 14

# The demo config, small: the 300-image validation split for training, batch 4, a checkpoint
# at every iteration, no evaluation.
TINY_RUN = [
    "DATASETS.TRAIN", "('ssd_shapes_val',)",
    "DATASETS.TEST", "()",
    "SOLVER.IMS_PER_BATCH", "4",
    "SOLVER.WARMUP_ITERS", "2",
    "SOLVER.MAX_ITER", str(MAX_ITER),
    "SOLVER.STEPS", "(10,)",
    "SOLVER.CHECKPOINT_PERIOD", "1",
    "SEED", "3",
]  # fmt: skip


def _command(output_dir, num_workers, resume=False):
    command = [
        sys.executable,
        os.path.join(REPO_ROOT, "train_net.py"),
        "--config-file",
        os.path.join(REPO_ROOT, "configs", "ssd160_shapes_demo.yaml"),
    ]
    if resume:
        command.append("--resume")
    opts = ["OUTPUT_DIR", str(output_dir), "DATALOADER.NUM_WORKERS", str(num_workers)]
    return command + TINY_RUN + opts


def _env(datasets):
    # One thread: the same floating-point reductions in every run.
    return dict(os.environ, SSD_D2_DATASETS=str(datasets), OMP_NUM_THREADS="1")


def _run(tmp_path, datasets, command):
    result = subprocess.run(
        command, cwd=tmp_path, env=_env(datasets), capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result.stdout + result.stderr


def _final_weights(output_dir):
    path = os.path.join(output_dir, "model_final.pth")
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def _checkpoint_iteration(output_dir):
    """The iteration of the newest checkpoint named in last_checkpoint, -1 before the first."""
    try:
        name = open(os.path.join(output_dir, "last_checkpoint")).read().strip()
    except FileNotFoundError:
        return -1
    digits = name[len("model_") : -len(".pth")]
    # model_final.pth, or a name caught while it is being written, counts as none.
    return int(digits) if name.endswith(".pth") and digits.isdigit() else -1


def _kill_at_random_moment(tmp_path, datasets, output_dir, num_workers, rng):
    """Start training, SIGKILL it at a random moment well before its last iteration.

    The moment is measured in the run's own steps, not in seconds, so that it falls inside
    the run on fast and slow machines alike: after a random checkpoint k, at a random point
    of the next two steps (a step, a save or the rename of a checkpoint).
    """
    last_iteration = MAX_ITER - 1
    kill_after = rng.randint(1, last_iteration - 6)
    log_path = tmp_path / f"killed_{num_workers}.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            _command(output_dir, num_workers),
            cwd=tmp_path,
            env=_env(datasets),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 300
            seen = {}  # checkpoint iteration -> when it was first seen
            while _checkpoint_iteration(output_dir) < kill_after:
                assert process.poll() is None, log_path.read_text()[-3000:]
                assert time.monotonic() < deadline, "no checkpoint written"
                seen.setdefault(_checkpoint_iteration(output_dir), time.monotonic())
                time.sleep(0.01)
            now = time.monotonic()
            earlier = [t for i, t in seen.items() if i >= 0]
            step = now - max(earlier) if earlier else 0.2
            delay = rng.uniform(0.0, 2 * step)
            time.sleep(delay)
            was_running = process.poll() is None
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
    return kill_after, delay, was_running


def test_killed_and_resumed_runs_end_with_the_uninterrupted_weights(tmp_path, shapes_root):
    # The batches do not depend on the data loader workers: one uninterrupted run (without
    # workers) is the reference for the killed runs with and without workers.
    straight = tmp_path / "straight"
    _run(tmp_path, shapes_root, _command(straight, num_workers=0))
    expected = _final_weights(straight)
    for num_workers in (0, 2):
        seed = random.SystemRandom().randrange(2**32)
        rng = random.Random(seed)
        interrupted = tmp_path / f"interrupted_{num_workers}"
        kill_after, delay, was_running = _kill_at_random_moment(
            tmp_path, shapes_root, interrupted, num_workers, rng
        )
        context = (
            f"({num_workers} workers, killed {delay:.2f} s after checkpoint {kill_after}, kill "
            f"seed {seed})"
        )
        assert was_running, f"the run ended before the kill {context}"
        assert not (interrupted / "model_final.pth").exists(), context
        resumed_from = (interrupted / "last_checkpoint").read_text()
        log = _run(tmp_path, shapes_root, _command(interrupted, num_workers, resume=True))
        assert "Starting training from iteration" in log
        assert "Starting training from iteration 0" not in log, context

        actual = _final_weights(interrupted)
        assert expected.keys() == actual.keys()
        for name, value in expected.items():
            # Bit for bit: same batches, augmentations, optimizer state and schedule.
            assert torch.equal(
                actual[name], value
            ), f"{name} differs, resumed from {resumed_from} {context}"


def _fake_mapper(dataset_dict):
    # The "augmentation" draws from the three global RNGs the real ones may use.
    return {
        "index": dataset_dict["index"],
        "numpy": float(np.random.rand()),
        "python": random.random(),
        "torch": float(torch.rand(())),
    }


def _stream(start_iter=0, rank=0, world_size=1, batch_size=3, dataset=None):
    dataset = dataset or [{"index": i, "file_name": f"{i}.jpg"} for i in range(10)]
    return SeededTrainingStream(
        dataset,
        _fake_mapper,
        batch_size=batch_size,
        seed=5,
        start_iter=start_iter,
        rank=rank,
        world_size=world_size,
    )


def _take(loader, n):
    iterator = iter(loader)
    return [next(iterator) for _ in range(n)]


def test_batches_depend_on_seed_and_iteration_only():
    straight = _take(SeededTrainLoader(_stream()), 12)
    # Every epoch is a permutation of the data set.
    indices = [sample["index"] for batch in straight[:10] for sample in batch]
    for epoch in range(3):
        assert sorted(indices[epoch * 10 : epoch * 10 + 10]) == list(range(10))
    assert indices[:10] != indices[10:20]
    # Resuming at iteration 7 continues with the same batches, augmentation included, with
    # or without data loader workers.
    assert _take(SeededTrainLoader(_stream(start_iter=7)), 5) == straight[7:12]
    assert _take(SeededTrainLoader(_stream(start_iter=7), num_workers=2), 5) == straight[7:12]
    # The start may be set after iter(): the trainer sets it when it resumes.
    loader = SeededTrainLoader(_stream())
    iterator = iter(loader)
    loader.start_at(4)
    assert next(iterator) == straight[4]
    # Two processes of batch 3 see the samples, augmented alike, of one process of batch 6.
    two_ranks = [_take(SeededTrainLoader(_stream(rank=r, world_size=2)), 4) for r in range(2)]
    single = _take(SeededTrainLoader(_stream(batch_size=6)), 4)
    for i in range(4):
        key = lambda sample: sample["index"]  # noqa: E731
        together = sorted(two_ranks[0][i] + two_ranks[1][i], key=key)
        assert together == sorted(single[i], key=key)
    # The global RNGs of the caller are left as they were.
    np.random.seed(1)
    expected = np.random.rand()
    np.random.seed(1)
    _take(SeededTrainLoader(_stream()), 2)
    assert np.random.rand() == expected


def test_unreadable_images_are_replaced_reproducibly_and_counted():
    from ssd_d2.data import UnreadableImageError

    def mapper(dataset_dict):
        if dataset_dict["index"] in (2, 5):
            raise UnreadableImageError(dataset_dict["file_name"], "image file is truncated")
        return _fake_mapper(dataset_dict)

    def stream(start_iter=0):
        s = _stream(start_iter=start_iter)
        s.mapper = mapper
        return s

    loader = SeededTrainLoader(stream())
    straight = _take(loader, 10)
    # 10 iterations of 3 images read every sample 3 times: the two bad ones were replaced.
    assert loader.num_skipped == 6
    assert all(len(batch) == 3 for batch in straight)
    assert all(s["index"] not in (2, 5) for batch in straight for s in batch)
    assert _take(SeededTrainLoader(stream(start_iter=6), num_workers=2), 4) == straight[6:]


def test_an_unreadable_data_set_fails_with_the_file_name():
    from ssd_d2.data import UnreadableImageError

    def mapper(dataset_dict):
        raise UnreadableImageError(dataset_dict["file_name"], "cannot identify image file")

    stream = _stream()
    stream.mapper = mapper
    with pytest.raises(
        RuntimeError, match=r"could not be read; the last: \d\.jpg \(cannot identify"
    ):
        _take(SeededTrainLoader(stream), 1)
