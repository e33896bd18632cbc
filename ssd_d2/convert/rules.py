"""
Per source: renaming rules (a regular expression over a whole key, its ssd_d2 name as a
``re.Match.expand`` template or a function of the match) and the configs its files fit. The
published models share ssd_d2's conventions (RGB, the same box order and encoding), and but for
mmdetection's (background last, moved by the core) the background class first: converting them
is a renaming.
"""

from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch

# A target of None drops the tensor: a part of the source's model that SSD does not use.
Rule = Tuple[str, Union[str, Callable, None]]


def _extras(m) -> str:
    # A flat conv list (1x1, 3x3, 1x1, ...) there, one (1x1, ReLU, 3x3, ReLU) block a level here.
    return f"backbone.extras.{int(m[1]) // 2}.{2 * (int(m[1]) % 2)}.{m[2]}"


def _mobilenet_v2(m) -> str:
    # lufficc's MobileNetV2 takes its first map after features[:14]; ssd_d2 splits the same
    # blocks into features.0 (0 ... 13) and features.1 (14 ... 18), keeping each block's index.
    return f"backbone.features.{int(int(m[1]) >= 14)}.{m[1]}.{m[2]}"


def _offset(prefix: str, offset: int):
    """The name ``prefix.<the first group + offset>.<the second group>``."""
    return lambda m: f"{prefix}.{int(m[1]) + offset}.{m[2]}"


# NVIDIA's SSD300 body: torchvision's ResNet children (conv1, bn1, relu, maxpool, layer1 ...).
_NVIDIA_BODY = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3"}
# NVIDIA's extra level: (0: 1x1 conv, 1: bn, 2: ReLU, 3: 3x3 conv, 4: bn, 5: ReLU) -> two
# Detectron2 Conv2d here, each with its norm inside.
_NVIDIA_EXTRA = {"0": "0", "1": "0.norm", "3": "1", "4": "1.norm"}

_HEADS = {"cls": "cls_score", "reg": "bbox_pred"}
_TV_HEAD = [
    (r"head\.classification_head\.module_list\.(.+)", r"head.cls_score.\1"),
    (r"head\.regression_head\.module_list\.(.+)", r"head.bbox_pred.\1"),
]

# mmdetection's MobileNetV2 stages (layer1 ... layer7): the torchvision block index of each
# stage's first block. Its blocks are InvertedResidual(expand_conv, depthwise_conv, linear_conv),
# each a ConvModule (conv, bn); torchvision's are conv = ([0: 1x1 ConvBNReLU,] dw ConvBNReLU,
# 1x1 conv, bn), without the first in layer1 (expand ratio 1).
_MMDET_STAGE_STARTS = [1, 2, 4, 7, 11, 14, 17]


def _mmdet_block(m) -> str:
    block = _MMDET_STAGE_STARTS[int(m[1]) - 1] + int(m[2])
    expanded = int(m[1]) > 1
    conv, module, rest = m[3], m[4], m[5]
    if conv == "expand_conv":
        index = f"0.{int(module == 'bn')}"
    elif conv == "depthwise_conv":
        index = f"{int(expanded)}.{int(module == 'bn')}"
    else:  # linear_conv: a conv and a norm of their own there
        index = str(int(expanded) + 1 + int(module == "bn"))
    return f"backbone.features.{int(block >= 14)}.{block}.conv.{index}.{rest}"


def _mmdet_head(suffix: str) -> Callable:
    return lambda m: f"head.{_HEADS[m[1]]}.{m[2]}{suffix}.{m[3]}"


