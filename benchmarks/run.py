"""
ssd_d2 next to torchvision's SSD, in one process, with the same weights (through
``ssd_d2.tools.convert``) and the same inputs:

- inference latency and throughput of SSD300 VGG16 and SSDLite320 MobileNetV3, batch 1 and 8,
  in two score regimes (below);
- where ssd_d2's inference time goes: preprocessing, backbone, head, decoding, NMS;
- a training step (forward, backward, SGD) of SSD300 at batch 8 on the same images and targets;
- ``SSDDatasetMapper``'s full augmentation chain on 500x375 JPEGs, in one process and through
  a DataLoader with workers;
- peak memory of SSD300 training at batch 8 and 32 (RSS of a fresh process on the CPU,
  allocated GPU memory on a GPU);
- inference time against batch size, and evaluation time against data set size;
- on a CPU with bfloat16 arithmetic (``--bf16``): ssd_d2 in bf16 (``TEST.PRECISION bf16`` for
  inference, bf16 autocast for training) next to torchvision under bf16 autocast and both in
  fp32, and how many of the trained demo model's fp32 detections its bf16 inference keeps.

Score regimes, which decide the post-processing work:

- ``worst``: random weights; nearly every class of every default box scores above the
  score threshold (torchvision's: 0.01 for SSD300, 0.001 for SSDLite), so the per-class top-k and NMS run at full load.
- ``trained``: the class logits are spread and the background logit raised until about
  ``TRAINED_CANDIDATES`` (box, class) pairs per image pass the threshold, as with a trained
  model.

Every figure is the median of ``--repeats`` timed runs after a warm-up; the two models are
timed in turns, so that load changes on a shared machine affect them alike, and ratios are
taken within the run.

    python -m benchmarks.run                       # CPU, all sections
    python -m benchmarks.run --device cuda --amp   # GPU, fp32 and mixed precision
    python -m benchmarks.run --sections inference train bf16_detections --bf16
    python -m benchmarks.run --sections inference breakdown --repeats 5
    python -m benchmarks.run --report benchmarks/results/cpu.json   # the tables of a run
"""

import argparse
import contextlib
import copy
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List, Tuple

import cv2
import numpy as np
import torch
import torchvision
from torchvision.models.detection import ssd300_vgg16, ssdlite320_mobilenet_v3_large

import detectron2
from detectron2.data import DatasetFromList, MapDataset
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances, pairwise_iou

from ssd_d2 import SSDDatasetMapper
from ssd_d2.config import load_config
from ssd_d2.convert import coco_category_ids, convert
from ssd_d2.model_zoo import ZOO
from ssd_d2.modeling import meta_arch
from ssd_d2.modeling.precision import cpu_has_fast_bf16

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "..", "configs")
SECTIONS = ["inference", "breakdown", "train", "data", "memory", "scaling", "bf16_detections"]
TRAINED_CANDIDATES = 200
# (name, torchvision builder, ssd_d2 config) of the detector pairs compared.
PAIRS = [
    # torchvision's default boxes, matching and clipping rules (the VGG16 SSD's other configs
    # follow lufficc/SSD's), so that both models return the same detections.
    ("ssd300_vgg16", ssd300_vgg16, "ssd300_coco_torchvision"),
    ("ssdlite320_mobilenet_v3", ssdlite320_mobilenet_v3_large, "ssdlite320_mobilenet_v3_coco"),
]


def load_cfg(config_name: str, device: str, *opts):
    return load_config(
        os.path.join(CONFIG_DIR, f"{config_name}.yaml"), ["MODEL.DEVICE", device, *opts]
    )


def synchronize(device: str):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable, device: str) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def median_times(fns: Dict[str, Callable], device: str, repeats: int, warmup: int):
    """Median seconds of each function, timed in turns."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(timed(fn, device))
    return {name: statistics.median(t) for name, t in times.items()}


# ----------------------------------------------------------------------------------------
# The model pairs
# ----------------------------------------------------------------------------------------


def _class_convs(torchvision_model):
    """torchvision's last class-logit conv of each level."""
    convs = []
    for block in torchvision_model.head.classification_head.module_list:
        convs.append(block[-1] if isinstance(block, torch.nn.Sequential) else block)
    return convs


