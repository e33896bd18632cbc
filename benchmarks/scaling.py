"""Inference time against batch size, and evaluation time against data set size."""

import tempfile
import time

import torch
from torchvision.models.detection import ssd300_vgg16

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import inference_on_dataset
from detectron2.modeling import build_model

from benchmarks.common import build_pair, load_cfg, median_times, print_row, random_images
from ssd_d2 import SSDTrainer


def section_scaling(args, report):
    images = random_images(16, seed=1, device=args.device)
    ours, _ = build_pair(ssd300_vgg16, "ssd300_coco_torchvision", "trained", args.device, images)
    rows = []
    with torch.inference_mode():
        for batch in (1, 2, 4, 8, 16):
            inputs = [{"image": x} for x in images[:batch]]
            t = median_times(
                {"ssd_d2": lambda: ours(inputs)}, args.device, args.repeats, args.warmup
            )
            rows.append(
                {
                    "batch": batch,
                    "ms": 1000 * t["ssd_d2"],
                    "ms_per_image": 1000 * t["ssd_d2"] / batch,
                }
            )
            print_row(rows[-1])
    report["scaling_batch"] = rows
    report["scaling_eval"] = evaluation_times(args)


def evaluation_times(args):
    """Seconds of evaluating the demo model on the first N images of ssd_shapes_val."""
    cfg = load_cfg("ssd160_shapes_demo", args.device)
    model = build_model(cfg).eval()
    dicts = DatasetCatalog.get("ssd_shapes_val")
    metadata = MetadataCatalog.get("ssd_shapes_val")
    rows = []
    for size in args.eval_sizes:
        name = f"ssd_shapes_val_first_{size}"
        if name not in DatasetCatalog.list():
            DatasetCatalog.register(name, lambda size=size: dicts[:size])
            MetadataCatalog.get(name).set(
                thing_classes=metadata.thing_classes, evaluator_type=metadata.evaluator_type
            )
        loader = SSDTrainer.build_test_loader(cfg, name)
        with tempfile.TemporaryDirectory() as output:
            evaluator = SSDTrainer.build_evaluator(cfg, name, output)
            start = time.perf_counter()
            inference_on_dataset(model, loader, evaluator)
            rows.append({"images": size, "seconds": time.perf_counter() - start})
        print_row(rows[-1])
    return rows
