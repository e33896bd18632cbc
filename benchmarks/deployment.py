"""
The deployed SSD next to torchvision's eager one, in one process: SSD300 VGG16 and SSDLite320
MobileNetV3 with the same (converted, random, "trained" score regime: see benchmarks.run)
weights, at batch 1 and 8, as

- torchvision eager float32 (the reference of every ratio), ssd_d2 eager float32 and, on a
  CPU with AVX512-BF16 or AMX, bfloat16 (TEST.PRECISION bf16);
- ssd_d2's exports: ONNX Runtime float32 / int8 and OpenVINO float32 / int8, each through
  ``ExportedSSD`` (resizing and box scaling included, as eager inference does them), int8
  calibrated on ``ssd_shapes_train`` images.

Every model gets the same 500x375 images; a figure is the median of ``--repeats`` runs after a
warm-up, the models timed in turns. With ``--accuracy``, the trained demo models' COCO AP of
each export next to eager float32, evaluated as ``train_net.py --eval-only`` evaluates them.

    python -m benchmarks.deployment
    python -m benchmarks.deployment --accuracy \\
        ssd_shapes=output/ssd160_shapes_demo/model_final.pth \\
        toy_signs=output/ssd160_toy_signs_demo/model_final.pth
    python -m benchmarks.deployment --report benchmarks/results/deployment_cpu.json
"""

import argparse
import json
import os
import tempfile

import torch

from detectron2.evaluation import inference_on_dataset

from benchmarks.common import (
    CONFIG_DIR,
    PAIRS,
    build_ours,
    build_pair,
    load_cfg,
    machine_description,
    median_times,
    random_images,
)
from ssd_d2.config import load_config
from ssd_d2.engine import SSDTrainer, load_weights
from ssd_d2.export import ExportedSSD, export_model
from ssd_d2.modeling.precision import cpu_has_fast_bf16
from ssd_d2.tools.export import calibration_images

EXPORTS = [  # (row name, format, precision, file extension)
    ("ONNX Runtime fp32", "onnx", "fp32", ".onnx"),
    ("ONNX Runtime int8", "onnx", "int8", ".onnx"),
    ("OpenVINO fp32", "openvino", "fp32", ".xml"),
    ("OpenVINO int8", "openvino", "int8", ".xml"),
]
CONFIGS = {"ssd_shapes": "ssd160_shapes_demo", "toy_signs": "ssd160_toy_signs_demo"}


# The CPU features that decide int8 and bf16 speed.
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8")


def cpu_flags():
    """The CPU_FLAGS this CPU has (Linux: /proc/cpuinfo), and its model name."""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return [], "unknown"
    flags = set(next((l for l in text.splitlines() if l.startswith("flags")), "").split())
    name = next(
        (l.split(":", 1)[1].strip() for l in text.splitlines() if l.startswith("model name")), ""
    )
    return [f for f in CPU_FLAGS if f in flags], name


def runtime_versions():
    import onnxruntime
    import openvino

    return {"onnxruntime": onnxruntime.__version__, "openvino": openvino.__version__}


def export_all(model, cfg, folder: str, calibration_count: int):
    """{row name: ExportedSSD} of ``model`` in every format and precision of EXPORTS."""
    calibration = calibration_images(cfg, calibration_count, model.image_size, torch.uint8)
    exported = {}
    for name, format, precision, ext in EXPORTS:
        path = os.path.join(folder, f"{format}_{precision}{ext}")
        export_model(model, format, path, precision=precision, calibration=calibration)
        exported[name] = ExportedSSD(path, {}, "cpu")
    return exported


def section_speed(args, report):
    rows = report.setdefault("speed", [])
    images = random_images(max(args.batches), seed=1)
    for model_name, builder, config_name in PAIRS:
        ours, theirs = build_pair(builder, config_name, "trained", "cpu", images)
        runners = {"torchvision eager fp32": theirs, "ssd_d2 eager fp32": ours}
        if args.bf16:
            bf16 = build_ours(theirs, config_name, "cpu", "TEST.PRECISION", "bf16")
            bf16.load_state_dict(ours.state_dict())
            runners["ssd_d2 eager bf16"] = bf16
        # Calibration images like the ones a deployment meets, not random noise.
        cfg = load_cfg(config_name, "cpu", "DATASETS.TRAIN", "('ssd_shapes_train',)")
        with tempfile.TemporaryDirectory() as folder:
            runners.update(export_all(ours, cfg, folder, args.calibration_images))
            for batch in args.batches:
                inputs = [{"image": x} for x in images[:batch]]
                floats = [x.float() / 255 for x in images[:batch]]

                def call(name, runner):
                    if name.startswith("torchvision"):
                        return lambda: runner(floats)
                    return lambda: runner(inputs)

                with torch.no_grad():
                    fns = {name: call(name, runner) for name, runner in runners.items()}
                    seconds = median_times(fns, "cpu", args.repeats, args.warmup)
                reference = seconds["torchvision eager fp32"]
                for name, t in seconds.items():
                    row = {"model": model_name, "batch": batch, "runtime": name}
                    row.update(ms_per_image=1000 * t / batch, ratio=t / reference)
                    rows.append(row)
                    print(
                        f"{model_name} b{batch} {name}: {row['ms_per_image']:.1f} ms/img "
                        f"({row['ratio']:.2f})",
                        flush=True,
                    )