@torch.no_grad()
def _set_regime(model, regime: str, images: List[torch.Tensor]):
    """
    Give torchvision's model the score distribution of ``regime``. The 11 COCO ids without a
    category get a very low logit (as in a trained model), so that the 80-class conversion
    computes the same softmax.
    """
    used = torch.tensor(coco_category_ids(), device=images[0].device)
    unused = [i for i in range(1, 91) if i not in coco_category_ids()]
    convs = _class_convs(model)
    if regime == "trained":
        # Spread the categories' logits (std 2); the background is raised below.
        batch = model.transform(images)[0].tensors
        features = list(model.backbone(batch).values())
        blocks = model.head.classification_head.module_list
        for conv, block, feature in zip(convs, blocks, features):
            x = block[:-1](feature) if isinstance(block, torch.nn.Sequential) else feature
            out = conv(x)
            out = out.view(len(images), -1, 91, *out.shape[-2:])[:, :, used]
            conv.weight.mul_(2.0 / out.std())
    for conv in convs:
        conv.weight.view(-1, 91, *conv.weight.shape[1:])[:, unused] = 0.0
        conv.bias.view(-1, 91)[:, unused] = -30.0
    if regime == "worst":
        return
    # Raise the background until about TRAINED_CANDIDATES (box, class) pairs per image pass
    # the score threshold.
    logits = []
    for conv, block, feature in zip(convs, blocks, features):
        x = block[:-1](feature) if isinstance(block, torch.nn.Sequential) else feature
        out = conv(x)
        n, _, h, w = out.shape
        logits.append(out.view(n, -1, 91, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, 91))
    logits = torch.cat(logits, dim=1)
    low, high = 0.0, 30.0
    for _ in range(40):
        bias = (low + high) / 2
        shifted = logits.clone()
        shifted[..., 0] += bias
        passing = (shifted.softmax(-1)[..., 1:] > model.score_thresh).sum().item() / len(images)
        low, high = (bias, high) if passing > TRAINED_CANDIDATES else (low, bias)
    for conv in convs:
        conv.bias.view(-1, 91)[:, 0] += high


def build_ours(theirs, config_name: str, device: str, *opts):
    """The ssd_d2 model of ``config_name`` (and ``opts``) with the settings of ``theirs``."""
    cfg = load_cfg(
        config_name,
        device,
        # torchvision's inference settings, so that both do the same work.
        "MODEL.SSD.SCORE_THRESH_TEST",
        str(theirs.score_thresh),
        "MODEL.SSD.NMS_THRESH_TEST",
        str(theirs.nms_thresh),
        "MODEL.SSD.TOPK_CANDIDATES_TEST",
        str(theirs.topk_candidates),
        "TEST.DETECTIONS_PER_IMAGE",
        str(theirs.detections_per_img),
        *ZOO[config_name].opts,  # torchvision's layout (MobileNetV3's halved tail)
        *opts,
    )
    return build_model(cfg).eval()


def build_pair(builder, config_name: str, regime: str, device: str, images):
    """torchvision's model and the ssd_d2 model converted from its weights, both in eval."""
    torch.manual_seed(0)
    theirs = builder(weights=None, weights_backbone=None).eval().to(device)
    _set_regime(theirs, regime, [x.float() / 255 for x in images[:2]])
    ours = build_ours(theirs, config_name, device)
    weights = {k: v.cpu() for k, v in theirs.state_dict().items()}
    layout = list(ZOO[config_name].opts)
    ours.load_state_dict(convert("torchvision", weights, config_name + ".yaml", layout).state_dict)
    return ours, theirs


def random_images(count: int, seed: int, height=375, width=500, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randint(0, 256, (3, height, width), generator=g, dtype=torch.uint8).to(device)
        for _ in range(count)
    ]


def autocast(device: str, enabled: bool, dtype=torch.float16):
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def under_bf16(fn: Callable, device: str) -> Callable:
    """``fn`` run under bfloat16 autocast (torchvision's way to lower precision)."""

    def run():
        with autocast(device, True, torch.bfloat16):
            return fn()

    return run


