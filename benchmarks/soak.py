"""
Soak test: train the demo config for 2000 iterations with an evaluation every 500, and check
that the process does not grow or leak.

    python -m benchmarks.soak                         # about 15 minutes on 2 CPU cores
    python -m benchmarks.soak --iters 200 --eval-period 50 --output-dir /tmp/soak   # a quick look

Measured, and written to ``benchmarks/results/soak.json`` (or ``--json``):

* resident memory of the training process (and of it plus its data loader workers) after the
  evaluation at the first eval period and at the end: the end must be within 10% of the first;
* open file descriptors of the training process at the same two moments, other than the
  shared memory of the batches in flight: no more at the end;
* the evaluation of ``model_final.pth``, run twice in fresh models: identical results, and
  identical to the evaluation at the end of training.

Exits with status 1 when a check fails.
"""

import argparse
import json
import logging
import os
import sys
import time

import psutil
import torch

from detectron2.engine import HookBase, default_setup
from detectron2.utils.logger import setup_logger

from ssd_d2 import SSDTrainer
from ssd_d2.config import load_config
from ssd_d2.engine import SSDCheckpointer

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_JSON = os.path.join(REPO_ROOT, "benchmarks", "results", "soak.json")

logger = logging.getLogger("ssd_d2.soak")


def open_files() -> dict:
    """
    This process's open file descriptors: those of tensors received from data loader workers
    (shared memory, open while the batch lives, so their number varies with the batches in
    flight) and the others (files, sockets, pipes), where a leak would show.
    """
    counts = {"shared_memory": 0, "other": 0}
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(os.path.join("/proc/self/fd", fd))
        except OSError:  # closed meanwhile (the listing's own descriptor)
            continue
        shared = target.startswith("/dev/shm/") or target.startswith("/memfd:")
        counts["shared_memory" if shared else "other"] += 1
    return counts


def process_sample(iteration: int) -> dict:
    """Memory and file descriptors of this process, and memory with its children."""
    process = psutil.Process()
    files = open_files()
    rss = process.memory_info().rss
    children_rss = 0
    for child in process.children(recursive=True):
        try:
            children_rss += child.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return {
        "iteration": iteration,
        "time_s": time.time(),
        "rss_mib": rss / 2**20,
        "rss_with_workers_mib": (rss + children_rss) / 2**20,
        "open_fds": process.num_fds(),
        "open_fds_shared_memory": files["shared_memory"],
        "open_fds_other": files["other"],
        "threads": process.num_threads(),
    }


class ResourceMonitor(HookBase):
    """Samples the process every ``period`` iterations and right after each evaluation."""

    def __init__(self, period: int, eval_period: int):
        self.period = period
        self.eval_period = eval_period
        self.samples = []
        self.after_eval = {}

    def after_step(self):
        done = self.trainer.iter + 1
        if done % self.period == 0:
            self.samples.append(process_sample(done))
            sample = self.samples[-1]
            logger.info(
                f"iteration {done}: RSS {sample['rss_mib']:.1f} MiB (with workers "
                f"{sample['rss_with_workers_mib']:.1f}), {sample['open_fds_other']} open files "
                f"(+{sample['open_fds_shared_memory']} shared-memory tensors)"
            )
        # This hook runs after Detectron2's EvalHook, so this sample follows the evaluation.
        if self.eval_period and done % self.eval_period == 0 and done < self.trainer.max_iter:
            self.after_eval[done] = process_sample(done)

    def after_train(self):
        # The last evaluation runs in EvalHook.after_train, before this one.
        self.after_eval[self.trainer.max_iter] = process_sample(self.trainer.max_iter)


def build_config(args):
    cfg = load_config(
        os.path.join(REPO_ROOT, "configs", "ssd160_shapes_demo.yaml"),
        [
            "SOLVER.MAX_ITER", args.iters,
            # The demo's steps are at 1950/2350 of 2500: keep them in proportion.
            "SOLVER.STEPS", (round(args.iters * 0.78), round(args.iters * 0.94)),
            "SOLVER.CHECKPOINT_PERIOD", args.eval_period,
            "TEST.EVAL_PERIOD", args.eval_period,
            "DATASETS.TEST", ("ssd_shapes_val",),
            "OUTPUT_DIR", args.output_dir,
        ]  # fmt: skip
        + args.opts,
    )
    cfg.freeze()
    return cfg


def evaluate_checkpoint(cfg, path: str) -> dict:
    model = SSDTrainer.build_model(cfg)
    SSDCheckpointer(model).load(path)
    return SSDTrainer.test(cfg, model)


def _identical(a, b) -> bool:
    """Equal results, NaN (a metric without ground truth) equal to NaN."""
    return json.dumps(a, sort_keys=True, default=float) == json.dumps(
        b, sort_keys=True, default=float
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iters", type=int, default=2000)
    parser.add_argument("--eval-period", type=int, default=500)
    parser.add_argument("--sample-period", type=int, default=100)
    parser.add_argument("--output-dir", default=os.path.join("output", "soak"))
    parser.add_argument("--json", default=DEFAULT_JSON, help="where to write the numbers")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, KEY VALUE")
    args = parser.parse_args(argv)

    cfg = build_config(args)
    default_setup(cfg, argparse.Namespace(config_file="", eval_only=False))
    setup_logger(cfg.OUTPUT_DIR, name="ssd_d2")
    monitor = ResourceMonitor(args.sample_period, args.eval_period)
    start = time.time()
    trainer = SSDTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.register_hooks([monitor])
    trainer.train()
    final_training_eval = trainer._last_eval_results
    train_time = time.time() - start

    checkpoint = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    repeats = [evaluate_checkpoint(cfg, checkpoint) for _ in range(2)]
    after_repeats = process_sample(args.iters)

    first, last = monitor.after_eval[args.eval_period], monitor.after_eval[args.iters]
    rss_change = last["rss_mib"] / first["rss_mib"] - 1
    checks = {
        "rss_within_10_percent": abs(rss_change) <= 0.10,
        "no_file_descriptor_leak": last["open_fds_other"] <= first["open_fds_other"],
        "repeated_evaluations_identical": _identical(repeats[0], repeats[1]),
        "evaluation_equals_training_evaluation": _identical(repeats[0], final_training_eval),
    }
    report = {
        "config": "configs/ssd160_shapes_demo.yaml",
        "iterations": args.iters,
        "eval_period": args.eval_period,
        "train_and_eval_time_s": round(train_time, 1),
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()},
        "after_first_eval": first,
        "at_end": last,
        "after_repeated_evals": after_repeats,
        "rss_change": rss_change,
        "open_fds_change": last["open_fds_other"] - first["open_fds_other"],
        "evaluation": repeats[0],
        "checks": checks,
        "samples": monitor.samples,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(report, f, indent=2, default=float)
    logger.info(
        f"Soak: RSS {first['rss_mib']:.1f} MiB at iteration {args.eval_period}, "
        f"{last['rss_mib']:.1f} MiB at {args.iters} ({rss_change:+.1%}); open files "
        f"{first['open_fds_other']} -> {last['open_fds_other']}; checks {checks}; written to "
        f"{args.json}"
    )
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
