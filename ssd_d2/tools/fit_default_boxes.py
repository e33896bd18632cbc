"""
Fit a config's default boxes to its training data: report which ground-truth boxes of
DATASETS.TRAIN the default boxes can match (IoU >= MODEL.SSD.IOU_THRESHOLD at the network input),
by size and shape, and write a config (``_BASE_``: the input config) with per-level sizes,
aspect ratios and an input size that match more of them, within a budget of default boxes.

    python -m ssd_d2.tools.fit_default_boxes --config-file configs/ssd160_tall_objects_demo.yaml \\
        --output fitted.yaml --picture coverage.png
"""

import os
import sys
from typing import Dict, Optional, Sequence

import numpy as np
import torch
import yaml

from ssd_d2.config import resolve_image_size
from ssd_d2.data.box_statistics import dataset_boxes
from ssd_d2.data.checks import check_class_count
from ssd_d2.modeling.default_box_fitting import (
    coverage_table,
    default_box_set_from_config,
    fit_default_boxes,
    matched_ground_truth,
    unmatchable_ground_truth,
)

from . import common


def fitted_config_yaml(config_file: str, opts: Dict, box_set, comment: str) -> str:
    """The fitted config: ``_BASE_`` the input config (absolute), then ``opts`` (nested keys
    and values), then the fitted MODEL.SSD keys."""
    config: Dict = {"_BASE_": os.path.abspath(config_file)}
    for key, value in opts.items():
        node = config
        *parents, leaf = key.split(".")
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = value
    ssd = config.setdefault("MODEL", {}).setdefault("SSD", {})
    for key, value in box_set.config_values().items():
        if isinstance(value, dict):
            ssd.setdefault(key, {}).update(value)
        else:
            ssd[key] = value
    config["VERSION"] = 2
    lines = "".join(f"# {line}\n" for line in comment.splitlines())
    return lines + yaml.safe_dump(config, sort_keys=False, default_flow_style=None)


def _yaml_value(value):
    """A config value as plain YAML: tuples as lists."""
    if isinstance(value, (tuple, list)):
        return [_yaml_value(v) for v in value]
    return value


def option_values(cfg, opts: Sequence[str]) -> Dict:
    """The values ``cfg`` holds for the keys of the KEY VALUE pairs ``opts`` (as loaded, so
    data set names are as ``register_config_datasets`` made them)."""
    values = {}
    for key in opts[::2]:
        node = cfg
        for name in key.split("."):
            node = node[name]
        values[key] = _yaml_value(node)
    return values


def describe_unmatchable(gt_boxes: np.ndarray, unmatchable: np.ndarray, box_set, t: float):
    """One line on the ground truth no grid of ``box_set`` can match, or None."""
    count = int(unmatchable.sum())
    if not count:
        return None
    boxes = gt_boxes[unmatchable]
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    step_y, step_x = box_set.levels[int(np.argmin([lv.step[1] for lv in box_set.levels]))].step
    return (
        f"{count} boxes ({100 * count / len(gt_boxes):.1f}%) cannot be matched at "
        f"{box_set.image_size[0]}x{box_set.image_size[1]}: they are at most {widths.max():.1f} px "
        f"wide and {heights.max():.1f} px high there (median {np.median(widths):.1f} x "
        f"{np.median(heights):.1f}), and the finest level's centres are {step_x:g} px apart across "
        f"and {step_y:g} px down, so even a default box of their own size at the nearest centre "
        f"(up to half a step off) stays under IoU {t:g}."
    )