def bf16_times(t: Dict[str, float]) -> dict:
    """
    The figures of a bf16 row from ``median_times`` of "ssd_d2" and "torchvision" in bf16 and
    "ssd_d2_fp32" and "torchvision_fp32": ratio compares the two in bf16, as in the other rows.
    """
    row = {f"{name}_ms": 1000 * seconds for name, seconds in t.items()}
    row["ratio"] = t["ssd_d2"] / t["torchvision"]
    row["ratio_vs_torchvision_fp32"] = t["ssd_d2"] / t["torchvision_fp32"]
    row["ratio_vs_ssd_d2_fp32"] = t["ssd_d2"] / t["ssd_d2_fp32"]
    return row


def calibrated_pairs(device: str):
    """(name, config name, regime, 8 random images, ssd_d2 model, torchvision model) for each
    pair and score regime."""
    for name, builder, config_name in PAIRS:
        for regime in ("trained", "worst"):
            images = random_images(8, seed=1, device=device)
            yield (name, config_name, regime, images) + build_pair(
                builder, config_name, regime, device, images
            )


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


def print_row(row: dict):
    print("  " + "  ".join(f"{k}={_fmt(v)}" for k, v in row.items()), flush=True)


def _fmt(value):
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


# ----------------------------------------------------------------------------------------
# Where the inference time goes
# ----------------------------------------------------------------------------------------


class _NMSTimer:
    """Wraps the NMS that SSD.inference calls, adding up its time."""

    def __init__(self, device):
        self.device, self.seconds, self.nms = device, 0.0, meta_arch.grouped_nms

    def __call__(self, *args):
        synchronize(self.device)
        start = time.perf_counter()
        result = self.nms(*args)
        synchronize(self.device)
        self.seconds += time.perf_counter() - start
        return result


def stage_times(model, inputs, device) -> Dict[str, float]:
    """Seconds of each inference stage of an ssd_d2 model, one run."""
    from detectron2.layers import cat
    from detectron2.modeling import detector_postprocess
    from detectron2.modeling.meta_arch.dense_detector import permute_to_N_HWA_K

    times, clock = {}, [time.perf_counter()]

    def lap(stage):
        synchronize(device)
        now = time.perf_counter()
        times[stage] = now - clock[0]
        clock[0] = now

    synchronize(device)
    clock[0] = time.perf_counter()
    images = model.preprocess_image(inputs)
    lap("preprocess")
    features = model.backbone(images)
    features = [features[f] for f in model.head_in_features]
    lap("backbone")
    logits, deltas = model.head(features)
    lap("head")
    nms_timer = _NMSTimer(device)
    meta_arch.grouped_nms = nms_timer
    try:
        anchors = Boxes.cat(model.anchor_generator(features))
        logits = cat([permute_to_N_HWA_K(x, model.num_classes + 1) for x in logits], 1)
        deltas = cat([permute_to_N_HWA_K(x, 4) for x in deltas], 1)
        results = model.inference(anchors, logits, deltas)
        for r, x in zip(results, inputs):
            detector_postprocess(r, x["image"].shape[-2], x["image"].shape[-1])
    finally:
        meta_arch.grouped_nms = nms_timer.nms
    lap("decode")
    times["decode"] -= nms_timer.seconds
    times["nms"] = nms_timer.seconds
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


# ----------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------


def training_batch(batch: int, device: str, seed=2, size=300):
    """Images at the network size and 1-6 random boxes each, in both models' formats."""
    g = torch.Generator().manual_seed(seed)
    images = random_images(batch, seed, size, size, device)
    coco_ids = torch.tensor(coco_category_ids())
    ours, theirs_targets = [], []
    for image in images:
        count = int(torch.randint(1, 7, (1,), generator=g))
        xy = torch.rand(count, 2, generator=g) * size * 0.7
        wh = torch.rand(count, 2, generator=g) * size * 0.3 + 8
        boxes = torch.cat([xy, (xy + wh).clamp(max=size)], dim=1).to(device)
        classes = torch.randint(0, 80, (count,), generator=g).to(device)
        instances = Instances((size, size), gt_boxes=Boxes(boxes), gt_classes=classes)
        ours.append({"image": image, "instances": instances})
        theirs_targets.append({"boxes": boxes, "labels": coco_ids.to(device)[classes]})
    theirs_images = [x.float() / 255 for x in images]
    return ours, (theirs_images, theirs_targets)


