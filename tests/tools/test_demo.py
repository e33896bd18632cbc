"""python -m ssd_d2.tools.demo: inputs, outputs, failures and exit status."""

import json
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from detectron2.data.detection_utils import read_image
from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model

from ssd_d2.data.datasets import SHAPE_CLASSES, generate_shapes_dataset
from ssd_d2.tools import common, demo

from ..conftest import CONFIG_DIR, load_config

DEMO_CONFIG = os.path.join(CONFIG_DIR, "ssd160_shapes_demo.yaml")
REPO_ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


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


@pytest.fixture
def run(weights):
    """The demo on the demo config and the checkpoint, with config ``opts`` after ``args``."""

    def run(*args, opts=(), window=None, open_capture=None):
        argv = ["--config-file", DEMO_CONFIG, *args, "--opts", "MODEL.WEIGHTS", weights, *opts]
        return demo.main(argv, window, open_capture)

    return run


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
    names = demo.output_names(str(tmp_path / "a"), inputs, None)  # into an input folder
    assert names(inputs[0]) == str(tmp_path / "a" / "x_2.jpg")
    assert names(inputs[1]) == str(tmp_path / "a" / "x_3.jpg")
    assert names(inputs[2]) == str(tmp_path / "a" / "y.png")  # OpenCV writes no GIF
    assert names("clip.avi", ".mp4") == str(tmp_path / "a" / "clip.mp4")


