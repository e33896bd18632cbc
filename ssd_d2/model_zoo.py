"""
ssd_d2's model zoo, as Detectron2's: the configs of the published SSD architectures (to train
as the peer did, from its ImageNet backbone or from scratch), and with ``trained=True`` the
peers' published detectors (by URL, cached, converted as they are loaded).
"""

import os
from typing import Dict, NamedTuple, Optional

from detectron2.config import CfgNode
from detectron2.modeling import build_model

from .config import load_config
from .engine import load_weights

__all__ = ["get", "get_checkpoint_url", "get_config", "get_config_file", "list_models"]

_TORCHVISION = "https://download.pytorch.org/models"
_LUFFICC = "https://github.com/lufficc/SSD/releases/download/1.2"
_MMDET = "https://download.openmmlab.com/mmdetection/v2.0/ssd"


class ZooEntry(NamedTuple):
    """A published detector: its config and the URL of its weights."""

    config: str
    url: str


# The peer that published each model, and its accuracy there.
ZOO: Dict[str, ZooEntry] = {
    # lufficc/SSD, 77.7 and 80.7 VOC07 mAP
    "ssd300_voc": ZooEntry("ssd300_voc.yaml", f"{_LUFFICC}/vgg_ssd300_voc0712.pth"),
    "ssd512_voc": ZooEntry("ssd512_voc.yaml", f"{_LUFFICC}/vgg_ssd512_voc0712.pth"),
    # ssd.pytorch, 77.43 VOC07 mAP: the same architecture and default boxes as lufficc/SSD's.
    "ssd300_voc_ssdpytorch": ZooEntry(
        "ssd300_voc.yaml", "https://s3.amazonaws.com/amdegroot-models/ssd300_mAP_77.43_v2.pth"
    ),
    # lufficc/SSD, 25.2 and 29.0 COCO AP
    "ssd300_coco": ZooEntry("ssd300_coco.yaml", f"{_LUFFICC}/vgg_ssd300_coco_trainval35k.pth"),
    "ssd512_coco": ZooEntry("ssd512_coco.yaml", f"{_LUFFICC}/vgg_ssd512_coco_trainval35k.pth"),
    # torchvision, 25.1 COCO AP
    "ssd300_coco_torchvision": ZooEntry(
        "ssd300_coco_torchvision.yaml", f"{_TORCHVISION}/ssd300_vgg16_coco-b556d3b4.pth"
    ),
    # lufficc/SSD, 68.9 VOC07 mAP
    "ssdlite320_mobilenet_v2_voc": ZooEntry(
        "ssdlite320_mobilenet_v2_voc.yaml", f"{_LUFFICC}/mobilenet_v2_ssd320_voc0712_v2.pth"
    ),
    # torchvision, 21.3 COCO AP; trained from scratch, with the reduced tail.
    "ssdlite320_mobilenet_v3_coco": ZooEntry(
        "ssdlite320_mobilenet_v3_coco.yaml",
        f"{_TORCHVISION}/ssdlite320_mobilenet_v3_large_coco-a79551df.pth",
    ),
    # mmdetection, 25.5 and 29.5 COCO AP
    "ssd300_coco_mmdet": ZooEntry(
        "ssd300_coco_mmdet.yaml", f"{_MMDET}/ssd300_coco/ssd300_coco_20210803_015428-d231a06e.pth"
    ),
    "ssd512_coco_mmdet": ZooEntry(
        "ssd512_coco_mmdet.yaml", f"{_MMDET}/ssd512_coco/ssd512_coco_20210803_022849-0a47a1ca.pth"
    ),
    # mmdetection, 21.3 COCO AP; trained from scratch.
    "ssdlite320_mobilenet_v2_coco_mmdet": ZooEntry(
        "ssdlite320_mobilenet_v2_coco_mmdet.yaml",
        f"{_MMDET}/ssdlite_mobilenetv2_scratch_600e_coco/"
        "ssdlite_mobilenetv2_scratch_600e_coco_20210629_110627-974d9307.pth",
    ),
    # NVIDIA DeepLearningExamples, SSD300 v1.1 on ResNet-50: 27.2 COCO AP in one run of its
    # recipe (26.8 the mean of 15 seeds); this file is its published (AMP) checkpoint.
    "ssd300_resnet50_coco": ZooEntry(
        "ssd300_resnet50_coco.yaml",
        "https://api.ngc.nvidia.com/v2/models/nvidia/ssd_pyt_ckpt_amp/versions/20.06.0/files/"
        "nvidia_ssdpyt_amp_200703.pt",
    ),
}


def _config_dirs():
    """Where the configs are: inside the installed package, or the source checkout's."""
    package = os.path.dirname(os.path.abspath(__file__))
    return [os.path.join(package, "configs"), os.path.join(os.path.dirname(package), "configs")]


def get_config_file(name: str) -> str:
    """The path of a shipped config: a model zoo name ("ssd300_voc") or a file name."""
    filename = ZOO[name].config if name in ZOO else name
    filename += "" if filename.endswith(".yaml") else ".yaml"
    for directory in _config_dirs():
        if os.path.isfile(os.path.join(directory, filename)):
            return os.path.join(directory, filename)
    dirs = [d for d in _config_dirs() if os.path.isdir(d)]
    shipped = {f[: -len(".yaml")] for d in dirs for f in os.listdir(d) if f.endswith(".yaml")}
    raise FileNotFoundError(
        f"ssd_d2 has no config {name!r} (looked in {', '.join(_config_dirs())}); it ships: "
        f"{', '.join(sorted(shipped)) or 'none (the package was installed without them)'}."
    )


def list_models():
    """The model zoo's names."""
    return list(ZOO)


def get_checkpoint_url(name: str) -> str:
    """The URL of the published detector ``name`` (a model zoo name)."""
    if name not in ZOO:
        raise ValueError(f"{name!r} has no published weights; the model zoo has: {', '.join(ZOO)}.")
    return ZOO[name].url


def get_config(name: str, trained: bool = False) -> CfgNode:
    """
    The config ``name`` (see :func:`get_config_file`), whose MODEL.WEIGHTS is what it trains
    from; with ``trained``, the peer's published detector (a model zoo name only).
    """
    if not trained:
        return load_config(get_config_file(name))
    return load_config(get_config_file(name), ["MODEL.WEIGHTS", get_checkpoint_url(name)])


def get(name: str, trained: bool = False, device: Optional[str] = None):
    """The model of :func:`get_config` in eval mode, its weights loaded by ssd_d2's checkpointer
    (``trained=False``: what training starts from, a random head)."""
    cfg = get_config(name, trained)
    if device is not None:
        cfg.MODEL.DEVICE = device
    model = build_model(cfg)
    load_weights(model, cfg)
    return model.eval()