def draw_coverage(tables, titles, title: str):
    """One heat map per coverage table: the matched share of each size x shape bin."""
    from matplotlib.figure import Figure

    # Constrained layout: the tick labels of both axes get their room.
    fig = Figure(figsize=(4.6 * len(tables), 4.0), dpi=common.DPI, constrained_layout=True)
    for i, (table, name) in enumerate(zip(tables, titles)):
        ax = fig.add_subplot(1, len(tables), i + 1)
        share = np.where(table.total > 0, table.matched / np.maximum(table.total, 1), np.nan)
        ax.imshow(share, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
        for (r, c), total in np.ndenumerate(table.total):
            if total:
                text = f"{100 * share[r, c]:.0f}%\n{total}"
                ax.text(c, r, text, ha="center", va="center", fontsize=8, gid="coverage_cell")
        sizes = [f"{lo:g}-{hi:g}" for lo, hi in zip(table.size_bins, table.size_bins[1:])]
        shapes = [f"{lo:g}-{hi:g}" for lo, hi in zip(table.aspect_bins, table.aspect_bins[1:])]
        ax.set_xticks(range(len(shapes)), [s.replace("-inf", "+") for s in shapes], fontsize=8)
        ax.set_yticks(range(len(sizes)), [s.replace("-inf", "+") for s in sizes], fontsize=8)
        ax.set_xlabel("height / width", fontsize=9)
        if i == 0:
            ax.set_ylabel("size sqrt(w h), image px", fontsize=9)
        ax.set_title(f"{name}: {100 * table.share:.1f}% matched", fontsize=10)
    fig.suptitle(title, fontsize=11)
    return fig


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = common.argument_parser("fit_default_boxes", __doc__)
    parser.add_argument("--output", required=True, metavar="FILE.yaml", help="config to write")
    parser.add_argument("--picture", metavar="FILE.png", help="coverage before and after")
    budget_help = "most default boxes the fitted config may have (default: twice the config's)"
    parser.add_argument("--budget", type=int, metavar="N", help=budget_help)
    common.add_trailing_options(parser)
    args, cfg = common.parse_config(parser, argv)
    with common.usage_errors(parser, ValueError):
        if not len(cfg.DATASETS.TRAIN):
            raise ValueError("the config has no DATASETS.TRAIN: the boxes are fitted to it")
        dicts = []
        for name in cfg.DATASETS.TRAIN:
            dicts += common.dataset_dicts(name, cfg.DATASETS.TRAIN, "DATASETS.TRAIN")[1]
            # The written config trains on these data: refuse one for another class count.
            check_class_count(name, cfg.MODEL.SSD.NUM_CLASSES, "DATASETS.TRAIN")
        gt = dataset_boxes(dicts)
        if not len(gt):
            raise ValueError(f"DATASETS.TRAIN {list(cfg.DATASETS.TRAIN)} has no boxes")
        before = default_box_set_from_config(cfg)
        budget = 2 * before.num_boxes if args.budget is None else args.budget
        ssd = cfg.MODEL.SSD
        matched_before = matched_ground_truth(
            torch.from_numpy(gt.at_input(before.image_size)),
            before,
            ssd.IOU_THRESHOLD,
            ssd.MATCHING,
        )
        after, tried = fit_default_boxes(cfg, gt.at_input, budget, gt.typical_aspect())
    gt_after = gt.at_input(after.image_size)
    matched_after = matched_ground_truth(
        torch.from_numpy(gt_after), after, ssd.IOU_THRESHOLD, ssd.MATCHING
    )
    tables = [coverage_table(gt.sizes, m) for m in (matched_before, matched_after)]
    size = resolve_image_size(cfg)
    print(
        f"{len(gt)} ground-truth boxes in {len(dicts)} images of {list(cfg.DATASETS.TRAIN)}; "
        f"a box is matched when a default box reaches IoU {ssd.IOU_THRESHOLD:g} "
        f"(MODEL.SSD.MATCHING {ssd.MATCHING}). Rows: size sqrt(w h) in image pixels; "
        "columns: height / width."
    )
    print(f"\nThe config's default boxes ({before.num_boxes} at {size[0]}x{size[1]}):")
    print(tables[0].format())
    print(f"\nInput sizes tried (budget {budget} default boxes):")
    print("\n".join("  " + line for line in tried))
    height, width = after.image_size
    print(f"\nFitted ({after.num_boxes} default boxes at {height}x{width}):")
    print(tables[1].format())
    for i, (level, grid) in enumerate(zip(after.levels, after.feature_sizes)):
        step = level.step[0] if level.step[0] == level.step[1] else list(level.step)
        print(
            f"  level {i} ({ssd.IN_FEATURES[i]}, {grid[0]}x{grid[1]}, step {step}): "
            f"sizes {level.min_size:g}/{level.max_size:g}, ratios {level.aspect_ratios}, "
            f"{level.boxes_per_location} per location"
        )
    unmatched = ~matched_after.numpy()
    unmatchable = unmatchable_ground_truth(torch.from_numpy(gt_after), after, ssd.IOU_THRESHOLD)
    unmatchable = unmatchable.numpy() & unmatched
    line = describe_unmatchable(gt_after, unmatchable, after, ssd.IOU_THRESHOLD)
    if line:
        print("\nToo small for any grid: " + line)
    rest = int(unmatched.sum() - unmatchable.sum())
    if rest:
        print(
            f"\n{rest} more boxes stay unmatched: within {budget} default boxes no shape reaches "
            "them (see the table; --budget raises the limit)."
        )
    comment = (
        f"Default boxes fitted to {', '.join(cfg.DATASETS.TRAIN)} by "
        "ssd_d2.tools.fit_default_boxes:\n"
        f"{int(matched_after.sum())} of {len(gt)} ground-truth boxes matched "
        f"({100 * tables[1].share:.1f}%; the base config's boxes: {100 * tables[0].share:.1f}%),\n"
        f"{after.num_boxes} default boxes (budget {budget}; "
        f"the base config has {before.num_boxes})."
    )
    text = fitted_config_yaml(
        args.config_file, option_values(cfg, common.config_options(args)), after, comment
    )
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        f.write(text)
    print(f"\nwrote {args.output}")
    if args.picture:
        name = os.path.basename(args.config_file)
        titles = [f"{name} ({before.num_boxes} boxes)", f"fitted ({after.num_boxes} boxes)"]
        title = f"Ground truth matched by the default boxes, {', '.join(cfg.DATASETS.TRAIN)}"
        common.save_figure(draw_coverage(tables, titles, title), args.picture)
    return 0


if __name__ == "__main__":
    sys.exit(main())