def test_demo_draws_images_and_skips_bad_inputs(tmp_path, images, run, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    for path in images[:2]:
        shutil.copy(path, folder)
    (folder / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "out"

    inputs = [str(folder), images[2], str(tmp_path / "missing.jpg")]
    args = ["--input", *inputs, "--output", str(out), "--confidence-threshold", "0.1"]
    status = run(*args, opts=["TEST.DETECTIONS_PER_IMAGE", "10"])
    captured = capsys.readouterr()

    assert status == 1  # the broken and the missing file
    assert "missing.jpg: no such file or folder" in captured.err
    assert "broken.jpg: cannot read it as an image; skipped" in captured.err
    assert "2 input(s) failed" in captured.err
    names = [os.path.basename(p) for p in images]
    assert sorted(os.listdir(out)) == sorted(names)
    for path in [str(folder / names[0]), str(folder / names[1]), images[2]]:
        # "[i/n] path: N objects in T s -> out/name"
        line = next(x for x in captured.out.splitlines() if f"] {path}: " in x)
        count = int(line.split(f"{path}: ")[1].split(" objects")[0])
        assert count > 0 and " s -> " in line
        original = cv2.imread(path)
        drawn = cv2.imread(str(out / os.path.basename(path)))
        assert drawn.shape == original.shape
        # Boxes and labels were drawn over the image.
        assert np.abs(drawn.astype(int) - original.astype(int)).mean() > 2


def test_demo_threshold_scale_and_class_names(tmp_path, images, weights, run, capsys):
    out = tmp_path / "out"
    # Random weights score every box about 1/6: nothing passes 0.5.
    assert run("--input", images[0], "--output", str(out), "--scale", "2") == 0
    assert ": 0 objects in " in capsys.readouterr().out
    original = cv2.imread(images[0])
    drawn = cv2.imread(str(out / os.path.basename(images[0])))
    assert drawn.shape[:2] == (2 * original.shape[0], 2 * original.shape[1])

    cfg = load_config("ssd160_shapes_demo", "MODEL.WEIGHTS", weights)
    runner = demo.DemoRunner(cfg)
    assert runner.metadata.thing_classes == list(SHAPE_CLASSES)  # DATASETS.TEST[0]'s


def test_demo_numbers_its_inputs(images, run, monkeypatch, capsys):
    monkeypatch.delenv("DISPLAY", raising=False)  # no window, whatever OpenCV this is
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert run("--input", *images[:2]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"[1/2] {images[0]}: 0 objects in ")
    assert lines[1].startswith(f"[2/2] {images[1]}: 0 objects in ")


def _write_video(path, num_frames=4):
    """A small MJPG video of a moving red disc."""
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 5, (96, 64))
    assert writer.isOpened(), "OpenCV cannot write MJPG videos here"
    for i in range(num_frames):
        writer.write(_frame(i))
    writer.release()
    return path


def _frame(i):
    frame = np.full((64, 96, 3), 60, np.uint8)
    cv2.circle(frame, (20 + 15 * i, 32), 14, (0, 0, 255), -1)
    return frame


def _read_video(path):
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    return frames


def test_demo_writes_an_annotated_video(tmp_path, run, capsys):
    video = _write_video(str(tmp_path / "clip.avi"))

    out = tmp_path / "out"
    args = ["--input", video, "--output", str(out), "--confidence-threshold", "0.1"]
    assert run(*args, opts=["TEST.DETECTIONS_PER_IMAGE", "5"]) == 0
    assert "clip.avi: 4 frames, " in capsys.readouterr().out
    frames = _read_video(out / "clip.mp4")
    assert len(frames) == 4 and frames[0].shape == (64, 96, 3)


def test_demo_rejects_missing_config_and_weights(tmp_path, images, capsys):
    with pytest.raises(SystemExit) as e:
        demo.main(["--config-file", str(tmp_path / "nope.yaml"), "--input", images[0]])
    assert e.value.code == 2
    assert "Config file not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        args = ["--input", images[0], "--opts", "MODEL.WEIGHTS", str(tmp_path / "nope.pth")]
        demo.main(["--config-file", DEMO_CONFIG, *args])
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
    assert "detection head has random weights" in result.stderr  # MODEL.WEIGHTS is empty
    assert (tmp_path / os.path.basename(images[0])).exists()


class FakeWindow:
    """Stands in for the OpenCV window: records what is shown, asks to stop after ``stop_after``."""

    def __init__(self, stop_after=None):
        self.shown, self.waits, self.closed = [], [], False
        self.stop_after = stop_after

    def show(self, bgr, wait_ms):
        self.shown.append(bgr.copy())
        self.waits.append(wait_ms)
        return self.stop_after is None or len(self.shown) < self.stop_after

    def close(self):
        self.closed = True


class FakeCamera:
    """Stands in for cv2.VideoCapture(0): ``frames`` frames, then nothing."""

    def __init__(self, frames, opened=True):
        self.frames, self.reads, self.released, self.opened = list(frames), 0, False, opened

    def isOpened(self):
        return self.opened

    def read(self):
        self.reads += 1
        if not self.frames:
            return False, None
        return True, self.frames.pop(0)

    def get(self, prop):
        return 10.0 if prop == cv2.CAP_PROP_FPS else 0.0

    def release(self):
        self.released = True


def test_output_file_for_a_single_input(tmp_path, images, run, capsys):
    out = tmp_path / "sub" / "drawn.jpg"
    args = ["--confidence-threshold", "0.1"]
    assert run("--input", images[0], "--output", str(out), *args) == 0
    assert f" -> {out}" in capsys.readouterr().out
    assert cv2.imread(str(out)).shape == cv2.imread(images[0]).shape

    with pytest.raises(SystemExit) as e:  # a file takes one input
        run("--input", *images[:2], "--output", str(tmp_path / "two.jpg"), *args)
    assert e.value.code == 2
    assert "takes a single input; 2 inputs were given" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # an image is not written as a video
        run("--input", images[0], "--output", str(tmp_path / "x.mp4"), *args)
    assert e.value.code == 2
    assert "the input is an image" in capsys.readouterr().err
    assert not (tmp_path / "two.jpg").exists() and not (tmp_path / "x.mp4").exists()


def test_json_holds_the_predictors_detections(tmp_path, images, weights, run, capsys):
    from pycocotools.coco import COCO

    path = tmp_path / "dets.json"
    opts = ["MODEL.WEIGHTS", weights, "TEST.DETECTIONS_PER_IMAGE", "7"]
    args = ["--input", *images, "--json", str(path), "--confidence-threshold", "0.1"]
    assert run(*args, opts=opts[2:]) == 0
    assert f"-> {path} (image ids: {tmp_path / 'dets.images.json'})" in capsys.readouterr().out

    results = json.loads(path.read_text())
    listed = json.loads((tmp_path / "dets.images.json").read_text())
    assert [(i["id"], i["file_name"]) for i in listed["images"]] == list(enumerate(images, 1))
    # ssd_shapes is a COCO-format data set: its own category ids 1..5, with their names.
    assert listed["categories"] == [{"id": i + 1, "name": n} for i, n in enumerate(SHAPE_CLASSES)]

    cfg = load_config("ssd160_shapes_demo", *opts, "MODEL.SSD.SCORE_THRESH_TEST", "0.1")
    predictor = DefaultPredictor(cfg)
    total = 0
    for image_id, file_name in enumerate(images, 1):
        image = read_image(file_name, format="BGR")
        instances = predictor(image)["instances"].to("cpu")
        mine = [r for r in results if r["image_id"] == image_id]
        assert len(mine) == len(instances) > 0
        total += len(mine)
        xywh = torch.tensor([r["bbox"] for r in mine])
        xyxy = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1)
        torch.testing.assert_close(xyxy, instances.pred_boxes.tensor, rtol=0, atol=1e-4)
        torch.testing.assert_close(torch.tensor([r["score"] for r in mine]), instances.scores)
        assert [r["category_id"] for r in mine] == (instances.pred_classes + 1).tolist()
        entry = listed["images"][image_id - 1]
        assert (entry["height"], entry["width"]) == image.shape[:2]
    assert len(results) == total

    # For unlabelled images: pycocotools takes the images file as the data set.
    coco = COCO(str(tmp_path / "dets.images.json"))
    detections = coco.loadRes(str(path))
    assert len(detections.getAnnIds()) == total


