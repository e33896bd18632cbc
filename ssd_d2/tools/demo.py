"""
Run an SSD model on images, videos or a webcam and draw its detections with the class names of
the config's first test data set, as Detectron2's ``demo/demo.py`` does. Inputs are files,
folders and quoted globs; without --output or --json a window shows the pictures (Esc or q:
stop). A missing or unreadable input is reported and skipped; the exit status is then 1.

    python -m ssd_d2.tools.demo --config-file configs/ssd160_shapes_demo.yaml \\
        --input photo.jpg images/ "more/*.png" clip.mp4 --output out/ --json out/dets.json \\
        --opts MODEL.WEIGHTS output/ssd160_shapes_demo/model_final.pth
"""

import glob
import json
import os
import re
import sys
import time
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np

from detectron2.data import MetadataCatalog
from detectron2.utils.video_visualizer import VideoVisualizer
from detectron2.utils.visualizer import Visualizer

from ssd_d2.data.dataset_mapper import UnreadableImageError, read_image

from . import common

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
MEDIA_EXTENSIONS = IMAGE_EXTENSIONS + VIDEO_EXTENSIONS
# The name the camera's frames and output take (it is OpenCV's camera 0).
WEBCAM_NAME = "webcam"


def _has_extension(path: str, extensions: Sequence[str]) -> bool:
    return os.path.splitext(path)[1].lower() in extensions


def _is_video(source: str) -> bool:
    return source == WEBCAM_NAME or _has_extension(source, VIDEO_EXTENSIONS)


def expand_inputs(patterns: Sequence[str]) -> Tuple[List[str], List[str]]:
    """The files ``patterns`` (files, folders, globs) name, each once, and what names none."""
    files, errors = [], []
    for pattern in patterns:
        if os.path.isdir(pattern):
            paths = [os.path.join(pattern, name) for name in sorted(os.listdir(pattern))]
            found = [p for p in paths if _has_extension(p, MEDIA_EXTENSIONS) and os.path.isfile(p)]
            error = "no image or video file in this folder"
        elif os.path.isfile(pattern):
            found = [pattern]
        elif any(c in pattern for c in "*?["):
            found = sorted(p for p in glob.glob(pattern) if os.path.isfile(p))
            error = "no file matches"
        else:
            found, error = [], "no such file or folder"
        if not found:
            errors.append(f"{pattern}: {error}")
        files += [path for path in found if path not in files]
    return files, errors


def gui_unavailable_reason(build_information=None, environ=None) -> Optional[str]:
    """Why this OpenCV cannot open a window here, or None. On Linux a GUI build needs a
    display: some of its backends abort the process without one."""
    environ = os.environ if environ is None else environ
    match = re.search(r"^\s*GUI:\s*(\S+)", build_information or cv2.getBuildInformation(), re.M)
    if match and match.group(1).upper() == "NONE":
        return "this OpenCV is a headless build, without a GUI (opencv-python has one)"
    display = environ.get("DISPLAY") or environ.get("WAYLAND_DISPLAY")
    if sys.platform.startswith("linux") and not display:
        return "no display to show a window on ($DISPLAY is not set)"
    return None


class OpenCVWindow:
    """A highgui window. Any object with its ``show`` and ``close`` can stand in (tests, GUIs)."""

    def __init__(self, title: str = "ssd_d2 demo"):
        self.title = title
        cv2.namedWindow(title, cv2.WINDOW_NORMAL)

    def show(self, bgr: np.ndarray, wait_ms: int) -> bool:
        """Show, wait ``wait_ms`` (0: for a key); False for Esc, q or a closed window."""
        cv2.imshow(self.title, bgr)
        key = cv2.waitKey(wait_ms) & 0xFF
        closed = cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) < 1
        return key not in (27, ord("q")) and not closed

    def close(self) -> None:
        cv2.destroyWindow(self.title)


class CocoDetections:
    """COCO-format results (image ids 1, 2, ...) and the images as a COCO data set without
    annotations: ``COCO(images_file).loadRes(results_file)`` works on unlabelled images."""

    def __init__(self, metadata, num_classes: int):
        self.category_ids = common.dataset_category_ids(metadata, num_classes)
        names = metadata.get("thing_classes", None) or [str(i) for i in range(num_classes)]
        self.categories = [{"id": i, "name": n} for i, n in zip(self.category_ids, names)]
        self.images, self.results = [], []

    def add(self, file_name: str, image: np.ndarray, instances, frame: Optional[int] = None):
        image_id, (height, width) = len(self.images) + 1, image.shape[:2]
        entry = {"id": image_id, "file_name": file_name, "height": height, "width": width}
        self.images.append(entry if frame is None else {**entry, "frame": frame})
        self.results += common.coco_results(instances, image_id, self.category_ids)

    def save(self, path: str) -> None:
        """Write the results to ``path`` and the images next to it (dets.images.json)."""
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        stem, ext = os.path.splitext(path)
        images_path = f"{stem}.images{ext or '.json'}"
        with open(path, "w") as f:
            json.dump(self.results, f)
        with open(images_path, "w") as f:
            json.dump({"images": self.images, "categories": self.categories, "annotations": []}, f)
        detections = f"{len(self.results)} detections on {len(self.images)} images"
        print(f"{detections} -> {path} (image ids: {images_path})")


