"""
ssd_d2.tools.convert: published SSD weights become checkpoints that DetectionCheckpointer
loads by name, and converted torchvision SSD300 / SSDLite320 models detect what torchvision's
detect.
"""

import argparse
import copy
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torchvision.models import resnet18, vgg16
from torchvision.models.detection import ssd300_vgg16, ssdlite320_mobilenet_v3_large

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from ssd_d2.export import matched_differences
from ssd_d2.tools.convert import (
    ConversionError,
    coco_category_ids,
    convert,
    load_state_dict,
    main,
    save_checkpoint,
)

from .conftest import load_config

IMAGE_SIZES = [(300, 300), (480, 640), (375, 500), (200, 333), (512, 512)]

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


def test_help_shows_examples():
    result = subprocess.run(
        [sys.executable, "-m", "ssd_d2.tools.convert", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    for text in ["--source", "torchvision,lufficc,amdegroot,vgg16", "--config-file", "examples"]:
        assert text in result.stdout


# ---------------------------------------------------------------------------------------
# torchvision ssd300_vgg16: the converted model detects what torchvision's detects.


def _trained_like_torchvision_ssd():
    """
    A random torchvision SSD300 (91 COCO category ids) whose outputs look like a trained
    model's: random biases, class logits of a moderate spread, a background logit that leaves
    a few dozen detections per image, and the 10 unused COCO ids never predicted (training
    never makes them a target; the converter drops them).
    """
    torch.manual_seed(0)
    model = ssd300_vgg16(weights=None, weights_backbone=None).eval()
    g = torch.Generator().manual_seed(0)
    unused = [i for i in range(1, 91) if i not in coco_category_ids()]
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.bias.copy_(torch.randn(module.bias.shape, generator=g) * 0.1)
        image = torch.randint(0, 256, (3, 300, 300), generator=g).float() / 255
        features = list(model.backbone(model.transform([image])[0].tensors).values())
        for conv, feature in zip(model.head.classification_head.module_list, features):
            # Same logit spread (std 2) on every level.
            conv.weight.mul_(2.0 / F.conv2d(feature, conv.weight, padding=1).std())
            weight = conv.weight.view(-1, 91, *conv.weight.shape[1:])
            bias = conv.bias.view(-1, 91)
            bias[:, 0] += 14.0
            weight[:, unused] = 0.0
            bias[:, unused] = -30.0
        for conv in model.head.regression_head.module_list:
            conv.weight.mul_(0.3)
    # torchvision's mean is (0.48235, 0.45882, 0.40784) * 255 = ssd_d2's (123, 117, 104) up to
    # 1e-3 pixel values; use the same mean so that the test measures the conversion alone.
    model.transform.image_mean = [123.0 / 255, 117.0 / 255, 104.0 / 255]
    return model


@pytest.fixture(scope="module")
def torchvision_converted(tmp_path_factory):
    """(torchvision model, path of its converted checkpoint, Conversion)."""
    directory = tmp_path_factory.mktemp("torchvision")
    model = _trained_like_torchvision_ssd()
    source = str(directory / "ssd300_vgg16_coco.pth")
    # A checkpoint dict around the state dict, as training scripts save it.
    torch.save({"model": model.state_dict(), "epoch": 3}, source)
    output = str(directory / "ssd300_coco_torchvision.pth")
    conversion = main(["--source", "torchvision", source, output])
    return model, output, conversion


def _compare_with_torchvision(ours, theirs, seed):
    """
    Run both models on random uint8 RGB images of several sizes (ssd_d2 takes them in 0-255,
    torchvision in 0-1); return the detections per image and the largest box and score
    differences over all matched detections.
    """
    # ssd_d2 computes channels-last; so does torchvision's model once its weights are. In the
    # default layout torchvision's convolutions round differently (scores differ by up to
    # ~1e-5 for SSD300 and a few 1e-5 for this random MobileNet).
    theirs.to(memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(seed)
    images = [
        torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8) for h, w in IMAGE_SIZES
    ]
    with torch.no_grad():
        inputs = [{"image": x, "height": x.shape[1], "width": x.shape[2]} for x in images]
        our_outputs = ours(inputs)
        their_outputs = theirs([x.float() / 255 for x in images])

    coco_ids = torch.tensor(coco_category_ids())
    max_box, max_score, counts = 0.0, 0.0, []
    for mine, expected in zip(our_outputs, their_outputs):
        instances = mine["instances"]
        counts.append(len(instances))
        # ssd_d2 would drop boxes that are empty in the output image (detector_postprocess);
        # torchvision keeps them. Equal counts: there were none.
        assert len(instances) == len(expected["scores"])
        mine = (instances.pred_boxes.tensor, instances.scores, coco_ids[instances.pred_classes])
        expected = (expected["boxes"], expected["scores"], expected["labels"])
        # One-to-one pairs within each class; a detection without a partner raises.
        box, score = matched_differences(expected, mine)
        max_box, max_score = max(max_box, box), max(max_score, score)
    print(
        f"detections per image {counts}, max |box| diff {max_box:.2e} px, "
        f"max |score| diff {max_score:.2e}"
    )
    return counts, max_box, max_score


def test_torchvision_ssd300_detections_equal(torchvision_converted):
    theirs, path, conversion = torchvision_converted
    assert conversion.config_file.endswith("ssd300_coco_torchvision.yaml")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    assert set(checkpoint) == {"model", "__author__", "matching_heuristics"}
    assert checkpoint["matching_heuristics"] is False

    # torchvision's inference settings and rules (ssd300_coco has lufficc/SSD's).
    # fmt: off
    cfg = load_config(
        "ssd300_coco_torchvision",
        "MODEL.SSD.SCORE_THRESH_TEST", "0.01",
        "MODEL.SSD.NMS_THRESH_TEST", "0.45",
        "MODEL.SSD.TOPK_CANDIDATES_TEST", "400",
        "TEST.DETECTIONS_PER_IMAGE", "200",
        "MODEL.SSD.DEFAULT_BOXES.CLAMP", "size",
        "MODEL.SSD.CLIP_BOXES_BEFORE_NMS", "True",
    )
    # fmt: on
    ours = build_model(cfg).eval()
    assert_loads_cleanly(ours, path)

    counts, max_box, max_score = _compare_with_torchvision(ours, theirs, seed=5)
    assert all(10 <= n < 200 for n in counts), counts  # a moderate number, below the cap
    assert max_box <= 1e-3
    assert max_score <= 1e-5


def _random_torchvision_ssdlite(spread=2.5, background=16.0):
    """
    A random torchvision SSDLite320 MobileNetV3 (91 COCO category ids) that behaves like a
    trained one: He-normal convs (torchvision's N(0, 0.03) init gives nearly constant maps),
    norm statistics measured on random images (so activations neither vanish nor explode),
    random norm affines, and a background logit that leaves a few dozen detections per image.
    """
    torch.manual_seed(0)
    model = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None)
    g = torch.Generator().manual_seed(0)
    unused = [i for i in range(1, 91) if i not in coco_category_ids()]
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                std = (2.0 / module.weight[0].numel()) ** 0.5
                module.weight.copy_(torch.randn(module.weight.shape, generator=g) * std)
                if module.bias is not None:
                    module.bias.copy_(torch.randn(module.bias.shape, generator=g) * 0.1)
        for norm in norms:
            norm.weight.copy_(1 + torch.randn(norm.num_features, generator=g) * 0.1)
            norm.bias.copy_(torch.randn(norm.num_features, generator=g) * 0.1)
            norm.momentum = None  # running statistics = the average over the batches seen
        images = [torch.randint(0, 256, (3, 320, 320), generator=g).float() / 255 for _ in range(4)]
        batch = model.transform(images)[0].tensors
        model.train()
        model.head(list(model.backbone(batch).values()))
        model.eval()
        for norm in norms:
            # Four images say little about the variance of the 1x1 and 2x2 maps: a floor
            # keeps those layers from amplifying rounding errors.
            norm.running_var.clamp_(min=0.1)

        features = list(model.backbone(batch[:1]).values())
        for predictor, feature in zip(model.head.classification_head.module_list, features):
            conv = predictor[1]  # after the depthwise conv, norm and ReLU6
            conv.weight.mul_(spread / F.conv2d(predictor[0](feature), conv.weight).std())
            weight = conv.weight.view(-1, 91, *conv.weight.shape[1:])
            bias = conv.bias.view(-1, 91)
            bias[:, 0] += background
            weight[:, unused] = 0.0
            bias[:, unused] = -30.0
        for predictor in model.head.regression_head.module_list:
            predictor[1].weight.mul_(0.2)
    return model


def test_torchvision_ssdlite_detections_equal(tmp_path):
    theirs = _random_torchvision_ssdlite().to(memory_format=torch.channels_last)
    source, output = str(tmp_path / "ssdlite.pth"), str(tmp_path / "ssdlite_d2.pth")
    torch.save(theirs.state_dict(), source)
    conversion = main(["--source", "torchvision", source, output])
    assert conversion.config_file.endswith("ssdlite320_mobilenet_v3_coco.yaml")
    # torchvision's COCO SSDLite has the reduced tail; the config's ImageNet start does not.
    assert conversion.config_opts == ["MODEL.MOBILENET.REDUCED_TAIL", "True"]
    ours = build_model(load_config("ssdlite320_mobilenet_v3_coco", *conversion.config_opts))
    ours.eval()
    assert_loads_cleanly(ours, output)

    # The same normalised input gives the same features, and the same head outputs once
    # torchvision's category ids are re-indexed.
    g = torch.Generator().manual_seed(7)
    image = torch.randint(0, 256, (3, 320, 320), generator=g).float() / 255
    keep = torch.tensor([0] + coco_category_ids())
    with torch.no_grad():
        batch = theirs.transform([image])[0].tensors
        their_features = list(theirs.backbone(batch).values())
        our_features = ours.backbone(batch)
        our_features = [our_features[f] for f in ours.head_in_features]
        our_logits, our_deltas = ours.head(our_features)
        for level, (mine, expected) in enumerate(zip(our_features, their_features)):
            torch.testing.assert_close(mine, expected, rtol=0, atol=0)
            logits = theirs.head.classification_head.module_list[level](expected)
            n, _, h, w = logits.shape
            logits = logits.view(n, -1, 91, h, w)[:, :, keep].reshape(n, -1, h, w)
            deltas = theirs.head.regression_head.module_list[level](expected)
            torch.testing.assert_close(our_logits[level], logits, rtol=1e-6, atol=1e-5)
            torch.testing.assert_close(our_deltas[level], deltas, rtol=1e-6, atol=1e-5)

    # End to end, with the config's inference settings (torchvision's 0.001 / 0.55 / 300 / 300).
    counts, max_box, max_score = _compare_with_torchvision(ours, theirs, seed=6)
    assert all(10 <= n < 300 for n in counts), counts
    assert max_box <= 1e-3
    assert max_score <= 1e-5


def test_converted_coco_checkpoint_fine_tunes_on_voc(torchvision_converted):
    """81-class logits do not fit a 20-class model: the checkpointer skips them, loads the rest."""
    _, path, _ = torchvision_converted
    model = build_model(load_config("ssd300_voc"))
    initial_logits = copy.deepcopy(model.head.cls_score.state_dict())
    incompatible = load_checkpoint(model, path)

    cls_keys = {f"head.cls_score.{level}.{n}" for level in range(6) for n in ("weight", "bias")}
    assert {k for k, _, _ in incompatible.incorrect_shapes} == cls_keys
    assert set(incompatible.missing_keys) == cls_keys
    assert incompatible.unexpected_keys == []
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)["model"]
    for key, value in model.state_dict().items():
        if key in cls_keys:
            continue
        assert torch.equal(value, checkpoint[key]), key
    for key, value in model.head.cls_score.state_dict().items():
        assert torch.equal(value, initial_logits[key])


