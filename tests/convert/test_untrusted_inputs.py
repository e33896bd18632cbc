"""
Untrusted inputs: configs, checkpoints and converter inputs are read without running code
from them, and what would need code is refused with the risk and the flag that accepts it.
"""

import os
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from detectron2.config import get_cfg

from ssd_d2 import add_ssd_config
from ssd_d2.config import merge_from_file_safely
from ssd_d2.convert import ConversionError
from ssd_d2.engine import SSDCheckpointer
from ssd_d2.engine.checkpoint import UnsafeCheckpointError
from ssd_d2.tools.convert import build_argument_parser, read_state_dict, save_checkpoint

from ..conftest import CONFIG_DIR


class _RunsCode:
    """Unpickling this touches ``marker``: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_yaml_python_tags_are_refused(tmp_path):
    marker = tmp_path / "executed"
    evil = tmp_path / "evil.yaml"
    evil.write_text(
        f"_BASE_: {os.path.abspath(os.path.join(CONFIG_DIR, 'ssd300_shapes.yaml'))}\n"
        f"SEED: !!python/object/apply:os.system ['touch {marker}']\n"
    )
    cfg = get_cfg()
    add_ssd_config(cfg)
    with pytest.raises(ValueError, match=r"evil.yaml .*contains a Python tag.*safe loader"):
        merge_from_file_safely(cfg, str(evil))
    assert not marker.exists()
    # Also in a _BASE_ file.
    child = tmp_path / "child.yaml"
    child.write_text(f"_BASE_: {evil}\nSEED: 3\n")
    with pytest.raises(ValueError, match="child.yaml"):
        merge_from_file_safely(get_cfg(), str(child))
    assert not marker.exists()
    # Plain configs load as before.
    merge_from_file_safely(cfg, os.path.join(CONFIG_DIR, "ssd160_shapes_demo.yaml"))
    assert cfg.MODEL.SSD.IMAGE_SIZE == 160


def test_train_net_reads_configs_safely(tmp_path):
    import train_net

    marker = tmp_path / "executed"
    evil = tmp_path / "evil.yaml"
    evil.write_text(f"SEED: !!python/object/apply:os.system ['touch {marker}']\n")
    args = train_net.default_argument_parser().parse_args(["--config-file", str(evil)])
    with pytest.raises(ValueError, match="Python tag"):
        train_net.setup(args)
    assert not marker.exists()


def _checkpointer(tmp_path, allow_unsafe=False):
    return SSDCheckpointer(nn.Linear(2, 2), str(tmp_path), allow_unsafe=allow_unsafe)


def test_checkpoints_that_would_run_code_are_refused(tmp_path):
    marker = tmp_path / "executed"
    path = tmp_path / "evil.pth"
    torch.save({"model": nn.Linear(2, 2).state_dict(), "extra": _RunsCode(marker)}, path)
    with pytest.raises(UnsafeCheckpointError) as error:
        _checkpointer(tmp_path).load(str(path))
    message = str(error.value)
    assert str(path) in message and "runs whatever code the file contains" in message
    assert "MODEL.ALLOW_UNSAFE_CHECKPOINTS True" in message
    assert not marker.exists()
    # The explicit flag accepts it (and runs its code).
    _checkpointer(tmp_path, allow_unsafe=True).load(str(path))
    assert marker.exists()


def test_model_zoo_pickles_are_read_without_running_code(tmp_path):
    weights = {"weight": torch.arange(4.0).view(2, 2), "bias": torch.ones(2)}
    # The converter's ".pkl" output (Detectron2's model zoo format: numpy arrays).
    path = str(tmp_path / "zoo.pkl")
    save_checkpoint(weights, path, author="test")
    model = nn.Linear(2, 2)
    SSDCheckpointer(model).load(path)
    torch.testing.assert_close(model.weight.data, weights["weight"])
    # A Caffe2-style pickle of blobs, protocol 2, as Detectron2's model zoo has.
    caffe2 = tmp_path / "caffe2.pkl"
    blobs = {k: v.numpy() for k, v in weights.items()} | {"weight_momentum": np.zeros(2)}
    caffe2.write_bytes(pickle.dumps({"blobs": blobs}, protocol=2))
    checkpoint = SSDCheckpointer(nn.Linear(2, 2))._load_file(str(caffe2))
    assert sorted(checkpoint["model"]) == ["bias", "weight"]

    marker = tmp_path / "executed"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"model": {}, "__author__": _RunsCode(marker)}))
    with pytest.raises(UnsafeCheckpointError, match=r"evil.pkl: it refers to io.open"):
        SSDCheckpointer(nn.Linear(2, 2)).load(str(evil))
    assert not marker.exists()


def test_converter_refuses_pickled_objects_unless_asked(tmp_path):
    marker = tmp_path / "executed"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"vgg.0.weight": torch.ones(2)}, "x": _RunsCode(marker)}, path)
    with pytest.raises(ConversionError, match="--allow-unsafe-checkpoint"):
        read_state_dict(str(path))
    assert not marker.exists()
    assert list(read_state_dict(str(path), allow_unsafe=True)) == ["vgg.0.weight"]
    assert marker.exists()
    args = build_argument_parser().parse_args(
        ["--source", "vgg16", "--allow-unsafe-checkpoint", str(path), "out.pth"]
    )
    assert args.allow_unsafe_checkpoint
