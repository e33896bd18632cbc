"""What the command-line tools share: the parser, the config, input checks and figure drawing."""

import argparse
import contextlib
import logging
import os
from typing import List, Sequence, Tuple

import numpy as np

from detectron2.data import DatasetCatalog
from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from detectron2.structures import BoxMode

from ssd_d2.config import load_config
from ssd_d2.data import load_dataset_dicts, register_config_datasets, register_dataset_name
from ssd_d2.data.dataset_mapper import read_image
from ssd_d2.engine import SSDPredictor
from ssd_d2.export import ExportedPredictor, is_exported_model

# Every picture is drawn at 100 dots per inch: figure sizes in inches are pixel sizes / 100.
DPI = 100


def argument_parser(name, description, config_file="required", config_help="", picture=False):
    """``python -m ssd_d2.tools.<name>``'s parser: ``--config-file`` ("required", "optional" or
    "": none) with ``--opts KEY VALUE ...``, and ``--output FILE.png`` for a ``picture``."""
    parser = argparse.ArgumentParser(
        prog=f"python -m ssd_d2.tools.{name}",
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(opts=[], trailing_opts=[])
    if config_file:
        required, help_text = config_file == "required", config_help or "config file"
        parser.add_argument("--config-file", required=required, metavar="FILE", help=help_text)
        opts_help = "config options, e.g. MODEL.WEIGHTS model.pth (last)"
        parser.add_argument("--opts", nargs=argparse.REMAINDER, metavar="KEY VALUE", help=opts_help)
    if picture:
        parser.add_argument("--output", required=True, metavar="FILE.png", help="picture to write")
    return parser


def add_trailing_options(parser: argparse.ArgumentParser) -> None:
    """Config options after the positional arguments too, as train_net.py takes them. Call last."""
    parser.add_argument("trailing_opts", nargs=argparse.REMAINDER, metavar="KEY VALUE")


def config_options(args: argparse.Namespace) -> List[str]:
    """The KEY VALUE pairs of the command line: trailing ones, then those after ``--opts``."""
    # A trailing list swallows a later "--opts" too: drop the flag, keep its pairs.
    return [o for o in args.trailing_opts if o != "--opts"] + list(args.opts)


def parse_config(parser: argparse.ArgumentParser, argv):
    """``argv`` parsed by ``parser``, and the config it names with its options (not frozen)."""
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")  # config warnings
    with usage_errors(parser):
        cfg = load_config(args.config_file, config_options(args))
    with usage_errors(parser, ValueError):  # a malformed data set name, a wrong class count
        register_config_datasets(cfg)
    return args, cfg


@contextlib.contextmanager
def usage_errors(parser: argparse.ArgumentParser, *errors):
    """Reports a missing file (or any of ``errors``) as a command-line error: exit status 2."""
    try:
        yield
    except (FileNotFoundError, *errors) as e:
        parser.error(str(e))


def check_weights_file(cfg) -> None:
    """FileNotFoundError for a MODEL.WEIGHTS path that does not exist, before the model is
    built. (Empty or backbone-only weights: the model itself warns when it infers.)"""
    weights = cfg.MODEL.WEIGHTS
    # URLs and detectron2:// paths are the checkpointer's to resolve.
    if weights and "://" not in weights and not os.path.isfile(weights):
        raise FileNotFoundError(f"MODEL.WEIGHTS file not found: {weights}")


def build_predictor(cfg):
    """DefaultPredictor's call on MODEL.WEIGHTS: an exported model (.ts, .onnx, .xml) in its
    runtime, else the PyTorch SSD with its checkpoint."""
    if is_exported_model(cfg.MODEL.WEIGHTS):
        return ExportedPredictor(cfg)
    return SSDPredictor(cfg)


def dataset_dicts(name, cfg_names, key: str, indices=(), flag="--indices") -> Tuple[str, list]:
    """The name and dicts of data set ``name`` (default: the config's ``key``, ``cfg_names``[0]),
    checking the ``indices`` option ``flag`` gave (a plural flag lists them); ValueError
    (DatasetError: the data set's) or FileNotFoundError."""
    name = name or (cfg_names[0] if len(cfg_names) else None)
    if name is None:
        raise ValueError(f"no --dataset given and the config has no {key}")
    flag_or_key = key if name in cfg_names else "--dataset"
    if not register_dataset_name(name, flag_or_key) and name not in DatasetCatalog.list():
        raise ValueError(f"data set {name!r} is not registered")
    dicts = load_dataset_dicts(name)  # names DETECTRON2_DATASETS for a missing built-in set
    bad = [i for i in indices if not 0 <= i < len(dicts)]
    if bad:
        shown = bad if flag.endswith("s") else bad[0]
        raise ValueError(f"{flag} {shown}: data set {name!r} has {len(dicts)} images")
    return name, dicts


def dataset_category_ids(metadata, num_classes: int) -> List[int]:
    """Each class index's category id in the data set's own annotations (COCO json ids), mapped
    back as Detectron2's COCOEvaluator does; the class index where the data set has no map."""
    mapping = metadata.get("thing_dataset_id_to_contiguous_id", None) or {}
    dataset_ids = {c: d for d, c in mapping.items()}
    return [dataset_ids.get(i, i) for i in range(num_classes)]


def coco_results(instances, image_id: int, category_ids: Sequence[int]) -> List[dict]:
    """COCO-format results of ``instances``, with the data set's ``category_ids``."""
    results = instances_to_coco_json(instances, image_id)
    for result in results:
        result["category_id"] = category_ids[result["category_id"]]
    return results


def read_record(record: dict) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A dataset dict's RGB image, XYXY boxes (float32, N x 4) and classes, crowds left out."""
    image = read_image(record["file_name"], format="RGB")
    annotations = [a for a in record.get("annotations", []) if not a.get("iscrowd", 0)]
    boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in annotations]
    boxes = np.array(boxes, dtype=np.float32).reshape(-1, 4)
    return image, boxes, np.array([a["category_id"] for a in annotations], dtype=np.int64)