RULES: Dict[str, List[Rule]] = {
    "torchvision": [
        (r"backbone\.scale_weight", "backbone.l2_norm.weight"),
        (r"backbone\.features\.(.+)", r"backbone.vgg.\1"),
        # extra.0 holds VGG layers 23-29 (pool4 ... conv5_3), then pool5, fc6, ReLU, fc7 as
        # extra.0.7: vgg.23 ... vgg.33 here.
        (r"backbone\.extra\.0\.(\d)\.(weight|bias)", _offset("backbone.vgg", 23)),
        (r"backbone\.extra\.0\.7\.(\d+)\.(.+)", _offset("backbone.vgg", 30)),
        (r"backbone\.extra\.([1-9]\d*)\.(.+)", _offset("backbone.extras", -1)),
        *_TV_HEAD,
    ],
    # ssd_d2's MobileNetV3 SSDLite keeps torchvision's backbone nesting (features.0/1, extra).
    "torchvision_ssdlite": [(r"backbone\.((features|extra)\..+)", r"backbone.\1"), *_TV_HEAD],
    "lufficc": [
        (r"backbone\.(vgg\..+|l2_norm\.weight)", r"backbone.\1"),
        (r"backbone\.extras\.(\d+)\.(.+)", _extras),
        (r"box_head\.predictor\.(cls|reg)_headers\.(.+)", lambda m: f"head.{_HEADS[m[1]]}.{m[2]}"),
    ],
    # mobilenet_v2_ssd320_voc0712: the body nests as torchvision's MobileNetV2, which ssd_d2
    # builds. The extras are InvertedResidual blocks, conv = (0: 1x1 ConvBNReLU, 1: depthwise
    # ConvBNReLU, 2: 1x1 conv, 3: bn); ssd_d2's are (0, 1, 2: (0: 1x1 conv, 1: norm)).
    # SSDLiteBoxPredictor's levels are SeparableConv2d (0: depthwise 3x3 with bias, 1: bn,
    # 2: ReLU6, 3: 1x1) -> ssd_d2's (0: (0: depthwise, 1: norm), 1: 1x1); the last is a 1x1.
    "lufficc_ssdlite": [
        (r"backbone\.features\.(\d+)\.(.+)", _mobilenet_v2),
        (r"backbone\.extras\.(\d+)\.conv\.([01]\.[01]\..+)", r"backbone.extra.\1.\2"),
        (r"backbone\.extras\.(\d+)\.conv\.2\.weight", r"backbone.extra.\1.2.0.weight"),
        (r"backbone\.extras\.(\d+)\.conv\.3\.(.+)", r"backbone.extra.\1.2.1.\2"),
        *[
            (rf"box_head\.predictor\.(cls|reg)_headers\.(\d+){theirs}", ours)
            for theirs, ours in [
                (r"\.conv\.0\.(weight|bias)", lambda m: f"head.{_HEADS[m[1]]}.{m[2]}.0.0.{m[3]}"),
                (r"\.conv\.1\.(.+)", lambda m: f"head.{_HEADS[m[1]]}.{m[2]}.0.1.{m[3]}"),
                (r"\.conv\.3\.(weight|bias)", lambda m: f"head.{_HEADS[m[1]]}.{m[2]}.1.{m[3]}"),
                (r"\.(weight|bias)", lambda m: f"head.{_HEADS[m[1]]}.{m[2]}.{m[3]}"),
            ]
        ],
    ],
    # NVIDIA DeepLearningExamples' SSD300-ResNet50 (its checkpoints' {"model": ...}).
    "nvidia": [
        (
            r"feature_extractor\.feature_extractor\.([01456])\.(.+)",
            lambda m: f"backbone.bottom.{_NVIDIA_BODY[m[1]]}.{m[2]}",
        ),
        (
            r"additional_blocks\.(\d+)\.([0134])\.(.+)",
            lambda m: f"backbone.extras.{m[1]}.{_NVIDIA_EXTRA[m[2]]}.{m[3]}",
        ),
        (r"loc\.(\d+)\.(weight|bias)", r"head.bbox_pred.\1.\2"),
        (r"conf\.(\d+)\.(weight|bias)", r"head.cls_score.\1.\2"),
    ],
    # mmdetection 2.14+ (and 3.x): SSDVGG's layer list is lufficc's (backbone.features: conv4_3
    # = 21, fc6 = 31, fc7 = 33); SSDNeck holds the L2Norm and the extras, one (1x1, 3x3)
    # Sequential of ConvModules (.conv) a level; SSDHead a Sequential per level.
    "mmdetection": [
        (r"backbone\.features\.(\d+)\.(weight|bias)", r"backbone.vgg.\1.\2"),
        (r"neck\.l2_norm\.weight", "backbone.l2_norm.weight"),
        (
            r"neck\.extra_layers\.(\d+)\.([01])\.conv\.(weight|bias)",
            lambda m: f"backbone.extras.{m[1]}.{2 * int(m[2])}.{m[3]}",
        ),
        (r"bbox_head\.(cls|reg)_convs\.(\d+)\.0\.(weight|bias)", _mmdet_head("")),
    ],
    # ssdlite_mobilenetv2_scratch_600e_coco: MobileNetV2 (conv1, layer1 ... layer7, conv2);
    # SSDNeck's extras (0: 1x1 ConvModule, 1: DepthwiseSeparableConvModule of depthwise_conv and
    # pointwise_conv) -> ssd_d2's (0, 1, 2: (0: conv, 1: norm)); SSDHead's levels (0: depthwise
    # ConvModule, 1: 1x1 conv) -> ((0: conv, 1: norm), 1).
    "mmdetection_ssdlite": [
        (r"backbone\.conv1\.conv\.weight", "backbone.features.0.0.0.weight"),
        (r"backbone\.conv1\.bn\.(.+)", r"backbone.features.0.0.1.\1"),
        (
            r"backbone\.layer([1-7])\.(\d+)\.(expand_conv|depthwise_conv|linear_conv)\."
            r"(conv|bn)\.(.+)",
            _mmdet_block,
        ),
        (r"backbone\.conv2\.conv\.weight", "backbone.features.1.18.0.weight"),
        (r"backbone\.conv2\.bn\.(.+)", r"backbone.features.1.18.1.\1"),
        (r"neck\.extra_layers\.(\d+)\.0\.conv\.weight", r"backbone.extra.\1.0.0.weight"),
        (r"neck\.extra_layers\.(\d+)\.0\.bn\.(.+)", r"backbone.extra.\1.0.1.\2"),
        (
            r"neck\.extra_layers\.(\d+)\.1\.(depthwise|pointwise)_conv\.(conv|bn)\.(.+)",
            lambda m: f"backbone.extra.{m[1]}.{1 + (m[2] == 'pointwise')}."
            f"{int(m[3] == 'bn')}.{m[4]}",
        ),
        (r"bbox_head\.(cls|reg)_convs\.(\d+)\.0\.conv\.(weight)", _mmdet_head(".0.0")),
        (r"bbox_head\.(cls|reg)_convs\.(\d+)\.0\.bn\.(.+)", _mmdet_head(".0.1")),
        (r"bbox_head\.(cls|reg)_convs\.(\d+)\.1\.(weight|bias)", _mmdet_head(".1")),
    ],
    "amdegroot": [
        (r"vgg\.(.+)", r"backbone.vgg.\1"),
        (r"L2Norm\.weight", "backbone.l2_norm.weight"),
        (r"extras\.(\d+)\.(.+)", _extras),
        (r"conf\.(.+)", r"head.cls_score.\1"),
        (r"loc\.(.+)", r"head.bbox_pred.\1"),
    ],
    # torchvision's vgg16 (conv layers keep their index: conv1_1 = 0 ... conv5_3 = 28), or
    # ssd.pytorch's vgg16_reducedfc.pth: the layer list itself, fc6/fc7 already reduced.
    "vgg16": [(r"(?:features\.)?(\d+\.(?:weight|bias))", r"backbone.vgg.\1")],
    # torchvision's ImageNet MobileNetV2 (which lufficc/SSD starts from) and MobileNetV3-Large.
    # The latter's block 13 goes to stride 32: its 1x1 expansion ends features.0 ("c4"), as in
    # torchvision's SSDLite, its rest and blocks 14 ... 16 are features.1.
    "mobilenet_v2": [(r"features\.(\d+)\.(.+)", _mobilenet_v2)],
    # torchvision's ImageNet ResNet (NVIDIA's SSD300 starts from resnet50 IMAGENET1K_V1). SSD's
    # ResNet ends at layer3: layer4 and fc (the ImageNet classes) are left out.
    "resnet": [
        (r"(conv1|bn1|layer[123])\.(.+)", r"backbone.bottom.\1.\2"),
        (r"(layer4|fc)\..+", None),
    ],
    "mobilenet_v3_large": [
        (r"features\.(\d|1[0-2])\.(.+)", r"backbone.features.0.\1.\2"),
        (r"features\.13\.block\.0\.(.+)", r"backbone.features.0.13.\1"),
        (r"features\.13\.block\.(\d+)\.(.+)", r"backbone.features.1.0.\1.\2"),
        (r"features\.(1[4-6])\.(.+)", _offset("backbone.features.1", -13)),
    ],
}