# ---------------------------------------------------------------------------------------
# lufficc/SSD and ssd.pytorch: renaming, checked tensor by tensor and through the network.


@pytest.mark.parametrize(
    "source, names, size, num_outputs, config",
    [
        ("lufficc", LUFFICC_NAMES, 300, 21, "ssd300_voc"),
        ("lufficc", LUFFICC_NAMES, 512, 81, "ssd512_coco"),
        ("amdegroot", AMDEGROOT_NAMES, 300, 21, "ssd300_voc"),
    ],
)
def test_published_checkpoint_lands_in_place(tmp_path, source, names, size, num_outputs, config):
    state_dict = published_state_dict(names, size, num_outputs)
    path = str(tmp_path / "published.pth")
    torch.save({"model": state_dict} if source == "lufficc" else state_dict, path)
    output = str(tmp_path / "converted.pth")
    conversion = main(["--source", source, path, output])
    assert conversion.config_file.endswith(f"{config}.yaml")

    model = build_model(load_config(config))
    assert_loads_cleanly(model, output)
    ours = model.state_dict()
    last_extra = len(PUBLISHED_EXTRAS[size]) - 1
    expected_places = {
        f"{names['vgg']}.0.weight": "backbone.vgg.0.weight",
        f"{names['vgg']}.21.bias": "backbone.vgg.21.bias",
        f"{names['vgg']}.31.weight": "backbone.vgg.31.weight",
        f"{names['vgg']}.33.bias": "backbone.vgg.33.bias",
        names["l2_norm"]: "backbone.l2_norm.weight",
        f"{names['extras']}.0.weight": "backbone.extras.0.0.weight",
        f"{names['extras']}.1.weight": "backbone.extras.0.2.weight",
        f"{names['extras']}.6.bias": "backbone.extras.3.0.bias",
        f"{names['extras']}.{last_extra}.weight": f"backbone.extras.{last_extra // 2}.2.weight",
        f"{names['cls']}.0.weight": "head.cls_score.0.weight",
        f"{names['cls']}.5.weight": "head.cls_score.5.weight",
        f"{names['reg']}.1.bias": "head.bbox_pred.1.bias",
        f"{names['reg']}.{len(PUBLISHED_HEAD[size][0]) - 1}.weight": (
            f"head.bbox_pred.{len(PUBLISHED_HEAD[size][0]) - 1}.weight"
        ),
    }
    for theirs, mine in expected_places.items():
        assert torch.equal(ours[mine], state_dict[theirs]), (theirs, mine)

    if size == 300 and source == "lufficc":
        # The whole network: our backbone and head compute what the published layout does.
        x = torch.randn(1, 3, 300, 300, generator=torch.Generator().manual_seed(1)) * 60
        with torch.no_grad():
            features = model.backbone(x)
            our_logits, our_deltas = model.head([features[f] for f in model.head_in_features])
            # In ssd_d2's channels-last layout, so that both convolutions round alike.
            x = x.contiguous(memory_format=torch.channels_last)
            their_logits, their_deltas = published_forward(state_dict, names, size, x)
        for mine, theirs in zip(our_logits + our_deltas, their_logits + their_deltas):
            torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-3)


