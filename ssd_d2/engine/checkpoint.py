import os
import tempfile

import torch

from detectron2.checkpoint import DetectionCheckpointer

__all__ = ["SSDCheckpointer"]


class SSDCheckpointer(DetectionCheckpointer):
    """
    DetectionCheckpointer whose files survive a process killed while saving, and whose
    load errors name the file and the fix.

    Checkpoints and the ``last_checkpoint`` tag are written to a temporary file in the same
    folder and renamed over the target, so the previous checkpoint stays intact until the
    new one is complete.
    """

    def save(self, name: str, **kwargs) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        _atomic_write(save_file, lambda f: torch.save(data, f), mode="wb")
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        save_file = os.path.join(self.save_dir, "last_checkpoint")
        _atomic_write(save_file, lambda f: f.write(last_filename_basename), mode="w")

    def _load_file(self, filename: str):
        try:
            return super()._load_file(filename)
        except Exception as e:
            raise RuntimeError(
                f"Cannot read checkpoint {filename}: {type(e).__name__}: {e}\n"
                "It is truncated, corrupt or not a PyTorch checkpoint. Point MODEL.WEIGHTS (or "
                "the output folder's last_checkpoint file) at an intact checkpoint, or convert "
                "a checkpoint of another code base with `python -m ssd_d2.tools.convert`."
            ) from e


def _atomic_write(path: str, write, mode: str) -> None:
    folder = os.path.dirname(path) or "."
    fd, tmp_path = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise
