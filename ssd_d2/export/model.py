"""
The exportable SSD: images (N, C, H, W), 0-255 in INPUT.FORMAT, (H, W) the network size
(``resolve_image_size``: MODEL.SSD.IMAGE_SIZE squared or MODEL.SSD.IMAGE_HEIGHT_WIDTH), to
padded detections: boxes (N, D, 4), scores (N, D), classes (N, D; -1 in padding) and
num_detections (N,), D = TEST.DETECTIONS_PER_IMAGE. Built from the model's public parts
(normalize, predict, decode, clip, select_detections) and each format's NMS; resizing to
(H, W) is the caller's (the tool uses ``resize_to_network_size``).
"""

import contextlib
import inspect
import json
import os
import shutil
import tempfile
import warnings
from typing import Dict, Iterable, Optional, Tuple

import torch
from torch import Tensor, nn

from detectron2.structures import Boxes

from ..modeling import SSD
from ..modeling.nms import grouped_nms, rank_within_images, select_detections
from . import runtimes
from .formats import OUTPUT_NAMES, ExportError, check_request

__all__ = ["DEFAULT_ONNX_OPSET", "ExportableSSD", "check_exportable", "example_images"]
__all__ += ["export_info", "export_model", "in_eval_mode"]

MIN_ONNX_OPSET = 11  # NonMaxSuppression's current form
DEFAULT_ONNX_OPSET = 17


def check_exportable(model: nn.Module) -> None:
    """Raise ExportError, saying why, for a model that these exports do not support."""
    if not isinstance(model, SSD):
        raise ExportError(
            f"Only ssd_d2's SSD models export (MODEL.META_ARCHITECTURE 'SSD'); got "
            f"{type(model).__name__}."
        )
    if type(model).per_class_nms is not SSD.per_class_nms:
        raise ExportError(
            f"{type(model).__name__} overrides SSD.per_class_nms, which the exports replace by "
            "grouped_nms (scripted for TorchScript, NonMaxSuppression for ONNX)."
        )
    if model.test_dtype != torch.float32:
        raise ExportError(
            f"The exports run in float32; this model infers in {model.test_dtype} "
            "(TEST.PRECISION): build it with TEST.PRECISION 'fp32'."
        )


