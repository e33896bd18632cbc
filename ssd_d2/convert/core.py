"""The mapping core: a peer's state dict renamed by its source's rules and checked against a
model's state dict, for MODEL.WEIGHTS (:func:`convert_for_model`) and the converter command
(:mod:`ssd_d2.tools.convert`). A pure function of state dicts: it builds no model, reads no file."""

import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

from .rules import RULES, SPECS, nvidia_head_channels, reduce_fc, variant

SOURCES = (
    "torchvision",
    "lufficc",
    "amdegroot",
    "mmdetection",
    "nvidia",
    "vgg16",
    "mobilenet",
    "resnet",
)

# What a weights file may be, for the message about one that is none of these.
KNOWN_FORMATS = ("an ssd_d2 (Detectron2) checkpoint", *(spec.title for spec in SPECS.values()))
ALREADY_OURS = "Its keys are ssd_d2's already: load it with MODEL.WEIGHTS as it is."


class ConversionError(ValueError):
    """A checkpoint that does not fit the chosen source or target config."""


@dataclass
class Conversion:
    """A state dict under ssd_d2's names, where each tensor came from, and the config it fits."""

    source: str  # a key of rules.SPECS: torchvision_ssdlite, mobilenet_v2, ...
    state_dict: Dict[str, Tensor] = field(default_factory=dict)
    origins: Dict[str, str] = field(default_factory=dict)  # ssd_d2 name -> the file's name
    unmatched: Dict[str, Tensor] = field(default_factory=dict)  # what no rule names
    notes: List[str] = field(default_factory=list)  # what the converter did, for the CLI
    head: Optional[Tuple[List[int], int]] = None  # (default boxes per level, class outputs)
    config_file: str = ""
    expected_missing: List[str] = field(default_factory=list)  # left at init (ImageNet files)


def coco_category_ids() -> List[int]:
    """The 80 COCO category ids in the order of Detectron2's contiguous class ids."""
    return sorted(c["id"] for c in COCO_CATEGORIES if c["isthing"] == 1)


def recognize(keys: Sequence[str]) -> Optional[str]:
    """
    The layout of state dict keys: one of :data:`SOURCES`, "ssd_d2", or None (unknown). Some
    peers' backbone names are ssd_d2's too, so their own names are looked at first.
    """
    keys = set(keys)
    if "backbone.scale_weight" in keys or any(k.startswith("head.classification_") for k in keys):
        return "torchvision"
    if any(k.startswith("box_head.predictor.") for k in keys):
        return "lufficc"
    if any(
        k.startswith(("feature_extractor.feature_extractor.", "additional_blocks.")) for k in keys
    ):
        return "nvidia"
    if any(k.startswith(("bbox_head.cls_convs.", "neck.extra_layers.")) for k in keys):
        return "mmdetection"
    if "L2Norm.weight" in keys or any(k.startswith(("conf.", "loc.")) for k in keys):
        return "amdegroot"
    # MobileNet's first block is a (conv, norm, activation) Sequential; VGG16's a conv.
    if "features.0.0.weight" in keys:
        return "mobilenet"
    if "conv1.weight" in keys and "layer1.0.conv1.weight" in keys:
        return "resnet"
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
        "(ssd_d2.convert's rule tables show the ones it needs)."
    )