def train_step_fn(model, inputs, is_torchvision, amp, device, dtype=torch.float16):
    """
    One SGD step (forward, backward, update), under autocast to ``dtype`` if ``amp``, with a
    GradScaler for float16 (bfloat16 has float32's exponent range: no gradient underflows).
    """
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=5e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=amp and dtype == torch.float16)
    model.train()

    def step():
        with autocast(device, amp, dtype):
            losses = model(*inputs) if is_torchvision else model(inputs)
            loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return step


def build_training_pair(device: str, batch: int):
    images = random_images(2, seed=1, device=device)
    ours, theirs = build_pair(ssd300_vgg16, "ssd300_coco_torchvision", "worst", device, images)
    ours_inputs, theirs_inputs = training_batch(batch, device)
    return ours, theirs, ours_inputs, theirs_inputs


def section_train(args, report):
    from detectron2.utils.events import EventStorage

    rows = []
    ours, theirs, ours_inputs, theirs_inputs = build_training_pair(args.device, 8)
    for amp in args.precisions:
        with EventStorage():
            t = median_times(
                {
                    "ssd_d2": train_step_fn(ours, ours_inputs, False, amp, args.device),
                    "torchvision": train_step_fn(theirs, theirs_inputs, True, amp, args.device),
                },
                args.device,
                args.repeats,
                args.warmup,
            )
        row = {
            "model": "ssd300_vgg16",
            "batch": 8,
            "precision": "amp" if amp else "fp32",
            "ssd_d2_ms": 1000 * t["ssd_d2"],
            "torchvision_ms": 1000 * t["torchvision"],
            "ratio": t["ssd_d2"] / t["torchvision"],
        }
        rows.append(row)
        print_row(row)
    if args.bf16:
        # Copies, so that each timed step updates its own weights and optimizer.
        ours_bf16, theirs_bf16 = copy.deepcopy(ours), copy.deepcopy(theirs)
        # ssd_d2's own bf16 training (SOLVER.AMP.ENABLED on a CPU): autocast around the network
        # only, decoding and the losses in fp32.
        ours_bf16.train_autocast_dtype = torch.bfloat16
        device = args.device
        with EventStorage():
            t = median_times(
                {
                    "ssd_d2": train_step_fn(ours_bf16, ours_inputs, False, False, device),
                    "torchvision": train_step_fn(
                        theirs_bf16, theirs_inputs, True, True, device, torch.bfloat16
                    ),
                    "ssd_d2_fp32": train_step_fn(ours, ours_inputs, False, False, device),
                    "torchvision_fp32": train_step_fn(theirs, theirs_inputs, True, False, device),
                },
                device,
                args.repeats,
                args.warmup,
            )
        row = {"model": "ssd300_vgg16", "batch": 8, "precision": "bf16"}
        row.update(bf16_times(t))
        rows.append(row)
        print_row(row)
    report["train"] = rows


# ----------------------------------------------------------------------------------------
# Data pipeline
# ----------------------------------------------------------------------------------------


