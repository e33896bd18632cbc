import os

import pytest
import torch
from torch import nn

from ssd_d2.engine import SSDCheckpointer


def _checkpointer(tmp_path, model=None):
    model = model or nn.Linear(3, 2)
    return SSDCheckpointer(
        model,
        save_dir=str(tmp_path),
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
    )


def test_save_writes_the_checkpoint_and_the_tag(tmp_path):
    checkpointer = _checkpointer(tmp_path)
    checkpointer.save("model_0000009", iteration=9)
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000009.pth"
    # Loadable with torch's weights_only default (torch >= 2.6).
    data = torch.load(tmp_path / "model_0000009.pth", weights_only=True)
    assert data["iteration"] == 9 and "optimizer" in data
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_a_save_killed_midway_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    checkpointer = _checkpointer(tmp_path)
    checkpointer.save("model_0000001", iteration=1)
    before = (tmp_path / "model_0000001.pth").read_bytes()

    def save_half_then_die(data, f):
        f.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt  # as a signal would, in the middle of writing

    monkeypatch.setattr(torch, "save", save_half_then_die)
    with pytest.raises(KeyboardInterrupt):
        checkpointer.save("model_0000001", iteration=2)
    assert (tmp_path / "model_0000001.pth").read_bytes() == before
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_truncated_or_foreign_files_fail_naming_the_file(tmp_path):
    checkpointer = _checkpointer(tmp_path)
    checkpointer.save("model_final")
    path = tmp_path / "model_final.pth"
    path.write_bytes(path.read_bytes()[: os.path.getsize(path) // 2])
    with pytest.raises(RuntimeError, match="model_final.pth.*\n.*truncated"):
        _checkpointer(tmp_path).load(str(path))

    foreign = tmp_path / "notes.pth"
    foreign.write_text("not a checkpoint")
    with pytest.raises(RuntimeError, match="notes.pth"):
        _checkpointer(tmp_path).load(str(foreign))
