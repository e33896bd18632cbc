"""
The model zoo (its torchvision entries detect what torchvision's models detect), the warning
about a backbone that starts at random, and the offline converter recognising the source.
"""

import logging
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from detectron2.engine import DefaultPredictor

from ssd_d2 import SSDTrainer, model_zoo
from ssd_d2.engine import SSDCheckpointer, SSDPredictor
from ssd_d2.engine.checkpoint import (
    IMAGENET_BACKBONES,
    imagenet_backbone_url,
    warn_if_backbone_uninitialized,
)
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
    monkeypatch.setitem(model_zoo.ZOO, name, entry._replace(url=f"{server.url}/zoo_{filename}"))


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
    # Untrained: the ImageNet backbone the peer starts from; torchvision's SSDLite320 starts
    # from scratch, its SSD300 from its own VGG16 file.
    from_scratch = {"ssdlite320_mobilenet_v3_coco": "", "ssdlite320_mobilenet_v2_coco_mmdet": ""}
    from_scratch["ssd300_coco_torchvision"] = (
        "https://download.pytorch.org/models/vgg16_features-amdegroot-88682ab5.pth"
    )
    for name, entry in model_zoo.ZOO.items():
        assert os.path.samefile(
            model_zoo.get_config_file(name), os.path.join(REPO_ROOT, "configs", entry.config)
        )
        untrained, trained = model_zoo.get_config(name), model_zoo.get_config(name, True)
        assert trained.MODEL.WEIGHTS == entry.url == model_zoo.get_checkpoint_url(name)
        backbone = imagenet_backbone_url(untrained)
        assert untrained.MODEL.WEIGHTS == from_scratch.get(name, backbone)
    # torchvision's SSDLite recipe: from scratch, with the tail its published model has.
    cfg = model_zoo.get_config("ssdlite320_mobilenet_v3_coco")
    assert cfg.MODEL.MOBILENET.REDUCED_TAIL and not cfg.MODEL.SSD.EXPECT_PRETRAINED_BACKBONE
    imagenet = load_config("ssdlite320_mobilenet_v3_coco_imagenet")
    assert imagenet.MODEL.WEIGHTS == IMAGENET_BACKBONES["build_mobilenet_v3_ssdlite_backbone"]
    assert not imagenet.MODEL.MOBILENET.REDUCED_TAIL
    with pytest.raises(FileNotFoundError, match="ssd300_voc"):
        model_zoo.get_config_file("ssd301_voc")
    with pytest.raises(ValueError, match="no published weights"):
        model_zoo.get_checkpoint_url("ssd300_shapes")


def test_model_zoo_get_defaults_to_the_untrained_model(weights_server, monkeypatch):
    server, published = weights_server
    url, data = published("vgg16_reducedfc.pth")
    config = load_config("ssd300_voc", "MODEL.WEIGHTS", url)
    monkeypatch.setattr(model_zoo, "get_config", lambda name, trained: config)
    model = model_zoo.get("ssd300_voc", device="cpu")  # as Detectron2's: trained=False
    assert not model.training and model.trained_parts == {"backbone"}
    assert_loaded(model, expected_state_dict("vgg16_reducedfc.pth", data))


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
    loggers = [
        logging.getLogger(f"ssd_d2.{m}") for m in ("engine.checkpoint", "modeling.meta_arch")
    ]
    for logger in loggers:
        logger.addHandler(handler)
    yield handler.messages
    for logger in loggers:
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
    untrained = SimpleNamespace(trained_parts=set())
    for config, file in [
        ("ssdlite320_mobilenet_v2_voc", "mobilenet_v2-b0353104.pth"),
        ("ssdlite320_mobilenet_v3_coco_imagenet", "mobilenet_v3_large-8738ca79.pth"),
        ("ssd512_coco", "vgg16_reducedfc.pth"),
    ]:
        cfg = load_config(config, "MODEL.WEIGHTS", "")
        assert file in warn_if_backbone_uninitialized(cfg, untrained)
        assert cfg.MODEL.SSD.EXPECT_PRETRAINED_BACKBONE
    for config in ["ssd160_shapes_demo", "ssdlite320_mobilenet_v3_coco"]:  # from scratch
        assert warn_if_backbone_uninitialized(load_config(config), untrained) is None


