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


_SAVE_LOOP = """
import sys
import torch
from torch import nn
from ssd_d2.engine import SSDCheckpointer

model = nn.Linear(1000, 2000)  # 8 MB: a save takes long enough to be killed in the middle
checkpointer = SSDCheckpointer(model, save_dir=sys.argv[1])
for iteration in range(1000000):
    with torch.no_grad():
        model.weight.fill_(iteration)
    checkpointer.save("model_final", iteration=iteration)
"""


def test_sigkill_during_saves_leaves_a_loadable_checkpoint(tmp_path):
    import random
    import signal
    import subprocess
    import sys
    import time

    rng = random.Random()
    for attempt in range(2):
        save_dir = tmp_path / f"run{attempt}"
        save_dir.mkdir()
        process = subprocess.Popen([sys.executable, "-c", _SAVE_LOOP, str(save_dir)])
        try:
            deadline = time.monotonic() + 120
            while not (save_dir / "last_checkpoint").exists():
                assert process.poll() is None and time.monotonic() < deadline
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.5))
            process.send_signal(signal.SIGKILL)
            assert process.wait(timeout=60) == -signal.SIGKILL
        finally:
            if process.poll() is None:
                process.kill()
        # Whatever the moment, the tag names a complete checkpoint whose contents agree.
        checkpointer = SSDCheckpointer(nn.Linear(1000, 2000), save_dir=str(save_dir))
        assert checkpointer.get_checkpoint_file() == str(save_dir / "model_final.pth")
        data = checkpointer.resume_or_load("", resume=True)
        assert (checkpointer.model.weight == data["iteration"]).all()
        # A later save removes what a killed save left behind.
        checkpointer.save("model_final", iteration=data["iteration"] + 1)
        assert sorted(p.name for p in save_dir.iterdir()) == ["last_checkpoint", "model_final.pth"]