def write_voc_like_images(folder: str, count: int, seed=3) -> List[dict]:
    """500x375 JPEGs of smooth backgrounds with filled boxes, and their dataset dicts."""
    rng = np.random.default_rng(seed)
    dicts = []
    yy, xx = np.mgrid[0:375, 0:500]
    for i in range(count):
        base = rng.integers(0, 256, 3)
        image = (base + 0.2 * xx[..., None] * rng.uniform(-1, 1, 3)).clip(0, 255)
        image = (image + rng.normal(0, 8, image.shape)).clip(0, 255).astype(np.uint8)
        annotations = []
        for _ in range(int(rng.integers(1, 6))):
            x0, y0 = rng.integers(0, 400), rng.integers(0, 300)
            x1, y1 = x0 + rng.integers(20, 100), y0 + rng.integers(20, 75)
            cv2.rectangle(
                image, (int(x0), int(y0)), (int(x1), int(y1)), rng.integers(0, 256, 3).tolist(), -1
            )
            annotations.append(
                {
                    "bbox": [float(x0), float(y0), float(x1), float(y1)],
                    "bbox_mode": 0,
                    "category_id": int(rng.integers(0, 20)),
                }
            )
        path = os.path.join(folder, f"{i:04d}.jpg")
        cv2.imwrite(path, image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        dicts.append(
            {
                "file_name": path,
                "height": 375,
                "width": 500,
                "image_id": i,
                "annotations": annotations,
            }
        )
    return dicts


def section_data(args, report):
    cfg = load_cfg("ssd300_voc", "cpu")
    mapper = SSDDatasetMapper(cfg, is_train=True)
    with tempfile.TemporaryDirectory() as folder:
        dicts = write_voc_like_images(folder, 100)
        for d in dicts[:10]:
            mapper(copy.deepcopy(d))
        start = time.perf_counter()
        for _ in range(args.data_rounds):
            for d in dicts:
                mapper(copy.deepcopy(d))
        per_process = args.data_rounds * len(dicts) / (time.perf_counter() - start)
        row = {"mapper_images_per_s_one_process": per_process}

        dataset = MapDataset(DatasetFromList(dicts * args.data_rounds * 2, copy=True), mapper)
        for workers in sorted({0, args.workers}):
            loader = torch.utils.data.DataLoader(
                dataset, batch_size=8, num_workers=workers, collate_fn=lambda batch: batch
            )
            iterator = iter(loader)
            next(iterator)  # workers started
            start, count = time.perf_counter(), 0
            for batch in iterator:
                count += len(batch)
            row[f"loader_images_per_s_{workers}_workers"] = count / (time.perf_counter() - start)
    row["threads"] = torch.get_num_threads()
    print_row(row)
    report["data"] = row


# ----------------------------------------------------------------------------------------
# Memory
# ----------------------------------------------------------------------------------------


def _memory_child(model_name: str, batch: int, device: str, amp: bool):
    """Two training steps of one SSD300 in this process; print its peak memory in MiB."""
    from detectron2.utils.events import EventStorage

    torch.manual_seed(0)
    ours_inputs, theirs_inputs = training_batch(batch, device)
    if model_name == "ssd_d2":
        model, inputs = build_model(load_cfg("ssd300_coco_torchvision", device)), ours_inputs
    else:
        model, inputs = ssd300_vgg16(weights=None, weights_backbone=None).to(device), theirs_inputs
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    step = train_step_fn(model, inputs, model_name == "torchvision", amp, device)
    with EventStorage():
        step()
        step()
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"peak_mib": peak}))


def section_memory(args, report):
    rows = []
    for batch in args.memory_batches:
        for amp in args.precisions:
            row = {"model": "ssd300_vgg16", "batch": batch, "precision": "amp" if amp else "fp32"}
            for model_name in ("ssd_d2", "torchvision"):
                command = [sys.executable, "-m", "benchmarks.run", "--device", args.device]
                command += ["--memory-child", model_name, str(batch), str(int(amp))]
                out = subprocess.run(
                    command,
                    capture_output=True,
                    text=True,
                    check=True,
                    cwd=os.path.dirname(CONFIG_DIR),
                ).stdout
                row[f"{model_name}_peak_mib"] = json.loads(out.strip().splitlines()[-1])["peak_mib"]
            row["kind"] = "gpu_allocated" if args.device.startswith("cuda") else "cpu_rss"
            rows.append(row)
            print_row(row)
    report["memory"] = rows


# ----------------------------------------------------------------------------------------
# Scaling
# ----------------------------------------------------------------------------------------


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
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.evaluation import inference_on_dataset

    from ssd_d2 import SSDTrainer

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


# ----------------------------------------------------------------------------------------
# bf16 detections next to fp32 ones
# ----------------------------------------------------------------------------------------

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
    from ssd_d2 import SSDTrainer
    from ssd_d2.engine import load_weights

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


