"""
The peers' published files, with random weights: the VGG16 SSD layout of lufficc/SSD and
ssd.pytorch, lufficc/SSD's MobileNetV2 SSDLite, the ImageNet backbones, and torchvision's and
mmdetection's detectors, each as its own code names and shapes its tensors.
"""

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import mobilenet_v2, mobilenet_v3_large, resnet50, vgg16
from torchvision.models.detection import ssd300_vgg16, ssdlite320_mobilenet_v3_large

from detectron2.checkpoint import DetectionCheckpointer

# The published VGG16 SSD layout, as the SSD paper describes it and lufficc/SSD and
# ssd.pytorch store it: VGG16 as one flat layer list (index: in, out, kernel), pools between.
# fmt: off
PUBLISHED_VGG_CONVS = {
    0: (3, 64, 3), 2: (64, 64, 3),
    5: (64, 128, 3), 7: (128, 128, 3),
    10: (128, 256, 3), 12: (256, 256, 3), 14: (256, 256, 3),
    17: (256, 512, 3), 19: (512, 512, 3), 21: (512, 512, 3),  # conv4_x
    24: (512, 512, 3), 26: (512, 512, 3), 28: (512, 512, 3),  # conv5_x
    31: (512, 1024, 3),  # fc6: dilation 6
    33: (1024, 1024, 1),  # fc7
}
# fmt: on
PUBLISHED_VGG_POOLS = {
    4: dict(kernel_size=2, stride=2),
    9: dict(kernel_size=2, stride=2),
    16: dict(kernel_size=2, stride=2, ceil_mode=True),
    23: dict(kernel_size=2, stride=2),
    30: dict(kernel_size=3, stride=1, padding=1),
}
CONV4_3 = 21
# The extra layers as one flat conv list: (in, out, kernel, stride, padding).
# fmt: off
PUBLISHED_EXTRAS = {
    300: [
        (1024, 256, 1, 1, 0), (256, 512, 3, 2, 1),
        (512, 128, 1, 1, 0), (128, 256, 3, 2, 1),
        (256, 128, 1, 1, 0), (128, 256, 3, 1, 0),
        (256, 128, 1, 1, 0), (128, 256, 3, 1, 0),
    ],
    512: [
        (1024, 256, 1, 1, 0), (256, 512, 3, 2, 1),
        (512, 128, 1, 1, 0), (128, 256, 3, 2, 1),
        (256, 128, 1, 1, 0), (128, 256, 3, 2, 1),
        (256, 128, 1, 1, 0), (128, 256, 3, 2, 1),
        (256, 128, 1, 1, 0), (128, 256, 4, 1, 1),
    ],
}
# fmt: on
# Per level: input channels and default boxes per location.
PUBLISHED_HEAD = {
    300: ([512, 1024, 512, 256, 256, 256], [4, 6, 6, 6, 4, 4]),
    512: ([512, 1024, 512, 256, 256, 256, 256], [4, 6, 6, 6, 6, 4, 4]),
}
LUFFICC_NAMES = {
    "vgg": "backbone.vgg",
    "l2_norm": "backbone.l2_norm.weight",
    "extras": "backbone.extras",
    "cls": "box_head.predictor.cls_headers",
    "reg": "box_head.predictor.reg_headers",
}
AMDEGROOT_NAMES = {
    "vgg": "vgg",
    "l2_norm": "L2Norm.weight",
    "extras": "extras",
    "cls": "conf",
    "reg": "loc",
}