def _video_writer(path: str, fps: float, first_frame: np.ndarray):
    # MP4 takes MPEG-4 part 2 ("mp4v"), which every OpenCV build writes; AVI Motion JPEG.
    fourcc = cv2.VideoWriter_fourcc(*("MJPG" if path.lower().endswith(".avi") else "mp4v"))
    height, width = first_frame.shape[:2]
    writer = cv2.VideoWriter(path, fourcc, fps if fps > 0 else 25.0, (width, height))
    if not writer.isOpened():
        raise IOError(f"cannot write the video {path}")
    return writer


class DemoRunner:
    """The predictor (common.build_predictor) drawing with the class names of ``cfg.DATASETS.TEST[0]``; results go to
    ``output_name`` (input path, extension -> output path), ``window`` and ``detections``.
    ``open_capture`` (source: a path, or 0 for the camera) opens the videos and the camera."""

    def __init__(
        self,
        cfg,
        scale=1.0,
        output_name=None,
        window=None,
        record=False,
        open_capture=cv2.VideoCapture,
    ):
        self.predictor, self.open_capture = common.build_predictor(cfg), open_capture
        name = cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else "__unused"
        self.metadata = MetadataCatalog.get(name)
        self.scale, self.output_name, self.window = scale, output_name, window
        num_classes = cfg.MODEL.SSD.NUM_CLASSES
        self.detections = CocoDetections(self.metadata, num_classes) if record else None

    def run(self, files: Sequence[str]) -> int:
        """Process ``files`` until the window asks to stop; the number that failed (skipped)."""
        failures = 0
        try:
            for i, path in enumerate(files, 1):
                counter = f"[{i}/{len(files)}] " if len(files) > 1 else ""
                try:
                    process = self._process_video if _is_video(path) else self._process_image
                    message, stopped = process(path)
                except IOError as e:
                    failures += 1
                    print(f"{counter}error: {path}: {e}; skipped", file=sys.stderr, flush=True)
                    continue
                print(counter + message, flush=True)
                if stopped:
                    break
        except KeyboardInterrupt:  # Ctrl-C ends a webcam run: keep what was recorded
            print("interrupted", file=sys.stderr)
        finally:
            if self.window is not None:
                self.window.close()
        return failures

    def _predict(self, path: str, bgr: np.ndarray, frame: Optional[int] = None):
        """The detections of a BGR image (recorded), on the CPU, and the seconds they took."""
        start = time.perf_counter()
        instances = self.predictor(bgr)["instances"].to("cpu")
        seconds = time.perf_counter() - start
        if self.detections is not None:
            self.detections.add(path, bgr, instances, frame)
        return instances, seconds

    def _process_image(self, path: str) -> Tuple[str, bool]:
        try:
            image = read_image(path, format="BGR")
        except UnreadableImageError:
            if _has_extension(path, IMAGE_EXTENSIONS):
                raise IOError("cannot read it as an image") from None
            # A file named with another extension: perhaps OpenCV reads it as a video.
            return self._process_video(path)
        instances, seconds = self._predict(path, image)
        message = f"{path}: {len(instances)} objects in {seconds:.3f} s"
        if self.output_name is None and self.window is None:
            return message, False
        visualizer = Visualizer(image[:, :, ::-1], self.metadata, scale=self.scale)
        drawn = visualizer.draw_instance_predictions(instances).get_image()[:, :, ::-1]
        drawn = np.ascontiguousarray(drawn)
        if self.output_name is not None:
            out = self.output_name(path)
            if not cv2.imwrite(out, drawn):
                raise IOError(f"cannot write {out}")
            message += f" -> {out}"
        return message, self.window is not None and not self.window.show(drawn, wait_ms=0)

    def _process_video(self, path: str) -> Tuple[str, bool]:
        webcam = path == WEBCAM_NAME
        unreadable = "no frame read from the camera" if webcam else "cannot read it as a video"
        capture = self.open_capture(0 if webcam else path)
        if not capture.isOpened():  # before its output name is taken
            capture.release()
            raise IOError("cannot open the camera" if webcam else unreadable)
        out = self.output_name(path, ".mp4") if self.output_name is not None else None
        visualizer = VideoVisualizer(self.metadata)  # keeps an object's colour from frame to frame
        writer, frames, objects, seconds, stopped = None, 0, 0, 0.0, False
        try:
            while not stopped:
                ok, frame = capture.read()
                if not ok:
                    break
                instances, spent = self._predict(path, frame, frame=frames)
                frames += 1
                objects += len(instances)
                seconds += spent
                if out is None and self.window is None:
                    continue
                drawn = visualizer.draw_instance_predictions(frame[:, :, ::-1], instances)
                drawn = np.ascontiguousarray(drawn.get_image()[:, :, ::-1])
                if out is not None:
                    if writer is None:
                        writer = _video_writer(out, capture.get(cv2.CAP_PROP_FPS), drawn)
                    writer.write(drawn)
                stopped = self.window is not None and not self.window.show(drawn, wait_ms=1)
        finally:
            capture.release()
            if writer is not None:
                writer.release()
        if frames == 0:
            raise IOError(unreadable)
        message = f"{path}: {frames} frames, {objects} objects, {1000 * seconds / frames:.1f} ms"
        return message + "/frame" + (f" -> {out}" if out else ""), stopped


