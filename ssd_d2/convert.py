"""
Published SSD weights (and the ImageNet backbones they train from) in ssd_d2's layout.

One rule table serves two doors: ``MODEL.WEIGHTS`` (the checkpointer recognises a peer's file
from its keys and converts it as it loads it, :func:`convert_for_model`) and the offline
converter ``python -m ssd_d2.tools.convert`` (:func:`convert`, :func:`convert_file`), which
writes ``{"model": state_dict, "__author__": ..., "matching_heuristics": False}`` in the exact
key layout of the target config's model. The published models share ssd_d2's conventions
(RGB input, background as class output 0, the same default-box order and box encoding; each
config sets its peer's pixel mean and std), so converting them is a renaming, plus
re-indexing the class outputs of torchvision's 91 COCO category ids.

To fine-tune on another class count, load a published detector with the other config:
DetectionCheckpointer skips the class logits (``head.cls_score.*``), whose shapes differ,
with a warning, and loads everything else.
"""

import argparse
import os
import pickle
import re
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES
from detectron2.modeling import build_model

from .config import load_config
from .model_zoo import get_config_file

__all__ = [
    "KNOWN_FORMATS",
    "SOURCES",
    "Conversion",
    "ConversionError",
    "coco_category_ids",
    "convert",
    "convert_file",
    "convert_for_model",
    "load_state_dict",
    "recognize",
    "save_checkpoint",
    "summarize",
]

SOURCES = ("torchvision", "lufficc", "amdegroot", "vgg16", "mobilenet")

# What a weights file may be, for the message about one that is none of these.
KNOWN_FORMATS = (
    "an ssd_d2 (Detectron2) checkpoint",
    "torchvision's ssd300_vgg16_coco or ssdlite320_mobilenet_v3_large_coco",
    "lufficc/SSD's model zoo (vgg_ssd300/512_voc0712, vgg_ssd300/512_coco_trainval35k, "
    "mobilenet_v2_ssd320_voc0712[_v2])",
    "ssd.pytorch's ssd300_mAP_77.43_v2.pth",
    "an ImageNet VGG16: ssd.pytorch/lufficc's vgg16_reducedfc.pth, torchvision's vgg16 or "
    "vgg16_features-amdegroot",
    "an ImageNet MobileNetV2 or MobileNetV3-Large classifier of torchvision (mobilenet_v2, "
    "mobilenet_v3_large)",
)

# The config of a converted detector, by (head levels, class outputs with background):
# (config name, the options its checkpoint needs).
_VGG_SSD_CONFIGS = {
    (6, 21): ("ssd300_voc.yaml", ()),
    (6, 81): ("ssd300_coco.yaml", ()),
    (7, 21): ("ssd512_voc.yaml", ()),
    (7, 81): ("ssd512_coco.yaml", ()),
}
_DETECTOR_CONFIGS = {
    "lufficc": _VGG_SSD_CONFIGS,
    "amdegroot": _VGG_SSD_CONFIGS,
    # torchvision's COCO SSD300 has its own config: its default boxes follow torchvision's
    # rules, not lufficc/SSD's.
    "torchvision": {**_VGG_SSD_CONFIGS, (6, 81): ("ssd300_coco_torchvision.yaml", ())},
    # torchvision's COCO SSDLite was built without ImageNet weights, so with the reduced tail;
    # the config trains from ImageNet weights, which need the full one.
    "torchvision_ssdlite": {
        (6, 81): ("ssdlite320_mobilenet_v3_coco.yaml", ("MODEL.MOBILENET.REDUCED_TAIL", "True"))
    },
    "lufficc_ssdlite": {(6, 21): ("ssdlite320_mobilenet_v2_voc.yaml", ())},
}
# The model a checkpoint without a recognisable head is compared with, for the error message.
_FALLBACK_CONFIGS = {
    "torchvision": "ssd300_coco_torchvision.yaml",
    "torchvision_ssdlite": "ssdlite320_mobilenet_v3_coco.yaml",
    "lufficc": "ssd300_voc.yaml",
    "lufficc_ssdlite": "ssdlite320_mobilenet_v2_voc.yaml",
    "amdegroot": "ssd300_voc.yaml",
}
# The config an ImageNet backbone converts for by default (every VGG16 SSD config has the
# same backbone.vgg layers).
_BACKBONE_CONFIGS = {
    "vgg16": "ssd300_voc.yaml",
    "mobilenet_v2": "ssdlite320_mobilenet_v2_voc.yaml",
    "mobilenet_v3_large": "ssdlite320_mobilenet_v3_coco.yaml",
}
# The model keys an ImageNet backbone provides; the rest trains from its initialisation.
_BACKBONE_PREFIXES = {
    "vgg16": "backbone.vgg.",
    "mobilenet_v2": "backbone.features.",
    "mobilenet_v3_large": "backbone.features.",
}

_SOURCE_NAMES = {
    "torchvision": "torchvision ssd300_vgg16",
    "torchvision_ssdlite": "torchvision ssdlite320_mobilenet_v3_large",
    "lufficc": "lufficc/SSD",
    "lufficc_ssdlite": "lufficc/SSD mobilenet_v2_ssd320",
    "amdegroot": "amdegroot/ssd.pytorch",
    "vgg16": "VGG16 ImageNet",
    "mobilenet": "MobileNet ImageNet",
    "mobilenet_v2": "MobileNetV2 ImageNet",
    "mobilenet_v3_large": "MobileNetV3-Large ImageNet",
    "ssd_d2": "ssd_d2",
}


