"""
An exported SSD as a Detectron2 model (:class:`ExportedSSD`: what ``train_net.py --eval-only``
and the demo run when MODEL.WEIGHTS names an exported file) and behind DefaultPredictor's call
(:class:`ExportedPredictor`). Images of any size are resized to the network size here, and
the boxes scaled back to each image's size, as the PyTorch SSD does.
"""

import os
from typing import Dict, List

import torch
from torch import Tensor, nn

from detectron2.data import transforms as T
from detectron2.engine import DefaultPredictor
from detectron2.modeling import detector_postprocess
from detectron2.structures import Boxes, Instances

from ..config import height_width, resolve_image_size
from ..modeling import resize_to_network_size
from . import runtimes
from .formats import EXTENSIONS, ExportError

__all__ = ["ExportedPredictor", "ExportedSSD", "is_exported_model"]


def is_exported_model(path: str) -> bool:
    """Whether ``path`` (MODEL.WEIGHTS) names an exported model rather than a checkpoint."""
    return os.path.splitext(path)[1].lower() in EXTENSIONS


class ExportedSSD(nn.Module):
    """
    An exported SSD (TorchScript, ONNX or OpenVINO, float32 or int8) with the PyTorch SSD's
    inference contract: a list of {"image": (C, H, W) 0-255 tensor in INPUT.FORMAT, optional
    "height", "width"} in, a list of {"instances": Instances} in those sizes out.
    """

    def __init__(self, path: str, expected: Dict, device: str = "cpu"):
        """
        Args:
            expected: what the file must have been exported for (the config's
                "image_size", "num_classes", "channels", "input_format"): ExportError if not.
        """
        super().__init__()
        self.run, self.info = runtimes.open_exported(path, device)
        # (height, width), also from files that hold a square's side.
        self.info["image_size"] = height_width(self.info["image_size"])
        if "image_size" in expected:
            expected = dict(expected, image_size=height_width(expected["image_size"]))
        differs = {k: (self.info.get(k), v) for k, v in expected.items() if self.info.get(k) != v}
        if differs:
            found = ", ".join(f"{k} {a!r} (the config: {b!r})" for k, (a, b) in differs.items())
            raise ExportError(
                f"{path} was exported for another model: {found}. Evaluate it with the config "
                "it was exported from, or export it again from this config."
            )
        self.path, self.image_size = path, self.info["image_size"]
        self.input_dtype = getattr(torch, self.info["input_dtype"])
        self.eval()

    @classmethod
    def from_config(cls, cfg) -> "ExportedSSD":
        """The file MODEL.WEIGHTS names, checked against the config's model."""
        expected = {
            "image_size": resolve_image_size(cfg),
            "num_classes": cfg.MODEL.SSD.NUM_CLASSES,
            "channels": len(cfg.MODEL.PIXEL_MEAN),
            "input_format": cfg.INPUT.FORMAT,
        }
        device = cfg.MODEL.DEVICE if torch.cuda.is_available() else "cpu"
        return cls(cfg.MODEL.WEIGHTS, expected, device)

    def forward(self, batched_inputs: List[Dict[str, Tensor]]) -> List[Dict[str, Instances]]:
        if self.training:
            raise ExportError(
                f"{self.path} is an exported model: it runs inference only. Train the PyTorch "
                "model (a .pth checkpoint in MODEL.WEIGHTS) and export it again."
            )
        size = self.image_size
        images = torch.stack(
            [resize_to_network_size(x["image"].float(), size)[0] for x in batched_inputs]
        )
        if not self.input_dtype.is_floating_point:
            images = images.round().clamp(0, 255)
        boxes, scores, classes, counts = self.run(images.to(self.input_dtype))
        results = []
        for i, x in enumerate(batched_inputs):
            n = int(counts[i])
            instances = Instances(
                size,
                pred_boxes=Boxes(boxes[i, :n].float()),
                scores=scores[i, :n].float(),
                pred_classes=classes[i, :n].long(),
            )
            height = x.get("height", x["image"].shape[-2])
            width = x.get("width", x["image"].shape[-1])
            results.append({"instances": detector_postprocess(instances, height, width)})
        return results


class ExportedPredictor(DefaultPredictor):
    """
    DefaultPredictor's call on an exported model: ``predictor(image)``, an (H, W, C) uint8
    image of any size in BGR (OpenCV's order; converted to INPUT.FORMAT), returns
    {"instances": Instances} in its pixels. MODEL.WEIGHTS names the exported file.
    """

    def __init__(self, cfg):
        # Not DefaultPredictor's __init__: it builds and loads a PyTorch model.
        self.cfg = cfg.clone()
        self.model = ExportedSSD.from_config(self.cfg)
        self.aug = T.ResizeShortestEdge(
            [cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST
        )
        self.input_format = cfg.INPUT.FORMAT
