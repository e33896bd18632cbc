"""
Do default boxes fitted to the data train better than the published ones? Fits a config's
default boxes to its DATASETS.TRAIN (python -m ssd_d2.tools.fit_default_boxes), then trains the
config as it is ("published") and the fitted one ("fitted") once per seed, each run a
train_net.py subprocess with the same trailing options, and reads each run's final evaluation
and time per iteration from its metrics.json (benchmarks/recipe_seeds.py's reader).

    python -m benchmarks.fit_default_boxes --seeds 0 1 SOLVER.MAX_ITER 1000 SOLVER.STEPS "(780, 940)"

The default config is the demo model on ssd_tall_objects (small, tall objects on 16:9
images). Trailing KEY VALUE pairs go to the fit and to every run. The JSON (machine, CPU
flags, coverage printed by the fit, runs) is rewritten after each run.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Dict, List

from .common import machine_description
from .recipe_seeds import read_metrics, split_opts, summarize_metrics

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(REPO_ROOT, "configs", "ssd160_tall_objects_demo.yaml")
DEFAULT_OUTPUT = os.path.join(REPO_ROOT, "benchmarks", "results", "fit_default_boxes.json")


def cpu_flags() -> List[str]:
    """The lscpu flags that decide CPU speed here (bf16 falls back to float32 without them)."""
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")
    with open("/proc/cpuinfo") as f:
        line = next((line for line in f if line.startswith("flags")), "")
    return [flag for flag in wanted if flag in line.split()]


def _run(command: List[str], log: str) -> int:
    print(" ".join(command), flush=True)
    with open(log, "w") as f:
        return subprocess.call(command, cwd=REPO_ROOT, stdout=f, stderr=subprocess.STDOUT)


def train(arm: str, config: str, seed: int, args) -> Dict:
    """One train_net.py run of ``config`` with ``seed``; its row."""
    output_dir = os.path.abspath(os.path.join(args.work_dir, f"{arm}_seed{seed}"))
    # Detectron2 appends to an existing metrics.json: start from an empty folder.
    shutil.rmtree(output_dir, ignore_errors=True)
    os.makedirs(output_dir)
    command = [sys.executable, os.path.join(REPO_ROOT, "train_net.py"), "--config-file", config]
    command += ["--num-gpus", str(args.num_gpus), "--dist-url", "auto"]
    command += [*args.opts, "SEED", str(seed), "OUTPUT_DIR", output_dir]
    start = time.perf_counter()
    returncode = _run(command, os.path.join(output_dir, "console.txt"))
    row = {"arm": arm, "seed": seed, "command": command, "returncode": returncode}
    row["wall_s"] = time.perf_counter() - start
    metrics_file = os.path.join(output_dir, "metrics.json")
    summary = summarize_metrics(read_metrics(metrics_file) if os.path.isfile(metrics_file) else [])
    row.update({k: summary[k] for k in ("iterations", "AP", "AP50", "AP75", "s_per_iter")})
    return row


def main(argv=None):
    own, opts = split_opts(list(sys.argv[1:] if argv is None else argv))
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="config to fit and train")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--num-gpus", type=int, default=2, help="processes (CPU: 2, as the demo)")
    parser.add_argument("--work-dir", default=os.path.join(REPO_ROOT, "output", "fit_boxes"))
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help="JSON report")
    args = parser.parse_args(own)
    args.opts = opts
    os.makedirs(args.work_dir, exist_ok=True)
    fitted = os.path.abspath(os.path.join(args.work_dir, "fitted.yaml"))
    fit_log = os.path.join(args.work_dir, "fit.txt")
    fit = [sys.executable, "-m", "ssd_d2.tools.fit_default_boxes", "--config-file", args.config]
    fit += ["--output", fitted, *opts]
    if _run(fit, fit_log) != 0:
        sys.exit(f"fit_default_boxes failed: {fit_log}")
    with open(fit_log) as f:
        report = {"machine": machine_description("cpu"), "cpu_flags": cpu_flags()}
        report.update(config=args.config, options=opts, fit=f.read().splitlines(), runs=[])
    for seed in args.seeds:
        for arm, config in (("published", args.config), ("fitted", fitted)):
            report["runs"].append(train(arm, config, seed, args))
            print(json.dumps(report["runs"][-1]), flush=True)
            with open(args.output, "w") as f:
                json.dump(report, f, indent=1)
    for row in report["runs"]:
        print(f"{row['arm']:9} seed {row['seed']}: AP {row['AP']} AP50 {row['AP50']}")


if __name__ == "__main__":
    main()
