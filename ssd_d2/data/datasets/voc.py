"""Pascal VOC's "difficult" flags, which Detectron2's VOC loader reads past (so the XML is read)."""

import logging
import os
import xml.etree.ElementTree as ET
from typing import List, Tuple

from detectron2.data import MetadataCatalog
from detectron2.utils.file_io import PathManager

from ..checks import map_across_processes

__all__ = ["voc_difficult_flags", "drop_voc_difficult"]

logger = logging.getLogger(__name__)


def voc_difficult_flags(dirname: str, image_id: str) -> List[bool]:
    """Whether each ``<object>`` of ``Annotations/<image_id>.xml``, in file order, is difficult."""
    with PathManager.open(os.path.join(dirname, "Annotations", f"{image_id}.xml")) as f:
        objects = ET.parse(f).findall("object")
    return [(obj.findtext("difficult") or "0").strip() == "1" for obj in objects]


def drop_voc_difficult(dataset_name: str, dataset_dicts: List[dict]) -> Tuple[List[dict], int]:
    """The dicts of a data set registered as Detectron2 registers VOC without the objects marked
    difficult (as lufficc/SSD trains; other data sets unchanged), and how many were dropped."""
    metadata = MetadataCatalog.get(dataset_name)
    dirname = metadata.get("dirname", None)
    if not dirname or not metadata.get("split", None):
        return dataset_dicts, 0
    all_flags = map_across_processes(
        lambda i: voc_difficult_flags(dirname, str(dataset_dicts[i]["image_id"])),
        len(dataset_dicts),
    )
    kept_dicts, dropped = [], 0
    for record, flags in zip(dataset_dicts, all_flags):
        annotations = record.get("annotations") or []
        if len(flags) != len(annotations):
            raise ValueError(
                f"{os.path.join(dirname, 'Annotations', str(record['image_id']) + '.xml')} has "
                f"{len(flags)} objects but data set {dataset_name!r} gives {len(annotations)} "
                "annotations for it, so its difficult flags cannot be matched: set "
                "INPUT.SSD.DROP_VOC_DIFFICULT False to train on every annotation."
            )
        kept = [a for a, difficult in zip(annotations, flags) if not difficult]
        dropped += len(annotations) - len(kept)
        kept_dicts.append({**record, "annotations": kept})
    logger.info(
        f"{dataset_name}: dropped {dropped} difficult objects (INPUT.SSD.DROP_VOC_DIFFICULT)."
    )
    return kept_dicts, dropped
