"""
ssd_d2.tools.convert on lufficc/SSD's and ssd.pytorch's files and the ImageNet VGG16: tensors
land in place (checked one by one and through the network), and files that do not fit fail
listing the keys that do not.
"""

import argparse

import pytest
import torch
from torchvision.models import resnet18, vgg16

from detectron2.modeling import build_model

from ssd_d2.convert import ConversionError
from ssd_d2.tools.convert import convert, main, read_state_dict, save_checkpoint

from ..conftest import load_config
from .peers import (
    AMDEGROOT_NAMES,
    LUFFICC_NAMES,
    PUBLISHED_EXTRAS,
    PUBLISHED_HEAD,
    PUBLISHED_VGG_CONVS,
    assert_loads_cleanly,
    load_checkpoint,
    lufficc_mobilenet_v2_ssdlite_shapes,
    published_forward,
    published_state_dict,
)

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
    assert list(read_state_dict(path)) == ["vgg.0.weight"]

    # Other objects need torch.load(weights_only=False), which the converter does not do.
    path = str(tmp_path / "pickled_objects.pth")
    torch.save({"model": weights, "trainer": _PickledObject()}, path)
    with pytest.raises(ConversionError, match="weights_only"):
        read_state_dict(path)


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
