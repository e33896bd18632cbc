"""
CPU inference latency of the ssd_d2 SSDLite320 models next to torchvision's
ssdlite320_mobilenet_v3_large, in one process: batch 1, eval mode, torch.inference_mode,
median of repeated runs after a warm-up. The models are timed in turns, so that a shared
CPU's load changes affect them alike.

Two regimes, because random weights make post-processing unrealistically heavy:

- ``random``: weights as initialised. Every class score of every default box is close to
  1 / (K + 1), above the score threshold: the worst case for the per-class top-k and NMS.
- ``confident``: the background logit's bias is raised by the same amount in every model,
  so that no foreground score passes the threshold: the network's cost with almost no
  post-processing. A trained model's latency lies between the two.

ssd_d2's MobileNetV3 model gets torchvision's weights (with 91 classes, as torchvision's),
so that both see the same predictions and do the same post-processing work.

    python -m benchmarks.ssdlite_latency [--runs 30] [--threads 1] [--output PATH.json]
"""

import argparse
import json
import os
import platform
import statistics
import time

import torch
import torchvision
from torchvision.models.detection import ssdlite320_mobilenet_v3_large

import detectron2
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from ssd_d2 import add_ssd_config

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "..", "configs")
# A background bias that puts every foreground score below both configs' thresholds
# (0.001 with 91 classes: 1 / (e^7 + 90) < 0.001).
CONFIDENT_BACKGROUND_BIAS = 7.0


def _ssd_d2_model(config_name, *opts):
    cfg = get_cfg()
    add_ssd_config(cfg)
    cfg.merge_from_file(os.path.join(CONFIG_DIR, f"{config_name}.yaml"))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", *opts])
    return build_model(cfg).eval()


def _torchvision_weights_for_ssd_d2(state_dict):
    renames = {
        "head.classification_head.module_list.": "head.cls_score.",
        "head.regression_head.module_list.": "head.bbox_pred.",
    }
    result = {}
    for key, value in state_dict.items():
        for old, new in renames.items():
            if key.startswith(old):
                key = new + key[len(old) :]
        result[key] = value
    return result


def _class_predictors(name, model):
    """The 1x1 convs that output the class logits, and the number of logits per box."""
    if name == "torchvision_ssdlite320_mnv3":
        return [block[-1] for block in model.head.classification_head.module_list], 91
    convs = [p[-1] if isinstance(p, torch.nn.Sequential) else p for p in model.head.cls_score]
    return convs, model.num_classes + 1


@torch.inference_mode()
def _set_background_bias(name, model, value):
    convs, num_logits = _class_predictors(name, model)
    for conv in convs:
        # Logits are laid out box by box, background first in each box's num_logits.
        conv.bias[0::num_logits] = value


def build_models():
    torch.manual_seed(0)
    theirs = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None).eval()
    v3 = _ssd_d2_model("ssdlite320_mobilenet_v3_coco", "MODEL.SSD.NUM_CLASSES", "90")
    v3.load_state_dict(_torchvision_weights_for_ssd_d2(theirs.state_dict()))
    v2 = _ssd_d2_model("ssdlite320_mobilenet_v2_voc")
    return {
        "ssd_d2_ssdlite320_mnv2_voc": v2,
        "ssd_d2_ssdlite320_mnv3_coco": v3,
        "torchvision_ssdlite320_mnv3": theirs,
    }


def _run(name, model, image):
    if name.startswith("torchvision"):
        output = model([image.float() / 255])[0]
        return len(output["boxes"])
    return len(model([{"image": image}])[0]["instances"])


@torch.inference_mode()
def measure(models, image, runs, warmup):
    times = {name: [] for name in models}
    detections = {}
    for _ in range(warmup):
        for name, model in models.items():
            detections[name] = _run(name, model, image)
    for _ in range(runs):
        for name, model in models.items():
            start = time.perf_counter()
            _run(name, model, image)
            times[name].append(time.perf_counter() - start)
    return {
        name: {
            "median_ms": 1000 * statistics.median(t),
            "min_ms": 1000 * min(t),
            "detections": detections[name],
        }
        for name, t in times.items()
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30, help="timed runs per model and regime")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument(
        "--output",
        default=os.path.join(os.path.dirname(__file__), "results", "ssdlite_latency.json"),
    )
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    models = build_models()
    image = torch.randint(
        0, 256, (3, 320, 320), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    results = {"random": measure(models, image, args.runs, args.warmup)}
    for name, model in models.items():
        _set_background_bias(name, model, CONFIDENT_BACKGROUND_BIAS)
    results["confident"] = measure(models, image, args.runs, args.warmup)

    reference = "torchvision_ssdlite320_mnv3"
    threads = torch.get_num_threads()
    print(f"CPU latency, batch 1, 320x320, median of {args.runs} runs, {threads} threads")
    print(f"{'regime':<10} {'model':<30} {'median ms':>10} {'min ms':>8} {'dets':>5} {'/ tv':>6}")
    for regime, timings in results.items():
        for name, r in timings.items():
            r["ratio_to_torchvision"] = r["median_ms"] / timings[reference]["median_ms"]
            print(
                f"{regime:<10} {name:<30} {r['median_ms']:>10.1f} {r['min_ms']:>8.1f} "
                f"{r['detections']:>5} {r['ratio_to_torchvision']:>6.2f}"
            )

    report = {
        "setup": {
            "batch": 1,
            "image_size": 320,
            "runs": args.runs,
            "warmup": args.warmup,
            "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "detectron2": detectron2.__version__,
            "confident_background_bias": CONFIDENT_BACKGROUND_BIAS,
        },
        "results": results,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(report, f, indent=2)
    print(f"Wrote {args.output}")


if __name__ == "__main__":
    main()