def published_state_dict(names, size, num_outputs, seed=0):
    """A random state dict with the keys and shapes of a lufficc/SSD or ssd.pytorch VGG SSD."""
    g = torch.Generator().manual_seed(seed)
    state_dict = {}

    def add_conv(prefix, c_in, c_out, kernel):
        # He-normal weights keep the activations of the deep VGG in a sane range.
        std = (2.0 / (c_in * kernel * kernel)) ** 0.5
        state_dict[f"{prefix}.weight"] = torch.randn(c_out, c_in, kernel, kernel, generator=g) * std
        state_dict[f"{prefix}.bias"] = torch.randn(c_out, generator=g) * 0.1

    for index, (c_in, c_out, kernel) in PUBLISHED_VGG_CONVS.items():
        add_conv(f"{names['vgg']}.{index}", c_in, c_out, kernel)
    for index, (c_in, c_out, kernel, _, _) in enumerate(PUBLISHED_EXTRAS[size]):
        add_conv(f"{names['extras']}.{index}", c_in, c_out, kernel)
    state_dict[names["l2_norm"]] = 20 + torch.randn(512, generator=g)
    for level, (channels, boxes) in enumerate(zip(*PUBLISHED_HEAD[size])):
        add_conv(f"{names['cls']}.{level}", channels, boxes * num_outputs, 3)
        add_conv(f"{names['reg']}.{level}", channels, boxes * 4, 3)
    return state_dict


def published_forward(state_dict, names, size, x):
    """The published SSD's network on ``x``, from the layout above: per-level head outputs."""

    def conv(prefix, x, **kwargs):
        return F.conv2d(x, state_dict[f"{prefix}.weight"], state_dict[f"{prefix}.bias"], **kwargs)

    sources = []
    for index in sorted({**PUBLISHED_VGG_CONVS, **PUBLISHED_VGG_POOLS}):
        if index in PUBLISHED_VGG_POOLS:
            x = F.max_pool2d(x, **PUBLISHED_VGG_POOLS[index])
            continue
        dilation = 6 if index == 31 else 1
        padding = 0 if PUBLISHED_VGG_CONVS[index][2] == 1 else dilation
        x = F.relu(conv(f"{names['vgg']}.{index}", x, padding=padding, dilation=dilation))
        if index == CONV4_3:
            scale = state_dict[names["l2_norm"]].view(1, -1, 1, 1)
            sources.append(F.normalize(x, dim=1) * scale)
    sources.append(x)  # fc7
    for index, (_, _, _, stride, padding) in enumerate(PUBLISHED_EXTRAS[size]):
        x = F.relu(conv(f"{names['extras']}.{index}", x, stride=stride, padding=padding))
        if index % 2 == 1:
            sources.append(x)
    logits = [conv(f"{names['cls']}.{i}", s, padding=1) for i, s in enumerate(sources)]
    deltas = [conv(f"{names['reg']}.{i}", s, padding=1) for i, s in enumerate(sources)]
    return logits, deltas


def load_checkpoint(model, path):
    """DetectionCheckpointer(model).load(path), returning the incompatible keys it logs."""
    checkpointer = DetectionCheckpointer(model)
    logged = []
    log = checkpointer._log_incompatible_keys

    def record(incompatible):
        logged.append(incompatible)
        log(incompatible)

    checkpointer._log_incompatible_keys = record
    checkpointer.load(path)
    assert len(logged) == 1
    return logged[0]


def assert_loads_cleanly(model, path):
    incompatible = load_checkpoint(model, path)
    assert incompatible.missing_keys == []
    assert incompatible.unexpected_keys == []
    assert incompatible.incorrect_shapes == []


def _lufficc_bn(prefix, channels):
    """nn.BatchNorm2d's state dict."""
    return {
        f"{prefix}.weight": (channels,),
        f"{prefix}.bias": (channels,),
        f"{prefix}.running_mean": (channels,),
        f"{prefix}.running_var": (channels,),
        f"{prefix}.num_batches_tracked": (),
    }