def test_other_class_count_needs_config(tmp_path):
    state_dict = published_state_dict(LUFFICC_NAMES, 300, num_outputs=6)
    with pytest.raises(ConversionError, match="5 classes.*--config-file"):
        convert("lufficc", state_dict)
    path, output = str(tmp_path / "five.pth"), str(tmp_path / "five_d2.pth")
    torch.save(state_dict, path)
    args = ["--source", "lufficc", "--config-file", "ssd300_voc", path, output]
    main(args + ["MODEL.SSD.NUM_CLASSES", "5"])
    model = build_model(load_config("ssd300_voc", "MODEL.SSD.NUM_CLASSES", "5"))
    assert_loads_cleanly(model, output)


# ---------------------------------------------------------------------------------------
# VGG16 ImageNet initialisation.


@pytest.fixture(scope="module")
def imagenet_vgg16():
    torch.manual_seed(0)
    state_dict = vgg16(weights=None).state_dict()
    with torch.no_grad():
        for key, value in state_dict.items():
            if key.endswith("bias"):
                value.normal_()
    return state_dict


def test_vgg16_fc_layers_subsampled(tmp_path, imagenet_vgg16):
    theirs = imagenet_vgg16
    conversion = convert("vgg16", theirs)
    ours = conversion.state_dict
    layers = PUBLISHED_VGG_CONVS
    assert set(ours) == {f"backbone.vgg.{i}.{n}" for i in layers for n in ("weight", "bias")}
    for index in [i for i in layers if i <= 28]:  # conv1_1 ... conv5_3
        for name in ("weight", "bias"):
            expected = theirs[f"features.{index}.{name}"]
            assert torch.equal(ours[f"backbone.vgg.{index}.{name}"], expected)

    # conv6[o, c, i, j] = fc6[4 o, (c, 3 i, 3 j) of the 512x7x7 input]; conv7[o, c] = fc7[4 o, 4 c].
    fc6, fc7 = theirs["classifier.0.weight"], theirs["classifier.3.weight"]
    conv6, conv7 = ours["backbone.vgg.31.weight"], ours["backbone.vgg.33.weight"]
    assert conv6.shape == (1024, 512, 3, 3) and conv7.shape == (1024, 1024, 1, 1)
    for o, c, i, j in [(0, 0, 0, 0), (1, 2, 1, 2), (1023, 511, 2, 2), (517, 33, 2, 0)]:
        assert conv6[o, c, i, j] == fc6[4 * o, c * 49 + 3 * i * 7 + 3 * j]
    for o, c in [(0, 0), (3, 1000), (1023, 1023)]:
        assert conv7[o, c, 0, 0] == fc7[4 * o, 4 * c]
    assert torch.equal(ours["backbone.vgg.31.bias"], theirs["classifier.0.bias"][::4])
    assert torch.equal(ours["backbone.vgg.33.bias"], theirs["classifier.3.bias"][::4])

    path = str(tmp_path / "vgg16_ssd.pth")
    save_checkpoint(ours, path, "test")
    model = build_model(load_config("ssd300_voc"))
    incompatible = load_checkpoint(model, path)
    expected_missing = {k for k in model.state_dict() if not k.startswith("backbone.vgg.")}
    assert any(k.startswith("head.") for k in expected_missing)
    assert any(k.startswith("backbone.extras.") for k in expected_missing)
    assert "backbone.l2_norm.weight" in expected_missing
    assert set(incompatible.missing_keys) == expected_missing
    assert incompatible.unexpected_keys == [] and incompatible.incorrect_shapes == []
    assert torch.equal(model.backbone.vgg[31].weight, conv6)