class ExportableSSD(nn.Module):
    """An SSD as one function of an image batch (see above), with ``format``'s NMS."""

    def __init__(self, model: SSD, format: str):
        super().__init__()
        check_exportable(model)
        self.model, self.format = model, format

    def forward(self, images: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        model = self.model
        boxes, scores = model.decode(*model.predict(model.normalize(images)))
        topk, max_det = model.test_topk_candidates, model.max_detections_per_image
        detections = select_detections(boxes, scores, topk, self.per_class_nms, max_det)
        # As detector_postprocess at the network size: boxes clipped to nothing dropped.
        boxes = model.clip(detections[0])
        keep = Boxes(boxes).nonempty()
        boxes, scores, classes, image_idx = (t[keep] for t in (boxes,) + detections[1:])

        size = (images.shape[0], max_det)
        slot = (image_idx, rank_within_images(image_idx, size[0]))
        in_image = image_idx[:, None] == torch.arange(size[0], device=image_idx.device)
        return (
            boxes.new_zeros(size + (4,)).index_put(slot, boxes),
            scores.new_zeros(size).index_put(slot, scores),
            classes.new_full(size, -1).index_put(slot, classes),
            in_image.long().sum(dim=0),
        )

    def per_class_nms(self, boxes: Tensor, scores: Tensor) -> Tuple[Tensor, Tensor]:
        if self.format == "torchscript":
            return _scripted_nms(self.model, boxes, scores)
        selected = _NonMaxSuppression.apply(boxes, scores, self.model)
        group_idx, rank_idx = selected[:, 0], selected[:, 2]
        # NonMaxSuppression lists the kept boxes group by group; the selection wants scores.
        order = scores[group_idx, rank_idx].argsort(descending=True)
        return group_idx[order], rank_idx[order]


def _scripted_nms(model: SSD, boxes: Tensor, scores: Tensor) -> Tuple[Tensor, Tensor]:
    """The model's NMS, scripted (TorchScript caches it): a trace would freeze its Python
    decisions (how many groups have candidates) at the example's values."""
    thresholds = float(model.test_score_thresh), float(model.test_nms_thresh)
    return torch.jit.script(grouped_nms)(boxes, scores, *thresholds)


class _NonMaxSuppression(torch.autograd.Function):
    """The per-class NMS as ONNX's NonMaxSuppression, a "batch" entry per group, as eager NMS
    (torchvision's nms exports with group offsets that cost IoU precision: other decisions)."""

    @staticmethod
    def forward(ctx, boxes, scores, model):
        # The trace's values: the scripted NMS's (traced, the plain one takes its GPU path).
        group_idx, rank_idx = _scripted_nms(model, boxes, scores)
        return torch.stack([group_idx, torch.zeros_like(group_idx), rank_idx], dim=1)

    @staticmethod
    def symbolic(g, boxes, scores, model):
        def constant(value, dtype):
            return g.op("Constant", value_t=torch.tensor([value], dtype=dtype))

        return g.op(
            "NonMaxSuppression",
            boxes,  # (G, k, 4): G "batches" of k boxes
            g.op("Unsqueeze", scores, constant(1, torch.int64)),  # (G, 1, k): one "class" each
            constant(model.test_topk_candidates, torch.int64),  # >= the k of each group
            constant(model.test_nms_thresh, torch.float32),
            # Like the eager threshold, it keeps the boxes with a score > it.
            constant(model.test_score_thresh, torch.float32),
        )


@contextlib.contextmanager
def in_eval_mode(model: nn.Module):
    """``model`` in eval mode inside the block; its own mode again after it."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def example_images(model: SSD, batch_size: int, seed: int = 0, dtype=torch.uint8) -> Tensor:
    """Random images (batch_size, C, H, W) at the network size, 0-255, on the model's device."""
    g = torch.Generator().manual_seed(seed)
    shape = (batch_size, model.pixel_mean.shape[0], *model.image_size)
    return torch.randint(0, 256, shape, generator=g, dtype=torch.uint8).to(model.device, dtype)


def export_info(model: SSD, format: str, precision: str, input_dtype: torch.dtype) -> Dict:
    """The facts an exported file carries, by which a reader checks it against a config."""
    return {
        "format": format,
        "precision": precision,
        # [height, width]; files exported before non-square inputs hold the square's side.
        "image_size": list(model.image_size),
        "num_classes": model.num_classes,
        "channels": model.pixel_mean.shape[0],
        "input_format": model.input_format,
        "input_dtype": str(input_dtype).replace("torch.", ""),
    }


def export_model(
    model: SSD,
    format: str,
    path: str,
    example=None,
    opset: int = DEFAULT_ONNX_OPSET,
    precision: str = "fp32",
    calibration: Optional[Iterable[Tensor]] = None,
) -> None:
    """
    Trace ``model`` (in eval mode, its mode restored after) on ``example`` (default: two random
    uint8 images; the input type is the example's, the batch size free); write it to ``path``
    in ``format`` (OpenVINO: ``path`` is the .xml, the .bin is written beside it). ``int8``
    quantizes ONNX and OpenVINO models after training, calibrated on ``calibration``: images
    (C, H, W) at the network size, of the example's type.
    """
    check_request(format, precision, path)
    if precision == "int8" and calibration is None:
        raise ExportError("An int8 export needs calibration images.")
    check_exportable(model)
    if format != "torchscript" and opset < MIN_ONNX_OPSET:
        raise ExportError(
            f"ONNX opset {opset} is too old: the export needs NonMaxSuppression as defined in "
            f"opset {MIN_ONNX_OPSET} or later."
        )
    example = example_images(model, 2) if example is None else example
    info = export_info(model, format, precision, example.dtype)
    if format == "torchscript":
        _trace(model, format, path, example, opset, info)
        return
    calibration = list(calibration) if precision == "int8" else None
    tmp_dir = tempfile.mkdtemp(dir=os.path.dirname(os.path.abspath(path)))
    try:
        onnx_path = os.path.join(tmp_dir, "float.onnx")
        _trace(model, "onnx", onnx_path, example, opset, info)
        if format == "openvino":
            runtimes.to_openvino(onnx_path, path, info, calibration)
            return
        if calibration is not None:
            runtimes.quantize_onnx(onnx_path, os.path.join(tmp_dir, "int8.onnx"), calibration)
            onnx_path = os.path.join(tmp_dir, "int8.onnx")
        runtimes.save_onnx_info(onnx_path, info)
        shutil.move(onnx_path, path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def _trace(model: SSD, format: str, path: str, example: Tensor, opset: int, info: Dict):
    """Trace to TorchScript (``info`` in the archive) or to a float32 ONNX file."""
    with in_eval_mode(model), torch.no_grad(), warnings.catch_warnings():
        # The tracer's notices are about the fixed image size's shapes, kept as constants.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notices
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export")
        # Gather is wrong for negative indices; every index here is >= 0.
        warnings.filterwarnings("ignore", message="Exporting aten::index operator")
        wrapper = ExportableSSD(model, format)
        if format == "torchscript":
            traced = torch.jit.trace(wrapper, (example,), check_trace=False)
            extra = {f"{runtimes.INFO_KEY}.json": json.dumps(dict(info, device=str(model.device)))}
            torch.jit.save(traced, path, _extra_files=extra)
            return
        # The TorchScript-based exporter takes the data-dependent sizes as dynamic shapes
        # and the NMS as its symbolic; torch.export would need each size declared.
        axes = {name: {0: "batch"} for name in ("images",) + OUTPUT_NAMES}
        names = dict(input_names=["images"], output_names=list(OUTPUT_NAMES), dynamic_axes=axes)
        options = dict(opset_version=opset, autograd_inlining=False, **names)
        if "dynamo" in inspect.signature(torch.onnx.export).parameters:  # torch >= 2.5
            options["dynamo"] = False
        torch.onnx.export(wrapper, (example,), path, **options)
