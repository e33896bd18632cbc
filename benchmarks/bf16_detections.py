"""How many of the trained demo model's fp32 detections its bf16 inference keeps."""

import os
from typing import Dict, List, Tuple

import torch

from detectron2.modeling import build_model
from detectron2.structures import Instances, pairwise_iou

from benchmarks.common import load_cfg, print_row
from ssd_d2 import SSDTrainer
from ssd_d2.engine import load_weights

# Scores a user would show; the model's own (much lower) threshold is reported too.
DISPLAY_SCORE_THRESH = 0.3
# Boxes this close count as the same detection (bf16 moves box corners by a fraction of a pixel).
MATCH_IOU = 0.9


def match_detections(
    reference: Instances, other: Instances, iou_threshold: float = MATCH_IOU
) -> List[Tuple[int, int]]:
    """
    Pairs (i, j): reference detection i matched by detection j of ``other`` (same image), of
    the same class with IoU >= ``iou_threshold``. Greedy and one-to-one: the reference
    detections take their match in descending score order, each the unmatched one it overlaps
    most.
    """
    if len(reference) == 0 or len(other) == 0:
        return []
    iou = pairwise_iou(reference.pred_boxes, other.pred_boxes)
    iou[reference.pred_classes[:, None] != other.pred_classes[None, :]] = -1.0
    pairs = []
    for i in torch.argsort(reference.scores, descending=True, stable=True).tolist():
        j = int(iou[i].argmax())
        if iou[i, j] >= iou_threshold:
            pairs.append((i, j))
            iou[:, j] = -1.0
    return pairs


def detection_agreement(
    reference: List[Instances], other: List[Instances], score_thresh: float
) -> Dict[str, float]:
    """
    Over images (one Instances each in both lists): the detections of each scoring at least
    ``score_thresh``, and how many of the reference's are matched (:func:`match_detections`)
    by any detection of ``other``, so that a score moving across the threshold is no miss
    (the largest score difference of a matched pair shows it).
    """
    counts = {"reference": 0, "other": 0, "matched": 0, "max_score_diff": 0.0}
    for ref, oth in zip(reference, other):
        ref = ref[ref.scores >= score_thresh]
        pairs = match_detections(ref, oth)
        counts["reference"] += len(ref)
        counts["other"] += int((oth.scores >= score_thresh).sum())
        counts["matched"] += len(pairs)
        for i, j in pairs:
            diff = abs(float(ref.scores[i]) - float(oth.scores[j]))
            counts["max_score_diff"] = max(counts["max_score_diff"], diff)
    counts["matched_share"] = counts["matched"] / max(1, counts["reference"])
    return counts


def section_bf16_detections(args, report):
    """The trained demo model's detections on ssd_shapes_val in bf16 against fp32."""
    reason = None
    if not args.bf16:
        reason = "bf16 is off (--no-bf16, a GPU, or a CPU without AVX512-BF16 or AMX)"
    elif not os.path.isfile(args.demo_weights):
        reason = (
            f"--demo-weights {args.demo_weights} does not exist: train the demo model "
            "(python train_net.py --config-file configs/ssd160_shapes_demo.yaml) or name its file"
        )
    if reason is not None:
        print(f"  skipped: {reason}", flush=True)
        report["bf16_detections"] = {"skipped": reason}
        return
    outputs = {}
    for precision in ("fp32", "bf16"):
        cfg = load_cfg(
            "ssd160_shapes_demo",
            args.device,
            "MODEL.WEIGHTS",
            args.demo_weights,
            "TEST.PRECISION",
            precision,
        )
        model = build_model(cfg).eval()
        load_weights(model, cfg)
        outputs[precision] = []
        with torch.inference_mode():
            for inputs in SSDTrainer.build_test_loader(cfg, "ssd_shapes_val"):
                outputs[precision].extend(r["instances"].to("cpu") for r in model(inputs))
    rows = []
    for score_thresh in (DISPLAY_SCORE_THRESH, cfg.MODEL.SSD.SCORE_THRESH_TEST):
        counts = detection_agreement(outputs["fp32"], outputs["bf16"], score_thresh)
        row = {
            "score_thresh": score_thresh,
            "images": len(outputs["fp32"]),
            "fp32_detections": counts["reference"],
            "bf16_detections": counts["other"],
            "matched": counts["matched"],
            "matched_share": counts["matched_share"],
            "max_score_diff": counts["max_score_diff"],
        }
        rows.append(row)
        print_row(row)
    report["bf16_detections"] = {
        "weights": args.demo_weights,
        "dataset": "ssd_shapes_val",
        "iou_thresh": MATCH_IOU,
        "rows": rows,
    }