def test_vgg16_reducedfc_and_features_only(imagenet_vgg16):
    # ssd.pytorch's vgg16_reducedfc.pth: the layer list with fc6/fc7 already reduced.
    g = torch.Generator().manual_seed(2)
    reducedfc = {}
    for index, (c_in, c_out, kernel) in PUBLISHED_VGG_CONVS.items():
        reducedfc[f"{index}.weight"] = torch.randn(c_out, c_in, kernel, kernel, generator=g)
        reducedfc[f"{index}.bias"] = torch.randn(c_out, generator=g)
    ours = convert("vgg16", reducedfc).state_dict
    assert len(ours) == len(reducedfc)
    for key, value in reducedfc.items():
        assert torch.equal(ours[f"backbone.vgg.{key}"], value)

    # torchvision's IMAGENET1K_FEATURES weights have NaN fc layers: only the convs convert.
    features_only = dict(imagenet_vgg16)
    for key in ["classifier.0.weight", "classifier.3.weight"]:
        features_only[key] = torch.full_like(features_only[key], float("nan"))
    conversion = convert("vgg16", features_only)
    assert "backbone.vgg.31.weight" not in conversion.state_dict
    assert "backbone.vgg.28.weight" in conversion.state_dict
    assert "backbone.vgg.31.weight" in conversion.expected_missing
    assert any("not finite" in note for note in conversion.notes)


