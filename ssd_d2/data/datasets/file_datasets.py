"""Data sets named by their files, so that a config or a command line trains on a user's own data
without a registration script:

    coco:JSON:IMAGES               a COCO json and its image folder
    voc:ROOT:SPLIT                 a Pascal VOC folder (Annotations/, JPEGImages/,
                                   ImageSets/Main/SPLIT.txt)
    voc:ROOT:SPLIT:NAME,NAME,...   the same with its class names, in class index order

They are registered with Detectron2's own functions (``register_coco_instances``,
``register_pascal_voc``), so the COCO and VOC evaluators read them as they read the built-in sets.
"""

import functools
import json
import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances, register_pascal_voc
from detectron2.data.datasets.pascal_voc import CLASS_NAMES as VOC_CLASSES
from detectron2.utils.file_io import PathManager

from ..checks import DatasetError, check_class_count, check_voc_evaluation_fields

__all__ = ["DatasetFiles", "parse_dataset_name", "register_dataset_name"]
__all__ += ["register_config_datasets", "voc_class_names"]

ACCEPTED_FORMS = (
    "'coco:JSON:IMAGES' (a COCO json and its image folder), 'voc:ROOT:SPLIT' (a Pascal VOC "
    "folder with Annotations/, JPEGImages/ and ImageSets/Main/SPLIT.txt) or "
    "'voc:ROOT:SPLIT:NAME,NAME,...' (the same with its class names)"
)
_KINDS = ("coco", "voc")
_CONFIG_KEYS = ("DATASETS.TRAIN", "DATASETS.TEST")
_registered = set()  # the names registered here
_checked_for_evaluation = set()  # the VOC test sets whose XML files were checked


@dataclass(frozen=True)
class DatasetFiles:
    """A data set named by its files: ``kind`` "coco" (``path`` the json, ``images`` the image
    folder) or "voc" (``path`` the VOC root, ``split``, ``classes`` when the name gives them)."""

    kind: str
    path: str
    images: str = ""
    split: str = ""
    classes: Tuple[str, ...] = ()

    def absolute(self) -> "DatasetFiles":
        """The same files with absolute paths, read from the current directory."""
        images = _absolute(self.images) if self.images else ""
        return DatasetFiles(self.kind, _absolute(self.path), images, self.split, self.classes)

    @property
    def name(self) -> str:
        if self.kind == "coco":
            return f"coco:{self.path}:{self.images}"
        classes = ":" + ",".join(self.classes) if self.classes else ""
        return f"voc:{self.path}:{self.split}{classes}"


def _absolute(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))


def parse_dataset_name(name: str, key: str = "data set") -> Optional[DatasetFiles]:
    """The files that data set ``name`` names, or None for a name without a colon (a name
    registered in Python). ValueError naming ``key`` and the accepted forms for a malformed one."""
    if ":" not in name:
        return None
    kind, _, rest = name.partition(":")

    def malformed(why: str) -> ValueError:
        return ValueError(
            f"{key} names data set {name!r}: {why}. Accepted forms: {ACCEPTED_FORMS}."
        )

    if kind not in _KINDS:
        raise malformed(f"{kind!r} is not a data set kind")
    if kind == "coco":
        # The json's name ends in .json: an image folder with a colon in its path still parses.
        match = re.fullmatch(r"(.+?\.json):(.+)", rest)
        parts = list(match.groups()) if match else rest.split(":")
        if len(parts) != 2 or not all(parts):
            raise malformed("a COCO data set needs a json file and an image folder")
        return DatasetFiles("coco", parts[0], images=parts[1])
    parts = rest.split(":")
    if len(parts) not in (2, 3) or not all(parts):
        raise malformed("a VOC data set needs a root folder and a split, then its class names")
    classes = tuple(c.strip() for c in parts[2].split(",")) if len(parts) == 3 else ()
    if not all(classes) or len(set(classes)) != len(classes):
        raise malformed("its class names must be distinct and not empty")
    return DatasetFiles("voc", parts[0], split=parts[1], classes=classes)


def register_dataset_name(name: str, key: str = "data set") -> bool:
    """Register data set ``name`` if it names its files (see :func:`parse_dataset_name`), once:
    True if it does (registered now or before), False for another name. FileNotFoundError naming
    ``key`` and the path for a file that does not exist; DatasetError for a json that is not a
    COCO json."""
    if name in DatasetCatalog.list():
        return name in _registered
    files = parse_dataset_name(name, key)
    if files is None:
        return False
    files = files.absolute()  # metadata paths survive a chdir
    if files.kind == "coco":
        _check_exist(name, key, [files.path, files.images])
        register_coco_instances(name, _coco_metadata(files.path), files.path, files.images)
    else:
        split_file = os.path.join(files.path, "ImageSets", "Main", files.split + ".txt")
        layout = [os.path.join(files.path, d) for d in ("Annotations", "JPEGImages")]
        _check_exist(name, key, [files.path, *layout, split_file])
        classes = files.classes or voc_class_names(files.path)
        # The 11-point AP of the published VOC2007 test results for VOC2007, else VOC2012's.
        year = 2007 if os.path.basename(files.path) == "VOC2007" else 2012
        register_pascal_voc(name, files.path, files.split, year, list(classes))
        MetadataCatalog.get(name).evaluator_type = "pascal_voc"
    _registered.add(name)
    return True


