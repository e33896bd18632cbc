"""
Convert published SSD weights into Detectron2 checkpoints of ssd_d2's models.

    python -m ssd_d2.tools.convert --source torchvision ssd300_vgg16_coco-b556d3b4.pth out.pth
    python train_net.py --config-file configs/ssd300_coco.yaml --eval-only MODEL.WEIGHTS out.pth

The output is ``{"model": state_dict, "__author__": ..., "matching_heuristics": False}`` in the
exact key layout of the target config's model, so that DetectionCheckpointer loads it by
name, without its renaming heuristics. The published models share ssd_d2's conventions
(RGB input, background as class output 0, the same default-box order and box encoding;
each config sets its peer's pixel mean and std), so converting them is a renaming, plus
re-indexing the class outputs of torchvision's 91 COCO category ids.

To fine-tune on another class count, load the converted checkpoint with the other config:
DetectionCheckpointer skips the class logits (``head.cls_score.*``), whose shapes differ,
with a warning, and loads everything else.
"""

import argparse
import os
import pickle
import re
import sys
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from detectron2.config import get_cfg
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES
from detectron2.modeling import build_model

from ssd_d2 import add_ssd_config  # importing ssd_d2 registers the SSD components
from ssd_d2.config import merge_from_file_safely

__all__ = [
    "SOURCES",
    "Conversion",
    "ConversionError",
    "build_argument_parser",
    "coco_category_ids",
    "convert",
    "convert_file",
    "load_state_dict",
    "main",
    "save_checkpoint",
    "summarize",
]

SOURCES = ("torchvision", "lufficc", "amdegroot", "vgg16")

# The repository's configs/ (present in a source checkout and with `pip install -e .`).
CONFIG_DIR = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", "configs"))

# The config of a converted detector, by (head levels, class outputs with background).
_DETECTOR_CONFIGS = {
    (6, 21): "ssd300_voc.yaml",
    (6, 81): "ssd300_coco.yaml",
    (7, 21): "ssd512_voc.yaml",
    (7, 81): "ssd512_coco.yaml",
}
_SSDLITE_CONFIGS = {(6, 81): "ssdlite320_mobilenet_v3_coco.yaml"}
_LUFFICC_SSDLITE_CONFIGS = {(6, 21): "ssdlite320_mobilenet_v2_voc.yaml"}
# The model a checkpoint without a recognisable head is compared with, for the error message.
_FALLBACK_CONFIGS = {
    "torchvision": "ssd300_coco.yaml",
    "torchvision_ssdlite": "ssdlite320_mobilenet_v3_coco.yaml",
    "lufficc": "ssd300_voc.yaml",
    "lufficc_ssdlite": "ssdlite320_mobilenet_v2_voc.yaml",
    "amdegroot": "ssd300_voc.yaml",
}
# Every VGG16 SSD config has the same backbone.vgg layers: this one checks an initialisation.
_VGG16_CONFIG = "ssd300_voc.yaml"

_SOURCE_NAMES = {
    "torchvision": "torchvision ssd300_vgg16",
    "torchvision_ssdlite": "torchvision ssdlite320_mobilenet_v3_large",
    "lufficc": "lufficc/SSD",
    "lufficc_ssdlite": "lufficc/SSD mobilenet_v2_ssd320",
    "amdegroot": "amdegroot/ssd.pytorch",
    "vgg16": "VGG16 ImageNet",
    "ssd_d2": "ssd_d2",
}

