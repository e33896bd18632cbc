"""
Export a whole SSD detector (normalisation, backbone, head, default boxes, box decoding,
per-class top-k and NMS) to TorchScript or ONNX.

The exported model is ``ExportableSSD``: one function of an image batch at the network size,

    images (N, C, S, S), uint8 or float, 0-255, channels in INPUT.FORMAT (RGB in ssd_d2's configs)
    -> boxes (N, D, 4) float32, XYXY pixels of the S x S input,
       scores (N, D) float32,
       classes (N, D) int64, foreground classes from 0, -1 where there is no detection,
       num_detections (N,) int64,

with S = MODEL.SSD.IMAGE_SIZE and D = TEST.DETECTIONS_PER_IMAGE; image i's detections are
rows [0, num_detections[i]) in decreasing score, the rest is padding (zeros, class -1). These
are the detections of the eager model given the same S x S images (``[{"image": x}]``), for
any batch size N in both formats. The exported graph is the model's own code
(``SSD.normalize``, ``SSD.predict``, ``SSD.detect``), traced; the NMS step runs as
``grouped_nms`` scripted (TorchScript) or as ONNX's NonMaxSuppression operator (ONNX).

Not in the exported graph: resizing (images come at S x S; the eager model resizes any
size itself), rescaling the boxes to another output size (detector_postprocess), training.
"""

import contextlib
import functools
import importlib
import warnings
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from detectron2.structures import Boxes

from .modeling.meta_arch import SSD, rank_within_images
from .modeling.nms import grouped_nms

__all__ = [
    "FORMATS",
    "OUTPUT_NAMES",
    "ExportError",
    "ExportableSSD",
    "check_exportable",
    "compare_with_eager",
    "eager_detections",
    "example_images",
    "input_shape",
    "export_model",
    "export_onnx",
    "export_torchscript",
    "load_exported",
    "matched_differences",
]

FORMATS = ("torchscript", "onnx")
OUTPUT_NAMES = ("boxes", "scores", "classes", "num_detections")
# NonMaxSuppression appeared in opset 10 and took its current form in 11.
MIN_ONNX_OPSET = 11
DEFAULT_ONNX_OPSET = 17

# (G, k, 4) candidate boxes and (G, k) scores -> group and candidate indices of the kept ones.
NMSFunction = Callable[[Tensor, Tensor], Tuple[Tensor, Tensor]]


class ExportError(ValueError):
    """A model or an export request that cannot be exported; the message says why."""


def input_shape(model: SSD) -> Tuple[int, int, int]:
    """(C, S, S): the shape of one image that the exported model takes."""
    return (model.pixel_mean.shape[0], model.image_size, model.image_size)


