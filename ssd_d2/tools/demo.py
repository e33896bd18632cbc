"""
Run an SSD model on images or videos and draw its detections, labelled with the class names
of the config's first test data set.

    python -m ssd_d2.tools.demo --config-file configs/ssd160_shapes_demo.yaml \\
        --input photo.jpg images/ "more/*.png" clip.mp4 --output out/ \\
        --opts MODEL.WEIGHTS output/ssd160_shapes_demo/model_final.pth

Each input is a file, a folder (its image and video files, not recursive) or a glob pattern
(quoted, so that the shell leaves it alone). Images are written to ``--output`` under their
own names; videos are written as ``<name>.mp4``. For each input the time and the number of
objects are printed. A missing or unreadable input is reported and skipped; the exit status
is then 1.
"""

import argparse
import glob
import os
import sys
import time
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np

from detectron2.data import MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.utils.video_visualizer import VideoVisualizer
from detectron2.utils.visualizer import Visualizer

from ssd_d2.engine import SSDPredictor

from .common import check_weights, load_config

__all__ = [
    "IMAGE_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "DemoRunner",
    "build_argument_parser",
    "expand_inputs",
    "main",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")


def build_argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ssd_d2.tools.demo",
        description="Draw an SSD model's detections on images and videos.",
    )
    parser.add_argument("--config-file", required=True, metavar="FILE", help="config file")
    parser.add_argument(
        "--input",
        nargs="+",
        required=True,
        metavar="PATH",
        help="image or video files, folders, or quoted glob patterns",
    )
    parser.add_argument(
        "--output",
        metavar="DIR",
        help="folder for the annotated images and videos (without it, only print results)",
    )
    parser.add_argument(
        "--confidence-threshold",
        type=float,
        default=0.5,
        help="minimum score of a drawn detection (sets MODEL.SSD.SCORE_THRESH_TEST)",
    )
    parser.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="scale of the written images relative to the input (labels stay legible on "
        "small images with 2)",
    )
    parser.add_argument(
        "--opts",
        nargs=argparse.REMAINDER,
        default=[],
        metavar="KEY VALUE",
        help="config overrides, e.g. MODEL.WEIGHTS model.pth (must come last)",
    )
    return parser


def _is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def _has_extension(path: str, extensions: Sequence[str]) -> bool:
    return os.path.splitext(path)[1].lower() in extensions


def expand_inputs(patterns: Sequence[str]) -> Tuple[List[str], List[str]]:
    """
    The files named by ``patterns`` (files, folders, glob patterns), in the order given,
    each once, and an error message for each pattern that names nothing.
    """
    files, errors = [], []
    media = IMAGE_EXTENSIONS + VIDEO_EXTENSIONS
    for pattern in patterns:
        if os.path.isdir(pattern):
            found = sorted(
                os.path.join(pattern, name)
                for name in os.listdir(pattern)
                if _has_extension(name, media) and os.path.isfile(os.path.join(pattern, name))
            )
            if not found:
                errors.append(f"{pattern}: no image or video file in this folder")
        elif os.path.isfile(pattern):
            found = [pattern]
        elif _is_glob(pattern):
            found = sorted(p for p in glob.glob(pattern) if os.path.isfile(p))
            if not found:
                errors.append(f"{pattern}: no file matches")
        else:
            found = []
            errors.append(f"{pattern}: no such file or folder")
        for path in found:
            if path not in files:
                files.append(path)
    return files, errors


class _OutputNames:
    """Output paths named after the inputs, made unique when two inputs share a name."""

    def __init__(self, folder: str, inputs: Sequence[str]):
        self.folder = folder
        self.inputs = {os.path.realpath(p) for p in inputs}
        self.used = set()

    def __call__(self, input_path: str, extension: Optional[str] = None) -> str:
        stem, ext = os.path.splitext(os.path.basename(input_path))
        ext = extension or (ext.lower() if ext.lower() in IMAGE_EXTENSIONS else ".png")
        candidate, n = stem + ext, 1
        # Never overwrite an input (--output may be an input folder) or an earlier output.
        while candidate in self.used or self._is_input(candidate):
            n += 1
            candidate = f"{stem}_{n}{ext}"
        self.used.add(candidate)
        return os.path.join(self.folder, candidate)

    def _is_input(self, name: str) -> bool:
        return os.path.realpath(os.path.join(self.folder, name)) in self.inputs


