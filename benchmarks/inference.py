"""Inference latency of ssd_d2 next to torchvision's SSD, and where ssd_d2's inference time goes."""

import statistics
import time
from typing import Dict

import torch

from detectron2.layers import cat
from detectron2.modeling import detector_postprocess
from detectron2.modeling.meta_arch.dense_detector import permute_to_N_HWA_K
from detectron2.structures import Boxes, Instances

from benchmarks.common import (
    autocast,
    bf16_times,
    build_ours,
    calibrated_pairs,
    median_times,
    print_row,
    synchronize,
    under_bf16,
)
from ssd_d2.modeling.nms import select_detections


def section_inference(args, report):
    rows = []
    for name, config_name, regime, images, ours, theirs in calibrated_pairs(args.device):
        if args.bf16:
            ours_bf16 = build_ours(theirs, config_name, args.device, "TEST.PRECISION", "bf16")
            ours_bf16.load_state_dict(ours.state_dict())
        for batch in args.batches:
            ours_in = [{"image": x} for x in images[:batch]]
            theirs_in = [x.float() / 255 for x in images[:batch]]
            for amp in args.precisions:
                with torch.inference_mode(), autocast(args.device, amp):
                    detections = (
                        sum(len(r["instances"]) for r in ours(ours_in)),
                        sum(len(r["boxes"]) for r in theirs(theirs_in)),
                    )
                    t = median_times(
                        {
                            "ssd_d2": lambda: ours(ours_in),
                            "torchvision": lambda: theirs(theirs_in),
                        },
                        args.device,
                        args.repeats,
                        args.warmup,
                    )
                rows.append(
                    {
                        "model": name,
                        "regime": regime,
                        "batch": batch,
                        "precision": "amp" if amp else "fp32",
                        "ssd_d2_ms": 1000 * t["ssd_d2"],
                        "torchvision_ms": 1000 * t["torchvision"],
                        "ratio": t["ssd_d2"] / t["torchvision"],
                        "ssd_d2_images_per_s": batch / t["ssd_d2"],
                        "torchvision_images_per_s": batch / t["torchvision"],
                        "detections": {"ssd_d2": detections[0], "torchvision": detections[1]},
                    }
                )
                print_row(rows[-1])
            if not args.bf16:
                continue
            fns = {
                "ssd_d2": lambda: ours_bf16(ours_in),
                "torchvision": under_bf16(lambda: theirs(theirs_in), args.device),
                "ssd_d2_fp32": lambda: ours(ours_in),
                "torchvision_fp32": lambda: theirs(theirs_in),
            }
            with torch.inference_mode():
                detections = {
                    "ssd_d2": sum(len(r["instances"]) for r in fns["ssd_d2"]()),
                    "torchvision": sum(len(r["boxes"]) for r in fns["torchvision"]()),
                }
                t = median_times(fns, args.device, args.repeats, args.warmup)
            row = {"model": name, "regime": regime, "batch": batch, "precision": "bf16"}
            row.update(bf16_times(t))
            row["ssd_d2_images_per_s"] = batch / t["ssd_d2"]
            row["torchvision_images_per_s"] = batch / t["torchvision"]
            row["detections"] = detections
            rows.append(row)
            print_row(row)
    report["inference"] = rows


# ----------------------------------------------------------------------------------------
# Where the inference time goes
# ----------------------------------------------------------------------------------------


def stage_times(model, inputs, device) -> Dict[str, float]:
    """
    Seconds of each inference stage of an fp32 ssd_d2 model, one run: SSD.forward's steps
    (SSD.predict, then SSD.inference) called one by one, with the NMS that
    ``select_detections`` calls timed apart from the rest of decoding.
    """
    times, clock = {}, [time.perf_counter()]

    def lap(stage):
        synchronize(device)
        now = time.perf_counter()
        times[stage] = times.get(stage, 0.0) + now - clock[0]
        clock[0] = now

    # The model's own NMS, what select_detections calls in SSD.inference, timed on its own.
    def per_class_nms(boxes, scores):
        lap("decode")
        kept = model.per_class_nms(boxes, scores)
        lap("nms")
        return kept

    synchronize(device)
    clock[0] = time.perf_counter()
    images = model.preprocess_image(inputs)
    lap("preprocess")
    # SSD.predict's fp32 path from here to SSD.inference's first line.
    features = model.backbone(images.contiguous(memory_format=torch.channels_last))
    features = [features[f] for f in model.head_in_features]
    lap("backbone")
    logits, deltas = model.head(features)
    lap("head")
    anchors = Boxes.cat(model.anchor_generator(features))
    logits = cat([permute_to_N_HWA_K(x, model.num_classes + 1).float() for x in logits], 1)
    deltas = cat([permute_to_N_HWA_K(x, 4).float() for x in deltas], 1)
    boxes, scores = model.decode(anchors, logits, deltas)
    topk, max_det = model.test_topk_candidates, model.max_detections_per_image
    boxes, scores, classes, image_idx = select_detections(
        boxes, scores, topk, per_class_nms, max_det
    )
    boxes, size = model.clip(boxes), model.image_size
    # SSD.inference's Instances per image, and SSD.forward's detector_postprocess of each.
    for n, x in enumerate(inputs):
        i = image_idx == n
        r = Instances(size, pred_boxes=Boxes(boxes[i]), scores=scores[i], pred_classes=classes[i])
        detector_postprocess(r, x["image"].shape[-2], x["image"].shape[-1])
    lap("decode")
    return times


def section_breakdown(args, report):
    rows = []
    for name, _, regime, images, ours, _ in calibrated_pairs(args.device):
        inputs = [{"image": x} for x in images]
        with torch.inference_mode():
            for _ in range(args.warmup):
                stage_times(ours, inputs, args.device)
            runs = [stage_times(ours, inputs, args.device) for _ in range(args.repeats)]
        stages = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        total = sum(stages.values())
        row = {"model": name, "regime": regime, "batch": 8, "total_ms": 1000 * total}
        row.update({f"{k}_share": v / total for k, v in stages.items()})
        row["postprocess_share"] = (stages["decode"] + stages["nms"]) / total
        rows.append(row)
        print_row(row)
    report["breakdown"] = rows
