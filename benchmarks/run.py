"""
ssd_d2 next to torchvision's SSD, in one process, with the same weights (through
``ssd_d2.tools.convert``) and the same inputs:

- inference latency and throughput of SSD300 VGG16 and SSDLite320 MobileNetV3, batch 1 and 8,
  in two score regimes (below);
- where ssd_d2's inference time goes: preprocessing, backbone, head, decoding, NMS;
- a training step (forward, backward, SGD) of SSD300 at batch 8 on the same images and targets;
- the demo model's training step (SSDTrainer's AdamW) eager and with torch.compile, with the
  compile time;
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
  score threshold (torchvision's: 0.01 for SSD300, 0.001 for SSDLite), so the per-class top-k
  and NMS run at full load.
- ``trained``: the class logits are spread and the background logit raised until about
  ``common.TRAINED_CANDIDATES`` (box, class) pairs per image pass the threshold, as with a
  trained model.

Every figure is the median of ``--repeats`` timed runs after a warm-up; the two models are
timed in turns, so that load changes on a shared machine affect them alike, and ratios are
taken within the run. This module is the command line; each section is a function of the
module of what it measures: ``inference`` (inference, breakdown), ``training`` (train, memory),
``data_loading`` (data), ``scaling`` and ``bf16_detections``, on ``common``'s timing and model
pairs; ``report`` makes the tables.

    python -m benchmarks.run                       # CPU, all sections
    python -m benchmarks.run --device cuda --amp   # GPU, fp32 and mixed precision
    python -m benchmarks.run --sections inference train bf16_detections --bf16
    python -m benchmarks.run --sections inference breakdown --repeats 5
    python -m benchmarks.run --report benchmarks/results/cpu.json   # the tables of a run
"""

import argparse
import json
import os
import time

import torch

from benchmarks.bf16_detections import section_bf16_detections
from benchmarks.common import machine_description
from benchmarks.data_loading import section_data
from benchmarks.inference import section_breakdown, section_inference
from benchmarks.report import markdown_tables
from benchmarks.scaling import section_scaling
from benchmarks.training import memory_child, section_compile, section_memory, section_train
from ssd_d2.modeling.precision import cpu_has_fast_bf16

# The sections in the order they run (each writes its key or keys of the report).
SECTIONS = {
    "inference": section_inference,
    "breakdown": section_breakdown,
    "train": section_train,
    "compile": section_compile,
    "data": section_data,
    "memory": section_memory,
    "scaling": section_scaling,
    "bf16_detections": section_bf16_detections,
}


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
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS))
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
        memory_child(model_name, int(batch), args.device, bool(int(amp)))
        return
    if args.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
    report = {"machine": machine_description(args.device), "args": vars(args).copy()}
    for name in args.sections:
        print(f"[{name}]", flush=True)
        start = time.perf_counter()
        SECTIONS[name](args, report)
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
