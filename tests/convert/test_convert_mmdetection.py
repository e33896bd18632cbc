"""
mmdetection's SSD300/SSD512 and SSDLite MobileNetV2 (checkpoints built with its key names and
shapes, random weights): recognised, every key mapped, the background class moved from last to
first, the converted network computing what mmdetection's computes, its default boxes, its
checkpoint layout, and files of another architecture refused.
"""

import math

import numpy as np
import pytest
import torch

from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model

from ssd_d2 import SSDTrainer
from ssd_d2.convert import ConversionError, recognize
from ssd_d2.engine import SSDCheckpointer, SSDPredictor
from ssd_d2.modeling import SSDDefaultBoxGenerator
from ssd_d2.tools.convert import convert, main

from ..conftest import load_config
from .conftest import assert_loaded
from .peers import (
    LUFFICC_NAMES,
    MMDET_NUM_OUTPUTS,
    MMDetSSDLite,
    _randomized,
    assert_loads_cleanly,
    mmdetection_checkpoint,
    mmdetection_ssd_state_dict,
    published_forward,
)

K = MMDET_NUM_OUTPUTS - 1  # mmdetection's background label: the last class output
CONFIGS = {
    300: "ssd300_coco_mmdet",
    512: "ssd512_coco_mmdet",
    320: "ssdlite320_mobilenet_v2_coco_mmdet",
}


def _mmdet_state_dict(size):
    if size == 320:
        return _randomized(MMDetSSDLite()).state_dict()
    return mmdetection_ssd_state_dict(size)[0]


def _background_first(tensor, boxes):
    """(N, A * (K + 1), H, W) class outputs, background last -> first, per default box."""
    n, _, h, w = tensor.shape
    per_box = tensor.reshape(n, boxes, K + 1, h, w)
    return torch.cat([per_box[:, :, K:], per_box[:, :, :K]], dim=2).reshape(n, -1, h, w)


def _converted_model(config, state_dict):
    model = build_model(load_config(config))
    model.load_state_dict(convert("mmdetection", state_dict).state_dict)
    return model.eval()


@pytest.mark.parametrize("size", [300, 512, 320])
def test_recognised_and_every_key_maps(size):
    state_dict = _mmdet_state_dict(size)
    assert recognize(state_dict) == "mmdetection"
    result = convert(None, state_dict)
    assert result.source == ("mmdetection_ssdlite" if size == 320 else "mmdetection")
    assert result.config_file.endswith(CONFIGS[size] + ".yaml")
    assert result.unmatched == {}
    assert sorted(result.origins.values()) == sorted(state_dict)
    # convert() checked it against the config's model: every tensor, every shape.
    assert len(result.state_dict) == len(build_model(load_config(CONFIGS[size])).state_dict())


@pytest.mark.parametrize("size", [300, 320])
def test_background_moves_from_last_to_first(size):
    state_dict = _mmdet_state_dict(size)
    suffix = ".1" if size == 320 else ".0"
    key = f"bbox_head.cls_convs.0{suffix}.bias"
    # A known layout: output c of default box a holds 1000 a + c.
    boxes = state_dict[key].numel() // (K + 1)
    layout = torch.arange(boxes)[:, None] * 1000.0 + torch.arange(K + 1)[None, :]
    state_dict[key] = layout.flatten()
    result = convert("mmdetection", state_dict)
    ours = result.state_dict[f"head.cls_score.0{'.1' if size == 320 else ''}.bias"]
    ours = ours.reshape(boxes, K + 1)
    assert torch.equal(ours[:, 0], layout[:, K])  # the background, first now
    assert torch.equal(ours[:, 1:], layout[:, :K])  # the 80 classes in their order
    assert "class outputs: background moved from last to first" in result.notes


def test_vgg_ssd300_computes_mmdetections_outputs():
    mmdet, flat = mmdetection_ssd_state_dict(300, seed=3)
    model = _converted_model("ssd300_coco_mmdet", mmdet)
    x = torch.randn(1, 3, 300, 300, generator=torch.Generator().manual_seed(0)) * 50
    with torch.no_grad():
        theirs_logits, theirs_deltas = published_forward(flat, LUFFICC_NAMES, 300, x)
        features = model.backbone(x)
        logits, deltas = model.head([features[f] for f in model.head_in_features])
    for level, (ours, theirs) in enumerate(zip(logits, theirs_logits)):
        expected = _background_first(theirs, theirs.shape[1] // (K + 1))
        torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4 * expected.abs().max())
    for ours, theirs in zip(deltas, theirs_deltas):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4 * theirs.abs().max())


