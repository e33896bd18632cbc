"""An SSD300 training step of ssd_d2 next to torchvision's, the peak memory of training, and the
demo model's training step eager next to torch.compile'd."""

import copy
import json
import os
import subprocess
import sys
import tempfile

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
    timed,
)
from ssd_d2.convert import coco_category_ids
from ssd_d2.engine import SSDTrainer
from ssd_d2.modeling.precision import training_autocast_dtype


def training_batch(batch: int, device: str, seed=2, size=300, num_classes=80):
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
        classes = torch.randint(0, num_classes, (count,), generator=g).to(device)
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


def section_compile(args, report):
    """
    The demo model's training step as SSDTrainer runs it (forward with the losses, backward,
    its AdamW with gradient clipping), in float32 at 8 images (one process of the quick start's
    two): eager, and with the network (backbone and head) compiled by torch.compile (inductor).
    compile_s is what the first two compiled steps take beyond two steady ones, with an empty
    compile cache (a new user's first run); break_even is
    the iterations after which compiling has paid for itself (none when it is not faster).
    """
    # A new user's first run: no kernels compiled by an earlier run to reuse.
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="ssd_d2_inductor_")
    cfg = load_cfg("ssd160_shapes_demo", args.device, "SOLVER.AMP.ENABLED", "False")
    torch.manual_seed(0)
    eager = build_model(cfg).train()
    compiled = copy.deepcopy(eager)
    compiled.backbone = torch.compile(compiled.backbone)
    compiled.head = torch.compile(compiled.head)
    inputs, _ = training_batch(8, args.device, size=160, num_classes=cfg.MODEL.SSD.NUM_CLASSES)

    def step_fn(model):
        optimizer = SSDTrainer.build_optimizer(cfg, model)

        def step():
            loss = sum(model(inputs).values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        return step

    with EventStorage():
        steps = {"eager": step_fn(eager), "compiled": step_fn(compiled)}
        first_two = timed(lambda: (steps["compiled"](), steps["compiled"]()), args.device)
        t = median_times(steps, args.device, args.repeats, args.warmup)
    row = {"model": "ssd160_shapes_demo", "batch": 8, "precision": "fp32"}
    row.update(eager_ms=1000 * t["eager"], compiled_ms=1000 * t["compiled"])
    row["compile_s"] = first_two - 2 * t["compiled"]
    saved = t["eager"] - t["compiled"]
    row["break_even"] = round(row["compile_s"] / saved) if saved > 0 else None
    row["threads"] = torch.get_num_threads()
    print_row(row)
    report["compile"] = [row]


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