# ----------------------------------------------------------------------------------------


def markdown_tables(report: dict) -> str:
    """The report's figures as the Markdown tables of docs/speed.md."""
    lines = []

    def table(header, rows):
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        lines.extend("| " + " | ".join(str(c) for c in row) + " |" for row in rows)
        lines.append("")

    if "inference" in report:
        table(
            [
                "model",
                "regime",
                "batch",
                "precision",
                "ssd_d2 ms",
                "torchvision ms",
                "ratio",
                "ssd_d2 img/s",
                "detections (ssd_d2 / tv)",
            ],
            [
                [
                    r["model"],
                    r["regime"],
                    r["batch"],
                    r["precision"],
                    f"{r['ssd_d2_ms']:.1f}",
                    f"{r['torchvision_ms']:.1f}",
                    f"{r['ratio']:.2f}",
                    f"{r['ssd_d2_images_per_s']:.1f}",
                    f"{r['detections']['ssd_d2']} / {r['detections']['torchvision']}",
                ]
                for r in report["inference"]
                if r["precision"] != "bf16"
            ],
        )
    if "breakdown" in report:
        stages = ["preprocess", "backbone", "head", "decode", "nms"]
        table(
            ["model", "regime (batch 8)", "total ms"] + stages + ["decode + NMS"],
            [
                [r["model"], r["regime"], f"{r['total_ms']:.1f}"]
                + [f"{100 * r[f'{k}_share']:.1f}%" for k in stages]
                + [f"{100 * r['postprocess_share']:.1f}%"]
                for r in report["breakdown"]
            ],
        )
    if "train" in report:
        table(
            ["training step, SSD300 batch 8", "ssd_d2 ms", "torchvision ms", "ratio"],
            [
                [
                    r["precision"],
                    f"{r['ssd_d2_ms']:.0f}",
                    f"{r['torchvision_ms']:.0f}",
                    f"{r['ratio']:.2f}",
                ]
                for r in report["train"]
                if r["precision"] != "bf16"
            ],
        )
    bf16_header = ["ssd_d2 bf16 ms", "ssd_d2 fp32 ms", "torchvision bf16 ms", "torchvision fp32 ms"]
    bf16_header += ["ratio vs tv bf16", "vs tv fp32", "vs ssd_d2 fp32"]

    def bf16_cells(r, digits):
        times = ["ssd_d2", "ssd_d2_fp32", "torchvision", "torchvision_fp32"]
        ratios = ["ratio", "ratio_vs_torchvision_fp32", "ratio_vs_ssd_d2_fp32"]
        return [f"{r[f'{k}_ms']:.{digits}f}" for k in times] + [f"{r[k]:.2f}" for k in ratios]

    bf16_rows = [r for r in report.get("inference", []) if r["precision"] == "bf16"]
    if bf16_rows:
        table(
            ["model", "regime", "batch"] + bf16_header + ["detections bf16 (ssd_d2 / tv)"],
            [
                [r["model"], r["regime"], r["batch"]]
                + bf16_cells(r, 1)
                + [f"{r['detections']['ssd_d2']} / {r['detections']['torchvision']}"]
                for r in bf16_rows
            ],
        )
    bf16_rows = [r for r in report.get("train", []) if r["precision"] == "bf16"]
    if bf16_rows:
        table(
            ["training step, SSD300 batch 8"] + bf16_header,
            [["bf16"] + bf16_cells(r, 0) for r in bf16_rows],
        )
    if "bf16_detections" in report:
        agreement = report["bf16_detections"]
        if "skipped" in agreement:
            lines.extend(
                [f"bf16 detections of the demo model: skipped ({agreement['skipped']})", ""]
            )
        else:
            table(
                [
                    f"demo model, {agreement['rows'][0]['images']} images of "
                    f"{agreement['dataset']}, score >=",
                    "fp32 detections",
                    "bf16 detections",
                    f"fp32 ones matched in bf16 (same class, IoU >= {agreement['iou_thresh']})",
                    "max score difference",
                ],
                [
                    [
                        r["score_thresh"],
                        r["fp32_detections"],
                        r["bf16_detections"],
                        f"{r['matched']} ({100 * r['matched_share']:.1f}%)",
                        f"{r['max_score_diff']:.4f}",
                    ]
                    for r in agreement["rows"]
                ],
            )
    if "data" in report:
        table(
            ["data pipeline (500x375 JPEGs, full SSD augmentation)", "images/s"],
            [[k, f"{v:.0f}"] for k, v in report["data"].items() if k != "threads"],
        )
    if "memory" in report:
        table(
            ["peak memory, SSD300 training", "batch", "precision", "ssd_d2 MiB", "torchvision MiB"],
            [
                [r["kind"], r["batch"], r["precision"]]
                + [f"{r[f'{model}_peak_mib']:.0f}" for model in ("ssd_d2", "torchvision")]
                for r in report["memory"]
            ],
        )
    if "scaling_batch" in report:
        table(
            ["SSD300 inference, batch", "ms", "ms per image"],
            [
                [r["batch"], f"{r['ms']:.1f}", f"{r['ms_per_image']:.1f}"]
                for r in report["scaling_batch"]
            ],
        )
        table(
            ["evaluation of the demo model, images", "seconds"],
            [[r["images"], f"{r['seconds']:.1f}"] for r in report["scaling_eval"]],
        )
    return "\n".join(lines)


