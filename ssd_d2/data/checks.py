"""Checks of the training data sets, on the dicts Detectron2's loaders produced, once per run: what
a user must fix raises a :class:`DatasetError` naming the file, the annotation and the fix; what
real data sets have a few of is repaired or skipped and counted (docs/data.md, "Bad data")."""

import json
import logging
import math
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.builtin import _PREDEFINED_SPLITS_COCO
from detectron2.structures import BoxMode
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager

from .dataset_mapper import exif_orientation

__all__ = ["DatasetError", "DatasetReport", "check_class_count", "check_dataset_dicts"]
__all__ += ["check_dataset_files", "check_voc_evaluation_fields"]
__all__ += ["check_images_exist", "load_dataset_dicts", "map_across_processes"]

logger = logging.getLogger(__name__)

# EXIF orientations that rotate by 90 or 270 degrees, swapping width and height.
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)
_LOGGED_EXAMPLES = 5  # of each kind of repaired or skipped problem
_VOC_BOX_KEYS = ("xmin", "ymin", "xmax", "ymax")
# Detectron2's 10 built-in COCO instance splits. Private, but no public name selects exactly
# them: a user's register_coco_instances("coco_mine", ...) also has the prefix and evaluator.
_BUILTIN_COCO_SPLITS = _PREDEFINED_SPLITS_COCO["coco"]


class DatasetError(ValueError):
    """A data set problem that training cannot work around; the message says how to fix it."""


@dataclass
class DatasetReport:
    """What :func:`check_dataset_dicts` found, repaired and skipped in one data set."""

    dataset_name: str = ""
    num_images: int = 0
    num_boxes: int = 0
    clipped_boxes: int = 0
    degenerate_boxes: int = 0
    outside_boxes: int = 0
    images_without_annotations: int = 0
    images_left_without_boxes: int = 0
    unreadable_images: List[Tuple[str, str]] = field(default_factory=list)
    examples: Dict[str, List[str]] = field(default_factory=dict)

    def _example(self, kind: str, describe: Callable[[], str]) -> None:
        examples = self.examples.setdefault(kind, [])
        if len(examples) < _LOGGED_EXAMPLES:
            examples.append(describe())

    def summary(self) -> str:
        lines = [
            f"Data set {self.dataset_name!r}: {self.num_images} images, {self.num_boxes} boxes "
            "checked.",
            f"  boxes clipped to their image: {self.clipped_boxes}",
            f"  boxes dropped, zero or negative width or height: {self.degenerate_boxes}",
            f"  boxes dropped, wholly outside their image: {self.outside_boxes}",
            f"  images without annotations: {self.images_without_annotations}",
            f"  images left without boxes by the drops: {self.images_left_without_boxes}",
            f"  images dropped, unreadable: {len(self.unreadable_images)}",
        ]
        lines += [f"  e.g. {kind}: " + "; ".join(e) for kind, e in self.examples.items()]
        return "\n".join(lines)


def check_dataset_files(dataset_names: Iterable[str]) -> None:
    """Fail early, naming the path and the fix, when a built-in VOC or COCO data set is not
    where Detectron2 looks for it."""
    for name in dataset_names:
        metadata = MetadataCatalog.get(name)
        paths = []  # what a Detectron2 built-in VOC or COCO data set reads
        if name.startswith("voc_") and metadata.get("dirname", None):
            split_file = os.path.join(
                metadata.dirname, "ImageSets", "Main", metadata.split + ".txt"
            )
            paths = [split_file, os.path.join(metadata.dirname, "JPEGImages")]
        elif name in _BUILTIN_COCO_SPLITS:
            paths = [metadata.json_file, metadata.image_root]
        missing = [p for p in paths if not os.path.exists(p)]
        if missing:
            root = os.getenv("DETECTRON2_DATASETS", "datasets")
            raise FileNotFoundError(
                f"Data set {name!r} is missing {missing[0]}. Detectron2 looks for VOC and COCO "
                f"under DETECTRON2_DATASETS (now {os.path.abspath(root)!r}): put VOC2007/, "
                "VOC2012/ and coco/ there as described in detectron2's datasets/README.md, "
                "or set DETECTRON2_DATASETS to the folder that holds them."
            )


