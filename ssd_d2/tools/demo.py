"""
Run an SSD model on images, videos or a webcam and draw its detections, labelled with the
class names of the config's first test data set, as Detectron2's ``demo/demo.py`` does.

    python -m ssd_d2.tools.demo --config-file configs/ssd160_shapes_demo.yaml \\
        --input photo.jpg images/ "more/*.png" clip.mp4 --output out/ --json out/dets.json \\
        --opts MODEL.WEIGHTS output/ssd160_shapes_demo/model_final.pth

Each input is a file, a folder (its image and video files, not recursive) or a glob pattern
(quoted, so that the shell leaves it alone); ``--video-input FILE`` and ``--webcam`` take a
video or the first camera instead. ``--output`` is a file for a single input (``out.jpg``,
``out.mp4``), a folder otherwise: images are written there under their own names, videos as
``<name>.mp4``. Without ``--output`` (and ``--json``), the pictures are shown in a window
(Esc or q: stop) when OpenCV has a GUI; a headless OpenCV has none, which is said, and the
results are printed only. ``--json`` writes the detections as COCO-format results. For each
input the time and the number of objects are printed. A missing or unreadable input is
reported and skipped; the exit status is then 1.
"""

import argparse
import glob
import json
import os
import re
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from detectron2.data import MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.utils.video_visualizer import VideoVisualizer
from detectron2.utils.visualizer import Visualizer

from ssd_d2.config import load_config
from ssd_d2.engine import SSDPredictor

from .common import check_weights

__all__ = [
    "IMAGE_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "CocoDetections",
    "DemoRunner",
    "OpenCVWindow",
    "build_argument_parser",
    "expand_inputs",
    "gui_unavailable_reason",
    "main",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
# The camera --webcam opens, and the name its frames and output take.
WEBCAM = 0
WEBCAM_NAME = "webcam"
# Keys that close the window: Esc, q.
_STOP_KEYS = (27, ord("q"))


def build_argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ssd_d2.tools.demo",
        description="Draw an SSD model's detections on images, videos or a webcam.",
    )
    parser.add_argument("--config-file", required=True, metavar="FILE", help="config file")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--input",
        nargs="+",
        metavar="PATH",
        help="image or video files, folders, or quoted glob patterns",
    )
    source.add_argument("--video-input", metavar="FILE", help="a video file")
    source.add_argument("--webcam", action="store_true", help="the first camera (Esc: stop)")
    parser.add_argument(
        "--output",
        metavar="FILE_OR_DIR",
        help="for a single input, a file named with an image or video extension; otherwise a "
        "folder for the annotated images and videos. Without it (and without --json), a "
        "window shows them if OpenCV has a GUI",
    )
    parser.add_argument(
        "--json",
        metavar="FILE",
        help="write the detections as COCO-format results [{image_id, category_id, bbox "
        "[x, y, w, h], score}], and the image ids with their files to FILE's "
        "'.images.json' sibling (a COCO data set without annotations)",
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


def gui_unavailable_reason(
    build_information: Optional[str] = None, environ: Optional[Dict[str, str]] = None
) -> Optional[str]:
    """
    Why OpenCV cannot open a window here, or None when it can. ``build_information`` and
    ``environ`` default to ``cv2.getBuildInformation()`` and ``os.environ``.

    Headless OpenCV (opencv-python-headless) is built without highgui's GUI backend and
    raises an error for any window; a GUI build on Linux needs a display to connect to, and
    some of its backends abort the process without one, so that is checked first.
    """
    if build_information is None:
        build_information = cv2.getBuildInformation()
    environ = os.environ if environ is None else environ
    match = re.search(r"^\s*GUI:\s*(\S+)", build_information, re.MULTILINE)
    if match is not None and match.group(1).upper() == "NONE":
        return "this OpenCV is a headless build, without a GUI (opencv-python has one)"
    if sys.platform.startswith("linux") and not (
        environ.get("DISPLAY") or environ.get("WAYLAND_DISPLAY")
    ):
        return "no display to show a window on ($DISPLAY is not set)"
    return None


class OpenCVWindow:
    """
    A highgui window. The demo shows pictures through any object with this ``show`` and
    ``close`` (``main``'s ``window`` argument), so that tests or another GUI can stand in.
    """

    def __init__(self, title: str = "ssd_d2 demo"):
        self.title = title
        cv2.namedWindow(title, cv2.WINDOW_NORMAL)

    def show(self, bgr: np.ndarray, wait_ms: int) -> bool:
        """
        Show the picture and wait ``wait_ms`` (0: until a key is pressed). False when the
        user asks to stop: Esc or q, or the window was closed.
        """
        cv2.imshow(self.title, bgr)
        key = cv2.waitKey(wait_ms) & 0xFF
        closed = cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) < 1
        return key not in _STOP_KEYS and not closed

    def close(self) -> None:
        cv2.destroyWindow(self.title)