class ConversionError(ValueError):
    """A checkpoint that does not fit the chosen source or target config."""


@dataclass
class Conversion:
    """A converted state dict, the config it fits, and what the converter did."""

    state_dict: Dict[str, Tensor]
    config_file: str
    source: str
    notes: List[str] = field(default_factory=list)
    # Model keys the checkpoint leaves at their initialisation (an ImageNet backbone's).
    expected_missing: List[str] = field(default_factory=list)
    # Config options (KEY VALUE ...) the checkpoint needs on top of ``config_file``.
    config_opts: List[str] = field(default_factory=list)


def coco_category_ids() -> List[int]:
    """The 80 COCO category ids in the order of Detectron2's contiguous class ids."""
    return sorted(c["id"] for c in COCO_CATEGORIES if c["isthing"] == 1)


# ---------------------------------------------------------------------------------------
# Renaming rules: (regular expression over a whole source key, its ssd_d2 name).

_Rule = Tuple[str, Callable[[re.Match], str]]
_W = r"\.(weight|bias)"


def _extras_pair(flat_index: str) -> str:
    """
    The published extras are a flat list of convs (1x1, 3x3, 1x1, 3x3, ...); ssd_d2's are
    one (1x1, ReLU, 3x3, ReLU) block per level.
    """
    i = int(flat_index)
    return f"{i // 2}.{2 * (i % 2)}"


# lufficc's MobileNetV2 computes its first map after features[:14] (the 96-channel block
# before the one that goes to stride 32); ssd_d2 splits the same blocks into features.0
# (0 ... 13) and features.1 (14 ... 18), keeping each block's index.
_MOBILENET_V2_SPLIT = 14
# MobileNetV3-Large's block 13 goes to stride 32. Its 1x1 expansion ends ssd_d2's (and
# torchvision's SSDLite's) features.0 as features.0.13 ("c4"); the rest of the block is
# features.1.0, and blocks 14 ... 16 follow as features.1.1 ... 1.3.
_MOBILENET_V3_SPLIT = 13


def _mobilenet_v3_block(m: re.Match) -> str:
    block = int(m[1])
    if block < _MOBILENET_V3_SPLIT:
        return f"backbone.features.0.{block}.{m[2]}"
    return f"backbone.features.1.{block - _MOBILENET_V3_SPLIT}.{m[2]}"


def _lufficc_ssdlite_head_rules(theirs: str, ours: str) -> List[_Rule]:
    """
    lufficc's SSDLiteBoxPredictor level: SeparableConv2d ``conv`` = (0: depthwise 3x3 with
    bias, 1: BatchNorm, 2: ReLU6, 3: 1x1) -> ssd_d2's (0: (0: depthwise, 1: norm), 1: 1x1);
    the last level is a plain 1x1 conv in both.
    """
    prefix = rf"box_head\.predictor\.{theirs}\.(\d+)"
    return [
        (prefix + r"\.conv\.0" + _W, lambda m: f"head.{ours}.{m[1]}.0.0.{m[2]}"),
        (prefix + r"\.conv\.1\.(.+)", lambda m: f"head.{ours}.{m[1]}.0.1.{m[2]}"),
        (prefix + r"\.conv\.3" + _W, lambda m: f"head.{ours}.{m[1]}.1.{m[2]}"),
        (prefix + _W, lambda m: f"head.{ours}.{m[1]}.{m[2]}"),
    ]


