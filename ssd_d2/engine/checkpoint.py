"""
ssd_d2's checkpointer: reading checkpoint files without running code from them, writing them
atomically, and converting a peer's published file as it is loaded (:mod:`ssd_d2.convert`; a
plain DetectionCheckpointer reaches the same rules through the SSD's load_state_dict hook).
"""

import contextlib
import glob
import logging
import os
import pickle
import tempfile
from typing import Optional, Sequence

import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils.file_io import PathManager

from ..convert import ConversionError, convert_for_model
from ..modeling import SSD

__all__ = ["IMAGENET_BACKBONES", "SSDCheckpointer", "UnsafeCheckpointError", "load_weights"]
__all__ += ["imagenet_backbone_url"]

logger = logging.getLogger(__name__)

_TORCHVISION = "https://download.pytorch.org/models"
# The ImageNet file each backbone starts from (by MODEL.BACKBONE.NAME), as the peers' training
# does (torchvision's SSD300 from its own VGG16 file: ssd300_coco_torchvision.yaml names it).
IMAGENET_BACKBONES = {
    "build_vgg16_ssd_backbone": "https://s3.amazonaws.com/amdegroot-models/vgg16_reducedfc.pth",
    "build_mobilenet_v2_ssdlite_backbone": f"{_TORCHVISION}/mobilenet_v2-b0353104.pth",
    "build_mobilenet_v3_ssdlite_backbone": f"{_TORCHVISION}/mobilenet_v3_large-8738ca79.pth",
    # Backbones SSD's extra levels extend (MODEL.SSD.EXTRA_LEVELS.BOTTOM).
    "build_torchvision_resnet_backbone": f"{_TORCHVISION}/resnet50-0676ba61.pth",
    "build_resnet_backbone": "detectron2://ImageNetPretrained/MSRA/R-50.pkl",
    "build_resnet_fpn_backbone": "detectron2://ImageNetPretrained/MSRA/R-50.pkl",
}

