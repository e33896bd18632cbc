"""Check an exported SSD against eager inference on the same images."""

import warnings
from typing import Callable, Dict, List, Tuple

import torch
from torch import Tensor

from ..modeling import SSD
from .model import FORMATS, OUTPUT_NAMES, ExportError, in_eval_mode

__all__ = ["compare_with_eager", "eager_detections", "load_exported", "matched_differences"]
__all__ += ["BOX_TOLERANCE", "SCORE_TOLERANCE", "verify"]

BOX_TOLERANCE, SCORE_TOLERANCE = 1e-3, 1e-4  # pixels, score: what ``verify`` accepts


def load_exported(format: str, path: str, device: str = "cpu") -> Callable:
    """An exported model as a function of images to CPU tensors: TorchScript on ``device``
    (the one it was exported on), ONNX in an onnxruntime CPU session."""
    if format == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
            module = torch.jit.load(path, map_location=device)
        return torch.no_grad()(lambda images: tuple(t.cpu() for t in module(images.to(device))))
    if format == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])

        def run(images: Tensor) -> Tuple[Tensor, ...]:
            outputs = session.run(list(OUTPUT_NAMES), {"images": images.cpu().numpy()})
            return tuple(map(torch.from_numpy, outputs))

        return run
    raise ExportError(f"Unknown export format {format!r}; choose one of {FORMATS}.")


def eager_detections(model: SSD, images: Tensor) -> List[Tuple[Tensor, Tensor, Tensor]]:
    """Eager inference (in eval mode) on images (N, C, S, S): CPU boxes, scores, classes each."""
    with in_eval_mode(model), torch.no_grad():
        outputs = [o["instances"].to("cpu") for o in model([{"image": x} for x in images])]
    return [(x.pred_boxes.tensor, x.scores, x.pred_classes) for x in outputs]


def compare_with_eager(model: SSD, exported, images: Tensor, expected=None) -> Dict[str, object]:
    """``exported``'s detections on ``images`` paired with eager inference's (``expected``):
    {"detections": per-image counts, "max_box_diff", "max_score_diff"}, or ExportError."""
    boxes, scores, classes, counts = exported(images)
    expected = eager_detections(model, images) if expected is None else expected
    max_box, max_score = 0.0, 0.0
    for i, eager in enumerate(expected):
        n = int(counts[i])
        if not (bool((classes[i, n:] == -1).all()) and bool((scores[i, n:] == 0).all())):
            raise ExportError(f"Image {i}: the rows after num_detections = {n} are not padding.")
        try:
            box, score = matched_differences(eager, (boxes[i, :n], scores[i, :n], classes[i, :n]))
        except ValueError as e:
            raise ExportError(
                f"Image {i} of a batch of {len(images)}: the exported model's detections differ "
                f"from eager inference's: {e}"
            ) from None
        max_box, max_score = max(max_box, box), max(max_score, score)
    return {"detections": counts.tolist(), "max_box_diff": max_box, "max_score_diff": max_score}


def verify(model: SSD, exported, batches) -> List[Dict[str, object]]:
    """:func:`compare_with_eager` on each (name, images), printed; ExportError past tolerance."""
    checks = []
    for name, images in batches:
        try:
            check = compare_with_eager(model, exported, images)
            print(
                f"Checked against eager inference on {name} image(s): detections "
                f"{check['detections']}, max |box| diff {check['max_box_diff']:.2e} px, "
                f"max |score| diff {check['max_score_diff']:.2e}"
            )
            if check["max_box_diff"] > BOX_TOLERANCE or check["max_score_diff"] > SCORE_TOLERANCE:
                raise ExportError(
                    f"The exported model's detections differ from eager inference's by more "
                    f"than {BOX_TOLERANCE} px or {SCORE_TOLERANCE} in score."
                )
        except ExportError as e:
            if "head" in model.trained_parts:
                raise
            raise ExportError(
                f"{e} (the head is untrained: a random model's nearly equal scores make the cut "
                "by rounding; check with trained weights, or pass --no-verify)"
            ) from None
        checks.append(check)
    return checks


def matched_differences(expected, actual) -> Tuple[float, float]:
    """
    The largest box and score differences of two implementations' detections (boxes, scores,
    classes), paired one to one within each class, closest first (box + 1000 x score
    difference: tied scores may come in either order). ValueError if a detection has no pair.
    """
    boxes_a, scores_a, classes_a = (t.detach().cpu() for t in expected)
    boxes_b, scores_b, classes_b = (t.detach().cpu() for t in actual)
    if len(boxes_a) != len(boxes_b):
        raise ValueError(f"{len(boxes_b)} detections where {len(boxes_a)} are expected.")
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
        cost[i, :], cost[:, j] = float("inf"), float("inf")
    return max_box, max_score
