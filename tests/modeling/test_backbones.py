"""
SSD on any Detectron2 backbone (build_ssd_extra_levels_backbone): Detectron2's ResNet and FPN
from its ImageNet R-50.pkl, torchvision's ResNet (NVIDIA's SSD300), and the errors a config
that does not fit gets.
"""

import pickle
import re

import pytest
import torch

from detectron2.engine import DefaultPredictor
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone, build_model, build_resnet_backbone

from ssd_d2 import SSDTrainer
from ssd_d2.engine import load_weights
from ssd_d2.modeling.backbone import SSDExtraLevels, TorchvisionResNet

from ..conftest import assert_close_at_scale, load_config
from .test_modeling import check_train_and_eval_forward

FPN_CONFIG = "ssd320_R_50_FPN_coco"
# Detectron2's ResNet alone (no FPN) under the same extra levels: res3 40x40 ... res5 10x10.
RESNET_OPTS = [
    "MODEL.SSD.EXTRA_LEVELS.BOTTOM", "build_resnet_backbone",
    "MODEL.SSD.IN_FEATURES", ["res3", "res4", "res5", "extra1", "extra2", "extra3"],
    "MODEL.SSD.EXTRA_LEVELS.OUT_CHANNELS", [512, 256, 256],
    "MODEL.SSD.EXTRA_LEVELS.MID_CHANNELS", [256, 128, 128],
    "MODEL.SSD.EXTRA_LEVELS.STRIDES", [2, 2, 1],
    "MODEL.SSD.EXTRA_LEVELS.PADDINGS", [1, 1, 0],
]  # fmt: skip


def _output_shape_agrees_with_forward(backbone, size):
    with torch.no_grad():
        features = backbone(torch.zeros(1, 3, size, size))
    shapes = backbone.output_shape()
    assert list(features) == list(shapes)
    for name, x in features.items():
        assert x.shape[1] == shapes[name].channels, name
    return {name: tuple(x.shape[-2:]) for name, x in features.items()}


@pytest.mark.parametrize(
    "config, opts, sizes",
    [
        (FPN_CONFIG, [], [40, 20, 10, 5, 3, 1]),
        (FPN_CONFIG, RESNET_OPTS, [40, 20, 10, 5, 3, 1]),
        ("ssd300_resnet50_coco", [], [38, 19, 10, 5, 3, 1]),
    ],
)
def test_extra_levels_output_shape_agrees_with_forward(config, opts, sizes):
    cfg = load_config(config, "MODEL.WEIGHTS", "", *opts)
    backbone = build_backbone(cfg).eval()
    assert isinstance(backbone, SSDExtraLevels)
    maps = _output_shape_agrees_with_forward(backbone, cfg.MODEL.SSD.IMAGE_SIZE)
    assert list(maps) == list(cfg.MODEL.SSD.IN_FEATURES)
    assert [h for h, _ in maps.values()] == sizes


@pytest.mark.parametrize("depth, layer3_stride", [(18, 1), (34, 2), (50, 2)])
def test_torchvision_resnet_output_shape_agrees_with_forward(depth, layer3_stride):
    backbone = TorchvisionResNet(depth, "BN", layer3_stride, ["layer2", "layer3"]).eval()
    maps = _output_shape_agrees_with_forward(backbone, 64)
    assert maps["layer3"] == ((8, 8) if layer3_stride == 1 else (4, 4))


@pytest.mark.parametrize("opts", [[], RESNET_OPTS], ids=["fpn", "resnet"])
def test_train_and_eval_forward_on_detectron2_backbones(opts):
    model = build_model(load_config(FPN_CONFIG, "MODEL.WEIGHTS", "", *opts))
    check_train_and_eval_forward(model, (200, 260), 100, num_classes=80)


def test_detectron2_backbone_trains_with_the_trainer(tiny_cfg):
    """A few iterations of SSDTrainer on SSD320 R-50-FPN: the loss is finite and the weights
    of every part (Detectron2's ResNet past FREEZE_AT, FPN, extra levels, head) move. Random
    weights through 50 layers of frozen identity norms blow up: trainable BN here."""
    cfg = tiny_cfg(
        "MODEL.WEIGHTS", "", "SOLVER.MAX_ITER", 3, "MODEL.SSD.NUM_CLASSES", 5,
        "MODEL.RESNETS.NORM", "BN", config=FPN_CONFIG,
    )  # fmt: skip
    trainer = SSDTrainer(cfg)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    after = trainer.model.state_dict()
    for part in ["bottom.bottom_up.res3.", "bottom.fpn_output3.", "extras.1.", "head.cls_score."]:
        keys = [k for k in after if part in k and after[k].dtype.is_floating_point]
        assert keys and any(not torch.equal(before[k], after[k]) for k in keys), part
    # FREEZE_AT 2: the stem and res2 keep Detectron2's ImageNet weights.
    frozen = [k for k in after if "bottom_up.stem." in k or "bottom_up.res2." in k]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    assert torch.isfinite(torch.tensor(trainer.storage.history("total_loss").latest()))