def check_exportable(model: nn.Module) -> None:
    """Raise ExportError, saying why, for a model that these exports do not support."""
    if not isinstance(model, SSD):
        raise ExportError(
            f"Only ssd_d2's SSD models export (MODEL.META_ARCHITECTURE 'SSD'); got "
            f"{type(model).__name__}."
        )
    if type(model).per_class_nms is not SSD.per_class_nms:
        # The exports run grouped_nms (scripted, or as ONNX's operator) in its place.
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
    """
    An SSD model as a function of an image batch at the network size, with tensors in and
    out (see the module's docstring for the input and outputs).
    """

    def __init__(
        self,
        model: SSD,
        per_class_nms: Optional[NMSFunction] = None,
    ):
        """
        Args:
            model: an SSD model; it is put in eval mode.
            per_class_nms: replaces ``model.per_class_nms`` (see ``SSD.detect``); the export
                functions pass their format's, since tracing the model's own would keep the
                traced example's number of candidate groups.
        """
        super().__init__()
        check_exportable(model)
        self.model = model
        self.per_class_nms = per_class_nms
        self.eval()

    def forward(self, images: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        model = self.model
        shape = input_shape(model)
        if images.dim() != 4 or tuple(images.shape[1:]) != shape:
            raise ValueError(
                f"The exported SSD takes (N, {shape[0]}, {shape[1]}, {shape[2]}) images "
                f"(MODEL.SSD.IMAGE_SIZE, in {model.input_format}), got {tuple(images.shape)}."
            )
        anchors, pred_logits, pred_deltas = model.predict(model.normalize(images))
        boxes, scores, classes, image_idx = model.detect(
            anchors.tensor, pred_logits, pred_deltas, self.per_class_nms
        )
        # Eager inference ends with detector_postprocess, which drops empty boxes (clipped
        # to nothing); at the network size it changes nothing else.
        nonempty = Boxes(boxes).nonempty()
        boxes, scores, classes = boxes[nonempty], scores[nonempty], classes[nonempty]
        image_idx = image_idx[nonempty]

        num_images = images.shape[0]
        slot = rank_within_images(image_idx, num_images)
        size = (num_images, model.max_detections_per_image)
        out_boxes = boxes.new_zeros(size + (4,)).index_put((image_idx, slot), boxes)
        out_scores = scores.new_zeros(size).index_put((image_idx, slot), scores)
        out_classes = classes.new_full(size, -1).index_put((image_idx, slot), classes)
        in_image = image_idx[:, None] == torch.arange(num_images, device=image_idx.device)
        return out_boxes, out_scores, out_classes, in_image.long().sum(dim=0)


# ---------------------------------------------------------------------------------------
# The NMS of each format


@functools.lru_cache(maxsize=None)
def _scripted_grouped_nms():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script's deprecation notice
        return torch.jit.script(grouped_nms)


def _scripted_per_class_nms(model: SSD) -> NMSFunction:
    """
    ``model.per_class_nms`` (grouped_nms) scripted: tracing would freeze its data-dependent
    Python (how many groups have candidates, how many chunks of IoUs) at the traced
    example's values; the scripted function keeps them, so the traced model makes eager
    inference's decisions at every batch size.
    """
    nms = _scripted_grouped_nms()
    score_threshold, iou_threshold = float(model.test_score_thresh), float(model.test_nms_thresh)

    def per_class_nms(boxes: Tensor, scores: Tensor) -> Tuple[Tensor, Tensor]:
        return nms(boxes, scores, score_threshold, iou_threshold)

    return per_class_nms


class _NonMaxSuppression(torch.autograd.Function):
    """
    The model's per-class NMS, exported as ONNX's NonMaxSuppression with one "batch" entry per
    group of candidates (an image's class): the operator NMSes each entry separately, on the
    float32 boxes, as eager inference does. (torchvision's nms exports as a single
    NonMaxSuppression over all the boxes, which needs the coordinate-offset trick to keep
    groups apart; its large float32 offsets cost IoU precision and can change decisions.)
    """

    @staticmethod
    def forward(ctx, boxes, scores, per_class_nms, max_per_group, iou_threshold, score_threshold):
        group_idx, rank_idx = per_class_nms(boxes, scores)
        return torch.stack([group_idx, torch.zeros_like(group_idx), rank_idx], dim=1)

    @staticmethod
    def symbolic(g, boxes, scores, per_class_nms, max_per_group, iou_threshold, score_threshold):
        scores = g.op("Unsqueeze", scores, g.op("Constant", value_t=torch.tensor([1])))
        return g.op(
            "NonMaxSuppression",
            boxes,  # (G, k, 4): G "batches" of k boxes
            scores,  # (G, 1, k): one "class" in each
            g.op("Constant", value_t=torch.tensor([max_per_group], dtype=torch.int64)),
            g.op("Constant", value_t=torch.tensor([iou_threshold], dtype=torch.float32)),
            # Like the eager threshold, it keeps the boxes with a score > it.
            g.op("Constant", value_t=torch.tensor([score_threshold], dtype=torch.float32)),
        )


def _onnx_per_class_nms(model: SSD) -> NMSFunction:
    """``model.per_class_nms`` as ONNX's NonMaxSuppression (see ``_NonMaxSuppression``)."""

    def per_class_nms(boxes: Tensor, scores: Tensor) -> Tuple[Tensor, Tensor]:
        selected = _NonMaxSuppression.apply(
            boxes,
            scores,
            # The values to trace the rest of the graph with: eager inference's, from the
            # scripted function (in a trace, the plain one would take its GPU path).
            _scripted_per_class_nms(model),
            model.test_topk_candidates,  # >= the k candidates of each group
            float(model.test_nms_thresh),
            float(model.test_score_thresh),
        )
        group_idx, rank_idx = selected[:, 0], selected[:, 2]
        # NonMaxSuppression lists the kept boxes group by group; detect wants them by score.
        order = scores[group_idx, rank_idx].argsort(descending=True)
        return group_idx[order], rank_idx[order]

    return per_class_nms


# ---------------------------------------------------------------------------------------
# Export, load, verify


def example_images(model: SSD, batch_size: int, seed: int = 0, dtype=torch.uint8) -> Tensor:
    """Random images (batch_size, C, S, S), 0-255, on the model's device."""
    g = torch.Generator().manual_seed(seed)
    shape = (batch_size,) + input_shape(model)
    return torch.randint(0, 256, shape, generator=g, dtype=torch.uint8).to(model.device, dtype)


@contextlib.contextmanager
def _exporting(model: SSD):
    """Eval mode and no gradients while exporting; the model's mode is restored after."""
    was_training = model.training
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # The tracer's warnings are about the Python values it keeps as constants: the
            # fixed image size's shapes and checks. The batch size stays free; verify()
            # checks the exported model against eager inference at other batch sizes.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notices
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export")
            # Advanced indexing exports as Gather: wrong for negative indices, which only
            # index the images, candidates and slots here, all >= 0.
            warnings.filterwarnings("ignore", message="Exporting aten::index operator")
            yield
    finally:
        model.train(was_training)


def export_torchscript(model: SSD, path: str, example: Optional[Tensor] = None):
    """
    Trace ``ExportableSSD(model)`` on ``example`` (default: two random uint8 images; the
    exported model takes the example's dtype, any batch size) and save it as ``path``.
    Load it with ``torch.jit.load(path)`` after ``import torchvision`` (its NMS kernel).

    Returns:
        the traced module.
    """
    check_exportable(model)
    example = example_images(model, 2) if example is None else example
    with _exporting(model):
        wrapper = ExportableSSD(model, _scripted_per_class_nms(model))
        traced = torch.jit.trace(wrapper, (example,), check_trace=False)
        traced.save(path)
    return traced


def export_onnx(
    model: SSD, path: str, example: Optional[Tensor] = None, opset: int = DEFAULT_ONNX_OPSET
) -> None:
    """
    Export ``ExportableSSD(model)`` to the ONNX file ``path`` with a dynamic batch axis,
    tracing it on ``example`` (default: two random uint8 images; the input type is the
    example's). Run it with onnxruntime; its input is "images", its outputs ``OUTPUT_NAMES``.
    """
    check_exportable(model)
    if opset < MIN_ONNX_OPSET:
        raise ExportError(
            f"ONNX opset {opset} is too old: the export needs NonMaxSuppression as defined in "
            f"opset {MIN_ONNX_OPSET} or later."
        )
    example = example_images(model, 2) if example is None else example
    dynamic_axes = {name: {0: "batch"} for name in ("images",) + OUTPUT_NAMES}
    with _exporting(model):
        # The TorchScript-based exporter (dynamo=False): it takes the data-dependent shapes of
        # the candidates and detections (NonZero, NonMaxSuppression) as dynamic ONNX shapes,
        # and the NMS through a symbolic function. The torch.export-based exporter would need
        # every such size declared to it and a translation for the NMS operator.
        torch.onnx.export(
            ExportableSSD(model, _onnx_per_class_nms(model)),
            (example,),
            path,
            dynamo=False,
            opset_version=opset,
            input_names=["images"],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes=dynamic_axes,
            # The NMS exports as its symbolic function (NonMaxSuppression), not as the
            # trace of its forward.
            autograd_inlining=False,
        )


def export_model(model: SSD, format: str, path: str, **kwargs) -> None:
    """Export ``model`` to ``path`` in ``format`` (one of ``FORMATS``)."""
    if format not in FORMATS:
        raise ExportError(f"Unknown export format {format!r}; choose one of {FORMATS}.")
    if format == "torchscript":
        export_torchscript(model, path, **kwargs)
    else:
        export_onnx(model, path, **kwargs)


def load_exported(
    format: str, path: str, device: str = "cpu"
) -> Callable[[Tensor], Tuple[Tensor, ...]]:
    """
    An exported model as a function of an image batch returning CPU tensors (boxes, scores,
    classes, num_detections): TorchScript through torch.jit.load on ``device`` (the one it
    was exported on), ONNX through an onnxruntime CPU session.
    """
    if format == "torchscript":
        importlib.import_module("torchvision")  # registers the NMS kernel that the model calls

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
            module = torch.jit.load(path, map_location=device)

        def run(images: Tensor) -> Tuple[Tensor, ...]:
            with torch.no_grad():
                return tuple(t.cpu() for t in module(images.to(device)))

        return run
    if format == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])

        def run(images: Tensor) -> Tuple[Tensor, ...]:
            outputs = session.run(list(OUTPUT_NAMES), {"images": images.cpu().numpy()})
            return tuple(torch.from_numpy(o) for o in outputs)

        return run
    raise ExportError(f"Unknown export format {format!r}; choose one of {FORMATS}.")