_EXAMPLES = """
examples:
  # torchvision's COCO SSD300 -> configs/ssd300_coco.yaml (91 category ids -> 80 classes)
  python -m ssd_d2.tools.convert --source torchvision ssd300_vgg16_coco-b556d3b4.pth \\
      ssd300_coco_torchvision.pth
  # torchvision's COCO SSDLite320 MobileNetV3 -> configs/ssdlite320_mobilenet_v3_coco.yaml
  python -m ssd_d2.tools.convert --source torchvision \\
      ssdlite320_mobilenet_v3_large_coco-a79551df.pth ssdlite320_coco_torchvision.pth
  # lufficc/SSD: 300 or 512 (head levels) and VOC or COCO (class outputs) come from the shapes
  python -m ssd_d2.tools.convert --source lufficc vgg_ssd512_coco_trainval35k.pth \\
      ssd512_coco_lufficc.pth
  # lufficc/SSD's MobileNetV2 SSDLite320 VOC -> configs/ssdlite320_mobilenet_v2_voc.yaml
  python -m ssd_d2.tools.convert --source lufficc mobilenet_v2_ssd320_voc0712.pth \\
      ssdlite320_voc_lufficc.pth
  # amdegroot/ssd.pytorch SSD300 VOC -> configs/ssd300_voc.yaml
  python -m ssd_d2.tools.convert --source amdegroot ssd300_mAP_77.43_v2.pth ssd300_voc_amdegroot.pth
  # ImageNet VGG16 to train from: ssd.pytorch's vgg16_reducedfc.pth or a torchvision vgg16
  # state dict (fc6/fc7 subsampled into the dilated conv6 and conv7); extras and heads are
  # not in it, so loading it reports them as missing: they train from their initialisation.
  python -m ssd_d2.tools.convert --source vgg16 vgg16_reducedfc.pth vgg16_ssd_init.pth
  # a model of another class count: name its config (and config options after OUTPUT)
  python -m ssd_d2.tools.convert --source lufficc --config-file configs/ssd300_voc.yaml \\
      my_5_classes.pth my_ssd.pth MODEL.SSD.NUM_CLASSES 5

then:
  python train_net.py --config-file configs/ssd300_coco.yaml --eval-only \\
      MODEL.WEIGHTS ssd300_coco_torchvision.pth
"""


class ConversionError(ValueError):
    """A checkpoint that does not fit the chosen source or target config."""


@dataclass
class Conversion:
    """A converted state dict, the config it fits, and what the converter did."""

    state_dict: Dict[str, Tensor]
    config_file: str
    source: str
    notes: List[str] = field(default_factory=list)
    # Model keys the checkpoint leaves at their initialisation (the vgg16 source's).
    expected_missing: List[str] = field(default_factory=list)


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
_LUFFICC_MOBILENET_V2_SPLIT = 14


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
            lambda m: (
                f"backbone.features.{int(int(m[1]) >= _LUFFICC_MOBILENET_V2_SPLIT)}.{m[1]}.{m[2]}"
            ),
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
    """``config_file`` as given, or the name of one of the repository's configs."""
    if os.path.isfile(config_file):
        return config_file
    for name in (config_file, config_file + ".yaml"):
        candidate = os.path.join(CONFIG_DIR, name)
        if os.path.isfile(candidate):
            return candidate
    raise ConversionError(f"Config file {config_file} not found (nor in {CONFIG_DIR}).")


def _model_state_dict(config_file: str, opts: Sequence[str]) -> Dict[str, Tensor]:
    """The state dict of the model that ``config_file`` builds: the layout to convert to."""
    cfg = get_cfg()
    add_ssd_config(cfg)
    merge_from_file_safely(cfg, config_file)
    cfg.merge_from_list(list(opts))
    cfg.MODEL.DEVICE = "cpu"
    return build_model(cfg).state_dict()


def _guess_source(keys: Sequence[str]) -> Optional[str]:
    """Which known layout ``keys`` look like, for error messages."""
    keys = set(keys)
    if any(k.startswith("head.cls_score.") for k in keys):
        return "ssd_d2"
    if "backbone.scale_weight" in keys or any(k.startswith("head.classification_") for k in keys):
        return "torchvision"
    if any(k.startswith("box_head.predictor.") for k in keys):
        return "lufficc"
    if "L2Norm.weight" in keys or any(k.startswith("conf.") for k in keys):
        return "amdegroot"
    if "classifier.0.weight" in keys or "0.weight" in keys:
        return "vgg16"
    return None


def _shape(t: Tensor) -> Tuple[int, ...]:
    return tuple(t.shape)