def _caffe2_name(key: str) -> str:
    """A Detectron2 ResNet key as Detectron2's ImageNet ".pkl" files (MSRA's Caffe2 blobs)
    name it: the inverse of Detectron2's c2 name conversion, for ResNet keys only."""
    key = re.sub(
        r"norm\.(weight|bias|running_mean|running_var)$",
        lambda m: "bn_"
        + {"weight": "s", "bias": "b", "running_mean": "rm", "running_var": "riv"}[m[1]],
        key,
    )
    key = re.sub(r"\.(weight)$", "_w", key)
    key = key.replace("stem.conv1.bn_", "res_conv1_bn_").replace("stem.conv1_w", "conv1_w")
    for ours, theirs in [
        ("shortcut", "branch1"),
        ("conv1", "branch2a"),
        ("conv2", "branch2b"),
        ("conv3", "branch2c"),
    ]:
        key = re.sub(rf"^(res\d\.\d+)\.{ours}", rf"\1.{theirs}", key)
    return key.replace(".", "_")  # fmt: skip


@pytest.fixture(scope="module")
def imagenet_pkl(tmp_path_factory):
    """Detectron2's R-50.pkl layout with random weights (random frozen norms too), and the
    ResNet (Detectron2's own) those weights make."""
    cfg = load_config(FPN_CONFIG, "MODEL.WEIGHTS", "")
    resnet = build_resnet_backbone(cfg, ShapeSpec(channels=3)).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, value in resnet.state_dict().items():
            value.copy_(torch.rand(value.shape, generator=g) * 0.2 + 0.9 if "norm" in name else
                        value)  # fmt: skip
    blobs = {_caffe2_name(k): v.numpy() for k, v in resnet.state_dict().items()}
    assert "res2_0_branch2a_bn_s" in blobs and "res_conv1_bn_riv" in blobs
    path = tmp_path_factory.mktemp("imagenet") / "R-50.pkl"
    with open(path, "wb") as f:
        pickle.dump({"blobs": blobs}, f)
    return str(path), resnet


@pytest.mark.parametrize("entrance", ["DefaultPredictor", "load_weights"])
def test_detectron2_imagenet_pkl_loads_into_the_wrapped_resnet(imagenet_pkl, entrance):
    """MODEL.WEIGHTS R-50.pkl sets the wrapped ResNet as Detectron2 sets its own: the same
    res3 ... res5 maps."""
    path, resnet = imagenet_pkl
    cfg = load_config(FPN_CONFIG, "MODEL.WEIGHTS", path)
    if entrance == "DefaultPredictor":
        model = DefaultPredictor(cfg).model
    else:
        model = build_model(cfg)
        load_weights(model, cfg)
    x = torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model.eval().backbone.bottom.bottom_up(x)
        theirs = resnet(x)
    for name in ["res3", "res4", "res5"]:
        assert_close_at_scale(ours[name], theirs[name])


@pytest.mark.parametrize(
    "opts, message",
    [
        (["MODEL.SSD.IN_FEATURES", ["res9", "extra1", "extra2"]], "outputs ['res3', 'res4'"),
        (["MODEL.SSD.IN_FEATURES", ["p3", "p4", "p5", "p6"]], "must end with the extra levels"),
        (["MODEL.SSD.EXTRA_LEVELS.BOTTOM", "build_resnet"], "registered backbones are"),
        (["MODEL.SSD.IMAGE_SIZE", 300], "not divisible by 32"),
        (["MODEL.SSD.EXTRA_LEVELS.STRIDES", [2]], "one entry per extra level"),
    ],
)
def test_configs_that_do_not_fit_fail_clearly(opts, message):
    cfg = load_config(FPN_CONFIG, "MODEL.WEIGHTS", "", *opts)
    if "res9" in str(opts):
        cfg.MODEL.SSD.EXTRA_LEVELS.BOTTOM = "build_resnet_backbone"
        cfg.MODEL.SSD.EXTRA_LEVELS.OUT_CHANNELS = [256, 256]
    with pytest.raises(ValueError, match=re.escape(message)):
        build_model(cfg)
