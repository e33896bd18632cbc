"""
Evaluate a model on a data set (default: DATASETS.TEST[0]) with COCO's metrics and draw the
per-class AP and precision-recall curves; ``--results`` reads saved detections instead (the
``coco_instances_results.json`` of ``train_net.py --eval-only``). Any data set with
``thing_classes`` works, VOC included: its ground truth is converted to COCO's format.

    python -m ssd_d2.tools.plot_evaluation --config-file configs/ssd160_shapes_demo.yaml \\
        --output ap.png --opts MODEL.WEIGHTS output/ssd160_shapes_demo/model_final.pth
"""

import contextlib
import io
import json
import os
import sys
import warnings
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from tqdm import tqdm

from detectron2.data import MetadataCatalog
from detectron2.data.datasets.coco import convert_to_coco_dict
from detectron2.modeling import build_model

from ssd_d2.data import SSDDatasetMapper
from ssd_d2.engine import load_weights

from . import common

# The 12 numbers of COCOeval.summarize(), in its order.
_STAT_NAMES = "AP AP50 AP75 APs APm APl AR1 AR10 AR100 ARs ARm ARl".split()


@dataclass
class ClassCurves:
    """COCO evaluation results per class (all areas, up to 100 detections per image)."""

    class_names: List[str]
    ap: np.ndarray  # (K,) AP averaged over IoU 0.50:0.95, in [0, 1]; nan: no ground truth
    ap50: np.ndarray  # (K,) AP at IoU 0.5
    recall: np.ndarray  # (R,) COCO's 101 recall thresholds
    precision50: np.ndarray  # (K, R) interpolated precision at IoU 0.5; nan: no ground truth
    precision75: np.ndarray  # (K, R) at IoU 0.75
    stats: Dict[str, float]  # _STAT_NAMES -> value


def coco_ground_truth(dataset_name: str) -> dict:
    """The data set's ground truth as a COCO dict, as COCOEvaluator reads or converts it."""
    json_file = MetadataCatalog.get(dataset_name).get("json_file", None)
    if json_file and os.path.isfile(json_file):  # written by the data set's loader by now
        with open(json_file) as f:
            return json.load(f)
    # Detectron2 converts by name only (it loads the data set again).
    return convert_to_coco_dict(dataset_name)


def evaluate_detections(ground_truth: dict, detections: List[dict], image_ids=None) -> ClassCurves:
    """COCOeval of COCO results (XYWH) against a COCO dict, on ``image_ids`` (default: all)."""
    coco_gt = COCO()
    coco_gt.dataset = ground_truth
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt.createIndex()
        # loadRes rejects an empty list; no results (an empty COCO) give AP 0 everywhere.
        coco_dt = coco_gt.loadRes(detections) if detections else COCO()
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        if image_ids is not None:
            evaluator.params.imgIds = list(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    # (T IoUs, R recalls, K classes, A areas, M max detections); -1 where a class has no GT.
    precision = evaluator.eval["precision"][:, :, :, 0, -1].astype(np.float64)
    precision[precision < 0] = np.nan
    t50, t75 = (int(np.argmin(np.abs(evaluator.params.iouThrs - t))) for t in (0.5, 0.75))
    with warnings.catch_warnings():
        # A class without ground truth has no AP: nan, without a warning.
        warnings.simplefilter("ignore", RuntimeWarning)
        ap = np.nanmean(precision, axis=(0, 1))
        ap50 = np.nanmean(precision[t50], axis=0)
    names = {c["id"]: c["name"] for c in ground_truth["categories"]}
    class_names = [names[c] for c in evaluator.params.catIds]
    recall = np.asarray(evaluator.params.recThrs)
    stats = dict(zip(_STAT_NAMES, (float(s) for s in evaluator.stats)))
    return ClassCurves(class_names, ap, ap50, recall, precision[t50].T, precision[t75].T, stats)


def plot_evaluation(curves: ClassCurves, title: str = "") -> Figure:
    """AP and AP50 per class (gid "ap_bar", "ap50_bar") and precision-recall curves per class
    at IoU 0.5 (solid, gid "pr_curve") and 0.75 (dashed)."""
    num_classes = len(curves.class_names)
    fig = Figure(figsize=(13.0, max(4.0, 0.32 * num_classes + 1.5) + 0.4), dpi=common.DPI)
    colors = common.class_colors(num_classes)
    grid = fig.add_gridspec(1, 2, width_ratios=(1.0, 1.15))
    ax = fig.add_subplot(grid[0])
    y, half = np.arange(num_classes)[::-1], 0.2
    ap, ap50 = np.nan_to_num(curves.ap * 100), np.nan_to_num(curves.ap50 * 100)
    ax.barh(y + half, ap50, 2 * half, color="#9ecae1", label="AP50", gid="ap50_bar")
    ax.barh(y - half, ap, 2 * half, color="#08519c", label="AP (IoU .50:.95)", gid="ap_bar")
    for k in range(num_classes):
        if np.isnan(curves.ap[k]):
            ax.text(1, y[k], "no ground truth", va="center", fontsize=8, color="0.4")
            continue
        ax.text(ap[k] + 1, y[k] - half, f"{ap[k]:.1f}", va="center", fontsize=8)
        ax.text(ap50[k] + 1, y[k] + half, f"{ap50[k]:.1f}", va="center", fontsize=8)
    ax.set_yticks(y, curves.class_names, fontsize=9)
    ax.set(xlim=(0, 110), xlabel="AP (%)")
    all_ap = f"AP {100 * curves.stats['AP']:.1f}, AP50 {100 * curves.stats['AP50']:.1f}"
    ax.set_title(f"AP per class (all: {all_ap})", fontsize=11)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(True, axis="x", alpha=0.3)
    ax = fig.add_subplot(grid[1])
    for k, name in enumerate(curves.class_names):
        if not np.isnan(curves.ap50[k]):
            label = f"{name} (AP50 {100 * curves.ap50[k]:.1f})"
            style = dict(c=colors[k], lw=1.8, label=label, gid="pr_curve")
            ax.plot(curves.recall, curves.precision50[k], **style)
            ax.plot(curves.recall, curves.precision75[k], c=colors[k], lw=1.0, ls="--")
    ax.plot([], [], color="0.3", lw=1.8, label="IoU 0.5")
    ax.plot([], [], color="0.3", lw=1.0, ls="--", label="IoU 0.75")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision")
    ax.set_title("precision-recall (COCO interpolation, all areas)", fontsize=11)
    # Outside the axes: curves may fill any corner.
    ncol = 2 if num_classes > 16 else 1
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), ncol=ncol, frameon=False)
    ax.grid(True, alpha=0.3)
    common.add_title(fig, title)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / fig.get_figheight() if title else 1))
    return fig


