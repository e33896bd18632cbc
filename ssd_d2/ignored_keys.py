"""
Detectron2 config keys that SSD models do not read, and the SSD keys that do their job: a
Detectron2 user's first reflex (``INPUT.MIN_SIZE_TRAIN``, ``MODEL.ROI_HEADS.NUM_CLASSES`` ...)
would otherwise change nothing, silently.
"""

import functools
import logging
from typing import Callable, List, NamedTuple, Optional

from detectron2.config import CfgNode, get_cfg

from .config import add_ssd_config

__all__ = ["IgnoredKey", "find_ignored_keys", "warn_ignored_keys"]

logger = logging.getLogger(__name__)

_SSD_DEFAULT_BOX_GENERATOR = "SSDDefaultBoxGenerator"
_SSD_BACKBONES = (
    "build_vgg16_ssd_backbone",
    "build_mobilenet_v2_ssdlite_backbone",
    "build_mobilenet_v3_ssdlite_backbone",
)
# The SSD test resize happens in the model; the SSD base configs set INPUT.MIN_SIZE_TEST 0 so
# that DefaultPredictor, which reads it, does not resize the image first.
_RESIZE = "MODEL.SSD.IMAGE_SIZE (every image is resized to this square side)"


def _with_ssd_default_boxes(cfg: CfgNode) -> bool:
    return cfg.MODEL.ANCHOR_GENERATOR.NAME == _SSD_DEFAULT_BOX_GENERATOR


def _with_ssd_backbone(cfg: CfgNode) -> bool:
    return cfg.MODEL.BACKBONE.NAME in _SSD_BACKBONES


class _Rule(NamedTuple):
    key: str  # a key, or a subtree that covers every key under it
    instead: str  # what to set instead, or why nothing is needed
    expected: object = None  # the "not set" value; None: Detectron2's and ssd_d2's default
    applies: Optional[Callable[[CfgNode], bool]] = None  # None: every config


# The most specific rule wins (MODEL.RETINANET.NUM_CLASSES before MODEL.RETINANET).
_RULES = [
    _Rule("INPUT.MIN_SIZE_TRAIN", _RESIZE),
    _Rule("INPUT.MIN_SIZE_TRAIN_SAMPLING", _RESIZE),
    _Rule("INPUT.MAX_SIZE_TRAIN", _RESIZE),
    _Rule("INPUT.MIN_SIZE_TEST", _RESIZE + "; keep 0, or DefaultPredictor resizes twice", 0),
    _Rule("INPUT.MAX_SIZE_TEST", _RESIZE),
    _Rule("INPUT.RANDOM_FLIP", "INPUT.SSD.FLIP_PROB"),
    _Rule("INPUT.CROP", "INPUT.SSD.MIN_IOU_CROP.*"),
    _Rule(
        "DATALOADER.ASPECT_RATIO_GROUPING",
        "nothing: every image has the same square size, MODEL.SSD.IMAGE_SIZE",
    ),
    _Rule(
        "MODEL.ANCHOR_GENERATOR.SIZES",
        "MODEL.SSD.DEFAULT_BOXES.MIN_SIZES and MAX_SIZES",
        applies=_with_ssd_default_boxes,
    ),
    _Rule(
        "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS",
        "MODEL.SSD.DEFAULT_BOXES.ASPECT_RATIOS",
        applies=_with_ssd_default_boxes,
    ),
    _Rule(
        "MODEL.ANCHOR_GENERATOR.OFFSET",
        "MODEL.SSD.DEFAULT_BOXES.STEPS (box centres at (i + 0.5) * step)",
        applies=_with_ssd_default_boxes,
    ),
    _Rule(
        "MODEL.BACKBONE.FREEZE_AT",
        "nothing: every layer of SSD's backbones trains (MODEL.MOBILENET.NORM FrozenBN freezes "
        "the MobileNet norms)",
        applies=_with_ssd_backbone,
    ),
    _Rule("MODEL.ROI_HEADS.NUM_CLASSES", "MODEL.SSD.NUM_CLASSES"),
    _Rule("MODEL.ROI_HEADS.SCORE_THRESH_TEST", "MODEL.SSD.SCORE_THRESH_TEST"),
    _Rule("MODEL.ROI_HEADS.NMS_THRESH_TEST", "MODEL.SSD.NMS_THRESH_TEST"),
    _Rule("MODEL.RETINANET.NUM_CLASSES", "MODEL.SSD.NUM_CLASSES"),
    _Rule("MODEL.RETINANET.IN_FEATURES", "MODEL.SSD.IN_FEATURES"),
    _Rule("MODEL.RETINANET.IOU_THRESHOLDS", "MODEL.SSD.IOU_THRESHOLD"),
    _Rule("MODEL.RETINANET.SCORE_THRESH_TEST", "MODEL.SSD.SCORE_THRESH_TEST"),
    _Rule("MODEL.RETINANET.TOPK_CANDIDATES_TEST", "MODEL.SSD.TOPK_CANDIDATES_TEST"),
    _Rule("MODEL.RETINANET.NMS_THRESH_TEST", "MODEL.SSD.NMS_THRESH_TEST"),
    _Rule("MODEL.RETINANET.BBOX_REG_WEIGHTS", "MODEL.SSD.BBOX_REG_WEIGHTS"),
    _Rule("MODEL.RETINANET.SMOOTH_L1_LOSS_BETA", "MODEL.SSD.SMOOTH_L1_BETA"),
    _Rule("MODEL.RETINANET.NORM", "MODEL.SSD.HEAD_NORM (SSDLiteHead)"),
    _Rule(
        "MODEL.RETINANET",
        "MODEL.SSD.* (SSD's loss is softmax cross-entropy with hard negative mining, "
        "MODEL.SSD.NEG_POS_RATIO)",
    ),
]


class IgnoredKey(NamedTuple):
    key: str
    value: object
    instead: str

    def __str__(self) -> str:
        return f"{self.key} = {self.value!r}: use {self.instead}"


def _leaves(node: CfgNode, prefix: str = ""):
    for name, value in node.items():
        key = f"{prefix}{name}"
        if isinstance(value, CfgNode):
            yield from _leaves(value, key + ".")
        else:
            yield key, value


def _normalized(value):
    # YAML lists and Python tuples are the same config value.
    if isinstance(value, (list, tuple)):
        return tuple(_normalized(v) for v in value)
    return value


def _rule_for(key: str) -> Optional[_Rule]:
    matching = [r for r in _RULES if key == r.key or key.startswith(r.key + ".")]
    return max(matching, key=lambda r: len(r.key), default=None)


def _defaults() -> CfgNode:
    cfg = get_cfg()
    add_ssd_config(cfg)
    return cfg


def find_ignored_keys(cfg: CfgNode) -> List[IgnoredKey]:
    """
    The keys SSD models do not read that ``cfg`` sets to a value other than the default, each
    with the SSD key to use instead. Empty for every config ssd_d2 ships.
    """
    ignored = []
    for key, default in _leaves(_defaults()):
        rule = _rule_for(key)
        if rule is None or (rule.applies is not None and not rule.applies(cfg)):
            continue
        expected = default if rule.expected is None else rule.expected
        value = functools.reduce(lambda node, name: node[name], key.split("."), cfg)
        if _normalized(value) != _normalized(expected):
            ignored.append(IgnoredKey(key, value, rule.instead))
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
