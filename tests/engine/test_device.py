"""MODEL.DEVICE: "auto" is settled where the config is assembled, so a run's config.yaml names
the device it ran on; a model is never built for "auto"."""

import importlib.util
import os

import pytest
import torch
import yaml

from detectron2.config import get_cfg
from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model

from ssd_d2.config import add_ssd_config, load_config, resolve_device

from ..conftest import CONFIG_DIR

REPO_ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
DEMO_CONFIG = os.path.join(CONFIG_DIR, "ssd160_shapes_demo.yaml")


def _notebook_config(*opts):
    """The config as the notebook assembles it."""
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


def test_dumped_config_names_the_device(tmp_path):
    here = "cuda" if torch.cuda.is_available() else "cpu"
    assert _train_net_setup(tmp_path / "default")["MODEL"]["DEVICE"] == here
    assert _train_net_setup(tmp_path / "auto", "MODEL.DEVICE", "auto")["MODEL"]["DEVICE"] == here
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
def test_auto_builds_on_the_cpu_here(tmp_path):
    cfg = _notebook_config("MODEL.DEVICE", "auto")
    assert cfg.MODEL.DEVICE == "cpu"
    frozen = cfg.clone()
    frozen.freeze()
    predictor = DefaultPredictor(frozen)
    assert {p.device.type for p in predictor.model.parameters()} == {"cpu"}
    outputs = predictor(torch.zeros(40, 60, 3, dtype=torch.uint8).numpy())
    assert outputs["instances"].image_size == (40, 60)

    # Detectron2's own assembly: add_ssd_config's default is this machine's device too.
    cfg = get_cfg()
    add_ssd_config(cfg)
    assert cfg.MODEL.DEVICE == "cpu"
    cfg.merge_from_file(DEMO_CONFIG)
    build_model(cfg)
    # A file that says "auto", merged without load_config: a clear error, not torch's.
    (tmp_path / "auto.yaml").write_text(f'_BASE_: "{DEMO_CONFIG}"\nMODEL:\n  DEVICE: auto\n')
    cfg.merge_from_file(str(tmp_path / "auto.yaml"))
    with pytest.raises(ValueError, match="load_config"):
        build_model(cfg)


def test_an_explicit_device_is_kept():
    # "meta" exists on every machine: a device that "auto" would never pick.
    cfg = _notebook_config("MODEL.DEVICE", "meta")
    model = build_model(cfg)
    assert cfg.MODEL.DEVICE == "meta"
    assert {p.device.type for p in model.parameters()} == {"meta"}
    cfg = _notebook_config("MODEL.DEVICE", "cpu")
    build_model(cfg)
    assert cfg.MODEL.DEVICE == "cpu"