class _Progress:
    """A tqdm progress bar over several inputs, or a plain "[i/n]" counter without tqdm."""

    def __init__(self, total: int):
        self.total, self.count, self.bar = total, 0, None
        if total > 1:
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(total=total, unit="file", file=sys.stderr, dynamic_ncols=True)

    def print(self, message: str, file=None) -> None:
        file = file or sys.stdout
        if self.bar is not None:
            self.bar.write(message, file=file)
        elif self.total > 1:
            print(f"[{self.count + 1}/{self.total}] {message}", file=file, flush=True)
        else:
            print(message, file=file, flush=True)

    def step(self) -> None:
        self.count += 1
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class DemoRunner:
    """SSDPredictor (DefaultPredictor with ssd_d2's weights entrance) plus drawing with the class names of ``cfg.DATASETS.TEST[0]``."""

    def __init__(self, cfg, scale: float = 1.0):
        self.predictor = SSDPredictor(cfg)
        name = cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else "__unused"
        self.metadata = MetadataCatalog.get(name)
        self.scale = scale

    def predict(self, bgr: np.ndarray):
        """The detections of a BGR image, on the CPU."""
        return self.predictor(bgr)["instances"].to("cpu")

    def draw(self, bgr: np.ndarray, instances) -> np.ndarray:
        """The image with labelled boxes, BGR, ``scale`` times the input size."""
        visualizer = Visualizer(bgr[:, :, ::-1], self.metadata, scale=self.scale)
        drawn = visualizer.draw_instance_predictions(instances).get_image()
        return np.ascontiguousarray(drawn[:, :, ::-1])

    def run_on_video(self, path: str, output_path: Optional[str]):
        """Predict on every frame and write them annotated; returns (frames, objects, seconds)."""
        capture = cv2.VideoCapture(path)
        if not capture.isOpened():
            raise IOError("cannot read it as a video")
        writer = None
        frames = objects = 0
        seconds = 0.0
        # Keeps an object's colour from frame to frame.
        visualizer = VideoVisualizer(self.metadata)
        try:
            while True:
                ok, frame = capture.read()
                if not ok:
                    break
                start = time.perf_counter()
                instances = self.predict(frame)
                seconds += time.perf_counter() - start
                frames += 1
                objects += len(instances)
                if output_path is None:
                    continue
                drawn = visualizer.draw_instance_predictions(frame[:, :, ::-1], instances)
                drawn = np.ascontiguousarray(drawn.get_image()[:, :, ::-1])
                if writer is None:
                    fps = capture.get(cv2.CAP_PROP_FPS)
                    writer = cv2.VideoWriter(
                        output_path,
                        cv2.VideoWriter_fourcc(*"mp4v"),
                        fps if fps > 0 else 25.0,
                        (drawn.shape[1], drawn.shape[0]),
                    )
                    if not writer.isOpened():
                        raise IOError(f"cannot write the video {output_path}")
                writer.write(drawn)
        finally:
            capture.release()
            if writer is not None:
                writer.release()
        if frames == 0:
            raise IOError("cannot read it as a video")
        return frames, objects, seconds


def _read_image(path: str) -> Optional[np.ndarray]:
    """The image as BGR (EXIF orientation applied, as Detectron2 reads data sets), or None."""
    try:
        return read_image(path, format="BGR")
    except (OSError, ValueError, SyntaxError):
        # PIL raises OSError (UnidentifiedImageError) for non-images, ValueError or
        # SyntaxError for some truncated files.
        return None


def _process_image(runner: DemoRunner, path: str, output_name) -> str:
    image = _read_image(path)
    if image is None:
        if _has_extension(path, IMAGE_EXTENSIONS):
            raise IOError("cannot read it as an image")
        # A file named with another extension: perhaps OpenCV reads it as a video.
        return _process_video(runner, path, output_name)
    start = time.perf_counter()
    instances = runner.predict(image)
    message = f"{path}: {len(instances)} objects in {time.perf_counter() - start:.3f} s"
    if output_name is not None:
        out = output_name(path)
        if not cv2.imwrite(out, runner.draw(image, instances)):
            raise IOError(f"cannot write {out}")
        message += f" -> {out}"
    return message


def _process_video(runner: DemoRunner, path: str, output_name) -> str:
    out = output_name(path, ".mp4") if output_name is not None else None
    frames, objects, seconds = runner.run_on_video(path, out)
    message = f"{path}: {frames} frames, {objects} objects, {1000 * seconds / frames:.1f} ms/frame"
    return message + (f" -> {out}" if out else "")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_argument_parser()
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config_file, args.opts)
        cfg.MODEL.SSD.SCORE_THRESH_TEST = args.confidence_threshold
        cfg.freeze()
        warning = check_weights(cfg)
    except FileNotFoundError as e:
        parser.error(str(e))
    if warning:
        print(f"warning: {warning}", file=sys.stderr)

    files, errors = expand_inputs(args.input)
    for message in errors:
        print(f"error: {message}", file=sys.stderr)
    if args.output:
        os.makedirs(args.output, exist_ok=True)
    output_name = _OutputNames(args.output, files) if args.output else None
    runner = DemoRunner(cfg, scale=args.scale)

    progress = _Progress(len(files))
    failures = len(errors)
    for path in files:
        try:
            if _has_extension(path, VIDEO_EXTENSIONS):
                message = _process_video(runner, path, output_name)
            else:
                message = _process_image(runner, path, output_name)
            progress.print(message)
        except IOError as e:
            failures += 1
            progress.print(f"error: {path}: {e}; skipped", file=sys.stderr)
        progress.step()
    progress.close()
    if failures:
        print(f"{failures} input(s) failed", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
