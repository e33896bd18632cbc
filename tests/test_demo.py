"""python -m ssd_d2.tools.demo: inputs, outputs, failures and exit status."""

import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from detectron2.modeling import build_model

from ssd_d2.data.datasets import SHAPE_CLASSES, generate_shapes_dataset
from ssd_d2.tools import demo

from .conftest import CONFIG_DIR, load_config

DEMO_CONFIG = os.path.join(CONFIG_DIR, "ssd160_shapes_demo.yaml")
REPO_ROOT = os.path.join(os.path.dirname(__file__), "..")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Three ssd_shapes images in a folder."""
    root = tmp_path_factory.mktemp("shapes")
    generate_shapes_dataset(str(root), num_images=3, seed=3)
    return sorted(str(p) for p in (root / "images").iterdir())


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A demo model checkpoint (random weights: its scores are about 1 / 6 everywhere)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "model.pth"
    torch.save({"model": build_model(load_config("ssd160_shapes_demo")).state_dict()}, path)
    return str(path)


def _run(*args):
    return demo.main(["--config-file", DEMO_CONFIG, *args])


def test_expand_inputs(tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    for name in ["b.jpg", "a.PNG", "clip.mp4", "notes.txt"]:
        (folder / name).write_bytes(b"x")
    (tmp_path / "c.jpg").write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    files, errors = demo.expand_inputs(
        [
            str(folder),
            str(tmp_path / "*.jpg"),
            str(folder / "b.jpg"),  # already listed: once only
            str(tmp_path / "missing.jpg"),
            str(tmp_path / "*.gif"),
            str(tmp_path / "empty"),
        ]
    )
    assert files == [
        str(folder / "a.PNG"),
        str(folder / "b.jpg"),
        str(folder / "clip.mp4"),
        str(tmp_path / "c.jpg"),
    ]
    assert len(errors) == 3
    assert "missing.jpg: no such file" in errors[0]
    assert "*.gif: no file matches" in errors[1]
    assert "empty: no image or video file" in errors[2]


def test_output_names_never_overwrite_inputs_or_each_other(tmp_path):
    inputs = [str(tmp_path / "a" / "x.jpg"), str(tmp_path / "b" / "x.jpg"), "c/y.gif"]
    names = demo._OutputNames(str(tmp_path / "a"), inputs)  # writing into an input folder
    assert names(inputs[0]) == str(tmp_path / "a" / "x_2.jpg")
    assert names(inputs[1]) == str(tmp_path / "a" / "x_3.jpg")
    assert names(inputs[2]) == str(tmp_path / "a" / "y.png")  # OpenCV writes no GIF
    assert names("clip.avi", ".mp4") == str(tmp_path / "a" / "clip.mp4")


def test_demo_draws_images_and_skips_bad_inputs(tmp_path, images, weights, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    for path in images[:2]:
        shutil.copy(path, folder)
    (folder / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "out"

    status = _run(
        "--input",
        str(folder),
        images[2],
        str(tmp_path / "missing.jpg"),
        "--output",
        str(out),
        "--confidence-threshold",
        "0.1",
        "--opts",
        "MODEL.WEIGHTS",
        weights,
        "TEST.DETECTIONS_PER_IMAGE",
        "10",
    )
    captured = capsys.readouterr()

    assert status == 1  # the broken and the missing file
    assert "missing.jpg: no such file or folder" in captured.err
    assert "broken.jpg: cannot read it as an image; skipped" in captured.err
    assert "2 input(s) failed" in captured.err
    names = [os.path.basename(p) for p in images]
    assert sorted(os.listdir(out)) == sorted(names)
    for path in [str(folder / names[0]), str(folder / names[1]), images[2]]:
        line = next(x for x in captured.out.splitlines() if x.startswith(path + ": "))
        # "path: N objects in T s -> out/name"
        count = int(line.split(": ")[1].split(" objects")[0])
        assert count > 0 and " s -> " in line
        original = cv2.imread(path)
        drawn = cv2.imread(str(out / os.path.basename(path)))
        assert drawn.shape == original.shape
        # Boxes and labels were drawn over the image.
        assert np.abs(drawn.astype(int) - original.astype(int)).mean() > 2


def test_demo_threshold_scale_and_class_names(tmp_path, images, weights, capsys):
    out = tmp_path / "out"
    # Random weights score every box about 1/6: nothing passes 0.5.
    args = ["--input", images[0], "--output", str(out), "--opts", "MODEL.WEIGHTS", weights]
    assert _run(*args[:4], "--scale", "2", *args[4:]) == 0
    assert ": 0 objects in " in capsys.readouterr().out
    original = cv2.imread(images[0])
    drawn = cv2.imread(str(out / os.path.basename(images[0])))
    assert drawn.shape[:2] == (2 * original.shape[0], 2 * original.shape[1])

    cfg = load_config("ssd160_shapes_demo", "MODEL.WEIGHTS", weights)
    runner = demo.DemoRunner(cfg)
    assert runner.metadata.thing_classes == list(SHAPE_CLASSES)  # DATASETS.TEST[0]'s


def test_demo_counts_without_tqdm(tmp_path, images, weights, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm now fails
    assert _run("--input", *images[:2], "--opts", "MODEL.WEIGHTS", weights) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"[1/2] {images[0]}: 0 objects in ")
    assert lines[1].startswith(f"[2/2] {images[1]}: 0 objects in ")


def test_demo_writes_an_annotated_video(tmp_path, weights, capsys):
    video = str(tmp_path / "clip.avi")
    writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"MJPG"), 5, (96, 64))
    if not writer.isOpened():
        pytest.skip("OpenCV cannot write videos here")
    for i in range(4):
        frame = np.full((64, 96, 3), 60, np.uint8)
        cv2.circle(frame, (20 + 15 * i, 32), 14, (0, 0, 255), -1)
        writer.write(frame)
    writer.release()

    out = tmp_path / "out"
    opts = ["MODEL.WEIGHTS", weights, "TEST.DETECTIONS_PER_IMAGE", "5"]
    status = _run(
        "--input", video, "--output", str(out), "--confidence-threshold", "0.1", "--opts", *opts
    )
    assert status == 0
    assert "clip.avi: 4 frames, " in capsys.readouterr().out
    capture = cv2.VideoCapture(str(out / "clip.mp4"))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    assert len(frames) == 4 and frames[0].shape == (64, 96, 3)


def test_demo_rejects_missing_config_and_weights(tmp_path, images, capsys):
    with pytest.raises(SystemExit) as e:
        demo.main(["--config-file", str(tmp_path / "nope.yaml"), "--input", images[0]])
    assert e.value.code == 2
    assert "Config file not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        _run("--input", images[0], "--opts", "MODEL.WEIGHTS", str(tmp_path / "nope.pth"))
    assert e.value.code == 2
    assert "MODEL.WEIGHTS file not found" in capsys.readouterr().err


def test_demo_command_exit_status(tmp_path, images):
    # The module as a command: a missing input fails the run, the others are still drawn.
    command = [sys.executable, "-m", "ssd_d2.tools.demo", "--config-file", DEMO_CONFIG]
    command += ["--input", images[0], str(tmp_path / "missing.png"), "--output", str(tmp_path)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(
        command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 1, result.stderr[-2000:]
    assert "missing.png: no such file or folder" in result.stderr
    assert "MODEL.WEIGHTS is empty" in result.stderr
    assert (tmp_path / os.path.basename(images[0])).exists()