def _check_fits(
    renamed: Dict[str, Tensor],
    origins: Dict[str, str],
    unmatched: Dict[str, Tensor],
    model_state_dict: Dict[str, Tensor],
    *,
    source: str,
    config_file: str,
    expected_missing: Sequence[str] = (),
) -> None:
    """Raise ConversionError unless ``renamed`` loads into the model key by key."""
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
        if k in model_state_dict and v.shape != model_state_dict[k].shape
    ]
    if not (unexpected or missing or wrong_shapes):
        return
    lines = [
        f"The checkpoint does not fit --source {source} ({_SOURCE_NAMES[source]} layout) with "
        f"{config_file}:"
    ]
    for problems, what in [
        (unexpected, "checkpoint tensors with no place in that layout"),
        (missing, "model tensors the checkpoint does not provide"),
        (wrong_shapes, "tensors whose shapes differ"),
    ]:
        if problems:
            lines.append(f"  {len(problems)} {what}, e.g.:")
            lines += [f"    {p}" for p in problems[:5]]
    guess = _guess_source(list(origins.values()) + list(unmatched))
    if guess == "ssd_d2":
        lines.append("Its keys are ssd_d2's already: load it with MODEL.WEIGHTS as it is.")
    elif guess is not None and not source.startswith(guess):
        lines.append(f"Its keys look like a {_SOURCE_NAMES[guess]} checkpoint: --source {guess}?")
    elif guess is not None and unexpected:
        lines.append(
            f"Its keys are {_SOURCE_NAMES[guess]}'s, but of an architecture that this converter "
            "does not handle (VGG16 SSD300/SSD512, torchvision's SSDLite320 MobileNetV3 and "
            "lufficc/SSD's SSDLite320 MobileNetV2)."
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


def _convert_detector(
    source: str, state_dict: Dict[str, Tensor], config_file: Optional[str], opts: Sequence[str]
) -> Conversion:
    """
    A VGG16 SSD300/SSD512 of torchvision, lufficc/SSD or ssd.pytorch, torchvision's
    SSDLite320 MobileNetV3 or lufficc/SSD's SSDLite320 MobileNetV2.
    """
    configs = _DETECTOR_CONFIGS
    # The conv that predicts, within each level's predictor: SSDLite's is a separable
    # (depthwise + norm + ReLU6, then 1x1) Sequential.
    output_conv = ""
    if source == "torchvision" and _is_ssdlite(state_dict):
        source, configs, output_conv = "torchvision_ssdlite", _SSDLITE_CONFIGS, ".1"
    elif source == "lufficc" and _is_lufficc_ssdlite(state_dict):
        # Its last level is a plain 1x1 conv (head.cls_score.5), which _head_layout reads too.
        source, configs, output_conv = "lufficc_ssdlite", _LUFFICC_SSDLITE_CONFIGS, ".1"
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

    if config_file is None:
        if layout is None:
            # No SSD head to read the config from: compare with the source's usual model,
            # whose keys make the error message say what does not fit.
            name = _FALLBACK_CONFIGS[source]
        else:
            name = configs.get((len(layout[0]), layout[1]))
        if name is None:
            raise ConversionError(
                f"The checkpoint has {len(layout[0])} head levels and {layout[1] - 1} classes, "
                f"unlike the published models of its kind ({', '.join(sorted(configs.values()))})"
                ": pass --config-file (and options such as "
                f"MODEL.SSD.NUM_CLASSES {layout[1] - 1} after OUTPUT)."
            )
        config_file = os.path.join(CONFIG_DIR, name)
    config_file = _resolve_config(config_file)
    _check_fits(
        renamed,
        origins,
        unmatched,
        _model_state_dict(config_file, opts),
        source=source,
        config_file=config_file,
    )
    return Conversion(renamed, config_file, source, notes)


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


def _convert_vgg16(
    state_dict: Dict[str, Tensor], config_file: Optional[str], opts: Sequence[str]
) -> Conversion:
    """An ImageNet VGG16 (torchvision's vgg16 or ssd.pytorch's vgg16_reducedfc.pth)."""
    classifier = {k: v for k, v in state_dict.items() if k.startswith("classifier.")}
    features = {k: v for k, v in state_dict.items() if k not in classifier}
    renamed, origins, unmatched = _rename(features, _RULES["vgg16"])
    notes = []
    fc_converted = True
    if classifier:
        fc_converted = _reduce_fc(classifier, renamed, origins, unmatched, notes)
    config_file = _resolve_config(config_file or os.path.join(CONFIG_DIR, _VGG16_CONFIG))
    model_state_dict = _model_state_dict(config_file, opts)
    # Only the VGG16 layers come from ImageNet; the rest trains from its initialisation.
    expected_missing = [k for k in model_state_dict if not k.startswith("backbone.vgg.")]
    if not fc_converted and "backbone.vgg.31.weight" not in renamed:
        expected_missing += [f"backbone.vgg.{i}.{n}" for i in (31, 33) for n in ("weight", "bias")]
    _check_fits(
        renamed,
        origins,
        unmatched,
        model_state_dict,
        source="vgg16",
        config_file=config_file,
        expected_missing=expected_missing,
    )
    notes.append(
        f"{len(expected_missing)} model tensors (extras, heads, the conv4_3 L2Norm scale) are "
        "not in this checkpoint: DetectionCheckpointer lists them as missing when it loads it, "
        "as expected: they train from their initialisation"
    )
    notes.append(
        "input: ssd_d2's configs feed RGB 0-255 minus the mean, as the Caffe-style VGG16 "
        "(vgg16_reducedfc.pth) expects; torchvision's IMAGENET1K_V1 weights expect 0-1 "
        "input divided by the ImageNet std: set MODEL.PIXEL_STD [58.395, 57.12, 57.375] "
        "to train from those"
    )
    return Conversion(renamed, config_file, "vgg16", notes, expected_missing)


def convert(
    source: str,
    state_dict: Dict[str, Tensor],
    config_file: Optional[str] = None,
    opts: Sequence[str] = (),
) -> Conversion:
    """
    Convert a state dict of ``source`` into the layout of ``config_file``'s model (by default
    the config that the source's head shapes imply).

    Raises:
        ConversionError: when the state dict is not one of the source's models, or does not
            fit the config; the message lists the first keys and shapes that do not fit.
    """
    if source not in SOURCES:
        raise ConversionError(f"Unknown source {source!r}; choose one of {SOURCES}.")
    if source == "vgg16":
        return _convert_vgg16(state_dict, config_file, opts)
    return _convert_detector(source, state_dict, config_file, opts)


def convert_file(
    source: str,
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


def build_argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ssd_d2.tools.convert",
        description="Convert published SSD weights into a Detectron2 checkpoint that an "
        "ssd_d2 config\nloads with MODEL.WEIGHTS, with no missing or unexpected keys.",
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--source",
        required=True,
        choices=SOURCES,
        help="torchvision: ssd300_vgg16 or ssdlite320_mobilenet_v3_large (COCO); lufficc: "
        "lufficc/SSD vgg_ssd300/512 (VOC or COCO) or mobilenet_v2_ssd320 (VOC); amdegroot: "
        "ssd.pytorch SSD300; vgg16: "
        "torchvision vgg16 or ssd.pytorch vgg16_reducedfc.pth, to train from",
    )
    parser.add_argument(
        "--config-file",
        default=None,
        metavar="FILE",
        help="the ssd_d2 config to convert to (a path or a name in configs/); by default the "
        "one the head's shapes imply (ssd300/ssd512 x voc/coco, ssdlite320_mobilenet_v3_coco, "
        "ssdlite320_mobilenet_v2_voc; "
        "ssd300_voc.yaml for vgg16)",
    )
    parser.add_argument(
        "--allow-unsafe-checkpoint",
        action="store_true",
        help="read INPUT with full unpickling (torch.load(weights_only=False)), which runs any "
        "code the file holds: only for a file from a source you trust",
    )
    parser.add_argument("input", metavar="INPUT", help="the checkpoint to convert (.pth)")
    parser.add_argument(
        "output", metavar="OUTPUT", help="the Detectron2 checkpoint to write (.pth or .pkl)"
    )
    parser.add_argument(
        "opts",
        nargs=argparse.REMAINDER,
        metavar="KEY VALUE",
        help="config options applied to the target config, e.g. MODEL.SSD.NUM_CLASSES 5",
    )
    return parser


def main(argv: Optional[Sequence[str]] = None) -> Conversion:
    args = build_argument_parser().parse_args(argv)
    try:
        conversion = convert_file(
            args.source,
            args.input,
            args.output,
            args.config_file,
            args.opts,
            allow_unsafe=args.allow_unsafe_checkpoint,
        )
    except ConversionError as e:
        sys.exit(f"error: {args.input}: {e}")
    print("\n".join(summarize(conversion)))
    print(
        f"Wrote {args.output}; use it with --config-file {conversion.config_file} "
        f"MODEL.WEIGHTS {args.output}"
    )
    return conversion


if __name__ == "__main__":
    main()