def coco_category_ids(metadata, num_classes: int) -> List[int]:
    """
    The category id of each contiguous class index: the data set's own ids where its
    metadata maps them (``thing_dataset_id_to_contiguous_id``, as COCO-format data sets
    have), else the contiguous index itself, as Detectron2's COCOEvaluator writes them.
    """
    mapping = metadata.get("thing_dataset_id_to_contiguous_id", None)
    if not mapping:
        return list(range(num_classes))
    contiguous_to_dataset = {c: d for d, c in mapping.items()}
    return [contiguous_to_dataset[i] for i in range(num_classes)]


def images_file(json_path: str) -> str:
    """The file next to ``--json FILE`` that lists its images: dets.json -> dets.images.json."""
    stem, ext = os.path.splitext(json_path)
    return f"{stem}.images{ext or '.json'}"


class CocoDetections:
    """
    Detections as COCO-format results, and the images they were found on: image ids 1, 2, ...
    in the order the images (or video frames) were processed. The results file is what
    ``COCO.loadRes`` and Detectron2's ``coco_instances_results.json`` hold; the images file
    is a COCO data set without annotations (images, categories), so that
    ``COCO(images_file).loadRes(results_file)`` works for unlabelled images.
    """

    def __init__(self, metadata, num_classes: int):
        self.category_ids = coco_category_ids(metadata, num_classes)
        names = metadata.get("thing_classes", None) or [str(i) for i in range(num_classes)]
        self.categories = [{"id": i, "name": n} for i, n in zip(self.category_ids, names)]
        self.images: List[dict] = []
        self.results: List[dict] = []

    def add(self, file_name: str, image: np.ndarray, instances, frame: Optional[int] = None):
        """Record ``instances`` (on the CPU) found on ``image``; returns the image id."""
        image_id = len(self.images) + 1
        entry = {"id": image_id, "file_name": file_name}
        entry.update(height=int(image.shape[0]), width=int(image.shape[1]))
        if frame is not None:
            entry["frame"] = frame
        self.images.append(entry)
        boxes = instances.pred_boxes.tensor.tolist()
        for (x0, y0, x1, y1), score, label in zip(
            boxes, instances.scores.tolist(), instances.pred_classes.tolist()
        ):
            self.results.append(
                {
                    "image_id": image_id,
                    "category_id": self.category_ids[label],
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "score": score,
                }
            )
        return image_id

    def save(self, path: str) -> str:
        """Write the results to ``path`` and the images to :func:`images_file`; returns it."""
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        with open(path, "w") as f:
            json.dump(self.results, f)
        images_path = images_file(path)
        with open(images_path, "w") as f:
            data = {"images": self.images, "categories": self.categories, "annotations": []}
            json.dump(data, f)
        return images_path