# ---------------------------------------------------------------------------------------
# Inference with a head that neither a file nor training has set.


@pytest.mark.parametrize(
    "weights, warns",
    [
        ("", True),
        ("vgg16_reducedfc.pth", True),  # ImageNet weights: a backbone only
        ("vgg_ssd300_voc0712.pth", False),  # a trained detector (lufficc/SSD's layout)
        ("five_classes.pth", True),  # another class count: the class head is not loaded
    ],
)
def test_default_predictor_warns_about_an_untrained_head(
    weights, warns, weights_server, warnings_logged, tmp_path
):
    _, published = weights_server
    if weights == "five_classes.pth":
        model = SSDTrainer.build_model(load_config("ssd300_voc", "MODEL.SSD.NUM_CLASSES", "5"))
        weights = str(tmp_path / weights)
        torch.save({"model": model.state_dict()}, weights)
    elif weights:
        weights = published(weights)[0]
    predictor = DefaultPredictor(load_config("ssd300_voc", "MODEL.WEIGHTS", weights))
    image = np.zeros((120, 90, 3), dtype=np.uint8)
    for _ in range(2):
        predictor(image)
    untrained = [m for m in warnings_logged if "head has random weights" in m]
    assert len(untrained) == int(warns), warnings_logged  # once per model
    if warns:
        assert "MODEL.WEIGHTS" in untrained[0] and "get_checkpoint_url" in untrained[0]


# ---------------------------------------------------------------------------------------
# The offline converter: the same rules, the source recognised from the keys.


@pytest.mark.parametrize(
    "name, config",
    [
        # ImageNet weights have the full tail; torchvision's SSDLite, trained from scratch, not.
        ("mobilenet_v3_large-8738ca79.pth", "ssdlite320_mobilenet_v3_coco_imagenet.yaml"),
        ("ssdlite320_mobilenet_v3_large_coco-a79551df.pth", "ssdlite320_mobilenet_v3_coco.yaml"),
    ],
)
def test_converter_recognises_the_source(name, config, tmp_path, capsys):
    data = FORMATS[name][0]()
    source, output = str(tmp_path / name), str(tmp_path / "converted.pth")
    torch.save(data, source)
    conversion = convert_main([source, output])  # no --source
    assert conversion.config_file.endswith(config)
    assert f"--config-file {conversion.config_file} MODEL.WEIGHTS {output}" in (
        capsys.readouterr().out
    )
    # MODEL.WEIGHTS takes the converted file as it is, and the published one to the same
    # tensors.
    model = SSDTrainer.build_model(load_config(config[: -len(".yaml")]))
    SSDCheckpointer(model).load(output)
    assert_loaded(model, expected_state_dict(name, data))
    with pytest.raises(SystemExit, match="keys are ssd_d2's already"):
        convert_main([output, str(tmp_path / "again.pth")])


@pytest.mark.parametrize("predictor_class", [DefaultPredictor, SSDPredictor])
def test_a_peers_file_of_another_class_count_loads_without_its_class_head(
    predictor_class, weights_server, warnings_logged
):
    # torchvision's COCO SSDLite for 20 classes: Detectron2's checkpointer (DefaultPredictor's)
    # sees the peer's names, so the SSD's pre-hook leaves out the other shapes itself; SSDLite's
    # depthwise class convs still fit, its 1x1 class convs do not: the head is not trained.
    url, _ = weights_server[1]("ssdlite320_mobilenet_v3_large_coco-a79551df.pth")
    cfg = load_config("ssdlite320_mobilenet_v3_coco", "MODEL.SSD.NUM_CLASSES", "20")
    cfg.MODEL.WEIGHTS = url
    predictor = predictor_class(cfg)
    assert predictor.model.trained_parts == {"backbone"}
    predictor(np.zeros((64, 48, 3), dtype=np.uint8))
    assert sum("head has random weights" in m for m in warnings_logged) == 1, warnings_logged
