"""
Does the demo recipe converge for every seed, on the embedded set and on another one? Trains
a config (the demo model by default) once per (data set, seed), each run a train_net.py
subprocess with its own OUTPUT_DIR, one after the other, and reads each run's metrics.json:
the final evaluation (AP, AP50, AP75), the time per iteration, and the total and box losses
at a few iterations. A run whose box loss at the end is still above STALL_RATIO of its value
at iteration STALL_FROM is flagged as stalled.

Data sets, the generated family: ``ssd_shapes`` (the config's own, train_net.py as is),
``toy_signs`` (also ``second``; through benchmarks/toy_signs.py, whose split sizes can be
changed), ``sparse_clutter`` and ``many_classes`` (ssd_d2/data/datasets/shape_family.py); each
other than ssd_shapes with its DATASETS and MODEL.SSD.NUM_CLASSES set on the command line.

    python -m benchmarks.recipe_seeds --seeds 0 1 2 3 4 --datasets ssd_shapes toy_signs
    python -m benchmarks.recipe_seeds --seeds 0 1 2 --datasets sparse_clutter many_classes
    python -m benchmarks.recipe_seeds --seeds 0 --datasets toy_signs SOLVER.MAX_ITER 500
    python -m benchmarks.recipe_seeds --report benchmarks/results/recipe_seeds.json

Trailing KEY VALUE pairs go to every run. A run's folder (<work-dir>/<data set>_seed<N>) is
emptied before it starts. The JSON is rewritten after each run.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Optional

import torch

from benchmarks.common import machine_description
from ssd_d2.data.datasets.shape_family import FAMILY
from ssd_d2.data.datasets.toy_signs import TOY_SIGN_CLASSES, TOY_SIGNS_TRAIN, TOY_SIGNS_VAL

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(REPO_ROOT, "configs", "ssd160_shapes_demo.yaml")
DEFAULT_OUTPUT = os.path.join(REPO_ROOT, "benchmarks", "results", "recipe_seeds.json")
DATASETS = ("ssd_shapes", "toy_signs") + tuple(FAMILY)
DATASET_ALIASES = {"second": "toy_signs"}
# Iterations (completed) at which the losses are recorded, besides the end of the run.
LOSS_ITERATIONS = (100, 250, 500, 1000)
# The stall rule: box loss at the end > STALL_RATIO x box loss at iteration STALL_FROM (where a
# run that learns has only begun: the demo's is about 2.7 there and 0.7 at the end).
STALL_FROM = 100
STALL_RATIO = 0.5
LOSS_KEYS = {"total": "total_loss", "box": "loss_box_reg"}


def train_command(dataset: str, config: str, seed: int, output_dir: str, args) -> List[str]:
    """The command line of one run."""
    # A free port for the processes of each run, so that runs beside it do not collide.
    train_net_args = ["--num-gpus", str(args.num_gpus), "--dist-url", "auto"]
    train_net_args += ["--config-file", config]
    opts = ["SEED", str(seed), "OUTPUT_DIR", output_dir]
    train_net = [sys.executable, os.path.join(REPO_ROOT, "train_net.py")]
    if dataset == "ssd_shapes":
        return train_net + train_net_args + opts
    if dataset in FAMILY:
        opts += ["MODEL.SSD.NUM_CLASSES", str(len(FAMILY[dataset].classes))]
        opts += ["DATASETS.TRAIN", f"('{dataset}_train',)", "DATASETS.TEST", f"('{dataset}_val',)"]
        return train_net + train_net_args + opts
    toy_signs = [sys.executable, "-m", "benchmarks.toy_signs"]
    toy_signs += ["--train-images", str(args.toy_signs_train_images)]
    toy_signs += ["--val-images", str(args.toy_signs_val_images)]
    opts += ["MODEL.SSD.NUM_CLASSES", str(len(TOY_SIGN_CLASSES))]
    opts += ["DATASETS.TRAIN", f"('{TOY_SIGNS_TRAIN}',)", "DATASETS.TEST", f"('{TOY_SIGNS_VAL}',)"]
    return toy_signs + train_net_args + opts


def read_metrics(metrics_file: str) -> List[Dict]:
    with open(metrics_file) as f:
        return [json.loads(line) for line in f if line.strip()]


def summarize_metrics(metrics: List[Dict]) -> Dict:
    """
    A run's figures from its metrics.json lines: final AP/AP50/AP75 (None without an
    evaluation), median seconds per iteration, losses at LOSS_ITERATIONS and at the end
    (None past the end of the run) with the iteration of the line they come from, and the
    stall flag (None when the run ends before STALL_FROM).
    """
    # Detectron2 logs the losses (median of the last 20 iterations) every 20 iterations, at
    # "iteration" = completed iterations - 1.
    training = [m for m in metrics if "total_loss" in m]
    evaluations = [m for m in metrics if "bbox/AP" in m]
    row = {"iterations": training[-1]["iteration"] + 1 if training else 0}
    for key in ("AP", "AP50", "AP75"):
        row[key] = evaluations[-1][f"bbox/{key}"] if evaluations else None
    times = [m["time"] for m in training if "time" in m]
    row["s_per_iter"] = statistics.median(times) if times else None

    def losses_at(iteration: Optional[int]):
        if iteration is None:  # the end
            entry = training[-1] if training else None
        else:  # the first line logged at or after it
            entry = next((m for m in training if m["iteration"] + 1 >= iteration), None)
        losses = {name: entry[key] if entry else None for name, key in LOSS_KEYS.items()}
        # The iterations done when the line was logged.
        return dict(losses, iteration=entry["iteration"] + 1 if entry else None)

    row["losses"] = {str(i): losses_at(i) for i in LOSS_ITERATIONS}
    row["losses"]["end"] = losses_at(None)
    row["stalled"] = is_stalled(row)
    return row


def is_stalled(row: Dict) -> Optional[bool]:
    """The stall rule on a row of :func:`summarize_metrics`; None when it cannot tell."""
    start, end = row["losses"][str(STALL_FROM)], row["losses"]["end"]
    # No line at STALL_FROM, or it is the last one: too short a run to tell.
    if start["box"] is None or start["iteration"] >= end["iteration"]:
        return None
    return bool(end["box"] > STALL_RATIO * start["box"])


def run_one(dataset: str, seed: int, args) -> Dict:
    """Train one (data set, seed); its row."""
    output_dir = os.path.abspath(os.path.join(args.work_dir, f"{dataset}_seed{seed}"))
    # Detectron2 appends to an existing metrics.json: start from an empty folder.
    shutil.rmtree(output_dir, ignore_errors=True)
    os.makedirs(output_dir)
    command = train_command(dataset, args.config, seed, output_dir, args) + list(args.opts)
    console = os.path.join(output_dir, "console.txt")
    print(f"[{dataset} seed {seed}] {' '.join(command)}", flush=True)
    start = time.perf_counter()
    with open(console, "w") as f:
        returncode = subprocess.call(command, cwd=REPO_ROOT, stdout=f, stderr=subprocess.STDOUT)
    row = {"dataset": dataset, "seed": seed, "output_dir": output_dir, "command": command}
    row.update(returncode=returncode, wall_s=time.perf_counter() - start)
    metrics_file = os.path.join(output_dir, "metrics.json")
    metrics = read_metrics(metrics_file) if os.path.isfile(metrics_file) else []
    row.update(summarize_metrics(metrics))
    if returncode != 0:
        with open(console) as f:
            print(f.read()[-3000:], flush=True)
        print(f"[{dataset} seed {seed}] failed ({returncode}), log: {console}", flush=True)
    return row


def _fmt(value, digits=1):
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def markdown_table(report: Dict) -> str:
    """One row per run, then min / median / max AP50 per data set."""
    header = ["data set", "seed", "AP50", "AP", "AP75", f"total loss {STALL_FROM} / end"]
    header += ["box loss " + " / ".join(f"{i}" for i in LOSS_ITERATIONS) + " / end"]
    header += ["stalled", "s/iter", "wall min", "exit"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in report["runs"]:
        total = [r["losses"][k]["total"] for k in (str(STALL_FROM), "end")]
        box = [r["losses"][str(i)]["box"] for i in LOSS_ITERATIONS] + [r["losses"]["end"]["box"]]
        stalled = {True: "yes", False: "no", None: "-"}[r["stalled"]]
        cells = [r["dataset"], r["seed"], _fmt(r["AP50"]), _fmt(r["AP"]), _fmt(r["AP75"])]
        cells += [" / ".join(_fmt(v, 2) for v in total), " / ".join(_fmt(v, 2) for v in box)]
        cells += [stalled, _fmt(r["s_per_iter"], 3), _fmt(r["wall_s"] / 60), r["returncode"]]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines += ["", "| data set | runs | AP50 min | AP50 median | AP50 max | stalled |"]
    lines.append("|" + "---|" * 6)
    for dataset in dict.fromkeys(r["dataset"] for r in report["runs"]):
        runs = [r for r in report["runs"] if r["dataset"] == dataset]
        ap50 = [r["AP50"] if r["AP50"] is not None else float("nan") for r in runs]
        # A run without an evaluation counts as the worst.
        ap50 = sorted(0.0 if v != v else v for v in ap50)
        stalled = sum(r["stalled"] is True for r in runs)
        cells = [dataset, len(runs), _fmt(ap50[0]), _fmt(statistics.median(ap50)), _fmt(ap50[-1])]
        lines.append("| " + " | ".join(str(c) for c in cells + [stalled]) + " |")
    return "\n".join(lines) + "\n"


# Options that take one value, which is never the start of the trailing KEY VALUE pairs.
_VALUE_OPTIONS = ("--config", "--num-gpus", "--output", "--work-dir", "--report")
_VALUE_OPTIONS += ("--toy-signs-train-images", "--toy-signs-val-images")


def split_opts(argv: List[str]):
    """
    (options, opts): the trailing KEY VALUE pairs start at the first config key (upper case,
    like SOLVER.MAX_ITER) that is not an option's value. argparse alone would read them as
    more --seeds or --datasets.
    """
    for i, token in enumerate(argv):
        is_key = token[:1].isalpha() and token.upper() == token and not token.isdigit()
        if is_key and (i == 0 or argv[i - 1] not in _VALUE_OPTIONS):
            return argv[:i], argv[i:]
    return argv, []


def parse_args(argv=None):
    argv, opts = split_opts(sys.argv[1:] if argv is None else list(argv))
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument(
        "--datasets",
        nargs="+",
        default=list(DATASETS),
        choices=list(DATASETS) + list(DATASET_ALIASES),
    )
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="config file of every run")
    parser.add_argument(
        "--num-gpus", type=int, default=1, help="train_net.py's: processes per run (on a CPU too)"
    )
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help="JSON file written")
    parser.add_argument(
        "--work-dir", default=os.path.join("output", "recipe_seeds"), help="runs' OUTPUT_DIRs"
    )
    parser.add_argument("--toy-signs-train-images", type=int, default=1500)
    parser.add_argument("--toy-signs-val-images", type=int, default=300)
    parser.add_argument("--report", help="print the table of a results JSON and exit")
    parser.add_argument("opts", nargs="*", help="KEY VALUE pairs for every run")
    args = parser.parse_args(argv)
    args.opts = opts
    args.datasets = [DATASET_ALIASES.get(d, d) for d in args.datasets]
    if not os.path.isfile(args.config):
        parser.error(f"--config {args.config}: no such file")
    if len(args.opts) % 2:
        parser.error(f"opts must be KEY VALUE pairs, got {args.opts}")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.report:
        with open(args.report) as f:
            print(markdown_table(json.load(f)))
        return 0
    args.config = os.path.abspath(args.config)
    report = {
        "machine": machine_description("cuda" if torch.cuda.is_available() else "cpu"),
        "args": {k: v for k, v in vars(args).items() if k != "report"},
        "stall_rule": f"box loss at the end > {STALL_RATIO} x box loss at {STALL_FROM}",
        "runs": [],
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    for dataset in args.datasets:
        for seed in args.seeds:
            report["runs"].append(run_one(dataset, seed, args))
            with open(args.output, "w") as f:
                json.dump(report, f, indent=2)
            print(markdown_table({"runs": report["runs"][-1:]}), flush=True)
    print(markdown_table(report))
    print(f"Wrote {args.output}")
    return int(any(r["returncode"] != 0 for r in report["runs"]))


if __name__ == "__main__":
    sys.exit(main())