_RULES: Dict[str, List[_Rule]] = {
    "torchvision": [
        (r"backbone\.scale_weight", lambda m: "backbone.l2_norm.weight"),
        (r"backbone\.features\.(\d+)" + _W, lambda m: f"backbone.vgg.{m[1]}.{m[2]}"),
        # torchvision's extra.0 holds VGG layers 23-29 (pool4 ... conv5_3) ...
        (r"backbone\.extra\.0\.(\d+)" + _W, lambda m: f"backbone.vgg.{23 + int(m[1])}.{m[2]}"),
        # ... then pool5, fc6, ReLU, fc7 as extra.0.7, which are vgg.30 ... vgg.33 here.
        (r"backbone\.extra\.0\.7\.(\d+)" + _W, lambda m: f"backbone.vgg.{30 + int(m[1])}.{m[2]}"),
        (
            r"backbone\.extra\.([1-9]\d*)\.(\d+)" + _W,
            lambda m: f"backbone.extras.{int(m[1]) - 1}.{m[2]}.{m[3]}",
        ),
        (
            r"head\.classification_head\.module_list\.(\d+)" + _W,
            lambda m: f"head.cls_score.{m[1]}.{m[2]}",
        ),
        (
            r"head\.regression_head\.module_list\.(\d+)" + _W,
            lambda m: f"head.bbox_pred.{m[1]}.{m[2]}",
        ),
    ],
    # ssd_d2's MobileNetV3 SSDLite keeps torchvision's backbone nesting (features.0/1, extra).
    "torchvision_ssdlite": [
        (r"backbone\.((features|extra)\..+)", lambda m: f"backbone.{m[1]}"),
        (
            r"head\.classification_head\.module_list\.(\d+)\.(.+)",
            lambda m: f"head.cls_score.{m[1]}.{m[2]}",
        ),
        (
            r"head\.regression_head\.module_list\.(\d+)\.(.+)",
            lambda m: f"head.bbox_pred.{m[1]}.{m[2]}",
        ),
    ],
    "lufficc": [
        (r"backbone\.vgg\.(\d+)" + _W, lambda m: f"backbone.vgg.{m[1]}.{m[2]}"),
        (r"backbone\.l2_norm\.weight", lambda m: "backbone.l2_norm.weight"),
        (r"backbone\.extras\.(\d+)" + _W, lambda m: f"backbone.extras.{_extras_pair(m[1])}.{m[2]}"),
        (
            r"box_head\.predictor\.cls_headers\.(\d+)" + _W,
            lambda m: f"head.cls_score.{m[1]}.{m[2]}",
        ),
        (
            r"box_head\.predictor\.reg_headers\.(\d+)" + _W,
            lambda m: f"head.bbox_pred.{m[1]}.{m[2]}",
        ),
    ],
    # lufficc/SSD's mobilenet_v2_ssd320_voc0712 (MobileNetV2 + SSDLiteBoxPredictor).
    "lufficc_ssdlite": [
        # The body's blocks (ConvBNReLU = (conv, bn, relu6); InvertedResidual.conv = ([1x1
        # ConvBNReLU,] depthwise ConvBNReLU, 1x1 conv, bn)) nest as torchvision's MobileNetV2,
        # which ssd_d2 builds: only the stage prefix changes.
        (
            r"backbone\.features\.(\d+)\.(.+)",
            lambda m: f"backbone.features.{int(int(m[1]) >= _MOBILENET_V2_SPLIT)}.{m[1]}.{m[2]}",
        ),
        # The extras are InvertedResidual blocks, conv = (0: 1x1 ConvBNReLU, 1: depthwise
        # ConvBNReLU, 2: 1x1 conv, 3: bn); ssd_d2's are (0, 1, 2: (0: 1x1 conv, 1: norm)).
        (
            r"backbone\.extras\.(\d+)\.conv\.([01])\.([01]\..+)",
            lambda m: f"backbone.extra.{m[1]}.{m[2]}.{m[3]}",
        ),
        (
            r"backbone\.extras\.(\d+)\.conv\.2\.weight",
            lambda m: f"backbone.extra.{m[1]}.2.0.weight",
        ),
        (r"backbone\.extras\.(\d+)\.conv\.3\.(.+)", lambda m: f"backbone.extra.{m[1]}.2.1.{m[2]}"),
        *_lufficc_ssdlite_head_rules("cls_headers", "cls_score"),
        *_lufficc_ssdlite_head_rules("reg_headers", "bbox_pred"),
    ],
    "amdegroot": [
        (r"vgg\.(\d+)" + _W, lambda m: f"backbone.vgg.{m[1]}.{m[2]}"),
        (r"L2Norm\.weight", lambda m: "backbone.l2_norm.weight"),
        (r"extras\.(\d+)" + _W, lambda m: f"backbone.extras.{_extras_pair(m[1])}.{m[2]}"),
        (r"conf\.(\d+)" + _W, lambda m: f"head.cls_score.{m[1]}.{m[2]}"),
        (r"loc\.(\d+)" + _W, lambda m: f"head.bbox_pred.{m[1]}.{m[2]}"),
    ],
    # torchvision's ImageNet MobileNetV2 (mobilenet_v2-b0353104.pth), which lufficc/SSD
    # starts from: the blocks as in lufficc's layout above.
    "mobilenet_v2": [
        (
            r"features\.(\d+)\.(.+)",
            lambda m: f"backbone.features.{int(int(m[1]) >= _MOBILENET_V2_SPLIT)}.{m[1]}.{m[2]}",
        ),
    ],
    # torchvision's ImageNet MobileNetV3-Large (mobilenet_v3_large-8738ca79.pth).
    "mobilenet_v3_large": [
        (
            rf"features\.{_MOBILENET_V3_SPLIT}\.block\.0\.(.+)",
            lambda m: f"backbone.features.0.{_MOBILENET_V3_SPLIT}.{m[1]}",
        ),
        (
            rf"features\.{_MOBILENET_V3_SPLIT}\.block\.(\d+)\.(.+)",
            lambda m: f"backbone.features.1.0.{m[1]}.{m[2]}",
        ),
        (r"features\.(\d+)\.(.+)", _mobilenet_v3_block),
    ],
    "vgg16": [
        # torchvision's vgg16: conv layers keep their index (conv1_1 = 0 ... conv5_3 = 28).
        (r"features\.(\d+)" + _W, lambda m: f"backbone.vgg.{m[1]}.{m[2]}"),
        # ssd.pytorch's vgg16_reducedfc.pth: the layer list itself, fc6/fc7 already reduced.
        (r"(\d+)" + _W, lambda m: f"backbone.vgg.{m[1]}.{m[2]}"),
    ],
}


def _rename(
    state_dict: Dict[str, Tensor], rules: Sequence[_Rule]
) -> Tuple[Dict[str, Tensor], Dict[str, str], Dict[str, Tensor]]:
    """
    Returns:
        renamed: the tensors under their ssd_d2 names.
        origins: ssd_d2 name -> source name, for error messages.
        unmatched: the source tensors that no rule names.
    """
    compiled = [(re.compile(pattern), new_name) for pattern, new_name in rules]
    renamed, origins, unmatched = {}, {}, {}
    for key, value in state_dict.items():
        for pattern, new_name in compiled:
            match = pattern.fullmatch(key)
            if match:
                name = new_name(match)
                renamed[name] = value
                origins[name] = key
                break
        else:
            unmatched[key] = value
    return renamed, origins, unmatched