def panel_grid_figure(nrows, ncols, panel, title: float, top: float, bottom: float):
    """A grid of panels (``panel``: a square's side or (width, height)) with margins in inches
    (``title`` above each panel, ``top``, ``bottom``, 0.15 between): labels keep their size and
    never overlap, whatever the grid."""
    from matplotlib.figure import Figure

    gap = 0.15
    panel_w, panel_h = (panel, panel) if isinstance(panel, (int, float)) else panel
    width = ncols * (panel_w + gap) + gap
    height = nrows * (panel_h + title) + top + bottom
    # Whole pixels plus a quarter: matplotlib releases that truncate the size in pixels and
    # those that round it then draw the same picture size.
    fig = Figure(figsize=[(round(x * DPI) + 0.25) / DPI for x in (width, height)], dpi=DPI)
    fig.subplots_adjust(left=gap / width, right=1 - gap / width, bottom=bottom / height)
    fig.subplots_adjust(top=1 - (top + title) / height, wspace=gap / panel_w)
    fig.subplots_adjust(hspace=title / panel_h)
    return fig


def add_box(ax, box, color, gid: str, **style) -> None:
    """Draw an XYXY box outline (``style``: linewidth, linestyle...) with ``gid`` for tests/SVG."""
    from matplotlib.patches import Rectangle

    x0, y0, x1, y1 = box
    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec=color, gid=gid, **style))


def add_title(fig, title: str, inches: float = 0.1) -> None:
    """The figure's title, ``inches`` below its top edge."""
    if title:
        fig.suptitle(title, fontsize=11, y=1 - inches / fig.get_figheight(), va="top")


def class_colors(num_classes: int) -> list:
    """One RGB colour per class, from matplotlib's qualitative palettes."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if num_classes <= 10 else "tab20"]
    return [cmap(i % cmap.N)[:3] for i in range(max(num_classes, 1))]


def save_figure(fig, path: str) -> None:
    """Save ``fig`` as ``path``, folders created. The tools draw without pyplot: no display."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=DPI)
    print(f"wrote {path}")