def test_category_ids_without_a_dataset_mapping():
    from detectron2.data.catalog import Metadata

    assert common.dataset_category_ids(Metadata(name="x", thing_classes=["a", "b"]), 2) == [0, 1]
    mapped = Metadata(name="y", thing_dataset_id_to_contiguous_id={3: 1, 7: 0})
    assert common.dataset_category_ids(mapped, 2) == [7, 3]


def test_video_input_to_an_output_file_and_json(tmp_path, run, capsys):
    video = _write_video(str(tmp_path / "clip.avi"), num_frames=5)
    out, dets = tmp_path / "annotated.mp4", tmp_path / "clip.json"
    args = ["--video-input", video, "--output", str(out), "--json", str(dets)]
    assert run(*args, "--confidence-threshold", "0.1", opts=["TEST.DETECTIONS_PER_IMAGE", "3"]) == 0
    assert "clip.avi: 5 frames, 15 objects, " in capsys.readouterr().out
    frames = _read_video(out)
    assert len(frames) == 5 and frames[0].shape == (64, 96, 3)
    listed = json.loads((tmp_path / "clip.images.json").read_text())
    assert [(i["file_name"], i["frame"]) for i in listed["images"]] == [
        (video, f) for f in range(5)
    ]
    assert len(json.loads(dets.read_text())) == 15


def test_webcam_shows_frames_in_the_window_until_esc(run, capsys):
    opened = []

    def open_capture(source):
        opened.append(source)
        return camera

    camera, window = FakeCamera([_frame(i) for i in range(3)]), FakeWindow()
    args = ["--webcam", "--confidence-threshold", "0.1"]
    assert run(*args, window=window, open_capture=open_capture) == 0
    assert opened == [0] and camera.released and window.closed
    assert len(window.shown) == 3 and window.waits == [1, 1, 1]
    assert window.shown[0].shape == (64, 96, 3)
    assert np.abs(window.shown[0].astype(int) - _frame(0).astype(int)).mean() > 1  # drawn on
    assert "webcam: 3 frames, " in capsys.readouterr().out

    # Esc in the window after the second frame: the camera is read no further.
    camera, window = FakeCamera([_frame(i) for i in range(5)]), FakeWindow(stop_after=2)
    assert run(*args, window=window, open_capture=open_capture) == 0
    assert len(window.shown) == 2 and camera.reads == 2 and camera.released


def test_a_camera_or_video_that_cannot_open_is_said_so(tmp_path, run, capsys):
    camera = FakeCamera([], opened=False)
    assert run("--webcam", "--output", str(tmp_path), open_capture=lambda source: camera) == 1
    assert "webcam: cannot open the camera; skipped" in capsys.readouterr().err
    assert camera.released and camera.reads == 0
    # A video that does not open takes no output name: the next clip gets clip.mp4.
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "clip.mp4").write_bytes(b"not a video")
    (tmp_path / "b").mkdir()
    video, out = _write_video(str(tmp_path / "b" / "clip.avi"), num_frames=2), tmp_path / "out"
    assert run("--input", str(tmp_path / "a" / "clip.mp4"), video, "--output", str(out)) == 1
    assert "clip.mp4: cannot read it as a video; skipped" in capsys.readouterr().err
    assert sorted(os.listdir(out)) == ["clip.mp4"]


def test_images_wait_for_a_key_in_the_window(images, run):
    window = FakeWindow(stop_after=1)  # Esc on the first image: the others are not processed
    assert run("--input", *images, window=window) == 0
    assert window.waits == [0] and window.closed
    assert window.shown[0].shape == cv2.imread(images[0]).shape


def test_no_gui_is_said_not_crashed_on(images, run, monkeypatch, capsys):
    linux = sys.platform.startswith("linux")
    assert "headless" in demo.gui_unavailable_reason("  GUI:   NONE\n", {"DISPLAY": ":0"})
    assert demo.gui_unavailable_reason("  GUI:   GTK3\n", {"DISPLAY": ":0"}) is None
    assert (demo.gui_unavailable_reason("  GUI:   QT5\n", {}) is not None) == linux
    if not linux:
        return
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert run("--input", images[0]) == 0
    captured = capsys.readouterr()
    assert "note: no window to show the detections in: " in captured.err
    assert f"{images[0]}: 0 objects in " in captured.out
    with pytest.raises(SystemExit) as e:
        run("--webcam")
    assert e.value.code == 2
    assert "--webcam shows the camera in a window, but " in capsys.readouterr().err