class Source(NamedTuple):
    """What the converter knows of one source's files besides their names."""

    title: str  # its published files, in messages
    # The model zoo name of each published model, by its head (levels, class outputs with
    # background); None: the one a file without a complete head is compared with.
    configs: Dict[Optional[Tuple[int, int]], str]
    # The conv that predicts within each head level: SSDLite's is a separable Sequential.
    output_conv: str = ""
    # ImageNet backbones: the model keys they provide (the rest trains from its init).
    backbone: str = ""


_VGG = {
    None: "ssd300_voc",
    (6, 21): "ssd300_voc",
    (6, 81): "ssd300_coco",
    (7, 21): "ssd512_voc",
    (7, 81): "ssd512_coco",
}
_V2 = "ssdlite320_mobilenet_v2_voc"
_V3 = "ssdlite320_mobilenet_v3_coco"
_MMDET_VGG = "ssd300_coco_mmdet"
_MMDET_V2 = "ssdlite320_mobilenet_v2_coco_mmdet"
SPECS: Dict[str, Source] = {
    # torchvision's COCO SSD300 has its own config: its default boxes follow its own rules.
    "torchvision": Source(
        "torchvision's SSD300",
        {**_VGG, None: "ssd300_coco_torchvision", (6, 81): "ssd300_coco_torchvision"},
    ),
    "torchvision_ssdlite": Source(
        "torchvision's SSDLite320 MobileNetV3", {None: _V3, (6, 81): _V3}, ".1"
    ),
    "lufficc": Source("lufficc/SSD's vgg_ssd300/512 (VOC, COCO)", _VGG),
    "lufficc_ssdlite": Source(
        "lufficc/SSD's mobilenet_v2_ssd320_voc0712", {None: _V2, (6, 21): _V2}, ".1"
    ),
    "amdegroot": Source("ssd.pytorch's ssd300_mAP_77.43_v2.pth", _VGG),
    "nvidia": Source(
        "NVIDIA DeepLearningExamples' SSD300-ResNet50",
        {None: "ssd300_resnet50_coco", (6, 81): "ssd300_resnet50_coco"},
    ),
    "resnet": Source(
        "an ImageNet ResNet (torchvision)", {None: "ssd300_resnet50_coco"}, "", "backbone.bottom."
    ),
    # mmdetection's own default boxes and input normalisation: configs of their own.
    "mmdetection": Source(
        "mmdetection's SSD300/SSD512 (COCO)",
        {None: _MMDET_VGG, (6, 81): _MMDET_VGG, (7, 81): "ssd512_coco_mmdet"},
    ),
    "mmdetection_ssdlite": Source(
        "mmdetection's SSDLite MobileNetV2 (COCO)", {None: _MMDET_V2, (6, 81): _MMDET_V2}, ".1"
    ),
    "vgg16": Source("an ImageNet VGG16", {None: "ssd300_voc"}, "", "backbone.vgg."),
    "mobilenet_v2": Source("an ImageNet MobileNetV2", {None: _V2}, "", "backbone.features."),
    "mobilenet_v3_large": Source(
        "an ImageNet MobileNetV3", {None: _V3 + "_imagenet"}, "", "backbone.features."
    ),
}