# Globals a Detectron2 model zoo ".pkl" (a pickle of numpy arrays) may name: array and dtype
# reconstruction only, nothing that can run code.
_SAFE_PICKLE_GLOBALS = {
    f"{numpy}.{name}"
    for numpy in ("numpy.core", "numpy._core")
    for name in ("multiarray._reconstruct", "multiarray.scalar", "numeric._frombuffer")
} | {"numpy.ndarray", "numpy.dtype", "collections.OrderedDict", "_codecs.encode"}
_ALLOW_IN_CONFIG = "set MODEL.ALLOW_UNSAFE_CHECKPOINTS True (on train_net.py's command line too)"


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint that cannot be loaded without executing code from the file."""


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if f"{module}.{name}" in _SAFE_PICKLE_GLOBALS:
            return super().find_class(module, name)
        raise UnsafeCheckpointError(f"it refers to {module}.{name}")


def load_checkpoint_file(
    filename: str, allow_unsafe: bool = False, safe_globals: Sequence = (), fix=_ALLOW_IN_CONFIG
):
    """
    The object in a checkpoint file (a path or URL), read without running code from it unless
    ``allow_unsafe``: ``torch.load(weights_only=True)`` (tensors, containers, ``safe_globals``),
    or for ".pkl" files an unpickler of numpy arrays. Raises UnsafeCheckpointError otherwise,
    explaining the risk and ``fix``.
    """
    try:
        with PathManager.open(filename, "rb") as f:
            if filename.endswith(".pkl"):
                unpickler = pickle.Unpickler if allow_unsafe else _RestrictedUnpickler
                return unpickler(f, encoding="latin1").load()
            # torch.serialization.safe_globals is torch 2.5's; 2.4 allows them process-wide.
            if hasattr(torch.serialization, "safe_globals"):
                allowing = torch.serialization.safe_globals(list(safe_globals))
            else:
                torch.serialization.add_safe_globals(list(safe_globals))
                allowing = contextlib.nullcontext()
            with allowing:
                return torch.load(f, map_location="cpu", weights_only=not allow_unsafe)
    except pickle.UnpicklingError as e:
        # torch names the global it refused; other unpickling errors mean a damaged file.
        refused = [line.strip() for line in str(e).splitlines() if "GLOBAL" in line]
        unsafe = isinstance(e, UnsafeCheckpointError)
        if not (unsafe or refused and not allow_unsafe):
            raise
        why = e if unsafe else f"it holds Python objects ({refused[0]})"
        raise UnsafeCheckpointError(
            f"Refusing to load checkpoint {filename}: {why}. Loading it would need Python's full "
            "unpickling (torch.load(weights_only=False)), which runs whatever code the file "
            "contains: a checkpoint from an untrusted source can take over your account. Only if "
            f"you trust where the file comes from, {fix}, or load it once yourself and save its "
            "state_dict() with torch.save."
        ) from None


def split_weights(data: dict):
    """(the weights under "model", "state_dict" or the dict itself, without "module.", the rest)"""
    key = next((k for k in ("model", "state_dict") if isinstance(data.get(k), dict)), None)
    weights = data[key] if key else data
    if weights and all(k.startswith("module.") for k in weights):
        weights = {k[len("module.") :]: v for k, v in weights.items()}
    return weights, {k: v for k, v in data.items() if k != key} if key else {}


class SSDCheckpointer(DetectionCheckpointer):
    """
    ssd_d2's checkpointer: a DetectionCheckpointer that loads a peer's file into an SSD model
    (converted as it is loaded), running no code from it unless ``allow_unsafe``, and saves
    atomically: a process killed while saving leaves the previous checkpoint intact.
    """

    def __init__(self, model, save_dir: str = "", *, allow_unsafe: bool = False, **kwargs):
        super().__init__(model, save_dir, **kwargs)
        self.allow_unsafe = allow_unsafe

    def save(self, name: str, **kwargs) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        data.update({key: obj.state_dict() for key, obj in self.checkpointables.items()})
        data.update(kwargs)
        save_file = os.path.join(self.save_dir, f"{name}.pth")
        self.logger.info(f"Saving checkpoint to {save_file}")
        atomic_write(save_file, lambda f: torch.save(data, f), mode="wb")
        self.tag_last_checkpoint(f"{name}.pth")

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        save_file = os.path.join(self.save_dir, "last_checkpoint")
        atomic_write(save_file, lambda f: f.write(last_filename_basename), mode="w")

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
        if filename.endswith(".pkl"):  # Detectron2's model zoo format, or Caffe2's blobs
            if "model" in data and "__author__" in data:
                return data
            blobs = data.get("blobs", data)
            weights = {k: v for k, v in blobs.items() if not k.endswith("_momentum")}
            return {"model": weights, "__author__": "Caffe2", "matching_heuristics": True}
        weights, checkpoint = split_weights(data)
        checkpoint["model"] = weights
        if isinstance(self.model, SSD):
            try:
                checkpoint["model"], source = convert_for_model(
                    weights, self.model.state_dict(), origin=filename
                )
            except ConversionError as e:
                raise ConversionError(f"Cannot load MODEL.WEIGHTS: {e}") from None
            if source != "ssd_d2":
                self.logger.info(f"Converted {filename} from {source}'s layout to ssd_d2's")
        return checkpoint


def load_weights(model, cfg) -> SSDCheckpointer:
    """Load ``cfg.MODEL.WEIGHTS`` into ``model`` as every entry point does; the checkpointer."""
    checkpointer = SSDCheckpointer(model, allow_unsafe=cfg.MODEL.ALLOW_UNSAFE_CHECKPOINTS)
    checkpointer.load(cfg.MODEL.WEIGHTS)
    return checkpointer


def imagenet_backbone_url(cfg) -> Optional[str]:
    """The ImageNet file the config's backbone starts from (:data:`IMAGENET_BACKBONES`; for SSD's
    extra levels, the one of the backbone they extend), or None."""
    name = cfg.MODEL.BACKBONE.NAME
    if name == "build_ssd_extra_levels_backbone":
        name = cfg.MODEL.SSD.EXTRA_LEVELS.BOTTOM
    # The ResNet files are ResNet-50's.
    depth = {
        "build_torchvision_resnet_backbone": cfg.MODEL.TORCHVISION_RESNET.DEPTH,
        "build_resnet_backbone": cfg.MODEL.RESNETS.DEPTH,
        "build_resnet_fpn_backbone": cfg.MODEL.RESNETS.DEPTH,
    }.get(name, 50)
    return IMAGENET_BACKBONES.get(name) if depth == 50 else None


def warn_if_backbone_uninitialized(cfg, model: SSD) -> Optional[str]:
    """Log (and return) a warning when a config that expects ImageNet weights
    (MODEL.SSD.EXPECT_PRETRAINED_BACKBONE) starts training from a backbone no file set."""
    if not cfg.MODEL.SSD.EXPECT_PRETRAINED_BACKBONE or "backbone" in model.trained_parts:
        return None
    weights = cfg.MODEL.WEIGHTS
    why = f"({weights}) sets none of the backbone's weights" if weights else "is empty"
    url = imagenet_backbone_url(cfg)
    start = f"MODEL.WEIGHTS {url}" if url else "MODEL.WEIGHTS to ImageNet weights of the backbone"
    message = (
        f"Training starts from a randomly initialised backbone: MODEL.WEIGHTS {why}. The "
        f"published results of this architecture start from ImageNet weights: set {start}, or, "
        "to train from scratch on purpose, MODEL.SSD.EXPECT_PRETRAINED_BACKBONE False."
    )
    logger.warning(message)
    return message


def atomic_write(path: str, write, mode: str) -> None:
    fd, tmp_path = tempfile.mkstemp(
        prefix=os.path.basename(path) + ".", suffix=".tmp", dir=os.path.dirname(path) or "."
    )
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
        with contextlib.suppress(OSError):
            os.remove(stale)