# ---------------------------------------------------------------------------------------
# Checkpoints that do not fit fail with the keys that do not.


def test_wrong_architecture_lists_keys(tmp_path):
    # A lufficc/SSD MobileNetV2 SSDLite checkpoint given as ssd.pytorch's.
    g = torch.Generator().manual_seed(0)
    mobilenet = {
        "backbone.features.0.0.weight": torch.randn(32, 3, 3, 3, generator=g),
        "backbone.features.0.1.weight": torch.randn(32, generator=g),
        "box_head.predictor.cls_headers.0.0.weight": torch.randn(576, 1, 3, 3, generator=g),
        "box_head.predictor.reg_headers.0.0.weight": torch.randn(576, 1, 3, 3, generator=g),
    }
    path = str(tmp_path / "mobilenet_v2_ssd320_voc0712.pth")
    torch.save({"model": mobilenet, "iteration": 120000}, path)
    with pytest.raises(SystemExit) as error:
        main(["--source", "amdegroot", path, str(tmp_path / "out.pth")])
    message = str(error.value.code)
    assert "backbone.features.0.0.weight (32, 3, 3, 3)" in message
    assert "backbone.vgg.0.weight (64, 3, 3, 3)" in message
    assert "--source lufficc" in message
    assert not (tmp_path / "out.pth").exists()

    # A ResNet classifier.
    with pytest.raises(ConversionError, match=r"conv1\.weight \(64, 3, 7, 7\)"):
        convert("lufficc", resnet18(weights=None).state_dict())


def test_wrong_shapes_list_keys():
    voc = published_state_dict(AMDEGROOT_NAMES, 300, num_outputs=21)
    with pytest.raises(ConversionError) as error:
        convert("amdegroot", voc, config_file="ssd300_coco")
    message = str(error.value)
    assert (
        "conf.0.weight -> head.cls_score.0.weight: (84, 512, 3, 3) in the checkpoint, "
        "(324, 512, 3, 3) in the model"
    ) in message

    # An ssd_d2 checkpoint needs no conversion.
    converted = convert("amdegroot", voc).state_dict
    with pytest.raises(ConversionError, match="ssd_d2's already"):
        convert("amdegroot", converted)