# ---------------------------------------------------------------------------------------
# Reading, checking and writing.


def load_state_dict(path: str, allow_unsafe: bool = False) -> Dict[str, Tensor]:
    """
    The state dict in ``path``: a bare state dict or a checkpoint holding one under "model"
    or "state_dict", with any DataParallel "module." prefix removed. Read with
    ``torch.load(weights_only=True)`` unless ``allow_unsafe`` (which runs any code the file
    holds).
    """
    # torchvision's detection reference scripts save their argparse arguments too.
    safe_globals = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    allow_namespace = safe_globals([argparse.Namespace]) if safe_globals else nullcontext()
    try:
        with allow_namespace:
            loaded = torch.load(path, map_location="cpu", weights_only=not allow_unsafe)
    except pickle.UnpicklingError as e:
        raise ConversionError(
            f"{path} cannot be read with torch.load(weights_only=True), which loads tensors "
            "and plain containers only. It holds other pickled objects: loading those runs "
            "whatever code the file contains, so a file from an untrusted source can take over "
            "your account. Only if you trust where it comes from, add --allow-unsafe-checkpoint "
            "(or load it yourself and torch.save() its state_dict()).\n"
            f"torch.load said: {e}"
        ) from e
    if isinstance(loaded, dict):
        for key in ("model", "state_dict"):
            if isinstance(loaded.get(key), dict):
                loaded = loaded[key]
                break
    if not isinstance(loaded, dict) or not loaded:
        raise ConversionError(f"{path} holds no state dict (found {type(loaded).__name__}).")
    not_tensors = [k for k, v in loaded.items() if not isinstance(v, Tensor)]
    if not_tensors:
        raise ConversionError(
            f"{path} is not a state dict: {not_tensors[:5]} are not tensors (the file has "
            f"keys {list(loaded)[:8]})."
        )
    return {k[len("module.") :] if k.startswith("module.") else k: v for k, v in loaded.items()}


def save_checkpoint(state_dict: Dict[str, Tensor], path: str, author: str) -> None:
    """
    Write a Detectron2 checkpoint: torch.save, or Detectron2's model zoo pickle of numpy
    arrays when ``path`` ends in ".pkl" (DetectionCheckpointer reads ".pkl" files that way).
    """
    # clone(): slices (fc6/fc7, class outputs) would otherwise save their whole source tensor.
    model = {
        k: v.detach().cpu().clone(memory_format=torch.contiguous_format)
        for k, v in state_dict.items()
    }
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    if path.endswith(".pkl"):
        model = {k: v.numpy() for k, v in model.items()}
    checkpoint = {"model": model, "__author__": author, "matching_heuristics": False}
    if path.endswith(".pkl"):
        with open(path, "wb") as f:
            pickle.dump(checkpoint, f)
    else:
        torch.save(checkpoint, path)


def _resolve_config(config_file: str) -> str:
    """``config_file`` as given, or the name of one of ssd_d2's configs."""
    if os.path.isfile(config_file):
        return config_file
    try:
        return get_config_file(config_file)
    except FileNotFoundError as e:
        raise ConversionError(str(e)) from None


def _model_state_dict(config_file: str, opts: Sequence[str]) -> Dict[str, Tensor]:
    """The state dict of the model that ``config_file`` builds: the layout to convert to."""
    cfg = load_config(config_file, opts)
    cfg.MODEL.DEVICE = "cpu"
    return build_model(cfg).state_dict()


def recognize(keys: Sequence[str]) -> Optional[str]:
    """
    The layout that state dict keys are in: one of :data:`SOURCES` (a peer's file), "ssd_d2"
    (ssd_d2's own names), or None (none of :data:`KNOWN_FORMATS`). Peers are told apart by
    names only they use; lufficc/SSD's VGG16 and torchvision's SSDLite backbones share some
    names with ssd_d2's, so the peers' head names are looked at first.
    """
    keys = set(keys)
    if "backbone.scale_weight" in keys or any(k.startswith("head.classification_") for k in keys):
        return "torchvision"
    if any(k.startswith("box_head.predictor.") for k in keys):
        return "lufficc"
    if "L2Norm.weight" in keys or any(k.startswith(("conf.", "loc.")) for k in keys):
        return "amdegroot"
    # MobileNet's first block is a (conv, norm, activation) Sequential; VGG16's a conv.
    if "features.0.0.weight" in keys:
        return "mobilenet"
    if "features.0.weight" in keys or "0.weight" in keys or "classifier.0.weight" in keys:
        return "vgg16"
    if any(k.startswith(("backbone.", "head.", "pixel_")) for k in keys):
        return "ssd_d2"
    return None


def unknown_format_message(origin: str, keys: Sequence[str]) -> str:
    """What to say about weights whose keys are none of :data:`KNOWN_FORMATS`."""
    keys = list(keys)
    return (
        f"{origin} is not a weights file ssd_d2 knows: its keys ({', '.join(keys[:5])}"
        f"{', ...' if len(keys) > 5 else ''}; {len(keys)} in all) are in none of these "
        "layouts:\n" + "\n".join(f"  - {f}" for f in KNOWN_FORMATS) + "\nPoint MODEL.WEIGHTS "
        "at one of those (a path or an http(s) URL), or convert the file to ssd_d2's key names "
        "(ssd_d2.convert's rule table shows the ones it needs)."
    )