def variant(source: str, keys: Sequence[str]) -> str:
    """The key of :data:`SPECS` for a file of ``source``: which of its architectures it is."""
    if source == "mobilenet":  # MobileNetV3's inverted residuals are "block", V2's "conv"
        return "mobilenet_v3_large" if any(".block." in k for k in keys) else "mobilenet_v2"
    # A MobileNet body: its first block is a (conv, norm, activation) Sequential.
    marker = {
        "torchvision": "backbone.features.0.0.",
        "lufficc": "backbone.features.",
        "mmdetection": "backbone.conv1.",
    }
    if source in marker and any(k.startswith(marker[source]) for k in keys):
        return source + "_ssdlite"
    return source


CONV6_7 = [f"backbone.vgg.{i}.{n}" for i in (31, 33) for n in ("weight", "bias")]


def reduce_fc(classifier: Dict[str, torch.Tensor], result) -> None:
    """
    torchvision vgg16's fc6 and fc7 as SSD's conv6 (3x3, dilation 6) and conv7 (1x1), 1024
    channels each, subsampled as the SSD paper does (section 3, "Base network").
    """
    if classifier.pop("classifier.6.weight", None) is not None:
        classifier.pop("classifier.6.bias", None)
        result.notes.append("dropped classifier.6 (fc8, the ImageNet classes): SSD does not use it")
    names = ["classifier.0.weight", "classifier.0.bias", "classifier.3.weight", "classifier.3.bias"]
    fc = {k: classifier.pop(k) for k in names if k in classifier}
    result.unmatched.update(classifier)
    shapes = [(4096, 25088), (4096,), (4096, 4096), (4096,)]
    if [tuple(fc[k].shape) if k in fc else None for k in names] != shapes:
        result.unmatched.update(fc)
        return
    w6, b6, w7, b7 = fc.values()
    if not all(torch.isfinite(v).all() for v in fc.values()):
        result.notes.append(
            "fc6/fc7 are not finite (torchvision's IMAGENET1K_FEATURES weights have no fc "
            "layers): backbone.vgg.31/33 stay at their initialisation; ssd.pytorch's "
            "vgg16_reducedfc.pth has them"
        )
        return
    # fc6 reads pool5's 7x7x512 map: keep every 4th output and kernel taps 0, 3 and 6 of 7 per
    # axis, a 3x3 kernel with dilation 3 on the stride-2 pool5 map, which is dilation 6 now
    # that pool5 has stride 1. fc7: every 4th output and every 4th input (fc6's kept outputs).
    w6, w7 = w6.reshape(4096, 512, 7, 7)[::4, :, ::3, ::3], w7[::4, ::4].reshape(1024, 1024, 1, 1)
    for name, value, ours in zip(names, [w6, b6[::4], w7, b7[::4]], CONV6_7):
        result.state_dict[ours], result.origins[ours] = value, name
    result.notes.append(
        "fc6 4096x25088 -> conv6 1024x512x3x3, fc7 4096x4096 -> conv7 1024x1024x1x1"
    )


def nvidia_head_channels(result) -> None:
    """
    NVIDIA's head convs order their outputs value-major (all default boxes' x, then all their
    y, ...; all boxes' class 0 scores, then class 1 ...: it views them as (4, A * H * W) and
    (classes, A * H * W)); ssd_d2's, like the other peers', box-major (box 0's 4 values, ...).
    """
    level = 0
    while f"head.bbox_pred.{level}.weight" in result.state_dict:
        boxes = result.state_dict[f"head.bbox_pred.{level}.weight"].shape[0] // 4
        for conv in ("bbox_pred", "cls_score"):
            for name in ("weight", "bias"):
                key = f"head.{conv}.{level}.{name}"
                if key in result.state_dict:
                    value = result.state_dict[key]
                    per_box = value.reshape(-1, boxes, *value.shape[1:]).transpose(0, 1)
                    result.state_dict[key] = per_box.reshape(value.shape)
        level += 1
    if level:
        result.notes.append("head outputs: NVIDIA's value-major order -> per default box")