class _PickledObject:
    pass


def test_checkpoint_reading(tmp_path):
    # torchvision's reference scripts save their arguments with the model: readable.
    path = str(tmp_path / "reference_script.pth")
    weights = {"module.vgg.0.weight": torch.ones(2)}
    torch.save({"model": weights, "args": argparse.Namespace(lr=0.1), "epoch": 3}, path)
    assert list(load_state_dict(path)) == ["vgg.0.weight"]

    # Other objects need torch.load(weights_only=False), which the converter does not do.
    path = str(tmp_path / "pickled_objects.pth")
    torch.save({"model": weights, "trainer": _PickledObject()}, path)
    with pytest.raises(ConversionError, match="weights_only"):
        load_state_dict(path)


# ---------------------------------------------------------------------------------------
# lufficc/SSD's MobileNetV2 SSDLite320 (mobilenet_v2_ssd320_voc0712).


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


def test_lufficc_mobilenet_v2_ssdlite_lands_in_place(tmp_path):
    g = torch.Generator().manual_seed(0)
    shapes = lufficc_mobilenet_v2_ssdlite_shapes()
    state_dict = {
        k: (
            torch.randint(0, 1000, s, generator=g)
            if k.endswith("num_batches_tracked")
            else torch.randn(s, generator=g)
        )
        for k, s in shapes.items()
    }
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    params = sum(v.numel() for k, v in state_dict.items() if not k.endswith(buffers))
    assert params == 3_304_708  # lufficc's parameter count
    path = str(tmp_path / "mobilenet_v2_ssd320_voc0712.pth")
    torch.save({"model": state_dict, "iteration": 120000}, path)
    output = str(tmp_path / "converted.pth")
    conversion = main(["--source", "lufficc", path, output])
    assert conversion.config_file.endswith("ssdlite320_mobilenet_v2_voc.yaml")
    assert len(conversion.state_dict) == len(state_dict)

    model = build_model(load_config("ssdlite320_mobilenet_v2_voc"))
    assert_loads_cleanly(model, output)
    ours = model.state_dict()
    expected_places = {
        "backbone.features.0.0.weight": "backbone.features.0.0.0.weight",
        "backbone.features.0.1.running_var": "backbone.features.0.0.1.running_var",
        "backbone.features.1.conv.0.0.weight": "backbone.features.0.1.conv.0.0.weight",
        "backbone.features.13.conv.1.0.weight": "backbone.features.0.13.conv.1.0.weight",
        "backbone.features.14.conv.1.0.weight": "backbone.features.1.14.conv.1.0.weight",
        "backbone.features.17.conv.3.bias": "backbone.features.1.17.conv.3.bias",
        "backbone.features.18.0.weight": "backbone.features.1.18.0.weight",
        "backbone.extras.0.conv.0.0.weight": "backbone.extra.0.0.0.weight",
        "backbone.extras.1.conv.1.0.weight": "backbone.extra.1.1.0.weight",
        "backbone.extras.2.conv.1.1.running_mean": "backbone.extra.2.1.1.running_mean",
        "backbone.extras.3.conv.2.weight": "backbone.extra.3.2.0.weight",
        "backbone.extras.3.conv.3.bias": "backbone.extra.3.2.1.bias",
        "box_head.predictor.cls_headers.0.conv.0.weight": "head.cls_score.0.0.0.weight",
        "box_head.predictor.cls_headers.0.conv.0.bias": "head.cls_score.0.0.0.bias",
        "box_head.predictor.cls_headers.0.conv.1.weight": "head.cls_score.0.0.1.weight",
        "box_head.predictor.cls_headers.0.conv.3.weight": "head.cls_score.0.1.weight",
        "box_head.predictor.reg_headers.4.conv.3.bias": "head.bbox_pred.4.1.bias",
        "box_head.predictor.cls_headers.5.weight": "head.cls_score.5.weight",
        "box_head.predictor.reg_headers.5.bias": "head.bbox_pred.5.bias",
    }
    for theirs, mine in expected_places.items():
        assert torch.equal(ours[mine], state_dict[theirs]), (theirs, mine)
    # Background is class output 0 in both: the class outputs are not re-indexed.
    assert torch.equal(
        ours["head.cls_score.1.1.bias"], state_dict["box_head.predictor.cls_headers.1.conv.3.bias"]
    )
