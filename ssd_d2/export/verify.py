"""Check an exported SSD against eager inference on the same images."""

from typing import Dict, List, Tuple

import torch
from torch import Tensor

from detectron2.structures import Boxes, pairwise_iou

from ..modeling import SSD
from .formats import ExportError
from .model import in_eval_mode

__all__ = ["compare_with_eager", "eager_detections", "matched_differences", "verify"]
__all__ += ["BOX_TOLERANCE", "INT8_KEPT_RULE", "SCORE_TOLERANCE", "int8_agreement"]

BOX_TOLERANCE, SCORE_TOLERANCE = 1e-3, 1e-4  # pixels, score: what ``verify`` accepts in fp32
# int8 (score, IoU, share): an int8 export is broken when it keeps, with the same class at
# IoU >= 0.8, fewer than 90% of the eager detections that score >= 0.3.
INT8_KEPT_RULE = (0.3, 0.8, 0.9)


def eager_detections(model: SSD, images: Tensor) -> List[Tuple[Tensor, Tensor, Tensor]]:
    """Eager inference (in eval mode) on images (N, C, S, S): CPU boxes, scores, classes each."""
    with in_eval_mode(model), torch.no_grad():
        outputs = [o["instances"].to("cpu") for o in model([{"image": x} for x in images])]
    return [(x.pred_boxes.tensor, x.scores, x.pred_classes) for x in outputs]


def _exported_detections(exported, images: Tensor) -> List[Tuple[Tensor, Tensor, Tensor]]:
    """The exported model's padded outputs on ``images`` as boxes, scores, classes per image."""
    boxes, scores, classes, counts = exported(images)
    detections = []
    for i in range(len(images)):
        n = int(counts[i])
        if not (bool((classes[i, n:] == -1).all()) and bool((scores[i, n:] == 0).all())):
            raise ExportError(f"Image {i}: the rows after num_detections = {n} are not padding.")
        detections.append((boxes[i, :n], scores[i, :n], classes[i, :n]))
    return detections


def compare_with_eager(model: SSD, exported, images: Tensor, expected=None) -> Dict[str, object]:
    """``exported``'s detections on ``images`` paired with eager inference's (``expected``):
    {"detections": per-image counts, "max_box_diff", "max_score_diff"}, or ExportError."""
    actual = _exported_detections(exported, images)
    expected = eager_detections(model, images) if expected is None else expected
    max_box, max_score = 0.0, 0.0
    for i, (eager, mine) in enumerate(zip(expected, actual)):
        try:
            box, score = matched_differences(eager, mine)
        except ValueError as e:
            raise ExportError(
                f"Image {i} of a batch of {len(images)}: the exported model's detections differ "
                f"from eager inference's: {e}"
            ) from None
        max_box, max_score = max(max_box, box), max(max_score, score)
    counts = [len(d[0]) for d in actual]
    return {"detections": counts, "max_box_diff": max_box, "max_score_diff": max_score}


def int8_agreement(model: SSD, exported, images: Tensor) -> Dict[str, object]:
    """
    How much of eager inference a quantized export keeps on ``images``: of the eager
    detections scoring >= INT8_KEPT_RULE's score, {"eager": their number, "kept": how many the
    export has with the same class at IoU >= its IoU, "max_box_shift": the largest coordinate
    difference (pixels) of those pairs}.
    """
    min_score, min_iou, _ = INT8_KEPT_RULE
    eager, kept, shift = 0, 0, 0.0
    for expected, actual in zip(
        eager_detections(model, images), _exported_detections(exported, images)
    ):
        confident = expected[1] >= min_score
        boxes, classes = expected[0][confident], expected[2][confident]
        eager += len(boxes)
        if not len(boxes) or not len(actual[0]):
            continue
        iou = pairwise_iou(Boxes(boxes), Boxes(actual[0].float()))
        iou[classes[:, None] != actual[2][None]] = 0
        best_iou, best = iou.max(dim=1)
        matched = best_iou >= min_iou
        kept += int(matched.sum())
        if matched.any():
            diff = (boxes[matched] - actual[0][best[matched]]).abs().max()
            shift = max(shift, float(diff))
    return {"eager": eager, "kept": kept, "max_box_shift": shift}


def verify(model: SSD, exported, batches, precision: str = "fp32") -> List[Dict[str, object]]:
    """
    Each (name, images) of ``batches`` through ``exported`` and eager inference, printed.
    float32: :func:`compare_with_eager`, ExportError past BOX_TOLERANCE / SCORE_TOLERANCE.
    int8: :func:`int8_agreement` over all batches, ExportError by INT8_KEPT_RULE.
    """
    if precision == "int8":
        return [_verify_int8(model, exported, batches)]
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


def _verify_int8(model: SSD, exported, batches) -> Dict[str, object]:
    total = {"eager": 0, "kept": 0, "max_box_shift": 0.0}
    for _, images in batches:
        check = int8_agreement(model, exported, images)
        total["eager"] += check["eager"]
        total["kept"] += check["kept"]
        total["max_box_shift"] = max(total["max_box_shift"], check["max_box_shift"])
    min_score, min_iou, min_share = INT8_KEPT_RULE
    names = " + ".join(name for name, _ in batches)
    if not total["eager"]:
        print(
            f"Checked against eager inference on {names} image(s): no eager detection scores "
            f">= {min_score}, so nothing to compare (check with trained weights and real images)."
        )
        return total
    share = total["kept"] / total["eager"]
    print(
        f"Checked against eager inference on {names} image(s): int8 keeps {total['kept']} of "
        f"the {total['eager']} eager detections scoring >= {min_score} ({100 * share:.1f}%, "
        f"same class, IoU >= {min_iou}); largest box shift {total['max_box_shift']:.2f} px"
    )
    if share < min_share:
        raise ExportError(
            f"The int8 model keeps {100 * share:.1f}% of eager inference's detections scoring "
            f">= {min_score}, fewer than {100 * min_share:.0f}%: the quantized export is broken "
            "(calibrate on images like the ones it will see: --calibration-images, "
            "DATASETS.TRAIN), or export in fp32."
        )
    return total


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
