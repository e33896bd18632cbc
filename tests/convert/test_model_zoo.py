"""
The model zoo (its torchvision entries detect what torchvision's models detect), the warning
about a backbone that starts at random, and the offline converter recognising the source.
"""

import dataclasses
import logging
import os

import pytest
import torch

from ssd_d2 import SSDTrainer, model_zoo
from ssd_d2.engine import SSDCheckpointer
from ssd_d2.engine.checkpoint import warn_if_backbone_uninitialized
from ssd_d2.tools.convert import main as convert_main

from ..conftest import load_config
from .conftest import REPO_ROOT, assert_loaded, expected_state_dict, load_through_train_net
from .peers import FORMATS
from .torchvision_peers import (
    compare_with_torchvision,
    random_torchvision_ssdlite,
    trained_like_torchvision_ssd,
)


def _serve_zoo_entry(monkeypatch, server, name, model):
    entry = model_zoo.ZOO[name]
    filename = entry.url.rsplit("/", 1)[1]
    torch.save(model.state_dict(), os.path.join(server.directory, "zoo_" + filename))
    monkeypatch.setitem(
        model_zoo.ZOO, name, dataclasses.replace(entry, url=f"{server.url}/zoo_{filename}")
    )


def test_model_zoo_torchvision_ssd300_detects_as_torchvision(weights_server, monkeypatch):
    server, _ = weights_server
    theirs = trained_like_torchvision_ssd()
    _serve_zoo_entry(monkeypatch, server, "ssd300_coco_torchvision", theirs)
    ours = model_zoo.get("ssd300_coco_torchvision", trained=True, device="cpu")
    assert not ours.training
    counts, max_box, max_score = compare_with_torchvision(ours, theirs, seed=5)
    assert all(10 <= n < 200 for n in counts), counts
    assert max_box <= 1e-3
    assert max_score <= 1e-5


def test_model_zoo_torchvision_ssdlite_detects_as_torchvision(weights_server, monkeypatch):
    server, _ = weights_server
    theirs = random_torchvision_ssdlite()
    _serve_zoo_entry(monkeypatch, server, "ssdlite320_mobilenet_v3_coco", theirs)
    ours = model_zoo.get("ssdlite320_mobilenet_v3_coco", trained=True, device="cpu")
    counts, max_box, max_score = compare_with_torchvision(ours, theirs, seed=6)
    assert all(10 <= n < 300 for n in counts), counts
    assert max_box <= 1e-3
    assert max_score <= 1e-5


def test_model_zoo_configs():
    for name, entry in model_zoo.ZOO.items():
        assert os.path.samefile(
            model_zoo.get_config_file(name), os.path.join(REPO_ROOT, "configs", entry.config)
        )
        untrained, trained = model_zoo.get_config(name), model_zoo.get_config(name, True)
        assert trained.MODEL.WEIGHTS == entry.url
        # Untrained: the ImageNet backbone the peer starts from.
        assert (
            untrained.MODEL.WEIGHTS
            == model_zoo.IMAGENET_BACKBONES.get(untrained.MODEL.BACKBONE.NAME)
            or name == "ssd300_coco_torchvision"
        )
    assert model_zoo.get_config("ssd300_coco_torchvision").MODEL.WEIGHTS.endswith(
        "vgg16_features-amdegroot-88682ab5.pth"
    )
    assert (
        model_zoo.get_config("ssdlite320_mobilenet_v3_coco").MODEL.MOBILENET.REDUCED_TAIL is False
    )
    assert model_zoo.get_config("ssdlite320_mobilenet_v3_coco", True).MODEL.MOBILENET.REDUCED_TAIL
    with pytest.raises(FileNotFoundError, match="ssd300_voc"):
        model_zoo.get_config_file("ssd301_voc")


# ---------------------------------------------------------------------------------------
# The warning about a backbone that starts at random.


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def warnings_logged():
    handler = _Records()
    logger = logging.getLogger("ssd_d2.engine.checkpoint")
    logger.addHandler(handler)
    yield handler.messages
    logger.removeHandler(handler)


def _start_training(config, opts, tmp_path, monkeypatch, shapes_root):
    return load_through_train_net(config, opts, False, tmp_path, monkeypatch, shapes_root)