def test_ssdlite_computes_mmdetections_outputs():
    theirs = _randomized(MMDetSSDLite())
    model = _converted_model("ssdlite320_mobilenet_v2_coco_mmdet", theirs.state_dict())
    x = torch.randn(2, 3, 320, 320, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        theirs_logits, theirs_deltas = theirs(x)
        features = model.backbone(x)
        logits, deltas = model.head([features[f] for f in model.head_in_features])
    assert [t.shape[-1] for t in logits] == [20, 10, 5, 3, 2, 1]
    for ours, expected in zip(logits, theirs_logits):
        torch.testing.assert_close(ours, _background_first(expected, 6), rtol=1e-4, atol=1e-4)
    for ours, expected in zip(deltas, theirs_deltas):
        torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)


def _mmdet_default_boxes(strides, ratios, feature_maps, input_size=None, basesize=None, sizes=None):
    """
    mmdetection's SSDAnchorGenerator, from its description: sizes from basesize_ratio_range in
    whole pixels (or given), per location (min square, sqrt(min max) square, then h/w = 1/r and
    r per ratio), centres at (i + 0.5) * stride, nothing clamped. XYXY pixels.
    """
    if sizes is None:
        low, high = int(basesize[0] * 100), int(basesize[1] * 100)
        step = (high - low) // (len(strides) - 2)
        min_sizes = [int(input_size * r / 100) for r in range(low, high + 1, step)]
        max_sizes = [int(input_size * (r + step) / 100) for r in range(low, high + 1, step)]
        first = {(300, 15): (7, 15), (512, 10): (4, 10)}[(input_size, low)]
        min_sizes.insert(0, int(input_size * first[0] / 100))
        max_sizes.insert(0, int(input_size * first[1] / 100))
    else:
        min_sizes, max_sizes = sizes
    boxes = []
    for stride, level_ratios, size, mn, mx in zip(
        strides, ratios, feature_maps, min_sizes, max_sizes
    ):
        wh = [(mn, mn), (math.sqrt(mn * mx),) * 2]
        for r in level_ratios:
            wh += [(mn * math.sqrt(r), mn / math.sqrt(r)), (mn / math.sqrt(r), mn * math.sqrt(r))]
        for i in range(size):
            for j in range(size):
                cx, cy = (j + 0.5) * stride, (i + 0.5) * stride
                boxes += [(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2) for w, h in wh]
    return torch.tensor(boxes)


@pytest.mark.parametrize(
    "config, expected",
    [
        (
            "ssd300_coco_mmdet",
            dict(
                strides=[8, 16, 32, 64, 100, 300],
                ratios=[[2], [2, 3], [2, 3], [2, 3], [2], [2]],
                feature_maps=[38, 19, 10, 5, 3, 1],
                input_size=300,
                basesize=(0.15, 0.9),
            ),
        ),
        (
            "ssd512_coco_mmdet",
            dict(
                strides=[8, 16, 32, 64, 128, 256, 512],
                ratios=[[2], [2, 3], [2, 3], [2, 3], [2, 3], [2], [2]],
                feature_maps=[64, 32, 16, 8, 4, 2, 1],
                input_size=512,
                basesize=(0.1, 0.9),
            ),
        ),
        (
            "ssdlite320_mobilenet_v2_coco_mmdet",
            dict(
                strides=[16, 32, 64, 107, 160, 320],
                ratios=[[2, 3]] * 6,
                feature_maps=[20, 10, 5, 3, 2, 1],
                sizes=([48, 100, 150, 202, 253, 304], [100, 150, 202, 253, 304, 320]),
            ),
        ),
    ],
)
def test_default_boxes_are_mmdetections(config, expected):
    theirs = _mmdet_default_boxes(**expected).float()
    generator = SSDDefaultBoxGenerator(load_config(config), [])
    ours = generator([torch.zeros(1, 1, s, s) for s in expected["feature_maps"]])
    ours = torch.cat([b.tensor for b in ours])
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max().item() < 1e-3
    # Nothing clamped: boxes reach past the image, as mmdetection's do.
    assert ours.min().item() < 0 and ours.max().item() > max(generator.image_size)


