"""An SSD300 training step of ssd_d2 next to torchvision's, and the peak memory of training."""

import copy
import json
import os
import subprocess
import sys

import torch
from torchvision.models.detection import ssd300_vgg16

from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from benchmarks.common import (
    CONFIG_DIR,
    autocast,
    bf16_times,
    build_pair,
    load_cfg,
    median_times,
    print_row,
    random_images,
)
from ssd_d2.convert import coco_category_ids
from ssd_d2.modeling.precision import training_autocast_dtype


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
        # only, decoding and the losses in fp32; --bf16 is for CPUs that have it.
        ours_bf16.train_autocast_dtype = training_autocast_dtype(True, args.device)
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
# Memory
# ----------------------------------------------------------------------------------------


def memory_child(model_name: str, batch: int, device: str, amp: bool):
    """Two training steps of one SSD300 in this process; print its peak memory in MiB."""
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
        # This process's own peak (KiB): ru_maxrss would start at the parent's, which a child
        # inherits through fork and keeps through exec on Linux.
        with open("/proc/self/status") as f:
            peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024
    print(json.dumps({"peak_mib": peak}))


def section_memory(args, report):
    rows = []
    for batch in args.memory_batches:
        for amp in args.precisions:
            row = {"model": "ssd300_vgg16", "batch": batch, "precision": "amp" if amp else "fp32"}
            for model_name in ("ssd_d2", "torchvision"):
                # A fresh process per model, so that its peak RSS is the model's alone.
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