def evaluate(cfg, model) -> dict:
    dataset = cfg.DATASETS.TEST[0]
    loader = SSDTrainer.build_test_loader(cfg, dataset)
    with tempfile.TemporaryDirectory() as folder:
        evaluator = SSDTrainer.build_evaluator(cfg, dataset, output_folder=folder)
        return inference_on_dataset(model, loader, evaluator)["bbox"]


def section_accuracy(args, report):
    rows = report.setdefault("accuracy", [])
    for item in args.accuracy:
        dataset, weights = item.split("=", 1)
        config = os.path.join(CONFIG_DIR, f"{CONFIGS[dataset]}.yaml")
        opts = ["MODEL.WEIGHTS", weights, "TEST.PRECISION", "fp32", "MODEL.DEVICE", "cpu"]
        cfg = load_config(config, opts)
        model = SSDTrainer.build_model(cfg)
        load_weights(model, cfg)
        models = {"ssd_d2 eager fp32": model}
        with tempfile.TemporaryDirectory() as folder:
            models.update(export_all(model, cfg, folder, args.calibration_images))
            for name, runner in models.items():
                metrics = evaluate(cfg, runner)
                rows.append(
                    {
                        "dataset": dataset,
                        "runtime": name,
                        "AP": metrics["AP"],
                        "AP50": metrics["AP50"],
                    }
                )
                print(
                    f"{dataset} {name}: AP {metrics['AP']:.2f} AP50 {metrics['AP50']:.2f}",
                    flush=True,
                )


def markdown(report) -> str:
    m = report["machine"]
    lines = [
        f"CPU: {m['cpu']} ({m['cpu_count']} cores, {m['threads']} torch threads), flags: "
        f"{' '.join(m['cpu_flags'])}; torch {m['torch']}, onnxruntime {m['onnxruntime']}, "
        f"OpenVINO {m['openvino'].split('-')[0]}",
        "",
        "ms per image (ratio to torchvision eager fp32):",
        "",
    ]
    speed = report.get("speed", [])
    if speed:
        columns = sorted({(r["model"], r["batch"]) for r in speed})
        lines.append("| runtime | " + " | ".join(f"{m} b{b}" for m, b in columns) + " |")
        lines.append("|---" * (len(columns) + 1) + "|")
        for runtime in dict.fromkeys(r["runtime"] for r in speed):
            cells = []
            for model, batch in columns:
                row = [
                    r
                    for r in speed
                    if (r["model"], r["batch"], r["runtime"]) == (model, batch, runtime)
                ]
                cells.append(
                    f"{row[0]['ms_per_image']:.1f} ({row[0]['ratio']:.2f})" if row else "-"
                )
            lines.append(f"| {runtime} | " + " | ".join(cells) + " |")
        lines.append("")
    accuracy = report.get("accuracy", [])
    if accuracy:
        lines += ["COCO AP50 (AP) of the trained demo models on each data set's val split:", ""]
        datasets = list(dict.fromkeys(r["dataset"] for r in accuracy))
        lines.append("| runtime | " + " | ".join(f"{d} AP50 (AP)" for d in datasets) + " |")
        lines.append("|---" * (len(datasets) + 1) + "|")
        for runtime in dict.fromkeys(r["runtime"] for r in accuracy):
            cells = []
            for dataset in datasets:
                row = [r for r in accuracy if (r["dataset"], r["runtime"]) == (dataset, runtime)]
                cells.append(f"{row[0]['AP50']:.2f} ({row[0]['AP']:.2f})" if row else "-")
            lines.append(f"| {runtime} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per figure")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--calibration-images", type=int, default=100)
    parser.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="time ssd_d2 in bf16 too (default: where the CPU has it)",
    )
    parser.add_argument("--no-speed", action="store_true", help="accuracy only")
    parser.add_argument(
        "--accuracy",
        nargs="*",
        default=[],
        metavar="DATASET=WEIGHTS",
        help=f"evaluate trained demo models; DATASET: {', '.join(CONFIGS)}",
    )
    parser.add_argument(
        "--output",
        default=os.path.join(os.path.dirname(__file__), "results", "deployment_cpu.json"),
    )
    parser.add_argument("--report", help="print the tables of a results JSON and exit")
    args = parser.parse_args(argv)
    if args.report:
        with open(args.report) as f:
            print(markdown(json.load(f)))
        return
    if args.bf16 is None:
        args.bf16 = cpu_has_fast_bf16()
    flags, cpu = cpu_flags()
    machine = dict(machine_description("cpu"), cpu=cpu, cpu_flags=flags, **runtime_versions())
    print(f"CPU: {cpu}; flags: {' '.join(flags)}", flush=True)
    report = {"machine": machine, "args": vars(args).copy()}
    if not args.no_speed:
        section_speed(args, report)
    if args.accuracy:
        section_accuracy(args, report)
    with open(args.output, "w") as f:
        json.dump(report, f, indent=2)
    print(markdown(report))
    print(f"Wrote {args.output}")


if __name__ == "__main__":
    main()
