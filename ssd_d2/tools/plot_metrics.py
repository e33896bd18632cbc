"""
Plot a run's training curves from the ``metrics.json`` Detectron2 writes into its output folder:
the losses, the learning rate and, when the run evaluated (TEST.EVAL_PERIOD), AP, AP50, AP75 and
per-class AP over iterations. A resumed run repeats the iterations after its last checkpoint:
the values written last are kept. A truncated last line (a run killed while writing) is skipped.

    python -m ssd_d2.tools.plot_metrics output/ssd160_shapes_demo --output curves.png
"""

import json
import os
import re
import sys
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
from matplotlib.figure import Figure

from . import common

# The overall evaluation results in this order, e.g. "bbox/AP", "bbox/AP50", "bbox/APs".
_AP_SUFFIXES = ["", "50", "75", "s", "m", "l"]
_OVERALL_AP = re.compile(r"^[^/]+/AP(50|75|s|m|l)?$")
# Per-class results of COCOEvaluator, e.g. "bbox/AP-circle".
_CLASS_AP = re.compile(r"^[^/]+/AP-(.+)$")


def load_metrics(path: str) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """Every scalar of a metrics.json (or its folder) as ``{name: (iterations, values)}``."""
    if os.path.isdir(path):
        path = os.path.join(path, "metrics.json")
    with open(path) as f:
        lines = f.read().splitlines()
    by_iteration: Dict[int, Dict[str, float]] = {}
    for number, line in enumerate(lines):
        try:
            record = json.loads(line) if line.strip() else {}
        except json.JSONDecodeError:
            if number == len(lines) - 1:
                continue  # cut short by a killed run
            raise ValueError(f"{path}, line {number + 1} is not JSON: {line[:80]!r}")
        if "iteration" in record:
            # Later records of the same iteration (a resumed run) replace earlier values.
            by_iteration.setdefault(int(record.pop("iteration")), {}).update(
                (k, float(v)) for k, v in record.items() if isinstance(v, (int, float))
            )
    if not by_iteration:
        raise ValueError(f"{path} holds no metrics")
    series: Dict[str, list] = {}
    for iteration in sorted(by_iteration):
        for name, value in by_iteration[iteration].items():
            series.setdefault(name, []).append((iteration, value))
    return {name: tuple(np.array(c) for c in zip(*points)) for name, points in series.items()}


def plot_metrics(metrics: Dict[str, Tuple[np.ndarray, np.ndarray]], title: str = "") -> Figure:
    """Panels: losses (log scale), learning rate, overall and per-class AP (if evaluated)."""
    losses = sorted(n for n in metrics if n.startswith("loss"))
    overall = [n for n in metrics if _OVERALL_AP.match(n)]
    overall.sort(key=lambda n: (_AP_SUFFIXES.index(_OVERALL_AP.match(n).group(1) or ""), n))
    panels = [
        ("loss", [n for n in ["total_loss"] if n in metrics] + losses),
        ("learning rate", [n for n in ["lr"] if n in metrics]),
        ("evaluation", overall),
        ("AP per class", sorted(n for n in metrics if _CLASS_AP.match(n))),
    ]
    panels = [(name, keys) for name, keys in panels if keys]
    if not panels:
        raise ValueError("no loss, learning rate or AP in these metrics")
    ncols, nrows = min(len(panels), 2), (len(panels) + 1) // 2
    fig = Figure(figsize=(6.0 * ncols, 3.6 * nrows + (0.4 if title else 0.0)), dpi=common.DPI)
    for i, (name, keys) in enumerate(panels):
        ax = fig.add_subplot(nrows, ncols, i + 1, xlabel="iteration")
        ax.set_title(name, fontsize=11)
        evaluated = name in ("evaluation", "AP per class")
        for key in keys:
            label = _CLASS_AP.match(key).group(1) if name == "AP per class" else key
            linewidth = 1.8 if key in ("total_loss", "lr") else 1.4
            marker = "o" if evaluated else None
            ax.plot(*metrics[key], marker=marker, markersize=4, linewidth=linewidth, label=label)
        ax.set_yscale("log" if name == "loss" else "linear")
        if name == "learning rate":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
        if evaluated:
            ax.set_ylabel("AP (%)")  # Detectron2's evaluators report percents
        ax.grid(True, alpha=0.3, which="both")
        if len(keys) > 1 or name != "learning rate":
            ax.legend(fontsize=8, ncol=2 if len(keys) > 4 else 1)
    common.add_title(fig, title)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / fig.get_figheight() if title else 1))
    return fig


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = common.argument_parser("plot_metrics", __doc__, config_file="", picture=True)
    parser.add_argument("metrics", metavar="PATH", help="an output folder or its metrics.json")
    parser.add_argument("--title", default=None, help="figure title (default: the input path)")
    args = parser.parse_args(argv)
    with common.usage_errors(parser, ValueError):
        metrics = load_metrics(args.metrics)
        fig = plot_metrics(metrics, title=args.metrics if args.title is None else args.title)
    last = {name: values[-1] for name, (_, values) in metrics.items()}
    summary = ", ".join(f"{k} {last[k]:.4g}" for k in ["total_loss", "lr", "bbox/AP"] if k in last)
    last_iteration = max(int(iterations[-1]) for iterations, _ in metrics.values())
    print(f"up to iteration {last_iteration}; last: {summary}")
    common.save_figure(fig, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
