import glob
import logging
import os
import pickle
import tempfile
from typing import Optional, Set

import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils.file_io import PathManager

from ..convert import ConversionError, convert_for_model
from ..model_zoo import IMAGENET_BACKBONES
from ..modeling import SSD

__all__ = [
    "SSDCheckpointer",
    "UnsafeCheckpointError",
    "load_checkpoint_file",
    "load_weights",
    "warn_if_backbone_uninitialized",
]

logger = logging.getLogger(__name__)

# Globals a Detectron2 model zoo ".pkl" (a pickle of numpy arrays) may name: array and dtype
# reconstruction only, nothing that can run code.
_SAFE_PICKLE_GLOBALS = {
    (module, name)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("_reconstruct", "scalar")
} | {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),
}

_UNSAFE_HINT = (
    "Loading it would need Python's full unpickling, which runs whatever code the file "
    "contains: a checkpoint from an untrusted source can take over your account. Only if you "
    "trust where the file comes from, set MODEL.ALLOW_UNSAFE_CHECKPOINTS True (train_net.py: "
    "append `MODEL.ALLOW_UNSAFE_CHECKPOINTS True`), or load it once yourself and save its "
    "state_dict() with torch.save."
)


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint that cannot be loaded without executing code from the file."""


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _SAFE_PICKLE_GLOBALS:
            return super().find_class(module, name)
        raise UnsafeCheckpointError(f"it refers to {module}.{name}")


def load_checkpoint_file(filename: str, allow_unsafe: bool = False):
    """
    The object in a checkpoint file, read without running code from it unless
    ``allow_unsafe``: ``torch.load(weights_only=True)`` (tensors and plain containers), or for
    Detectron2's ".pkl" model zoo files an unpickler that accepts numpy arrays only.

    Raises:
        UnsafeCheckpointError: the file needs more than that; the message explains the risk
            and the flag that accepts it.
    """
    try:
        with PathManager.open(filename, "rb") as f:
            if filename.endswith(".pkl"):
                unpickler = pickle.Unpickler if allow_unsafe else _RestrictedUnpickler
                return unpickler(f, encoding="latin1").load()
            return torch.load(f, map_location=torch.device("cpu"), weights_only=not allow_unsafe)
    except UnsafeCheckpointError as e:
        raise UnsafeCheckpointError(f"Refusing to load checkpoint {filename}: {e}. " + _UNSAFE_HINT)
    except pickle.UnpicklingError as e:
        # torch names the global it refused; other unpickling errors mean a damaged file.
        if not allow_unsafe and "GLOBAL" in str(e):
            refused = [line for line in str(e).splitlines() if "GLOBAL" in line]
            raise UnsafeCheckpointError(
                f"Refusing to load checkpoint {filename}: it holds Python objects other than "
                f"tensors and containers ({refused[0].strip()}). " + _UNSAFE_HINT
            ) from None
        raise


class SSDCheckpointer(DetectionCheckpointer):
    """
    The weights entrance of ssd_d2: a DetectionCheckpointer that takes, for an SSD model, a
    peer's published file (torchvision, lufficc/SSD, ssd.pytorch, the ImageNet backbones
    they start from) as well as ssd_d2's own checkpoints, recognised from its keys and
    converted as it is loaded (:func:`ssd_d2.convert.convert_for_model`), from a path or an
    http(s) URL (downloaded once into Detectron2's cache, ``$FVCORE_CACHE``). Its files
    survive a process killed while saving, and its load errors name the file and the fix.

    Checkpoints and the ``last_checkpoint`` tag are written to a temporary file in the same
    folder and renamed over the target, so the previous checkpoint stays intact until the
    new one is complete.

    Files are read with :func:`load_checkpoint_file`: no code from the file runs unless
    ``allow_unsafe`` (``MODEL.ALLOW_UNSAFE_CHECKPOINTS``) is set.
    """

    def __init__(self, model, save_dir: str = "", *, allow_unsafe: bool = False, **kwargs):
        super().__init__(model, save_dir, **kwargs)
        self.allow_unsafe = allow_unsafe
        # The model's keys the last load set (None before any load).
        self.loaded_model_keys: Optional[Set[str]] = None

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
            data = load_checkpoint_file(filename, self.allow_unsafe)
        except UnsafeCheckpointError:
            raise
        except Exception as e:
            raise RuntimeError(
                f"Cannot read checkpoint {filename}: {type(e).__name__}: {e}\n"
                "It is truncated, corrupt or not a PyTorch checkpoint. Point MODEL.WEIGHTS (or "
                "the output folder's last_checkpoint file) at an intact checkpoint, or convert "
                "a checkpoint of another code base with `python -m ssd_d2.tools.convert`."
            ) from e
        if not isinstance(data, dict):
            raise RuntimeError(
                f"Checkpoint {filename} holds a {type(data).__name__}, not a dict of weights. "
                "Save the model's state_dict() instead of the model."
            )
        if filename.endswith(".pkl"):
            return _model_zoo_checkpoint(data, self.logger)
        if filename.endswith(".pyth") and "model_state" in data:  # pycls
            model_state = data["model_state"]
            model_state = {
                k: v for k, v in model_state.items() if not k.endswith("num_batches_tracked")
            }
            return {"model": model_state, "__author__": "pycls", "matching_heuristics": True}
        checkpoint = data if isinstance(data.get("model"), dict) else {"model": data}
        if isinstance(self.model, SSD):
            try:
                checkpoint["model"], source = convert_for_model(
                    checkpoint["model"], self.model.state_dict(), origin=filename
                )
            except ConversionError as e:
                raise ConversionError(f"Cannot load MODEL.WEIGHTS: {e}") from None
            if source != "ssd_d2":
                self.logger.info(f"Converted {filename} from {source}'s layout to ssd_d2's")
        return checkpoint

    def _load_model(self, checkpoint):
        incompatible = super()._load_model(checkpoint)
        missing = set(incompatible.missing_keys) if incompatible is not None else set()
        self.loaded_model_keys = {k for k in self.model.state_dict() if k not in missing}
        return incompatible


def load_weights(model, cfg) -> SSDCheckpointer:
    """
    Load ``cfg.MODEL.WEIGHTS`` (a path or URL; empty: nothing) into ``model`` the way every
    entry point does: through :class:`SSDCheckpointer`, with MODEL.ALLOW_UNSAFE_CHECKPOINTS.
    Returns the checkpointer (its ``loaded_model_keys`` say what the file set).
    """
    checkpointer = SSDCheckpointer(model, allow_unsafe=cfg.MODEL.ALLOW_UNSAFE_CHECKPOINTS)
    checkpointer.load(cfg.MODEL.WEIGHTS)
    return checkpointer


def warn_if_backbone_uninitialized(cfg, loaded_model_keys: Optional[Set[str]]) -> Optional[str]:
    """
    Log a WARNING (and return it) when a config whose published results start from ImageNet
    weights (MODEL.SSD.EXPECT_PRETRAINED_BACKBONE) starts training with a backbone that no
    file set: MODEL.WEIGHTS empty, or a file without backbone weights.
    """
    if not cfg.MODEL.SSD.EXPECT_PRETRAINED_BACKBONE:
        return None
    if loaded_model_keys and any(k.startswith("backbone.") for k in loaded_model_keys):
        return None
    if cfg.MODEL.WEIGHTS:
        why = f"MODEL.WEIGHTS ({cfg.MODEL.WEIGHTS}) sets none of the backbone's weights"
    else:
        why = "MODEL.WEIGHTS is empty"
    url = IMAGENET_BACKBONES.get(cfg.MODEL.BACKBONE.NAME)
    start = f"MODEL.WEIGHTS {url}" if url else "MODEL.WEIGHTS to ImageNet weights of the backbone"
    message = (
        f"Training starts from a randomly initialised backbone: {why}. The published results "
        f"of this architecture start from ImageNet weights: set {start} (the config's default), "
        "or, to train from scratch on purpose, MODEL.SSD.EXPECT_PRETRAINED_BACKBONE False."
    )
    logger.warning(message)
    return message


def _model_zoo_checkpoint(data: dict, logger) -> dict:
    """Detectron2's reading of its ".pkl" files: its own model zoo format, or Caffe2's blobs."""
    if "model" in data and "__author__" in data:
        logger.info(f"Reading a file from '{data['__author__']}'")
        return data
    blobs = data.get("blobs", data)
    weights = {k: v for k, v in blobs.items() if not k.endswith("_momentum")}
    return {"model": weights, "__author__": "Caffe2", "matching_heuristics": True}


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
    # Temporary files of saves that a killed process left behind.
    for stale in glob.glob(glob.escape(path) + ".*.tmp"):
        try:
            os.remove(stale)
        except OSError:
            pass