def output_names(output: str, sources: Sequence[str], parser):
    """``--output`` as a function of an input path (and extension): the file it names, or in
    its folder the input's name, made unique, never an input's (it may be an input folder)."""
    if os.path.isdir(output) or not _has_extension(output, MEDIA_EXTENSIONS):
        os.makedirs(output, exist_ok=True)
        inputs, used = {os.path.realpath(p) for p in sources}, set()

        def name(input_path: str, extension: Optional[str] = None) -> str:
            stem, ext = os.path.splitext(os.path.basename(input_path))
            ext = extension or (ext.lower() if ext.lower() in IMAGE_EXTENSIONS else ".png")
            candidate, n = stem + ext, 1
            while candidate in used or os.path.realpath(os.path.join(output, candidate)) in inputs:
                n += 1
                candidate = f"{stem}_{n}{ext}"
            used.add(candidate)
            return os.path.join(output, candidate)

        return name
    # As in Detectron2's demo, an --output file takes a single input.
    if len(sources) > 1:
        parser.error(
            f"--output {output} names a file, which takes a single input; {len(sources)} "
            "inputs were given: give a folder instead."
        )
    video = bool(sources) and _is_video(sources[0])
    wanted = VIDEO_EXTENSIONS if video else IMAGE_EXTENSIONS
    if sources and not _has_extension(output, wanted):
        kind = "a video" if video else "an image"
        parser.error(f"--output {output}: the input is {kind}; name the file with one of {wanted}.")
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    return lambda input_path, extension=None: output


def main(argv: Optional[Sequence[str]] = None, window=None, open_capture=None) -> int:
    """The demo; ``window`` replaces :class:`OpenCVWindow`, ``open_capture`` cv2.VideoCapture
    (which opens every video file and the camera)."""
    parser = common.argument_parser("demo", __doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", nargs="+", metavar="PATH", help="files, folders, globs")
    source.add_argument("--video-input", metavar="FILE", help="a video file")
    source.add_argument("--webcam", action="store_true", help="the first camera (Esc: stop)")
    parser.add_argument("--output", metavar="FILE_OR_DIR", help="a file (single input) or folder")
    parser.add_argument("--json", metavar="FILE", help="the detections as COCO-format results")
    parser.add_argument("--confidence-threshold", type=float, default=0.5, help="minimum score")
    parser.add_argument("--scale", type=float, default=1.0, help="drawn size / input size")
    args, cfg = common.parse_config(parser, argv)
    cfg.MODEL.SSD.SCORE_THRESH_TEST = args.confidence_threshold
    with common.usage_errors(parser):
        common.check_weights_file(cfg)
    # The camera is named WEBCAM_NAME; a --video-input is one more input.
    sources = [args.video_input] if args.video_input else args.input
    files, errors = ([WEBCAM_NAME], []) if args.webcam else expand_inputs(sources)
    for message in errors:
        print(f"error: {message}", file=sys.stderr)
    output_name = output_names(args.output, files, parser) if args.output else None
    if args.output or args.json:
        window = None  # as in Detectron2's demo, a run that writes shows nothing
    elif window is None:
        reason = gui_unavailable_reason()
        if reason is None:
            window = OpenCVWindow()
        elif args.webcam:
            parser.error(
                f"--webcam shows the camera in a window, but {reason}: give --output FILE.mp4 "
                "or --json FILE."
            )
        else:
            print(
                f"note: no window to show the detections in: {reason}. They are only printed; "
                "--output saves the pictures, --json the boxes.",
                file=sys.stderr,
            )
    capture = open_capture or cv2.VideoCapture
    runner = DemoRunner(cfg, args.scale, output_name, window, bool(args.json), capture)
    failures = len(errors) + runner.run(files)
    if args.json:
        runner.detections.save(args.json)
    if failures:
        print(f"{failures} input(s) failed", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
