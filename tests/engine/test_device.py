"""MODEL.DEVICE: "auto" is settled when the model is built, never frozen into a config."""

import importlib.util
import os

import pytest
import torch
import yaml

from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model

from ssd_d2.config import load_config, resolve_device

from ..conftest import CONFIG_DIR

REPO_ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
DEMO_CONFIG = os.path.join(CONFIG_DIR, "ssd160_shapes_demo.yaml")


def _notebook_config(*opts):
    """The config as the notebook assembles it: no device chosen."""
    return load_config(DEMO_CONFIG, list(opts))


def _train_net_setup(output_dir, *opts):
    """train_net.py's setup(args), which writes OUTPUT_DIR/config.yaml; the dumped config."""
    spec = importlib.util.spec_from_file_location(
        "train_net", os.path.join(REPO_ROOT, "train_net.py")
    )
    train_net = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_net)
    args = train_net.argument_parser().parse_args(
        ["--config-file", DEMO_CONFIG, "OUTPUT_DIR", str(output_dir), *opts]
    )
    train_net.setup(args)
    with open(os.path.join(output_dir, "config.yaml")) as f:
        return yaml.safe_load(f)


def test_dumped_config_names_no_device_unless_asked(tmp_path):
    assert _train_net_setup(tmp_path / "auto")["MODEL"]["DEVICE"] == "auto"
    assert _train_net_setup(tmp_path / "cpu", "MODEL.DEVICE", "cpu")["MODEL"]["DEVICE"] == "cpu"


def test_auto_is_cuda_where_cuda_is(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda"
    assert resolve_device("") == "cuda"
    assert resolve_device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    assert resolve_device("cuda:1") == "cuda:1"  # asked for: kept, even where it fails


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only machine's choice")
def test_auto_builds_on_the_cpu_here():
    cfg = _notebook_config()
    assert cfg.MODEL.DEVICE == "auto"
    # Detectron2's build_model moves the model to torch.device(cfg.MODEL.DEVICE) after
    # building it: the SSD meta-architecture settles "auto" in the config it is given.
    model = build_model(cfg)
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    assert cfg.MODEL.DEVICE == "cpu"

    frozen = _notebook_config()
    frozen.freeze()
    predictor = DefaultPredictor(frozen)  # builds from its own copy of the config
    assert frozen.MODEL.DEVICE == "auto" and frozen.is_frozen()
    assert predictor.cfg.MODEL.DEVICE == "cpu" and predictor.cfg.is_frozen()
    outputs = predictor(torch.zeros(40, 60, 3, dtype=torch.uint8).numpy())
    assert outputs["instances"].image_size == (40, 60)


def test_an_explicit_device_is_kept():
    # "meta" exists on every machine: a device that "auto" would never pick.
    cfg = _notebook_config("MODEL.DEVICE", "meta")
    model = build_model(cfg)
    assert cfg.MODEL.DEVICE == "meta"
    assert {p.device.type for p in model.parameters()} == {"meta"}
    cfg = _notebook_config("MODEL.DEVICE", "cpu")
    build_model(cfg)
    assert cfg.MODEL.DEVICE == "cpu"