def rename(source: str, state_dict: Dict[str, Tensor]) -> Conversion:
    """``state_dict``, a file of ``source`` (one of :data:`SOURCES`), under ssd_d2's names."""
    result = Conversion(variant(source, list(state_dict)))
    spec = SPECS[result.source]
    # An ImageNet classifier's classifier: SSD uses none of it but VGG16's fc6/fc7.
    classifier = {k: v for k, v in state_dict.items() if k.startswith("classifier.")}
    dropped: List[str] = []
    for key, value in state_dict.items():
        if key in classifier:
            continue
        for pattern, name in RULES[result.source]:
            match = re.fullmatch(pattern, key)
            if match and name is None:
                dropped.append(key)
                break
            if match:
                name = match.expand(name) if isinstance(name, str) else name(match)
                result.state_dict[name], result.origins[name] = value, key
                break
        else:
            result.unmatched[key] = value
    if dropped:
        parts = sorted({k.split(".")[0] for k in dropped})
        result.notes.append(f"dropped {', '.join(parts)} ({len(dropped)} tensors): SSD uses none")
    if result.source == "nvidia":
        nvidia_head_channels(result)
    if result.source == "vgg16":
        reduce_fc(classifier, result)
        result.notes.append(
            "input: RGB 0-255 minus the mean, as this Caffe-style VGG16 expects; to train from "
            "torchvision's IMAGENET1K_V1 weights, set MODEL.PIXEL_STD [58.395, 57.12, 57.375]"
        )
    elif spec.backbone and classifier:
        result.notes.append("dropped the classifier (the ImageNet classes): SSDLite uses none")
    else:
        result.unmatched.update(classifier)
    result.head = _head_layout(result.state_dict, spec.output_conv)
    if result.head is not None:
        boxes, outputs = result.head
        result.notes.append(f"head: {boxes} default boxes per location, {outputs} class outputs")
        if result.source.startswith("torchvision") and outputs == 91:
            # torchvision predicts COCO category ids (1..90, 10 of them unused); Detectron2
            # numbers the 80 classes contiguously in category id order.
            _keep_class_outputs(result, spec.output_conv, [0] + coco_category_ids())
            result.notes.append("class outputs: 91 COCO category ids -> background + 80 classes")
        elif result.source.startswith("mmdetection"):
            # mmdetection's softmax puts the background after the classes (its label
            # num_classes); its classes are COCO's 80 in category id order, as Detectron2's.
            _keep_class_outputs(result, spec.output_conv, [outputs - 1, *range(outputs - 1)])
            result.notes.append("class outputs: background moved from last to first")
    return result