def predict_coco_results(cfg, dataset_dicts: List[dict], metadata) -> List[dict]:
    """COCO results of the model of ``cfg`` (MODEL.WEIGHTS through ssd_d2's checkpointer)."""
    model = build_model(cfg).eval()
    load_weights(model, cfg)
    mapper = SSDDatasetMapper(cfg, is_train=False)
    category_ids = common.dataset_category_ids(metadata, cfg.MODEL.SSD.NUM_CLASSES)
    results = []
    for start in tqdm(range(0, len(dataset_dicts), 8), desc="inference", file=sys.stderr):
        inputs = [mapper(d) for d in dataset_dicts[start : start + 8]]  # batches of 8
        with torch.no_grad():
            outputs = model(inputs)
        for record, output in zip(inputs, outputs):
            instances = output["instances"].to("cpu")
            results += common.coco_results(instances, record["image_id"], category_ids)
    return results


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = common.argument_parser("plot_evaluation", __doc__, picture=True)
    parser.add_argument("--dataset", metavar="NAME", help="data set (default: DATASETS.TEST[0])")
    parser.add_argument("--max-images", type=int, metavar="N", help="only the first N images")
    parser.add_argument("--results", metavar="JSON", help="saved COCO-format detections to read")
    args, cfg = common.parse_config(parser, argv)
    with common.usage_errors(parser, ValueError):
        if args.max_images is not None and args.max_images < 1:
            raise ValueError("--max-images must be >= 1")
        if not args.results:
            common.check_weights_file(cfg)
        elif not os.path.isfile(args.results):
            raise FileNotFoundError(f"--results file not found: {args.results}")
        name, dicts = common.dataset_dicts(args.dataset, cfg.DATASETS.TEST, "DATASETS.TEST")
    ground_truth = coco_ground_truth(name)
    dicts = dicts[: args.max_images]
    image_ids = [d["image_id"] for d in dicts]
    if args.results:
        with open(args.results) as f:
            kept = set(image_ids)
            detections = [d for d in json.load(f) if d["image_id"] in kept]
        source = os.path.basename(args.results)
    else:
        detections = predict_coco_results(cfg, dicts, MetadataCatalog.get(name))
        source = os.path.basename(cfg.MODEL.WEIGHTS) or "random weights"
    curves = evaluate_detections(ground_truth, detections, image_ids)
    print(" ".join(f"{k} {100 * v:.1f}" for k, v in list(curves.stats.items())[:6]))
    for k, class_name in enumerate(curves.class_names):
        print(f"  {class_name}: AP {100 * curves.ap[k]:.1f}, AP50 {100 * curves.ap50[k]:.1f}")
    title = f"{name} ({len(image_ids)} images), {os.path.basename(args.config_file)}, {source}"
    common.save_figure(plot_evaluation(curves, title=title), args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