class DemoRunner:
    """SSDPredictor (DefaultPredictor with ssd_d2's weights entrance) plus drawing with the class names of ``cfg.DATASETS.TEST[0]``."""

    def __init__(self, cfg, scale: float = 1.0):
        self.predictor = SSDPredictor(cfg)
        name = cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else "__unused"
        self.metadata = MetadataCatalog.get(name)
        self.num_classes = cfg.MODEL.SSD.NUM_CLASSES
        self.scale = scale

    def predict(self, bgr: np.ndarray):
        """The detections of a BGR image, on the CPU."""
        return self.predictor(bgr)["instances"].to("cpu")

    def draw(self, bgr: np.ndarray, instances) -> np.ndarray:
        """The image with labelled boxes, BGR, ``scale`` times the input size."""
        visualizer = Visualizer(bgr[:, :, ::-1], self.metadata, scale=self.scale)
        drawn = visualizer.draw_instance_predictions(instances).get_image()
        return np.ascontiguousarray(drawn[:, :, ::-1])

    def run_on_stream(
        self,
        capture,
        name: str,
        output_path: Optional[str] = None,
        window=None,
        detections: Optional[CocoDetections] = None,
    ) -> Tuple[int, int, float, bool]:
        """
        Predict on every frame of ``capture`` (a ``cv2.VideoCapture`` or any object with its
        ``read``, ``get`` and ``release``), write the frames annotated to ``output_path``,
        show them in ``window``, record them in ``detections`` under ``name``. Returns
        (frames, objects, seconds of prediction, whether the window asked to stop).
        """
        writer = None
        frames = objects = 0
        seconds = 0.0
        stopped = False
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
                if detections is not None:
                    detections.add(name, frame, instances, frame=frames)
                frames += 1
                objects += len(instances)
                if output_path is None and window is None:
                    continue
                drawn = visualizer.draw_instance_predictions(frame[:, :, ::-1], instances)
                drawn = np.ascontiguousarray(drawn.get_image()[:, :, ::-1])
                if output_path is not None:
                    if writer is None:
                        writer = _video_writer(output_path, capture.get(cv2.CAP_PROP_FPS), drawn)
                    writer.write(drawn)
                if window is not None and not window.show(drawn, wait_ms=1):
                    stopped = True
                    break
        finally:
            capture.release()
            if writer is not None:
                writer.release()
        return frames, objects, seconds, stopped


def _video_writer(path: str, fps: float, first_frame: np.ndarray):
    # MP4 containers take MPEG-4 part 2 ("mp4v"), which every OpenCV build writes; AVI takes
    # Motion JPEG.
    fourcc = "MJPG" if path.lower().endswith(".avi") else "mp4v"
    height, width = first_frame.shape[:2]
    writer = cv2.VideoWriter(
        path, cv2.VideoWriter_fourcc(*fourcc), fps if fps > 0 else 25.0, (width, height)
    )
    if not writer.isOpened():
        raise IOError(f"cannot write the video {path}")
    return writer


class _SingleOutput:
    """``--output FILE`` for a single input: that file, whatever the input is named."""

    def __init__(self, path: str):
        self.path = path

    def __call__(self, input_path: str, extension: Optional[str] = None) -> str:
        return self.path


def _read_image(path: str) -> Optional[np.ndarray]:
    """The image as BGR (EXIF orientation applied, as Detectron2 reads data sets), or None."""
    try:
        return read_image(path, format="BGR")
    except (OSError, ValueError, SyntaxError):
        # PIL raises OSError (UnidentifiedImageError) for non-images, ValueError or
        # SyntaxError for some truncated files.
        return None


def _process_image(runner: DemoRunner, path: str, context) -> Tuple[str, bool]:
    image = _read_image(path)
    if image is None:
        if _has_extension(path, IMAGE_EXTENSIONS):
            raise IOError("cannot read it as an image")
        # A file named with another extension: perhaps OpenCV reads it as a video.
        return _process_video(runner, path, context)
    start = time.perf_counter()
    instances = runner.predict(image)
    message = f"{path}: {len(instances)} objects in {time.perf_counter() - start:.3f} s"
    if context.detections is not None:
        context.detections.add(path, image, instances)
    stopped = False
    if context.output_name is not None or context.window is not None:
        drawn = runner.draw(image, instances)
        if context.output_name is not None:
            out = context.output_name(path)
            if not cv2.imwrite(out, drawn):
                raise IOError(f"cannot write {out}")
            message += f" -> {out}"
        if context.window is not None:
            stopped = not context.window.show(drawn, wait_ms=0)
    return message, stopped