def check_class_count(dataset_name: str, num_classes: int, key: str = "the config") -> None:
    """DatasetError when data set ``dataset_name``'s class names (its metadata's
    ``thing_classes``, when it has them) are not ``num_classes`` (MODEL.SSD.NUM_CLASSES), naming
    ``key`` (the config key that names the data set) and the fix."""
    thing_classes = MetadataCatalog.get(dataset_name).get("thing_classes", None)
    if thing_classes is None or len(thing_classes) == num_classes:
        return
    shown = ", ".join(thing_classes[:10]) + (", ..." if len(thing_classes) > 10 else "")
    raise DatasetError(
        f"{key} names data set {dataset_name!r}, which has {len(thing_classes)} classes "
        f"({shown}), but MODEL.SSD.NUM_CLASSES is {num_classes}. Set MODEL.SSD.NUM_CLASSES "
        f"{len(thing_classes)}, or name a data set with {num_classes} classes."
    )


def check_voc_evaluation_fields(dirname: str, split: str, key: str = "the config") -> None:
    """DatasetError naming the file and the fix when an object of the VOC folder ``dirname``'s
    ``split`` lacks what Detectron2's VOC evaluator reads of each object (``pose``, ``truncated``,
    ``difficult``, whole-number ``bndbox`` values): it would fail only when the run evaluates."""
    with PathManager.open(os.path.join(dirname, "ImageSets", "Main", split + ".txt")) as f:
        file_ids = [line.strip() for line in f if line.strip()]
    for file_id in file_ids:
        xml_file = os.path.join(dirname, "Annotations", file_id + ".xml")
        if not PathManager.exists(xml_file):
            raise DatasetError(f"{xml_file} does not exist: remove {file_id!r} from {split}.txt.")
        with PathManager.open(xml_file) as f:
            objects = ET.parse(f).findall("object")
        for number, obj in enumerate(objects):
            values = {k: obj.findtext(k) for k in ("truncated", "difficult")}
            values.update({k: obj.findtext(f"bndbox/{k}") for k in _VOC_BOX_KEYS})
            wrong = [k for k, v in values.items() if not (v or "").strip().lstrip("-").isdigit()]
            wrong = (["pose"] if obj.find("pose") is None else []) + wrong
            if wrong:
                raise DatasetError(
                    f"{key}: object {number} of {xml_file} has no whole-number "
                    f"{', '.join(wrong)}, which Detectron2's VOC evaluator reads of every object "
                    "of a test set (e.g. <pose>Unspecified</pose><truncated>0</truncated>"
                    "<difficult>0</difficult>, bndbox values rounded). Add them to the XML files, "
                    "or convert the annotations to a COCO json and name it coco:JSON:IMAGES."
                )


def _annotation_source(dataset_name: str, dataset_dict: dict) -> str:
    metadata = MetadataCatalog.get(dataset_name) if dataset_name else None
    if metadata is not None and metadata.get("json_file", None):
        return metadata.json_file
    if metadata is not None and metadata.get("dirname", None):
        return os.path.join(metadata.dirname, "Annotations", f"{dataset_dict.get('image_id')}.xml")
    return f"the dicts that data set {dataset_name!r} is registered with"


def _describe(dataset_dict: dict, index: int, annotation: dict, dataset_name: str = "") -> str:
    annotation_id = annotation.get("id")
    if annotation_id is None and dataset_name:
        annotation_id = _coco_annotation_id(dataset_name, dataset_dict.get("image_id"), index)
    ident = f" (id {annotation_id})" if annotation_id is not None else ""
    return f"annotation {index}{ident} of image {dataset_dict.get('file_name')}"


def _coco_annotation_id(dataset_name: str, image_id, index: int):
    # Detectron2's COCO loader drops the ids a user needs: error messages read the json again.
    try:
        with PathManager.open(MetadataCatalog.get(dataset_name).json_file) as f:
            annotations = json.load(f).get("annotations", [])
        # load_coco_json keeps each image's annotations in the json's order.
        return [a for a in annotations if a.get("image_id") == image_id][index].get("id")
    except Exception:  # not a COCO json data set
        return None


