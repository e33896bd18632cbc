"""
Several processes: when one dies or hangs, the others do not wait forever, and the error says
which process and why; the collective timeouts; data set checks shared by the processes.
"""

import importlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta

import psutil
import pytest
import torch
import torch.distributed as dist
from PIL import Image

from ssd_d2.engine import launch

REPO_ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def _all_reduce_until(failing_rank, failure, marker):
    """Data-parallel steps; ``failing_rank`` dies or hangs at the third step."""
    for step in itertools.count():
        if dist.get_rank() == failing_rank and step == 3:
            with open(marker, "w") as f:
                f.write(str(time.time()))
            if failure == "sigkill":
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(3600)  # "hang": alive, but never joins the next collective
        dist.all_reduce(torch.ones(1))


@pytest.mark.parametrize("failure", ["sigkill", "hang"])
def test_a_dead_or_hung_process_stops_the_other_within_the_timeout(tmp_path, failure):
    marker = tmp_path / "failed_at"
    timeout = 5
    with pytest.raises(RuntimeError) as error:
        launch(
            _all_reduce_until,
            2,
            args=(1, failure, str(marker)),
            timeout=timedelta(seconds=timeout),
        )
    elapsed = time.time() - float(marker.read_text())
    print(f"{failure}: the launch failed {elapsed:.1f} s after the failure")
    message = str(error.value)
    if failure == "sigkill":
        # Noticed at once, by the launching process or by the survivor's broken connection.
        assert elapsed < 20, elapsed
        assert ("Training process 1 of 2" in message and "died with signal SIGKILL" in message) or (
            "Training process 0 of 2 failed" in message
        ), message
    else:
        # The survivor's all-reduce gives up after the timeout.
        assert timeout <= elapsed < timeout + 20, elapsed
        assert "Training process 0 of 2 failed" in message and "Timed out" in message, message
    assert "the other processes were stopped" in message


def test_train_net_stops_when_one_of_its_processes_is_killed(tmp_path, shapes_root):
    out = tmp_path / "out"
    command = [
        sys.executable,
        os.path.join(REPO_ROOT, "train_net.py"),
        "--config-file", os.path.join(REPO_ROOT, "configs", "ssd160_shapes_demo.yaml"),
        "--num-gpus", "2", "--dist-url", "auto",
        "--dist-timeout", "30",
        "DATASETS.TRAIN", "('ssd_shapes_val',)", "DATASETS.TEST", "()",
        "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "4", "SOLVER.MAX_ITER", "100000",
        "MODEL.VGG.NORM", "", "OUTPUT_DIR", str(out),
    ]  # fmt: skip
    env = dict(os.environ, SSD_D2_DATASETS=str(shapes_root), OMP_NUM_THREADS="1")
    # The output goes to a file: in a pipe read only at the end, a start-up log longer than the
    # pipe's buffer would block the processes before training starts.
    console = tmp_path / "console.txt"
    with open(console, "w") as f:
        process = subprocess.Popen(
            command, cwd=tmp_path, env=env, stdout=f, stderr=subprocess.STDOUT, text=True
        )
    try:
        deadline = time.monotonic() + 300
        while "Starting training" not in _read(out / "log.txt"):
            assert process.poll() is None, _read(console)[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.2)
        time.sleep(1.0)  # in the middle of training
        workers = [
            p
            for p in psutil.Process(process.pid).children()
            if "spawn_main" in " ".join(p.cmdline())
        ]
        assert len(workers) == 2
        workers[1].send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        process.wait(timeout=120)
        elapsed = time.monotonic() - killed_at
        output = _read(console)
    finally:
        if process.poll() is None:
            # The processes it spawned too, which would otherwise train on.
            for child in psutil.Process(process.pid).children(recursive=True):
                child.kill()
            process.kill()
    print(f"train_net.py exited {elapsed:.1f} s after the SIGKILL")
    assert process.returncode != 0
    assert elapsed < 30, elapsed
    assert "the other processes were stopped" in output, output[-3000:]
    assert all(not p.is_running() or p.status() == psutil.STATUS_ZOMBIE for p in workers)


def _read(path):
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def test_gpu_runs_wait_detectron2s_30_minutes_and_cpu_runs_10(monkeypatch):
    from ssd_d2.engine.launch import default_timeout

    assert default_timeout() == timedelta(minutes=10)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert default_timeout() == timedelta(minutes=30)


def test_a_dying_process_on_the_gpu_path_gets_the_same_named_error(monkeypatch):
    # (ssd_d2.engine's ``launch`` function hides the module of that name.)
    launch_module = importlib.import_module("ssd_d2.engine.launch")

    def gpu_launch_whose_process_1_is_killed(*args, **kwargs):
        raise torch.multiprocessing.ProcessExitedException(
            "process 1 terminated with signal SIGKILL", 1, 4711, -9, "SIGKILL"
        )

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(launch_module, "d2_launch", gpu_launch_whose_process_1_is_killed)
    with pytest.raises(RuntimeError) as error:
        launch(print, 2, num_machines=2, machine_rank=1, dist_url="tcp://127.0.0.1:1")
    message = str(error.value)
    assert "Training process 3 of 4 (pid 4711) died with signal SIGKILL" in message
    assert "out-of-memory killer" in message and "--resume" in message


def _check_data_set_in_this_process(image_folder, result_folder):
    from ssd_d2.data import checks

    opened = []
    read_header = checks._image_header

    def counting_header_reader(file_name):
        opened.append(os.path.basename(file_name))
        return read_header(file_name)

    checks._image_header = counting_header_reader
    names = sorted(os.listdir(image_folder))
    dicts = [
        {"file_name": os.path.join(image_folder, name), "image_id": i, "width": 32,
         "height": 24, "annotations": []}
        for i, name in enumerate(names)
    ]  # fmt: skip
    checked, report = checks.check_dataset_dicts(dicts, num_classes=1, dataset_name="shared")
    result = {"opened": opened, "kept": [d["image_id"] for d in checked]}
    result["summary"] = report.summary()
    with open(os.path.join(result_folder, f"rank{dist.get_rank()}.json"), "w") as f:
        json.dump(result, f)


def test_data_set_checks_read_each_image_once_per_run_and_agree_on_every_process(tmp_path):
    images, results = tmp_path / "images", tmp_path / "results"
    images.mkdir()
    results.mkdir()
    for i in range(7):
        Image.new("RGB", (32, 24)).save(images / f"{i}.png")
    (images / "7.png").write_bytes(b"not an image")  # dropped and counted, on every process
    launch(_check_data_set_in_this_process, 2, args=(str(images), str(results)))
    ranks = [json.loads((results / f"rank{r}.json").read_text()) for r in (0, 1)]
    opened = ranks[0]["opened"] + ranks[1]["opened"]
    assert sorted(opened) == sorted(f"{i}.png" for i in range(8))  # each file once in all
    assert len(ranks[0]["opened"]) == len(ranks[1]["opened"]) == 4
    assert ranks[0]["kept"] == ranks[1]["kept"] == list(range(7))
    assert ranks[0]["summary"] == ranks[1]["summary"]