def _shape(t: Tensor) -> Tuple[int, ...]:
    return tuple(t.shape)


def _check_fits(
    renamed: Dict[str, Tensor],
    origins: Dict[str, str],
    unmatched: Dict[str, Tensor],
    model_state_dict: Dict[str, Tensor],
    *,
    source: str,
    target: str,
    origin: Optional[str] = None,
    expected_missing: Sequence[str] = (),
    check_shapes: bool = True,
) -> None:
    """
    Raise ConversionError unless ``renamed`` loads into the model key by key, but for the
    ``expected_missing`` keys and, unless ``check_shapes``, tensors of other shapes.
    ``origin``: the file, when MODEL.WEIGHTS loads it (None: the offline converter).
    """
    unexpected = [f"{k} {_shape(v)}" for k, v in unmatched.items()]
    unexpected += [
        f"{origins[k]} -> {k} {_shape(v)}" for k, v in renamed.items() if k not in model_state_dict
    ]
    allowed = set(expected_missing)
    missing = [
        f"{k} {_shape(v)}"
        for k, v in model_state_dict.items()
        if k not in renamed and k not in allowed
    ]
    wrong_shapes = [
        f"{origins[k]} -> {k}: {_shape(v)} in the checkpoint, {_shape(model_state_dict[k])} "
        "in the model"
        for k, v in renamed.items()
        if check_shapes and k in model_state_dict and v.shape != model_state_dict[k].shape
    ]
    if not (unexpected or missing or wrong_shapes):
        return
    layout = f"{_SOURCE_NAMES[source]} layout"
    if origin is None:
        option = f"--source {source.split('_')[0]}"
        lines = [f"The checkpoint does not fit {option} ({layout}) with {target}:"]
    else:
        lines = [f"{origin} ({layout}) does not fit {target}:"]
    for problems, what in [
        (unexpected, "checkpoint tensors with no place in that layout"),
        (missing, "model tensors the checkpoint does not provide"),
        (wrong_shapes, "tensors whose shapes differ"),
    ]:
        if problems:
            lines.append(f"  {len(problems)} {what}, e.g.:")
            lines += [f"    {p}" for p in problems[:5]]
    guess = recognize(list(origins.values()) + list(unmatched))
    if guess == "ssd_d2" and origin is None:
        lines.append("Its keys are ssd_d2's already: load it with MODEL.WEIGHTS as it is.")
    elif guess is not None and guess != "ssd_d2" and not source.startswith(guess):
        lines.append(f"Its keys look like a {_SOURCE_NAMES[guess]} checkpoint: --source {guess}?")
    elif source == "mobilenet_v3_large" and wrong_shapes:
        lines.append(
            "ImageNet MobileNetV3-Large weights have the full tail (MobileNetV3 paper, table "
            "6): set MODEL.MOBILENET.REDUCED_TAIL False."
        )
    elif guess is not None and unexpected:
        lines.append(
            f"Its keys are {_SOURCE_NAMES[source]}'s, but of an architecture that ssd_d2 "
            "does not have, or of another config's (VGG16 SSD300/SSD512, torchvision's "
            "SSDLite320 MobileNetV3 and lufficc/SSD's SSDLite320 MobileNetV2 are converted)."
        )
    elif wrong_shapes and not (unexpected or missing):
        lines.append(
            "Its layers match but not their sizes: another class count or default-box set "
            "needs its own --config-file (and options such as MODEL.SSD.NUM_CLASSES N)."
        )
    raise ConversionError("\n".join(lines))


# ---------------------------------------------------------------------------------------
# Converters.