def _image_header(file_name: str) -> Tuple[int, int, int]:
    """(width, height, EXIF orientation) from the file's header, without decoding pixels."""
    with PathManager.open(file_name, "rb") as f, Image.open(f) as image:
        return (*image.size, exif_orientation(image))


def _check_image(dataset_dict: dict, dataset_name: str) -> Tuple[str, object]:
    """("ok", (width, height)) as the mapper reads the image (EXIF orientation applied), or
    ("missing", None), ("unreadable", reason), ("wrong size", message)."""
    file_name = dataset_dict["file_name"]
    try:
        raw_w, raw_h, orientation = _image_header(file_name)
    except FileNotFoundError:
        return "missing", None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        return "unreadable", f"{type(e).__name__}: {e}"
    width, height = (raw_h, raw_w) if orientation in _TRANSPOSING_ORIENTATIONS else (raw_w, raw_h)
    expected = (dataset_dict.get("width"), dataset_dict.get("height"))
    if None in expected or expected == (width, height):
        return "ok", (width, height)
    source = _annotation_source(dataset_name, dataset_dict)
    if orientation in _TRANSPOSING_ORIENTATIONS and expected == (raw_w, raw_h):
        return "wrong size", (
            f"Image {file_name} is stored {raw_w}x{raw_h} with EXIF orientation {orientation} "
            f"(shown {width}x{height}, as ssd_d2 and Detectron2 read it), but {source} gives "
            f"it width {expected[0]} and height {expected[1]}, the size of the unrotated "
            "pixels. Write the displayed size and boxes into the annotations, or save the image "
            "with its rotation applied and no EXIF orientation tag."
        )
    return "wrong size", (
        f"Image {file_name} is {width}x{height} but {source} gives width {expected[0]} and "
        f"height {expected[1]}. Correct the size in the annotations (and check that their "
        "boxes belong to this image)."
    )


def check_images_exist(dataset_dicts: Sequence[dict], dataset_name: str) -> None:
    """Raise DatasetError naming the images that do not exist."""
    missing = [d["file_name"] for d in dataset_dicts if not PathManager.exists(d["file_name"])]
    if missing:
        raise _missing_images_error(missing, len(dataset_dicts), dataset_name)


def _missing_images_error(missing: List[str], num_images: int, dataset_name: str) -> DatasetError:
    return DatasetError(
        f"{len(missing)} of the {num_images} images of data set {dataset_name!r} "
        f"do not exist, e.g. {', '.join(missing[:3])}. If none exist, the data set's image "
        "folder is wrong: check the image root it is registered with (for the built-in "
        "data sets, $DETECTRON2_DATASETS). Otherwise restore the files or remove those "
        f"images from {_annotation_source(dataset_name, {'image_id': '<image id>'})}."
    )


def map_across_processes(func: Callable[[int], object], num_items: int) -> List[object]:
    """``[func(0), ..., func(num_items - 1)]``, each process computing every n-th item: a run
    reads each file once, not once per process (64 processes x 118k COCO images would be 7.5M
    file opens)."""
    rank, world_size = comm.get_rank(), comm.get_world_size()
    results = {index: func(index) for index in range(rank, num_items, world_size)}
    if world_size > 1:
        for part in comm.all_gather(results):
            results.update(part)
    return [results[index] for index in range(num_items)]


