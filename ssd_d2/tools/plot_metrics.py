"""
Plot the training curves of a run from the ``metrics.json`` that Detectron2 writes into the
output folder (one JSON object per line): the total loss and each loss term, the learning
rate, and the evaluation results over iterations (AP, AP50, AP75 and per-class AP) when the
run evaluated periodically (TEST.EVAL_PERIOD).

    python -m ssd_d2.tools.plot_metrics output/ssd160_shapes_demo --output curves.png

A resumed run appends to the file and repeats the iterations after its last checkpoint; the
values written last are kept. A truncated last line (a run killed while writing) is skipped.
"""

import argparse
import json
import os
import re
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from .common import save_figure

__all__ = ["load_metrics", "plot_metrics", "main"]

_DPI = 100
# The overall evaluation results, e.g. "bbox/AP", "bbox/AP50", "bbox/APs".
_OVERALL_AP = re.compile(r"^[^/]+/AP(50|75|s|m|l)?$")
# Per-class results of COCOEvaluator, e.g. "bbox/AP-circle".
_CLASS_AP = re.compile(r"^[^/]+/AP-(.+)$")

Series = Tuple[np.ndarray, np.ndarray]


def load_metrics(path: str) -> Dict[str, Series]:
    """
    Every scalar of a metrics.json (``path`` is the file or the folder holding it) as
    ``{name: (iterations, values)}``, sorted by iteration, one value per iteration.

    Raises:
        FileNotFoundError: when there is no metrics.json.
        ValueError: when no line could be read.
    """
    if os.path.isdir(path):
        path = os.path.join(path, "metrics.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No metrics file: {path}")
    by_iteration: Dict[int, Dict[str, float]] = {}
    with open(path) as f:
        lines = f.read().splitlines()
    for number, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines) - 1:
                continue  # cut short by a killed run
            raise ValueError(f"{path}, line {number + 1} is not JSON: {line[:80]!r}")
        if "iteration" not in record:
            continue
        values = by_iteration.setdefault(int(record["iteration"]), {})
        # Later records of the same iteration (a resumed run) replace earlier values.
        values.update(
            (k, float(v))
            for k, v in record.items()
            if k != "iteration" and isinstance(v, (int, float))
        )
    if not by_iteration:
        raise ValueError(f"{path} holds no metrics")
    series: Dict[str, List[Tuple[int, float]]] = {}
    for iteration in sorted(by_iteration):
        for name, value in by_iteration[iteration].items():
            series.setdefault(name, []).append((iteration, value))
    return {
        name: (np.array([i for i, _ in points]), np.array([v for _, v in points]))
        for name, points in series.items()
    }


def _loss_names(metrics: Dict[str, Series]) -> List[str]:
    names = sorted(n for n in metrics if n.startswith("loss"))
    return (["total_loss"] if "total_loss" in metrics else []) + names


def plot_metrics(metrics: Dict[str, Series], title: str = "") -> Figure:
    """
    Panels: losses (log scale), learning rate, overall AP and per-class AP (the last two only
    when the run was evaluated). Each panel's lines are labelled with the metric names.
    """
    panels = []
    losses = _loss_names(metrics)
    if losses:
        panels.append(("loss", losses, True))
    if "lr" in metrics:
        panels.append(("learning rate", ["lr"], False))
    overall = sorted((n for n in metrics if _OVERALL_AP.match(n)), key=_ap_order)
    if overall:
        panels.append(("evaluation", overall, False))
    per_class = sorted(n for n in metrics if _CLASS_AP.match(n))
    if per_class:
        panels.append(("AP per class", per_class, False))
    if not panels:
        raise ValueError("no loss, learning rate or AP in these metrics")

    ncols = 2 if len(panels) > 1 else 1
    nrows = (len(panels) + 1) // 2
    fig = Figure(figsize=(6.0 * ncols, 3.6 * nrows + (0.4 if title else 0.0)), dpi=_DPI)
    for i, (name, keys, log_scale) in enumerate(panels):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        for key in keys:
            iterations, values = metrics[key]
            evaluated = name in ("evaluation", "AP per class")
            label = _CLASS_AP.match(key).group(1) if name == "AP per class" else key
            ax.plot(
                iterations,
                values,
                marker="o" if evaluated else None,
                markersize=4,
                linewidth=1.8 if key in ("total_loss", "lr") else 1.4,
                label=label,
            )
        if log_scale:
            ax.set_yscale("log")
            # Plain numbers (0.5, 2, 10) rather than powers of ten; within one decade every
            # tick is labelled, else only the 2x and 5x ones.
            low, high = ax.get_ylim()
            minor = _plain_number if high / low < 10 else _minor_log_label
            ax.yaxis.set_major_formatter(FuncFormatter(_plain_number))
            ax.yaxis.set_minor_formatter(FuncFormatter(minor))
        if name == "learning rate":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
        ax.set_title(name, fontsize=11)
        ax.set_xlabel("iteration")
        if name in ("evaluation", "AP per class"):
            ax.set_ylabel("AP (%)")  # Detectron2's evaluators report percents
        ax.grid(True, alpha=0.3, which="both")
        if len(keys) > 1 or name != "learning rate":
            ax.legend(fontsize=8, ncol=2 if len(keys) > 4 else 1)
    if title:
        fig.suptitle(title, fontsize=11, y=1 - 0.1 / fig.get_figheight(), va="top")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / fig.get_figheight() if title else 1))
    return fig


def _plain_number(value: float, _) -> str:
    return f"{value:g}"


def _minor_log_label(value: float, _) -> str:
    # Label the 2x and 5x minor ticks of each decade; the others stay unlabelled.
    mantissa = value / 10 ** np.floor(np.log10(value))
    return f"{value:g}" if round(mantissa) in (2, 5) else ""


def _ap_order(name: str) -> Tuple[int, str]:
    suffix = name.rsplit("/AP", 1)[1]
    order = ["", "50", "75", "s", "m", "l"]
    return (order.index(suffix) if suffix in order else len(order), name)


def build_argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ssd_d2.tools.plot_metrics",
        description="Plot losses, learning rate and AP over iterations from metrics.json.",
    )
    parser.add_argument("metrics", metavar="PATH", help="an output folder or its metrics.json")
    parser.add_argument("--output", required=True, metavar="FILE.png", help="picture to write")
    parser.add_argument("--title", default=None, help="figure title (default: the input path)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_argument_parser()
    args = parser.parse_args(argv)
    try:
        metrics = load_metrics(args.metrics)
        fig = plot_metrics(metrics, title=args.title if args.title is not None else args.metrics)
    except (FileNotFoundError, ValueError) as e:
        parser.error(str(e))
    save_figure(fig, args.output, dpi=_DPI)
    last = {name: values[-1] for name, (_, values) in metrics.items()}
    summary = ", ".join(
        f"{name} {last[name]:.4g}" for name in ["total_loss", "lr", "bbox/AP"] if name in last
    )
    last_iteration = max(int(iterations[-1]) for iterations, _ in metrics.values())
    print(f"up to iteration {last_iteration}; last: {summary}")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