def _lufficc_conv_bn_relu(prefix, cin, cout, kernel, groups=1):
    """lufficc's ConvBNReLU: (conv without bias, bn, relu6)."""
    return {f"{prefix}.0.weight": (cout, cin // groups, kernel, kernel)} | _lufficc_bn(
        f"{prefix}.1", cout
    )


def _lufficc_inverted_residual(prefix, cin, cout, expand_ratio):
    """lufficc's InvertedResidual.conv: ([pw ConvBNReLU], dw ConvBNReLU, pw-linear conv, bn)."""
    hidden = int(round(cin * expand_ratio))
    shapes, i = {}, 0
    if expand_ratio != 1:
        shapes |= _lufficc_conv_bn_relu(f"{prefix}.conv.{i}", cin, hidden, 1)
        i += 1
    shapes |= _lufficc_conv_bn_relu(f"{prefix}.conv.{i}", hidden, hidden, 3, groups=hidden)
    shapes[f"{prefix}.conv.{i + 1}.weight"] = (cout, hidden, 1, 1)
    return shapes | _lufficc_bn(f"{prefix}.conv.{i + 2}", cout)


def lufficc_mobilenet_v2_ssdlite_shapes(num_classes=21):
    """Key -> shape in lufficc/SSD's mobilenet_v2_ssd320_voc0712, as its code defines them."""
    shapes = _lufficc_conv_bn_relu("backbone.features.0", 3, 32, 3)
    cin, index = 32, 1
    for t, c, n, _ in [
        [1, 16, 1, 1],
        [6, 24, 2, 2],
        [6, 32, 3, 2],
        [6, 64, 4, 2],
        [6, 96, 3, 1],
        [6, 160, 3, 2],
        [6, 320, 1, 1],
    ]:
        for _ in range(n):
            shapes |= _lufficc_inverted_residual(f"backbone.features.{index}", cin, c, t)
            cin, index = c, index + 1
    shapes |= _lufficc_conv_bn_relu(f"backbone.features.{index}", 320, 1280, 1)
    cin = 1280
    for i, (cout, ratio) in enumerate([(512, 0.2), (256, 0.25), (256, 0.5), (64, 0.25)]):
        shapes |= _lufficc_inverted_residual(f"backbone.extras.{i}", cin, cout, ratio)
        cin = cout
    # SSDLiteBoxPredictor: SeparableConv2d.conv = (dw conv with bias, bn, relu6, 1x1 conv) on
    # every level but the last, a plain 1x1 conv.
    channels, boxes = [96, 1280, 512, 256, 256, 64], [6, 6, 6, 6, 6, 6]
    for level, (c, b) in enumerate(zip(channels, boxes)):
        for name, outputs in [("cls_headers", b * num_classes), ("reg_headers", b * 4)]:
            prefix = f"box_head.predictor.{name}.{level}"
            if level == len(channels) - 1:
                shapes[f"{prefix}.weight"] = (outputs, c, 1, 1)
                shapes[f"{prefix}.bias"] = (outputs,)
                continue
            shapes[f"{prefix}.conv.0.weight"] = (c, 1, 3, 3)
            shapes[f"{prefix}.conv.0.bias"] = (c,)
            shapes |= _lufficc_bn(f"{prefix}.conv.1", c)
            shapes[f"{prefix}.conv.3.weight"] = (outputs, c, 1, 1)
            shapes[f"{prefix}.conv.3.bias"] = (outputs,)
    return shapes


def random_like(shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        k: (
            torch.randint(0, 1000, s, generator=g)
            if k.endswith("num_batches_tracked")
            else torch.randn(s, generator=g)
        )
        for k, s in shapes.items()
    }


def _vgg16_reducedfc():
    # ssd.pytorch's file: its VGG layer list, fc6/fc7 already reduced to conv6/conv7.
    shapes = {}
    for index, (c_in, c_out, kernel) in PUBLISHED_VGG_CONVS.items():
        shapes[f"{index}.weight"] = (c_out, c_in, kernel, kernel)
        shapes[f"{index}.bias"] = (c_out,)
    return random_like(shapes)


def _torchvision_vgg16_features():
    # torchvision's vgg16_features file is a vgg16 state dict whose fc layers are NaN; its
    # 400 MB of NaN fc layers are left out here (test_convert covers them).
    features = vgg16(weights=None).features.state_dict()
    return {f"features.{k}": v for k, v in features.items()}


def _randomized(model):
    """``model`` with random norm affines and statistics (torchvision initialises them to the
    identity, under which a misplaced norm layer would go unnoticed)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(1 + 0.1 * torch.randn(m.num_features, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.num_features, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


# NVIDIA's SSD300-ResNet50: per level, input channels and default boxes per location; the
# 1x1 channels of each extra level.
NVIDIA_LEVELS = ([1024, 512, 512, 256, 256, 256], [4, 6, 6, 6, 4, 4])
NVIDIA_EXTRA_MID_CHANNELS = [256, 256, 128, 128, 128]


def nvidia_ssd300_state_dict(num_classes=81):
    """
    NVIDIA DeepLearningExamples' SSD300-ResNet50, as its code names and shapes its tensors
    (random weights, random norms): torchvision's ResNet-50 children 0, 1, 4, 5, 6 under
    ``feature_extractor.feature_extractor``, ``additional_blocks.<i>`` (1x1 conv, bn, ReLU,
    3x3 conv, bn, ReLU; no conv biases), and ``loc.<i>`` / ``conf.<i>`` 3x3 convs.
    """
    torch.manual_seed(0)
    body = _randomized(resnet50(weights=None))
    children = list(body.children())
    state_dict = {}
    for index in (0, 1, 4, 5, 6):
        for key, value in children[index].state_dict().items():
            state_dict[f"feature_extractor.feature_extractor.{index}.{key}"] = value
    channels, boxes = NVIDIA_LEVELS
    for i, mid in enumerate(NVIDIA_EXTRA_MID_CHANNELS):
        c_in, c_out = channels[i], channels[i + 1]
        block = nn.Sequential(
            nn.Conv2d(c_in, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
            nn.Conv2d(mid, c_out, 3, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
        )  # fmt: skip
        for key, value in _randomized(block).state_dict().items():
            state_dict[f"additional_blocks.{i}.{key}"] = value
    for i, (c, a) in enumerate(zip(channels, boxes)):
        for name, outputs in (("loc", 4), ("conf", num_classes)):
            conv = nn.Conv2d(c, a * outputs, 3, padding=1)
            nn.init.normal_(conv.bias)
            state_dict.update({f"{name}.{i}.{k}": v for k, v in conv.state_dict().items()})
    return state_dict


# -- mmdetection ---------------------------------------------------------------------------
# Its SSD300/SSD512 and SSDLite under its own module names (mmdet 2.14+ / 3.x: SSDVGG, SSDNeck,
# SSDHead; MobileNetV2 with mmcv's ConvModule, a conv and a norm as .conv and .bn), as its
# source defines them. Its class convs put the background after the 80 classes.
MMDET_NUM_OUTPUTS = 81


def mmdetection_ssd_state_dict(size, seed=0):
    """Random weights of mmdetection's VGG16 SSD ``size`` under its key names, and the same
    weights in the flat layout of :func:`published_forward` (LUFFICC_NAMES), which computes
    what mmdetection's network computes (its class outputs still background last)."""
    flat = published_state_dict(LUFFICC_NAMES, size, MMDET_NUM_OUTPUTS, seed)
    mmdet = {}
    for key, value in flat.items():
        parts = key.split(".")
        if key.startswith("backbone.vgg."):
            mmdet[f"backbone.features.{parts[2]}.{parts[3]}"] = value
        elif key == LUFFICC_NAMES["l2_norm"]:
            mmdet["neck.l2_norm.weight"] = value
        elif key.startswith("backbone.extras."):
            index = int(parts[2])
            mmdet[f"neck.extra_layers.{index // 2}.{index % 2}.conv.{parts[3]}"] = value
        else:  # box_head.predictor.{cls,reg}_headers.<level>.<name>
            kind = parts[2].split("_")[0]
            mmdet[f"bbox_head.{kind}_convs.{parts[3]}.0.{parts[4]}"] = value
    return mmdet, flat


class _ConvModule(torch.nn.Module):
    """mmcv's ConvModule as mmdetection's SSDLite builds it: conv (no bias), BN, ReLU6."""

    def __init__(self, c_in, c_out, kernel, stride=1, groups=1, act=True):
        super().__init__()
        self.conv = torch.nn.Conv2d(
            c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False
        )
        self.bn = torch.nn.BatchNorm2d(c_out, eps=1e-3, momentum=0.03)
        self.act = torch.nn.ReLU6() if act else torch.nn.Identity()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class _InvertedResidual(torch.nn.Module):
    def __init__(self, c_in, c_out, stride, expand_ratio):
        super().__init__()
        mid = int(round(c_in * expand_ratio))
        self.residual = stride == 1 and c_in == c_out
        if expand_ratio != 1:
            self.expand_conv = _ConvModule(c_in, mid, 1)
        self.depthwise_conv = _ConvModule(mid, mid, 3, stride, groups=mid)
        self.linear_conv = _ConvModule(mid, c_out, 1, act=False)

    def forward(self, x):
        y = self.expand_conv(x) if hasattr(self, "expand_conv") else x
        y = self.linear_conv(self.depthwise_conv(y))
        return x + y if self.residual else y


class _DepthwiseSeparable(torch.nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.depthwise_conv = _ConvModule(c_in, c_in, 3, stride, groups=c_in)
        self.pointwise_conv = _ConvModule(c_in, c_out, 1)

    def forward(self, x):
        return self.pointwise_conv(self.depthwise_conv(x))


class MMDetSSDLite(torch.nn.Module):
    """mmdetection's ssdlite_mobilenetv2 (backbone, neck, bbox_head) with its key names; its
    forward: per level, class logits (background last) and box deltas."""

    STAGES = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1]]
    STAGES += [[6, 160, 3, 2], [6, 320, 1, 1]]

    def __init__(self, num_outputs=MMDET_NUM_OUTPUTS, boxes=6):
        super().__init__()
        nn = torch.nn
        self.backbone = nn.Module()
        self.backbone.conv1 = _ConvModule(3, 32, 3, stride=2)
        c_in = 32
        for i, (t, c, n, s) in enumerate(self.STAGES):
            blocks = [
                _InvertedResidual(c_in if j == 0 else c, c, s if j == 0 else 1, t) for j in range(n)
            ]
            setattr(self.backbone, f"layer{i + 1}", nn.Sequential(*blocks))
            c_in = c
        self.backbone.conv2 = _ConvModule(320, 1280, 1)
        channels = [96, 1280, 512, 256, 256, 128]
        self.neck = nn.Module()
        self.neck.extra_layers = nn.ModuleList(
            nn.Sequential(_ConvModule(c_prev, c // 2, 1), _DepthwiseSeparable(c // 2, c, 2))
            for c_prev, c in zip(channels[1:], channels[2:])
        )
        self.bbox_head = nn.Module()
        for name, outputs in [("cls_convs", boxes * num_outputs), ("reg_convs", boxes * 4)]:
            convs = nn.ModuleList(
                nn.Sequential(_ConvModule(c, c, 3, groups=c), nn.Conv2d(c, outputs, 1))
                for c in channels
            )
            setattr(self.bbox_head, name, convs)

    def forward(self, x):
        body = self.backbone
        x = body.conv1(x)
        for i in range(1, 8):
            x = getattr(body, f"layer{i}")(x)
            if i == 5:
                features = [x]
        x = body.conv2(x)
        features.append(x)
        for layer in self.neck.extra_layers:
            x = layer(x)
            features.append(x)
        logits = [conv(f) for conv, f in zip(self.bbox_head.cls_convs, features)]
        deltas = [conv(f) for conv, f in zip(self.bbox_head.reg_convs, features)]
        return logits, deltas


def mmdetection_checkpoint(state_dict, optimizer=False):
    """The layout of mmdetection's published files: {"meta": ..., "state_dict": ...} (and the
    optimizer's state in files saved while training)."""
    meta = {
        "mmdet_version": "2.14.0",
        "CLASSES": tuple(f"class{i}" for i in range(MMDET_NUM_OUTPUTS - 1)),
        "config": "model = dict(type='SingleStageDetector')",
        "epoch": 24,
        "iter": 43992,
    }
    data = {"meta": meta, "state_dict": state_dict}
    if optimizer:
        data["optimizer"] = {"state": {}, "param_groups": [{"lr": 0.0, "params": [0, 1]}]}
    return data


FORMATS = {
    "vgg16_features-amdegroot-88682ab5.pth": (
        _torchvision_vgg16_features,
        "vgg16",
        "ssd300_coco_torchvision",
        (),
    ),
    "vgg16_reducedfc.pth": (_vgg16_reducedfc, "vgg16", "ssd300_voc", ()),
    "mobilenet_v2-b0353104.pth": (
        lambda: _randomized(mobilenet_v2(weights=None)).state_dict(),
        "mobilenet",
        "ssdlite320_mobilenet_v2_voc",
        (),
    ),
    "mobilenet_v3_large-8738ca79.pth": (
        lambda: _randomized(mobilenet_v3_large(weights=None)).state_dict(),
        "mobilenet",
        "ssdlite320_mobilenet_v3_coco_imagenet",
        (),
    ),
    "ssd300_vgg16_coco-b556d3b4.pth": (
        lambda: ssd300_vgg16(weights=None, weights_backbone=None).state_dict(),
        "torchvision",
        "ssd300_coco_torchvision",
        (),
    ),
    "ssdlite320_mobilenet_v3_large_coco-a79551df.pth": (
        lambda: _randomized(
            ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None)
        ).state_dict(),
        "torchvision",
        "ssdlite320_mobilenet_v3_coco",
        (),
    ),
    # lufficc/SSD saves {"model": state_dict, "iteration": ...}.
    "vgg_ssd300_voc0712.pth": (
        lambda: {"model": published_state_dict(LUFFICC_NAMES, 300, 21), "iteration": 120000},
        "lufficc",
        "ssd300_voc",
        (),
    ),
    "mobilenet_v2_ssd320_voc0712_v2.pth": (
        lambda: {"model": random_like(lufficc_mobilenet_v2_ssdlite_shapes())},
        "lufficc",
        "ssdlite320_mobilenet_v2_voc",
        (),
    ),
    "ssd300_coco_20210803_015428-d231a06e.pth": (
        lambda: mmdetection_checkpoint(mmdetection_ssd_state_dict(300)[0]),
        "mmdetection",
        "ssd300_coco_mmdet",
        (),
    ),
    "ssdlite_mobilenetv2_scratch_600e_coco_20210629_110627-974d9307.pth": (
        lambda: mmdetection_checkpoint(_randomized(MMDetSSDLite()).state_dict(), optimizer=True),
        "mmdetection",
        "ssdlite320_mobilenet_v2_coco_mmdet",
        (),
    ),
    "ssd300_mAP_77.43_v2.pth": (
        lambda: published_state_dict(AMDEGROOT_NAMES, 300, 21),
        "amdegroot",
        "ssd300_voc",
        (),
    ),
    "resnet50-0676ba61.pth": (
        lambda: _randomized(resnet50(weights=None)).state_dict(),
        "resnet",
        "ssd300_resnet50_coco",
        (),
    ),
    # NVIDIA's training saves {"model": ...} with the "module." of its multi-GPU wrapper.
    "nvidia_ssdpyt_amp_200703.pt": (
        lambda: {"model": {f"module.{k}": v for k, v in nvidia_ssd300_state_dict().items()}},
        "nvidia",
        "ssd300_resnet50_coco",
        (),
    ),
}