def _process_video(runner: DemoRunner, path: str, context) -> Tuple[str, bool]:
    capture = context.open_capture(WEBCAM if path == WEBCAM_NAME else path)
    if not capture.isOpened():
        capture.release()
        raise IOError(
            "cannot open the camera" if path == WEBCAM_NAME else "cannot read it as a video"
        )
    out = context.output_name(path, ".mp4") if context.output_name is not None else None
    frames, objects, seconds, stopped = runner.run_on_stream(
        capture, path, out, context.window, context.detections
    )
    if frames == 0:
        raise IOError(
            "no frame read from the camera" if path == WEBCAM_NAME else "cannot read it as a video"
        )
    message = f"{path}: {frames} frames, {objects} objects, {1000 * seconds / frames:.1f} ms/frame"
    return message + (f" -> {out}" if out else ""), stopped


class _Context:
    """Where the results of each input go."""

    def __init__(self, output_name, window, detections, open_capture):
        self.output_name = output_name
        self.window = window
        self.detections = detections
        self.open_capture = open_capture


def _sources(args) -> Tuple[List[str], List[str]]:
    """The inputs to process (WEBCAM_NAME for the camera) and the errors of those missing."""
    if args.webcam:
        return [WEBCAM_NAME], []
    if args.video_input is not None:
        if not os.path.isfile(args.video_input):
            return [], [f"{args.video_input}: no such file"]
        return [args.video_input], []
    return expand_inputs(args.input)


def _is_video(source: str) -> bool:
    return source == WEBCAM_NAME or _has_extension(source, VIDEO_EXTENSIONS)


def _output_names(args, parser, sources: Sequence[str]):
    """``--output`` as a function of the input path: a single file, or names in a folder."""
    if not args.output:
        return None
    output = args.output
    media = IMAGE_EXTENSIONS + VIDEO_EXTENSIONS
    if os.path.isdir(output) or not _has_extension(output, media):
        os.makedirs(output, exist_ok=True)
        return _OutputNames(output, sources)
    # Detectron2's demo takes an --output file for a single input.
    if len(sources) > 1:
        parser.error(
            f"--output {output} names a file, which takes a single input; {len(sources)} "
            "inputs were given: give a folder instead."
        )
    wanted = VIDEO_EXTENSIONS if sources and _is_video(sources[0]) else IMAGE_EXTENSIONS
    if sources and not _has_extension(output, wanted):
        kind = "a video" if _is_video(sources[0]) else "an image"
        parser.error(f"--output {output}: the input is {kind}; name the file with one of {wanted}.")
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    return _SingleOutput(output)


def main(argv: Optional[Sequence[str]] = None, window=None, open_capture=None) -> int:
    """
    The demo. ``window`` (an object with :class:`OpenCVWindow`'s ``show`` and ``close``)
    replaces the OpenCV window, and ``open_capture`` (``cv2.VideoCapture`` by default) opens
    the videos and the camera: a GUI or a camera of one's own, or stand-ins for tests.
    """
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

    files, errors = _sources(args)
    for message in errors:
        print(f"error: {message}", file=sys.stderr)
    output_name = _output_names(args, parser, files)
    # As in Detectron2's demo, the window is for a run that writes nothing.
    if args.output or args.json:
        window = None
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
                f"note: no window to show the detections in: {reason}. They are only "
                "printed; --output saves the pictures, --json the boxes.",
                file=sys.stderr,
            )

    runner = DemoRunner(cfg, scale=args.scale)
    detections = CocoDetections(runner.metadata, runner.num_classes) if args.json else None
    context = _Context(output_name, window, detections, open_capture or cv2.VideoCapture)
    progress = _Progress(len(files))
    failures = len(errors)
    try:
        for path in files:
            try:
                if _is_video(path):
                    message, stopped = _process_video(runner, path, context)
                else:
                    message, stopped = _process_image(runner, path, context)
                progress.print(message)
            except IOError as e:
                failures += 1
                stopped = False
                progress.print(f"error: {path}: {e}; skipped", file=sys.stderr)
            progress.step()
            if stopped:
                break
    except KeyboardInterrupt:
        # Ctrl-C ends a webcam run: keep what was recorded.
        print("interrupted", file=sys.stderr)
    finally:
        progress.close()
        if window is not None:
            window.close()
    if detections is not None:
        images_path = detections.save(args.json)
        print(
            f"{len(detections.results)} detections on {len(detections.images)} images -> "
            f"{args.json} (image ids: {images_path})"
        )
    if failures:
        print(f"{failures} input(s) failed", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