def check_dataset_dicts(
    dataset_dicts: Sequence[dict], *, num_classes: int, dataset_name: str = ""
) -> Tuple[List[dict], DatasetReport]:
    """Repaired copies of the training dicts of one data set, and the report; the cases are
    docs/data.md's "Bad data" table."""
    report = DatasetReport(dataset_name=dataset_name, num_images=len(dataset_dicts))
    image_checks = map_across_processes(  # the same outcomes in every process
        lambda i: _check_image(dataset_dicts[i], dataset_name), len(dataset_dicts)
    )
    missing = [d["file_name"] for d, (o, _) in zip(dataset_dicts, image_checks) if o == "missing"]
    if missing:  # raised before any other problem is reported
        raise _missing_images_error(missing, len(dataset_dicts), dataset_name)
    checked = []
    for dataset_dict, (outcome, detail) in zip(dataset_dicts, image_checks):
        if outcome == "wrong size":
            raise DatasetError(detail)
        elif outcome == "unreadable":
            report.unreadable_images.append((dataset_dict["file_name"], detail))
            report._example("unreadable image", lambda: f"{dataset_dict['file_name']} ({detail})")
        else:
            checked.append(
                _check_annotations(dataset_dict, detail, num_classes, dataset_name, report)
            )
    if report.unreadable_images:
        logger.warning(
            f"Dropped {len(report.unreadable_images)} unreadable images of {dataset_name!r}, "
            f"e.g. {report.unreadable_images[0][0]}: {report.unreadable_images[0][1]}"
        )
    if len(checked) == 0:
        raise DatasetError(f"Data set {dataset_name!r} has no readable image left.")
    return checked, report


def _check_annotations(
    dataset_dict: dict, size, num_classes: int, dataset_name: str, report: DatasetReport
) -> dict:
    annotations = dataset_dict.get("annotations")
    if not annotations:
        report.images_without_annotations += 1
        return dict(dataset_dict, annotations=[])
    kept, had_boxes = [], False
    for index, annotation in enumerate(annotations):
        if annotation.get("iscrowd", 0):
            kept.append(annotation)
            continue
        had_boxes = True
        report.num_boxes += 1
        box = _checked_box(dataset_dict, index, annotation, num_classes, dataset_name)

        def example():
            return f"{_describe(dataset_dict, index, annotation)}: {annotation['bbox']}"

        clipped = [min(max(v, 0.0), limit) for v, limit in zip(box, size * 2)]
        if box[2] <= box[0] or box[3] <= box[1]:
            report.degenerate_boxes += 1
            report._example("zero or negative size", example)
            continue
        if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
            report.outside_boxes += 1
            report._example("outside the image", example)
            continue
        if clipped != box:
            report.clipped_boxes += 1
            report._example("clipped", example)
            annotation = dict(annotation, bbox=clipped, bbox_mode=BoxMode.XYXY_ABS)
        kept.append(annotation)
    if had_boxes and not any(not a.get("iscrowd", 0) for a in kept):
        report.images_left_without_boxes += 1
    return dict(dataset_dict, annotations=kept)


def _checked_box(
    dataset_dict: dict, index: int, annotation: dict, num_classes: int, dataset_name: str
) -> List[float]:
    """The annotation's box as XYXY_ABS floats, after the checks that raise DatasetError."""

    def where():  # for errors only: the annotation id lookup may read the json
        return (
            f"{_describe(dataset_dict, index, annotation, dataset_name)} in "
            f"{_annotation_source(dataset_name, dataset_dict)}"
        )

    category = annotation.get("category_id")
    try:
        known = not isinstance(category, bool) and float(category) == int(category)
        known = known and 0 <= int(category) < num_classes
    except (TypeError, ValueError, OverflowError):
        known = False
    if not known:
        thing_classes = MetadataCatalog.get(dataset_name).get("thing_classes", None)
        classes = f" ({len(thing_classes)} thing_classes in its metadata)" if thing_classes else ""
        raise DatasetError(
            f"{where()} has category_id {category!r}, but the model knows classes "
            f"0..{num_classes - 1} (MODEL.SSD.NUM_CLASSES = {num_classes}){classes}. Fix or remove "
            "the annotation, or set MODEL.SSD.NUM_CLASSES to the data set's class count."
        )
    try:
        bbox = [float(v) for v in annotation["bbox"]]
    except (KeyError, TypeError, ValueError) as e:
        raise DatasetError(f"{where()} has no valid 'bbox' ({e}). Give it 4 numbers.") from e
    if len(bbox) != 4:
        raise DatasetError(
            f"{where()} has bbox {annotation['bbox']}: SSD needs 4 numbers (an "
            "axis-aligned box). Fix the annotation or remove it."
        )
    if not all(math.isfinite(v) for v in bbox):
        raise DatasetError(
            f"{where()} has bbox {annotation['bbox']} with a NaN or infinite "
            "coordinate. The tool that wrote the annotations failed on it: fix the annotation "
            "or remove it."
        )
    mode = BoxMode(annotation.get("bbox_mode", BoxMode.XYXY_ABS))
    if mode not in (BoxMode.XYXY_ABS, BoxMode.XYWH_ABS):
        raise DatasetError(
            f"{where()} has bbox_mode {mode.name}; SSD reads absolute boxes "
            "(XYXY_ABS or XYWH_ABS). Convert the boxes when registering the data set."
        )
    if mode == BoxMode.XYWH_ABS:
        x, y, w, h = bbox
        return [x, y, x + w, y + h]
    return bbox