@pytest.mark.parametrize("legacy", [False, True])
def test_mmdetection_checkpoint_loads_through_model_weights(tmp_path, legacy):
    """{"meta", "state_dict", "optimizer"}, in torch's zip or legacy serialization, read
    without running code by ssd_d2's checkpointer (SSDPredictor, training, the tools)."""
    state_dict = _mmdet_state_dict(320)
    path = str(tmp_path / "ssdlite_mmdet.pth")
    data = mmdetection_checkpoint(state_dict, optimizer=True)
    torch.save(data, path, _use_new_zipfile_serialization=not legacy)
    expected = convert("mmdetection", state_dict).state_dict
    cfg = load_config("ssdlite320_mobilenet_v2_coco_mmdet", "MODEL.WEIGHTS", path)
    assert_loaded(SSDPredictor(cfg).model, expected)
    model = SSDTrainer.build_model(cfg)
    SSDCheckpointer(model).load(path)
    assert_loaded(model, expected)


def test_detectron2_checkpointer_takes_the_state_dict_not_the_file(tmp_path):
    """Detectron2's DetectionCheckpointer (DefaultPredictor's) reads a file without a "model"
    entry as one state dict, and fvcore refuses mmdetection's "meta" as a tensor before the
    SSD can convert anything. Its state dict alone loads, converted by the SSD's
    load_state_dict."""
    state_dict = _mmdet_state_dict(320)
    whole, alone = str(tmp_path / "whole.pth"), str(tmp_path / "state_dict.pth")
    torch.save(mmdetection_checkpoint(state_dict), whole)
    torch.save(state_dict, alone)
    with pytest.raises(ValueError, match="Unsupported type found in checkpoint! meta"):
        DefaultPredictor(load_config("ssdlite320_mobilenet_v2_coco_mmdet", "MODEL.WEIGHTS", whole))
    cfg = load_config("ssdlite320_mobilenet_v2_coco_mmdet", "MODEL.WEIGHTS", alone)
    assert_loaded(DefaultPredictor(cfg).model, convert("mmdetection", state_dict).state_dict)


def test_converter_command_writes_a_clean_checkpoint(tmp_path, capsys):
    path, out = tmp_path / "ssd300_mmdet.pth", str(tmp_path / "ssd300_d2.pth")
    torch.save(mmdetection_checkpoint(_mmdet_state_dict(300)), path)
    main(["--source", "mmdetection", str(path), out])
    printed = capsys.readouterr().out
    assert "mmdetection's SSD300/SSD512 (COCO)" in printed and "ssd300_coco_mmdet.yaml" in printed
    assert_loads_cleanly(build_model(load_config("ssd300_coco_mmdet")), out)


def test_another_architecture_fails_clearly(tmp_path):
    # SSD512's file in SSD300's model: its seventh level has no place there.
    path = str(tmp_path / "ssd512_coco_mmdet.pth")
    torch.save(mmdetection_checkpoint(_mmdet_state_dict(512)), path)
    model = SSDTrainer.build_model(load_config("ssd300_coco_mmdet"))
    with pytest.raises(ConversionError, match=r"ssd512_coco_mmdet\.pth \(mmdetection's SSD300"):
        SSDCheckpointer(model).load(path)
    # SSDLite's file for lufficc's MobileNetV2 SSDLite (other extras and head layout).
    with pytest.raises(ConversionError, match=r"(?s)does not fit .*voc\.yaml.*another config's"):
        convert("mmdetection", _mmdet_state_dict(320), "ssdlite320_mobilenet_v2_voc")
    # A VGG SSD file told to be ssd.pytorch's: the keys say whose it is.
    with pytest.raises(ConversionError, match="--source mmdetection"):
        convert("amdegroot", _mmdet_state_dict(300), "ssd300_coco")


def test_mmdetection_is_not_lufficcs_model():
    """The same weights in ssd300_coco.yaml (lufficc's rules) give other default boxes and
    inputs: mmdetection's files need their own config."""
    ours, lufficc = load_config("ssd300_coco_mmdet"), load_config("ssd300_coco")
    assert ours.MODEL.PIXEL_MEAN != lufficc.MODEL.PIXEL_MEAN
    assert ours.MODEL.SSD.DEFAULT_BOXES.CLAMP == "none" != lufficc.MODEL.SSD.DEFAULT_BOXES.CLAMP
    assert np.allclose(ours.MODEL.PIXEL_MEAN, [123.675, 116.28, 103.53])