def _head_layout(
    state_dict: Dict[str, Tensor], output_conv: str
) -> Optional[Tuple[List[int], int]]:
    """
    (default boxes per location of each level, class outputs per box with background),
    read from the shapes of the head's output convs (``head.cls_score.<level><output_conv>``,
    or ``head.cls_score.<level>`` for a plain conv level such as lufficc's SSDLite last one);
    None when there is no complete head.
    """
    pattern = re.compile(r"head\.cls_score\.(\d+)(" + re.escape(output_conv) + r")?\.weight")
    levels = sorted(int(m[1]) for m in map(pattern.fullmatch, state_dict) if m)
    if not levels or levels != list(range(len(levels))):
        return None
    num_anchors, outputs = [], set()
    for level in levels:
        conv = output_conv
        if f"head.cls_score.{level}{conv}.weight" not in state_dict:
            conv = ""
        box_weight = state_dict.get(f"head.bbox_pred.{level}{conv}.weight")
        cls_weight = state_dict[f"head.cls_score.{level}{conv}.weight"]
        if box_weight is None:
            return None
        boxes = box_weight.shape[0] // 4
        if boxes == 0 or box_weight.shape[0] % 4 or cls_weight.shape[0] % boxes:
            raise ConversionError(
                f"Head level {level}: {cls_weight.shape[0]} class outputs and "
                f"{box_weight.shape[0]} box outputs are not (boxes x classes, boxes x 4)."
            )
        num_anchors.append(boxes)
        outputs.add(cls_weight.shape[0] // boxes)
    if len(outputs) != 1:
        raise ConversionError(f"The head levels predict different class counts: {outputs}.")
    return num_anchors, outputs.pop()


def _select_class_outputs(
    state_dict: Dict[str, Tensor],
    output_conv: str,
    num_anchors: List[int],
    num_outputs: int,
    keep: List[int],
) -> None:
    """Keep the class outputs ``keep`` (source indices, in order) of every default box."""
    index = torch.tensor(keep)
    for level, boxes in enumerate(num_anchors):
        for name in ("weight", "bias"):
            key = f"head.cls_score.{level}{output_conv}.{name}"
            value = state_dict[key]
            per_box = value.reshape(boxes, num_outputs, *value.shape[1:])
            state_dict[key] = per_box[:, index].reshape(boxes * len(keep), *value.shape[1:])


def _is_ssdlite(state_dict: Dict[str, Tensor]) -> bool:
    # MobileNet's first block is a (conv, norm, activation) Sequential: features.0.0.0.weight.
    return any(k.startswith("backbone.features.0.0.") for k in state_dict)


def _is_lufficc_ssdlite(state_dict: Dict[str, Tensor]) -> bool:
    # A MobileNet body (its VGG16 models have backbone.vgg.*) and SSDLiteBoxPredictor's
    # SeparableConv2d levels (cls_headers.<level>.conv.*).
    head = re.compile(r"box_head\.predictor\.(cls|reg)_headers\.\d+\.conv\..+")
    return any(k.startswith("backbone.features.") for k in state_dict) and any(
        head.fullmatch(k) for k in state_dict
    )


@dataclass
class _Renamed:
    """A state dict under ssd_d2's names, before it is checked against a model."""

    source: str  # the refined source: torchvision_ssdlite, mobilenet_v2, ...
    renamed: Dict[str, Tensor]
    origins: Dict[str, str]
    unmatched: Dict[str, Tensor]
    notes: List[str]
    # Detectors: (default boxes per location of each level, class outputs), or None.
    layout: Optional[Tuple[List[int], int]] = None


def _rename_detector(source: str, state_dict: Dict[str, Tensor]) -> _Renamed:
    """
    A VGG16 SSD300/SSD512 of torchvision, lufficc/SSD or ssd.pytorch, torchvision's
    SSDLite320 MobileNetV3 or lufficc/SSD's SSDLite320 MobileNetV2.
    """
    # The conv that predicts, within each level's predictor: SSDLite's is a separable
    # (depthwise + norm + ReLU6, then 1x1) Sequential.
    output_conv = ""
    if source == "torchvision" and _is_ssdlite(state_dict):
        source, output_conv = "torchvision_ssdlite", ".1"
    elif source == "lufficc" and _is_lufficc_ssdlite(state_dict):
        # Its last level is a plain 1x1 conv (head.cls_score.5), which _head_layout reads too.
        source, output_conv = "lufficc_ssdlite", ".1"
    renamed, origins, unmatched = _rename(state_dict, _RULES[source])
    notes = []
    layout = _head_layout(renamed, output_conv)
    if layout is not None:
        num_anchors, num_outputs = layout
        notes.append(
            f"head: {len(num_anchors)} levels, {num_anchors} default boxes per location, "
            f"{num_outputs} class outputs per box (background first)"
        )
        if source.startswith("torchvision") and num_outputs == 91:
            # torchvision predicts COCO category ids (1..90, 10 of them unused); Detectron2
            # numbers the 80 classes contiguously in category id order.
            keep = [0] + coco_category_ids()
            _select_class_outputs(renamed, output_conv, num_anchors, num_outputs, keep)
            notes.append(
                "class outputs: 91 COCO category ids -> background + 80 contiguous classes "
                f"(dropped the outputs of the {91 - len(keep)} unused ids)"
            )
            layout = num_anchors, len(keep)
    return _Renamed(source, renamed, origins, unmatched, notes, layout)


def _reduce_fc(
    classifier: Dict[str, Tensor],
    renamed: Dict[str, Tensor],
    origins: Dict[str, str],
    unmatched: Dict[str, Tensor],
    notes: List[str],
) -> bool:
    """
    Turn torchvision vgg16's fc6 and fc7 into SSD's conv6 (3x3, dilation 6) and conv7 (1x1),
    1024 channels each, by subsampling as the SSD paper does (section 3, "Base network").

    Returns:
        whether conv6 and conv7 were converted.
    """
    fc6_w = classifier.pop("classifier.0.weight", None)
    fc6_b = classifier.pop("classifier.0.bias", None)
    fc7_w = classifier.pop("classifier.3.weight", None)
    fc7_b = classifier.pop("classifier.3.bias", None)
    if "classifier.6.weight" in classifier:
        notes.append("dropped classifier.6 (fc8, the ImageNet classes): SSD does not use it")
        classifier.pop("classifier.6.weight")
        classifier.pop("classifier.6.bias", None)
    unmatched.update(classifier)
    fc = {"classifier.0.weight": fc6_w, "classifier.0.bias": fc6_b}
    fc.update({"classifier.3.weight": fc7_w, "classifier.3.bias": fc7_b})
    expected = {
        "classifier.0.weight": (4096, 512 * 7 * 7),
        "classifier.0.bias": (4096,),
        "classifier.3.weight": (4096, 4096),
        "classifier.3.bias": (4096,),
    }
    if any(v is None or _shape(v) != expected[k] for k, v in fc.items()):
        unmatched.update({k: v for k, v in fc.items() if v is not None})
        return False
    if not all(torch.isfinite(v).all() for v in fc.values()):
        # torchvision's VGG16_Weights.IMAGENET1K_FEATURES has NaN fully connected layers.
        notes.append(
            "fc6/fc7 are not finite (torchvision's IMAGENET1K_FEATURES weights have no fc "
            "layers): backbone.vgg.31/33 stay at their initialisation; ssd.pytorch's "
            "vgg16_reducedfc.pth has them"
        )
        return False
    # fc6 reads pool5's 7x7x512 map. Keep every 4th of its 4096 outputs, and kernel taps 0, 3
    # and 6 of 7 per axis: a 3x3 kernel with dilation 3 on the stride-2 pool5 map, which is
    # dilation 6 now that pool5 has stride 1.
    renamed["backbone.vgg.31.weight"] = fc6_w.reshape(4096, 512, 7, 7)[::4, :, ::3, ::3]
    renamed["backbone.vgg.31.bias"] = fc6_b[::4]
    # fc7: every 4th output and every 4th input (fc6's kept outputs).
    renamed["backbone.vgg.33.weight"] = fc7_w[::4, ::4].reshape(1024, 1024, 1, 1)
    renamed["backbone.vgg.33.bias"] = fc7_b[::4]
    for index, layer in [(31, "0"), (33, "3")]:
        for name in ("weight", "bias"):
            origins[f"backbone.vgg.{index}.{name}"] = f"classifier.{layer}.{name}"
    notes.append("fc6 4096x25088 -> conv6 1024x512x3x3, fc7 4096x4096 -> conv7 1024x1024x1x1")
    return True


def _rename_vgg16(state_dict: Dict[str, Tensor]) -> _Renamed:
    """An ImageNet VGG16 (torchvision's vgg16 or vgg16_features, ssd.pytorch's reducedfc)."""
    classifier = {k: v for k, v in state_dict.items() if k.startswith("classifier.")}
    features = {k: v for k, v in state_dict.items() if k not in classifier}
    renamed, origins, unmatched = _rename(features, _RULES["vgg16"])
    notes = []
    if classifier:
        _reduce_fc(classifier, renamed, origins, unmatched, notes)
    notes.append(
        "input: ssd_d2's configs feed RGB 0-255 minus the mean, as the Caffe-style VGG16 "
        "(vgg16_reducedfc.pth, vgg16_features) expects; torchvision's IMAGENET1K_V1 weights "
        "expect 0-1 input divided by the ImageNet std: set MODEL.PIXEL_STD "
        "[58.395, 57.12, 57.375] to train from those"
    )
    return _Renamed("vgg16", renamed, origins, unmatched, notes)


def _rename_mobilenet(state_dict: Dict[str, Tensor]) -> _Renamed:
    """An ImageNet MobileNetV2 or MobileNetV3-Large classifier of torchvision."""
    # MobileNetV3's inverted residuals are called "block", MobileNetV2's "conv".
    v3 = any(re.fullmatch(r"features\.\d+\.block\..+", k) for k in state_dict)
    source = "mobilenet_v3_large" if v3 else "mobilenet_v2"
    classifier = [k for k in state_dict if k.startswith("classifier.")]
    features = {k: v for k, v in state_dict.items() if k not in classifier}
    renamed, origins, unmatched = _rename(features, _RULES[source])
    notes = []
    if classifier:
        notes.append("dropped the classifier (the ImageNet classes): SSDLite does not use it")
    return _Renamed(source, renamed, origins, unmatched, notes)


def _rename_source(source: str, state_dict: Dict[str, Tensor]) -> _Renamed:
    if source == "vgg16":
        return _rename_vgg16(state_dict)
    if source == "mobilenet":
        return _rename_mobilenet(state_dict)
    return _rename_detector(source, state_dict)


def _backbone_missing(result: _Renamed, model_state_dict: Dict[str, Tensor]) -> List[str]:
    """The model keys an ImageNet backbone leaves at their initialisation."""
    prefix = _BACKBONE_PREFIXES[result.source]
    missing = [k for k in model_state_dict if not k.startswith(prefix)]
    if result.source == "vgg16" and "backbone.vgg.31.weight" not in result.renamed:
        # No (finite) fc6/fc7: conv6/conv7 start from their initialisation, as torchvision's
        # SSD300 does from its vgg16_features file.
        missing += [f"backbone.vgg.{i}.{n}" for i in (31, 33) for n in ("weight", "bias")]
    return missing


def _detector_config(result: _Renamed) -> Tuple[str, List[str]]:
    """The config (and options) of the published model whose head ``result`` has."""
    configs = _DETECTOR_CONFIGS[result.source]
    if result.layout is None:
        # No SSD head to read the config from: compare with the source's usual model, whose
        # keys make the error message say what does not fit.
        return _FALLBACK_CONFIGS[result.source], []
    levels, outputs = len(result.layout[0]), result.layout[1]
    if (levels, outputs) not in configs:
        names = sorted(name for name, _ in configs.values())
        raise ConversionError(
            f"The checkpoint has {levels} head levels and {outputs - 1} classes, unlike the "
            f"published models of its kind ({', '.join(names)}): pass --config-file (and "
            f"options such as MODEL.SSD.NUM_CLASSES {outputs - 1} after OUTPUT)."
        )
    name, opts = configs[(levels, outputs)]
    return name, list(opts)


def convert(
    source: Optional[str],
    state_dict: Dict[str, Tensor],
    config_file: Optional[str] = None,
    opts: Sequence[str] = (),
) -> Conversion:
    """
    Convert a state dict of ``source`` (one of :data:`SOURCES`; None: recognised from its
    keys) into the layout of ``config_file``'s model (by default the config of the published
    model the state dict is, read from its head's shapes).

    Raises:
        ConversionError: when the state dict is not one of the source's models, or does not
            fit the config; the message lists the first keys and shapes that do not fit.
    """
    if source is None:
        source = recognize(state_dict)
        if source in (None, "ssd_d2"):
            raise ConversionError(
                unknown_format_message("The checkpoint", state_dict)
                if source is None
                else "Its keys are ssd_d2's already: load it with MODEL.WEIGHTS as it is."
            )
    if source not in SOURCES:
        raise ConversionError(f"Unknown source {source!r}; choose one of {SOURCES}.")
    result = _rename_source(source, state_dict)
    config_opts: List[str] = []
    if config_file is None:
        if result.source in _BACKBONE_CONFIGS:
            config_file = _BACKBONE_CONFIGS[result.source]
        else:
            config_file, config_opts = _detector_config(result)
    config_file = _resolve_config(config_file)
    model_state_dict = _model_state_dict(config_file, [*config_opts, *opts])
    expected_missing = []
    if result.source in _BACKBONE_PREFIXES:
        expected_missing = _backbone_missing(result, model_state_dict)
        result.notes.append(
            f"{len(expected_missing)} model tensors (extras, heads"
            f"{', the conv4_3 L2Norm scale' if result.source == 'vgg16' else ''}) are not in "
            "this checkpoint: DetectionCheckpointer lists them as missing when it loads it, "
            "as expected: they train from their initialisation"
        )
    _check_fits(
        result.renamed,
        result.origins,
        result.unmatched,
        model_state_dict,
        source=result.source,
        target=config_file,
        expected_missing=expected_missing,
    )
    return Conversion(
        result.renamed, config_file, result.source, result.notes, expected_missing, config_opts
    )


def convert_for_model(
    state_dict: Dict[str, Tensor], model_state_dict: Dict[str, Tensor], origin: str
) -> Tuple[Dict[str, Tensor], str]:
    """
    ``state_dict`` under the names of ``model_state_dict``, whatever :data:`KNOWN_FORMATS`
    layout it is in: how MODEL.WEIGHTS takes a peer's file. Keys the file lacks (an ImageNet
    backbone's extras and heads) and, for detectors, tensors of other shapes (class logits
    when fine-tuning on another class count) are left to the checkpointer, which reports
    them; tensors with no place in the model are an error.

    Returns:
        the state dict and the source it was recognised as ("ssd_d2": returned as it is).

    Raises:
        ConversionError: naming ``origin`` (the file) when its keys are in no known layout,
            or have no place in the model.
    """
    if state_dict and all(k.startswith("module.") for k in state_dict):  # saved by DataParallel
        state_dict = {k[len("module.") :]: v for k, v in state_dict.items()}
    source = recognize(state_dict)
    if source is None:
        raise ConversionError(unknown_format_message(origin, state_dict))
    if source == "ssd_d2":
        return state_dict, source
    result = _rename_source(source, state_dict)
    backbone_only = result.source in _BACKBONE_PREFIXES
    _check_fits(
        result.renamed,
        result.origins,
        result.unmatched,
        model_state_dict,
        source=result.source,
        target="this config's model",
        origin=origin,
        expected_missing=list(model_state_dict),
        check_shapes=backbone_only,
    )
    return result.renamed, result.source


def convert_file(
    source: Optional[str],
    input_path: str,
    output_path: str,
    config_file: Optional[str] = None,
    opts: Sequence[str] = (),
    allow_unsafe: bool = False,
) -> Conversion:
    """
    Read ``input_path`` (see :func:`load_state_dict` for ``allow_unsafe``), convert it and
    write the Detectron2 checkpoint ``output_path``.
    """
    if output_path.endswith(".pyth"):
        raise ConversionError(
            f"{output_path}: DetectionCheckpointer reads '.pyth' files as pycls checkpoints; "
            "use '.pth'."
        )
    conversion = convert(source, load_state_dict(input_path, allow_unsafe), config_file, opts)
    author = (
        f"{_SOURCE_NAMES[conversion.source]} ({os.path.basename(input_path)}) "
        "via ssd_d2.tools.convert"
    )
    save_checkpoint(conversion.state_dict, output_path, author)
    return conversion


def summarize(conversion: Conversion) -> List[str]:
    """Lines that say what was converted: tensors and values per module, and notes."""
    groups: Dict[str, List[int]] = {}
    for key, value in conversion.state_dict.items():
        group = groups.setdefault(".".join(key.split(".")[:2]), [0, 0])
        group[0] += 1
        group[1] += value.numel()
    total = sum(v.numel() for v in conversion.state_dict.values())
    lines = [
        f"Converted {len(conversion.state_dict)} tensors ({total:,} values) from "
        f"{_SOURCE_NAMES[conversion.source]} for {conversion.config_file}:"
    ]
    lines += [f"  {name:<18} {n:>3} tensors {p:>12,} values" for name, (n, p) in groups.items()]
    lines += [f"  note: {note}" for note in conversion.notes]
    return lines