def load_dataset_dicts(dataset_name: str) -> List[dict]:
    """``DatasetCatalog.get(dataset_name)``, with the path, annotation and fix named when a
    built-in data set is missing or Detectron2's COCO or VOC loader fails on an annotation."""
    check_dataset_files([dataset_name])
    try:
        dicts = DatasetCatalog.get(dataset_name)
    except Exception as e:
        explanation = _explain_load_error(dataset_name)
        if explanation is None:
            raise
        raise DatasetError(f"{explanation}\n(Loading {dataset_name!r} failed with: {e})") from e
    if len(dicts) == 0:
        raise DatasetError(f"Data set {dataset_name!r} is empty.")
    return dicts


def _explain_load_error(dataset_name: str) -> Optional[str]:
    # Only after the loader failed: there are no dicts then, so the annotation files are read.
    metadata = MetadataCatalog.get(dataset_name)
    try:
        if metadata.get("json_file", None) and os.path.isfile(metadata.json_file):
            return _explain_coco_json(metadata.json_file)
        if metadata.get("dirname", None) and metadata.get("split", None):
            return _explain_voc(metadata.dirname, metadata.split, metadata.get("thing_classes"))
    except Exception as e:  # the diagnosis must never hide the original error
        logger.warning(f"Could not diagnose the failure to load {dataset_name!r}: {e}")
    return None


def _explain_coco_json(json_file: str) -> Optional[str]:
    with PathManager.open(json_file) as f:
        data = json.load(f)
    category_ids = {c["id"] for c in data.get("categories", [])}
    file_names = {image["id"]: image.get("file_name") for image in data.get("images", [])}
    for annotation in data.get("annotations", []):
        if annotation.get("category_id") not in category_ids:
            return (
                f"{json_file}: annotation id {annotation.get('id')} (image "
                f"{file_names.get(annotation.get('image_id'))}) has category_id "
                f"{annotation.get('category_id')!r}, which is not among the json's categories "
                f"{sorted(category_ids)}. Add the category to 'categories', or fix or remove "
                "the annotation."
            )
    return None


def _explain_voc(dirname: str, split: str, class_names: Optional[Sequence[str]]) -> Optional[str]:
    with PathManager.open(os.path.join(dirname, "ImageSets", "Main", split + ".txt")) as f:
        file_ids = [line.strip() for line in f if line.strip()]
    for file_id in file_ids:
        xml_file = os.path.join(dirname, "Annotations", file_id + ".xml")
        if not PathManager.exists(xml_file):
            return f"{xml_file} does not exist: remove {file_id!r} from {split}.txt or add it."
        with PathManager.open(xml_file) as f:
            objects = ET.parse(f).findall("object")
        for number, obj in enumerate(objects):
            name = obj.findtext("name")
            if class_names is not None and name not in class_names:
                return (
                    f"{xml_file}: object {number} is named {name!r}, which is not one of the "
                    f"data set's classes {list(class_names)}. Rename it, or register the data "
                    "set with a class list that includes it."
                )
            values = [obj.findtext(f"bndbox/{k}") for k in _VOC_BOX_KEYS]
            try:
                [float(v) for v in values]
            except (TypeError, ValueError):
                return (
                    f"{xml_file}: object {number} ({name!r}) has bndbox "
                    f"{dict(zip(_VOC_BOX_KEYS, values))}; give xmin, ymin, xmax and ymax as "
                    "numbers, or remove the object."
                )
    return None