def machine_description(device: str) -> dict:
    info = {
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "detectron2": detectron2.__version__,
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
    return info


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--amp", action="store_true", help="also time mixed precision (cuda)")
    parser.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        help="also time bfloat16 on the CPU (ssd_d2 with TEST.PRECISION bf16 and bf16 training "
        "autocast, torchvision under bf16 autocast) and compare the demo model's bf16 "
        "detections with its fp32 ones; default: on where the CPU has AVX512-BF16 or AMX "
        f"(this one: {'on' if cpu_has_fast_bf16() else 'off'})",
    )
    parser.add_argument(
        "--demo-weights",
        default=os.path.join("output", "ssd160_shapes_demo", "model_final.pth"),
        help="the trained demo model (configs/ssd160_shapes_demo.yaml) for bf16_detections",
    )
    parser.add_argument("--sections", nargs="+", default=SECTIONS, choices=SECTIONS)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="inference batches")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per figure")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    parser.add_argument("--data-rounds", type=int, default=3, help="passes over 100 images")
    parser.add_argument("--memory-batches", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--eval-sizes", type=int, nargs="+", default=[50, 100, 200])
    parser.add_argument("--output", default="", help="JSON file (default: results/<device>.json)")
    parser.add_argument("--report", help="print the tables of a results JSON and exit")
    parser.add_argument("--memory-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.amp and not args.device.startswith("cuda"):
        parser.error("--amp needs --device cuda")
    args.precisions = [False, True] if args.amp else [False]
    bf16_capable = torch.device(args.device).type == "cpu" and cpu_has_fast_bf16()
    if args.bf16 and not bf16_capable:
        parser.error("--bf16 needs --device cpu on a CPU with AVX512-BF16 or AMX")
    if args.bf16 is None:
        args.bf16 = bf16_capable
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.report:
        with open(args.report) as f:
            print(markdown_tables(json.load(f)))
        return
    if args.memory_child:
        model_name, batch, amp = args.memory_child
        _memory_child(model_name, int(batch), args.device, bool(int(amp)))
        return
    if args.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
    report = {"machine": machine_description(args.device), "args": vars(args).copy()}
    sections = {name: globals()[f"section_{name}"] for name in SECTIONS}
    for name in args.sections:
        print(f"[{name}]", flush=True)
        start = time.perf_counter()
        sections[name](args, report)
        print(f"[{name}] {time.perf_counter() - start:.0f} s", flush=True)
    output = args.output or os.path.join(
        os.path.dirname(__file__), "results", f"{args.device.split(':')[0]}.json"
    )
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w") as f:
        json.dump(report, f, indent=2)
    print(markdown_tables(report))
    print(f"Wrote {output}")


if __name__ == "__main__":
    main()
