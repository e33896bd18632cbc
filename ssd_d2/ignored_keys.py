"""Detectron2 config keys that SSD models do not read, and the SSD keys that do their job: a
Detectron2 user's first reflex (``INPUT.MIN_SIZE_TRAIN``, ``MODEL.ROI_HEADS.NUM_CLASSES`` ...)
would otherwise change nothing, silently."""

import logging
from typing import List, NamedTuple, Optional

from detectron2.config import CfgNode, get_cfg
from detectron2.evaluation.testing import flatten_results_dict

from .config import add_ssd_config

__all__ = ["IgnoredKey", "find_ignored_keys", "warn_ignored_keys"]

logger = logging.getLogger(__name__)

_RESIZE = (
    "MODEL.SSD.IMAGE_SIZE (every image is resized to this square side) or "
    "MODEL.SSD.IMAGE_HEIGHT_WIDTH (to this (height, width))"
)
# A key or subtree -> what to set instead, or why nothing is needed; the most specific key wins.
_INSTEAD = {
    "INPUT.MIN_SIZE_TRAIN": _RESIZE,
    "INPUT.MIN_SIZE_TRAIN_SAMPLING": _RESIZE,
    "INPUT.MAX_SIZE_TRAIN": _RESIZE,
    "INPUT.MIN_SIZE_TEST": _RESIZE + "; keep 0, or DefaultPredictor resizes twice",
    "INPUT.MAX_SIZE_TEST": _RESIZE,
    "INPUT.RANDOM_FLIP": "INPUT.SSD.FLIP_PROB",
    "INPUT.CROP": "INPUT.SSD.MIN_IOU_CROP.*",
    "DATALOADER.ASPECT_RATIO_GROUPING": "nothing: every image is resized to one size",
    "MODEL.ANCHOR_GENERATOR.SIZES": "MODEL.SSD.DEFAULT_BOXES.MIN_SIZES and MAX_SIZES",
    "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS": "MODEL.SSD.DEFAULT_BOXES.ASPECT_RATIOS",
    "MODEL.ANCHOR_GENERATOR.OFFSET": "MODEL.SSD.DEFAULT_BOXES.STEPS (centres at (i + 0.5) * step)",
    "MODEL.BACKBONE.FREEZE_AT": "nothing: every layer of SSD's backbones trains "
    "(MODEL.MOBILENET.NORM FrozenBN freezes the MobileNet norms)",
    "MODEL.ROI_HEADS.NUM_CLASSES": "MODEL.SSD.NUM_CLASSES",
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST": "MODEL.SSD.SCORE_THRESH_TEST",
    "MODEL.ROI_HEADS.NMS_THRESH_TEST": "MODEL.SSD.NMS_THRESH_TEST",
    "MODEL.RETINANET.NUM_CLASSES": "MODEL.SSD.NUM_CLASSES",
    "MODEL.RETINANET.IN_FEATURES": "MODEL.SSD.IN_FEATURES",
    "MODEL.RETINANET.IOU_THRESHOLDS": "MODEL.SSD.IOU_THRESHOLD",
    "MODEL.RETINANET.SCORE_THRESH_TEST": "MODEL.SSD.SCORE_THRESH_TEST",
    "MODEL.RETINANET.TOPK_CANDIDATES_TEST": "MODEL.SSD.TOPK_CANDIDATES_TEST",
    "MODEL.RETINANET.NMS_THRESH_TEST": "MODEL.SSD.NMS_THRESH_TEST",
    "MODEL.RETINANET.BBOX_REG_WEIGHTS": "MODEL.SSD.BBOX_REG_WEIGHTS",
    "MODEL.RETINANET.SMOOTH_L1_LOSS_BETA": "MODEL.SSD.SMOOTH_L1_BETA",
    "MODEL.RETINANET.NORM": "MODEL.SSD.HEAD_NORM (SSDLiteHead)",
    "MODEL.RETINANET": "MODEL.SSD.* (SSD's loss is softmax cross-entropy with hard negative "
    "mining, MODEL.SSD.NEG_POS_RATIO)",
}
# "Not set" values that are not the default (0 makes DefaultPredictor leave resizing to SSD).
_EXPECTED = {"INPUT.MIN_SIZE_TEST": 0}
# Subtrees whose keys are ignored only when their NAME is SSD's default boxes or backbone.
_SSD_NAMES = {
    "MODEL.ANCHOR_GENERATOR": ("SSDDefaultBoxGenerator",),
    "MODEL.BACKBONE": (
        "build_vgg16_ssd_backbone",
        "build_mobilenet_v2_ssdlite_backbone",
        "build_mobilenet_v3_ssdlite_backbone",
    ),
}


class IgnoredKey(NamedTuple):
    key: str
    value: object
    instead: str

    def __str__(self) -> str:
        return f"{self.key} = {self.value!r}: use {self.instead}"


def _flat(cfg: CfgNode) -> dict:
    """{"MODEL.SSD.NUM_CLASSES": 20, ...}"""
    return {key.replace("/", "."): v for key, v in flatten_results_dict(cfg).items()}


def _normalized(value):
    # YAML lists and Python tuples are the same config value.
    if isinstance(value, (list, tuple)):
        return tuple(_normalized(v) for v in value)
    return value


def _rule_for(key: str) -> Optional[str]:
    """The most specific key of ``_INSTEAD`` that covers ``key``, or None."""
    matching = [k for k in _INSTEAD if key == k or key.startswith(k + ".")]
    return max(matching, key=len, default=None)


def find_ignored_keys(cfg: CfgNode) -> List[IgnoredKey]:
    """The keys SSD models do not read that ``cfg`` sets to a value other than the default, each
    with the SSD key to use instead. Empty for every config ssd_d2 ships."""
    defaults = get_cfg()
    add_ssd_config(defaults)
    values, ignored = _flat(cfg), []
    for key, default in _flat(defaults).items():
        rule = _rule_for(key)
        subtree = key.rsplit(".", 1)[0]
        names = _SSD_NAMES.get(subtree)
        if rule is None or (names and values[subtree + ".NAME"] not in names):
            continue
        if _normalized(values[key]) != _normalized(_EXPECTED.get(key, default)):
            ignored.append(IgnoredKey(key, values[key], _INSTEAD[rule]))
    return ignored


def warn_ignored_keys(cfg: CfgNode) -> List[IgnoredKey]:
    """Log one WARNING listing :func:`find_ignored_keys` (nothing when it is empty)."""
    ignored = find_ignored_keys(cfg)
    if ignored:
        lines = "\n".join(f"  {k}" for k in ignored)
        logger.warning(
            f"The config sets {len(ignored)} Detectron2 key(s) that SSD models do not read; "
            f"they have no effect:\n{lines}"
        )
    return ignored