@pytest.mark.parametrize(
    "config, weights, warns",
    [
        ("ssd300_voc", "", True),  # published architecture, no weights
        ("ssd300_voc", "head_only.pth", True),  # a file without backbone weights
        ("ssd300_voc", "vgg16_reducedfc.pth", False),  # the ImageNet start
        ("ssd300_shapes", "", False),  # from scratch on purpose
    ],
)
def test_uninitialised_backbone_warning(
    config, weights, warns, weights_server, warnings_logged, tmp_path, monkeypatch, shapes_root
):
    server, published = weights_server
    if weights == "head_only.pth":
        model = SSDTrainer.build_model(load_config("ssd300_voc"))
        head = {k: v for k, v in model.state_dict().items() if k.startswith("head.")}
        torch.save({"model": head}, tmp_path / weights)
        weights = str(tmp_path / weights)
    elif weights:
        weights = published(weights)[0]
    _start_training(config, ["MODEL.WEIGHTS", weights], tmp_path, monkeypatch, shapes_root)
    backbone_warnings = [m for m in warnings_logged if "randomly initialised backbone" in m]
    assert len(backbone_warnings) == int(warns), warnings_logged
    if warns:
        (message,) = backbone_warnings
        # It names the fix: the ImageNet file, and the switch for training from scratch.
        assert "MODEL.WEIGHTS https://s3.amazonaws.com/amdegroot-models/vgg16_reducedfc.pth" in (
            message
        )
        assert "MODEL.SSD.EXPECT_PRETRAINED_BACKBONE False" in message
        assert ("is empty" in message) == (weights == "")


def test_warning_names_each_backbones_imagenet_file():
    for config, file in [
        ("ssdlite320_mobilenet_v2_voc", "mobilenet_v2-b0353104.pth"),
        ("ssdlite320_mobilenet_v3_coco", "mobilenet_v3_large-8738ca79.pth"),
        ("ssd512_coco", "vgg16_reducedfc.pth"),
    ]:
        cfg = load_config(config, "MODEL.WEIGHTS", "")
        assert file in warn_if_backbone_uninitialized(cfg, None)
        assert cfg.MODEL.SSD.EXPECT_PRETRAINED_BACKBONE
    assert warn_if_backbone_uninitialized(load_config("ssd160_shapes_demo"), None) is None


# ---------------------------------------------------------------------------------------
# The offline converter: the same rules, the source recognised from the keys.


@pytest.mark.parametrize(
    "name, config, opts",
    [
        ("mobilenet_v3_large-8738ca79.pth", "ssdlite320_mobilenet_v3_coco.yaml", []),
        (
            "ssdlite320_mobilenet_v3_large_coco-a79551df.pth",
            "ssdlite320_mobilenet_v3_coco.yaml",
            ["MODEL.MOBILENET.REDUCED_TAIL", "True"],
        ),
    ],
)
def test_converter_recognises_the_source(name, config, opts, tmp_path, capsys):
    data = FORMATS[name][0]()
    source, output = str(tmp_path / name), str(tmp_path / "converted.pth")
    torch.save(data, source)
    conversion = convert_main([source, output])  # no --source
    assert conversion.config_file.endswith(config) and conversion.config_opts == opts
    assert f"--config-file {conversion.config_file} {' '.join(opts + [''])}MODEL.WEIGHTS" in (
        capsys.readouterr().out
    )
    # MODEL.WEIGHTS takes the converted file as it is, and the published one to the same
    # tensors.
    model = SSDTrainer.build_model(load_config(config[: -len(".yaml")], *opts))
    SSDCheckpointer(model).load(output)
    assert_loaded(model, expected_state_dict(name, data))
    with pytest.raises(SystemExit, match="keys are ssd_d2's already"):
        convert_main([output, str(tmp_path / "again.pth")])


def test_tools_warn_about_imagenet_weights():
    from ssd_d2.tools.common import check_weights

    for config in ["ssd300_voc", "ssd300_coco_torchvision", "ssdlite320_mobilenet_v3_coco"]:
        assert "ImageNet backbone weights" in check_weights(load_config(config))
        assert check_weights(model_zoo.get_config(config, trained=True)) is None