Detections = List[Tuple[Tensor, Tensor, Tensor]]


def eager_detections(model: SSD, images: Tensor) -> Detections:
    """Eager inference on ``images`` (N, C, S, S): per image, CPU (boxes, scores, classes)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            outputs = model([{"image": image} for image in images])
    finally:
        model.train(was_training)
    detections = []
    for output in outputs:
        instances = output["instances"].to("cpu")
        detections.append((instances.pred_boxes.tensor, instances.scores, instances.pred_classes))
    return detections


def compare_with_eager(
    model: SSD,
    exported: Callable[[Tensor], Tuple[Tensor, ...]],
    images: Tensor,
    expected: Optional[Detections] = None,
) -> Dict[str, object]:
    """
    Run ``exported`` on ``images`` (N, C, S, S) and pair its detections with eager
    inference's on the same images (``expected``, or computed) by ``matched_differences``.

    Returns:
        {"detections": per-image counts, "max_box_diff": pixels, "max_score_diff": ...}.
    Raises:
        ExportError: when the detections differ beyond pairing (count, classes, padding).
    """
    boxes, scores, classes, counts = exported(images)
    expected = eager_detections(model, images) if expected is None else expected
    max_box, max_score = 0.0, 0.0
    for i, eager in enumerate(expected):
        n = int(counts[i])
        padding_ok = bool((classes[i, n:] == -1).all()) and bool((scores[i, n:] == 0).all())
        if not padding_ok:
            raise ExportError(f"Image {i}: the rows after num_detections = {n} are not padding.")
        try:
            box, score = matched_differences(eager, (boxes[i, :n], scores[i, :n], classes[i, :n]))
        except ValueError as e:
            raise ExportError(
                f"Image {i} of a batch of {len(images)}: the exported model's detections differ "
                f"from eager inference's: {e}"
            ) from None
        max_box, max_score = max(max_box, box), max(max_score, score)
    return {
        "detections": [int(c) for c in counts],
        "max_box_diff": max_box,
        "max_score_diff": max_score,
    }


# ---------------------------------------------------------------------------------------
# Comparing detections


def matched_differences(
    expected: Tuple[Tensor, Tensor, Tensor], actual: Tuple[Tensor, Tensor, Tensor]
) -> Tuple[float, float]:
    """
    Pair the detections of two implementations, each (boxes (M, 4), scores (M,), classes
    (M,)), one to one within each class, closest pairs first (by box difference plus 1000x
    score difference): detections with equal scores may come in either order. Returns the
    largest box and score differences over the pairs.

    Raises:
        ValueError: when the numbers of detections differ or a detection has no partner.
    """
    boxes_a, scores_a, classes_a = (t.detach().cpu() for t in expected)
    boxes_b, scores_b, classes_b = (t.detach().cpu() for t in actual)
    if len(boxes_a) != len(boxes_b):
        raise ValueError(f"{len(boxes_b)} detections where {len(boxes_a)} are expected.")
    if len(boxes_a) == 0:
        return 0.0, 0.0
    box_diff = (boxes_a[:, None].double() - boxes_b[None].double()).abs().amax(dim=2)
    score_diff = (scores_a[:, None].double() - scores_b[None].double()).abs()
    cost = box_diff + 1e3 * score_diff
    cost[classes_a[:, None] != classes_b[None]] = float("inf")
    max_box, max_score = 0.0, 0.0
    for _ in range(len(cost)):
        i, j = divmod(int(cost.argmin()), cost.shape[1])
        if not torch.isfinite(cost[i, j]):
            raise ValueError(
                f"The expected detection of class {int(classes_a[i])}, box "
                f"{boxes_a[i].tolist()}, score {float(scores_a[i]):.6g}, has no counterpart."
            )
        max_box = max(max_box, float(box_diff[i, j]))
        max_score = max(max_score, float(score_diff[i, j]))
        cost[i, :] = float("inf")
        cost[:, j] = float("inf")
    return max_box, max_score