def _head_layout(state_dict: Dict[str, Tensor], output_conv: str):
    """(default boxes per location of each level, class outputs per box with background), read
    from the head's output convs (``head.cls_score.<level>[<output_conv>]``); None: no head."""
    boxes, outputs = [], set()
    while True:
        level = len(boxes)
        conv = output_conv if f"head.cls_score.{level}{output_conv}.weight" in state_dict else ""
        cls_weight = state_dict.get(f"head.cls_score.{level}{conv}.weight")
        box_weight = state_dict.get(f"head.bbox_pred.{level}{conv}.weight")
        if cls_weight is None or box_weight is None:
            break
        n = box_weight.shape[0] // 4
        if n == 0 or box_weight.shape[0] % 4 or cls_weight.shape[0] % n:
            raise ConversionError(
                f"Head level {level}: {cls_weight.shape[0]} class outputs and "
                f"{box_weight.shape[0]} box outputs are not (boxes x classes, boxes x 4)."
            )
        boxes.append(n)
        outputs.add(cls_weight.shape[0] // n)
    # A level without one of its convs is an incomplete head, not a shorter one: None, so that
    # the check names the missing tensors.
    cls_levels = {k.split(".")[2] for k in state_dict if k.startswith("head.cls_score.")}
    if not boxes or cls_levels != {str(level) for level in range(len(boxes))}:
        return None
    if len(outputs) > 1:
        raise ConversionError(f"The head levels predict different class counts: {outputs}.")
    return boxes, outputs.pop()


def _keep_class_outputs(result: Conversion, output_conv: str, keep: List[int]) -> None:
    """Keep the class outputs ``keep`` (source indices, in order) of every default box."""
    boxes_per_level, outputs = result.head
    for level, boxes in enumerate(boxes_per_level):
        for name in ("weight", "bias"):
            key = f"head.cls_score.{level}{output_conv}.{name}"
            value = result.state_dict[key]
            kept = value.reshape(boxes, outputs, *value.shape[1:])[:, torch.tensor(keep)]
            result.state_dict[key] = kept.reshape(-1, *value.shape[1:])
    result.head = boxes_per_level, len(keep)


def check_fits(
    result: Conversion, model: Dict[str, Tensor], target: str, origin: Optional[str] = None
) -> None:
    """
    Raise a ConversionError listing what does not fit unless ``result`` loads into ``model``
    key by key, but for its expected_missing keys. ``origin``: the file MODEL.WEIGHTS names;
    the checkpointer reports missing keys (and a detector's other shapes) itself.
    """
    spec, ours = SPECS[result.source], result.state_dict
    unexpected = [f"{k} {tuple(v.shape)}" for k, v in result.unmatched.items()] + [
        f"{result.origins[k]} -> {k} {tuple(v.shape)}" for k, v in ours.items() if k not in model
    ]
    expected = set(ours) | set(result.expected_missing)
    missing = (
        [] if origin else [f"{k} {tuple(v.shape)}" for k, v in model.items() if k not in expected]
    )
    wrong_shapes = [
        f"{result.origins[k]} -> {k}: {tuple(v.shape)} in the checkpoint, "
        f"{tuple(model[k].shape)} in the model"
        for k, v in ours.items()
        if (not origin or spec.backbone) and k in model and v.shape != model[k].shape
    ]
    if not (unexpected or missing or wrong_shapes):
        return
    option = "" if origin else f", --source {result.source.split('_')[0]}"
    lines = [f"{origin or 'The checkpoint'} ({spec.title} layout{option}) does not fit {target}:"]
    for problems, what in [
        (unexpected, "checkpoint tensors with no place in that layout"),
        (missing, "model tensors the checkpoint does not provide"),
        (wrong_shapes, "tensors whose shapes differ"),
    ]:
        if problems:
            lines.append(f"  {len(problems)} {what}, e.g.:")
            lines += [f"    {p}" for p in problems[:5]]
    names = list(result.origins.values()) + list(result.unmatched)
    guess = recognize(names)
    if guess == "ssd_d2" and origin is None:
        lines.append(ALREADY_OURS)
    elif guess not in (None, "ssd_d2") and not result.source.startswith(guess):
        title = SPECS[variant(guess, names)].title
        lines.append(f"Its keys look like those of {title}: --source {guess}?")
    elif result.source == "mobilenet_v3_large" and wrong_shapes:
        lines.append(
            "ImageNet MobileNetV3-Large weights have the full tail (MobileNetV3 paper, table "
            "6): set MODEL.MOBILENET.REDUCED_TAIL False."
        )
    elif guess is not None and unexpected:
        lines.append(
            f"Its keys are those of {spec.title}, but of an architecture ssd_d2 does not have, or "
            "of another config's (VGG16 SSD300/SSD512, torchvision's SSDLite320 MobileNetV3, "
            "lufficc/SSD's and mmdetection's SSDLite320 MobileNetV2 are converted)."
        )
    elif wrong_shapes and not (unexpected or missing):
        lines.append(
            "Its layers match but not their sizes: another class count or default-box set "
            "needs its own --config-file (and options such as MODEL.SSD.NUM_CLASSES N)."
        )
    raise ConversionError("\n".join(lines))


def convert_for_model(
    state_dict: Dict[str, Tensor], model_state_dict: Dict[str, Tensor], origin: str
) -> Tuple[Dict[str, Tensor], str]:
    """
    ``state_dict``, in any layout of :data:`KNOWN_FORMATS`, under the names of the model's,
    and the source it was recognised as: how MODEL.WEIGHTS takes a peer's file (``origin``).
    Keys it lacks and, for detectors, other shapes are left to the checkpointer to report.
    """
    source = recognize(state_dict)
    if source is None:
        raise ConversionError(unknown_format_message(origin, state_dict))
    if source == "ssd_d2":
        return state_dict, source
    result = rename(source, state_dict)
    check_fits(result, model_state_dict, target="this config's model", origin=origin)
    return result.state_dict, result.source