def _check_exist(name: str, key: str, paths: Sequence[str]) -> None:
    for path in paths:
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"{key} names data set {name!r}, but {path} does not exist. Relative paths are "
                f"read from the current directory ({os.getcwd()})."
            )


def _coco_metadata(json_file: str) -> Dict:
    """The class names and id map that Detectron2's COCO loader gives the data set, read now so
    that the class count is checked (and the demo names classes) before the data set is loaded."""
    try:
        with PathManager.open(json_file) as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{json_file} is not a json file ({e}).") from e
    lists = ("images", "annotations", "categories")
    if not isinstance(data, dict) or not all(isinstance(data.get(k, []), list) for k in lists):
        raise DatasetError(_not_coco(json_file, "its top level is not an object of lists"))
    missing = [k for k in ("images", "categories") if k not in data]
    if missing:
        raise DatasetError(_not_coco(json_file, f"it has no {' or '.join(map(repr, missing))}"))
    try:
        categories = sorted(data["categories"], key=lambda c: c["id"])
        classes = [c["name"] for c in categories]
    except (KeyError, TypeError) as e:
        raise DatasetError(_not_coco(json_file, "a category lacks an 'id' or a 'name'")) from e
    if not classes:
        raise DatasetError(_not_coco(json_file, "its 'categories' list is empty"))
    return {
        "thing_classes": classes,
        "thing_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(categories)},
    }


def _not_coco(json_file: str, why: str) -> str:
    return (
        f"{json_file} is not a COCO detection json: {why}. A COCO json is an object with "
        "'images' (id, file_name, width, height), 'annotations' (image_id, category_id, bbox "
        "[x, y, width, height]) and 'categories' (id, name) lists."
    )


@functools.lru_cache(maxsize=None)
def voc_class_names(root: str) -> Tuple[str, ...]:
    """The class names of a VOC folder whose names do not give them: Pascal VOC's 20 classes (in
    Detectron2's order, as its VOC sets) when every object of ``Annotations/*.xml`` is named by one
    of them, else the sorted names found there. All of the folder's splits then agree."""
    annotations = os.path.join(root, "Annotations")
    names = set()
    for file_name in sorted(os.listdir(annotations)):
        if file_name.endswith(".xml"):
            with PathManager.open(os.path.join(annotations, file_name)) as f:
                # The name as Detectron2's VOC loader reads it (not stripped).
                names.update(obj.findtext("name") for obj in ET.parse(f).findall("object"))
    if not names:
        raise DatasetError(
            f"No object of {annotations}/*.xml has a name: give the class names in the data "
            "set's name, voc:ROOT:SPLIT:NAME,NAME,..."
        )
    if names <= set(VOC_CLASSES):
        return tuple(VOC_CLASSES)
    return tuple(sorted(names))


def register_config_datasets(cfg) -> None:
    """Register the data sets of DATASETS.TRAIN and DATASETS.TEST that name their files, with the
    paths made absolute in ``cfg`` (unless it is frozen) so that the config.yaml a run writes
    reads the same files from anywhere; check that their class counts agree with each other
    and with MODEL.SSD.NUM_CLASSES. Every entry point calls it after the config is loaded."""
    named: List[Tuple[str, str]] = []  # (key, data set name)
    for key in _CONFIG_KEYS:
        group, field_name = key.split(".")
        names = list(cfg[group][field_name])
        absolute = [_absolute_name(name, key) for name in names]
        if absolute != names and not cfg.is_frozen():
            cfg[group][field_name] = tuple(absolute)
            names = absolute
        named += [(key, name) for name in names if register_dataset_name(name, key)]
    for key, name in named:
        check_class_count(name, cfg.MODEL.SSD.NUM_CLASSES, key)
        metadata = MetadataCatalog.get(name)
        evaluated = key == "DATASETS.TEST" and metadata.evaluator_type == "pascal_voc"
        if evaluated and name not in _checked_for_evaluation:
            check_voc_evaluation_fields(metadata.dirname, metadata.split, key)
            _checked_for_evaluation.add(name)
    # Equal counts, different names: the test set would score the model's classes as others.
    for key, name in named[1:]:
        first_key, first = named[0]
        classes, first_classes = (MetadataCatalog.get(n).thing_classes for n in (name, first))
        if classes != first_classes:
            raise DatasetError(
                f"{key} names data set {name!r} with classes {classes}, but {first_key} names "
                f"{first!r} with classes {first_classes}: a model has one list of classes. Give "
                "the same names, in the same order, to both (for VOC folders, in the data set "
                "name: voc:ROOT:SPLIT:NAME,NAME,...)."
            )


def _absolute_name(name: str, key: str) -> str:
    if name in DatasetCatalog.list():
        return name
    files = parse_dataset_name(name, key)
    return name if files is None else files.absolute().name
