"""What the command line tools share: checking input files, drawing and saving figures."""

import os
from typing import Optional

from detectron2.config import CfgNode

from ssd_d2.model_zoo import IMAGENET_FILES

__all__ = ["check_weights", "save_figure"]


def check_weights(cfg: CfgNode) -> Optional[str]:
    """
    Check ``cfg.MODEL.WEIGHTS`` before building a model: returns a warning when it is empty
    (the model keeps its random initialisation) or names the ImageNet backbone a config
    trains from (the head is random), None when it names a checkpoint.

    Raises:
        FileNotFoundError: when it names a local file that does not exist.
    """
    weights = cfg.MODEL.WEIGHTS
    if not weights:
        return "MODEL.WEIGHTS is empty: the model has random weights."
    if os.path.basename(weights) in {os.path.basename(url) for url in IMAGENET_FILES}:
        # A published config's default: what training starts from.
        return (
            f"MODEL.WEIGHTS is {os.path.basename(weights)}, ImageNet backbone weights to train "
            "from: the detection head has random weights. Give a trained model (your "
            "model_final.pth, or a model zoo URL, see ssd_d2.model_zoo)."
        )
    # URLs and detectron2:// paths are resolved by Detectron2's checkpointer.
    if "://" not in weights and not os.path.isfile(weights):
        raise FileNotFoundError(f"MODEL.WEIGHTS file not found: {weights}")
    return None


def save_figure(fig, path: str, dpi: int = 100) -> str:
    """
    Save a matplotlib figure as ``path`` (folders created) and return the path. The tools
    build ``matplotlib.figure.Figure`` objects directly, without pyplot, so that they need no
    display and leave the caller's matplotlib backend alone.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def panel_grid_figure(
    nrows: int,
    ncols: int,
    panel_inches: float,
    title_inches: float,
    top_inches: float,
    bottom_inches: float,
    gap_inches: float,
    dpi: int = 100,
):
    """
    A matplotlib Figure sized for ``nrows`` x ``ncols`` square panels with fixed margins in
    inches (``title_inches`` above each panel, ``top_inches`` for the figure title,
    ``bottom_inches`` below, ``gap_inches`` between panels), so that titles and labels keep
    their size and never overlap, whatever the grid.
    """
    from matplotlib.figure import Figure

    fig_width = ncols * (panel_inches + gap_inches) + gap_inches
    fig_height = nrows * (panel_inches + title_inches) + top_inches + bottom_inches
    # Whole pixels plus a quarter: matplotlib releases that truncate the size in pixels and
    # those that round it then draw the same picture size.
    figsize = [(round(inches * dpi) + 0.25) / dpi for inches in (fig_width, fig_height)]
    fig = Figure(figsize=figsize, dpi=dpi)
    fig.subplots_adjust(
        left=gap_inches / fig_width,
        right=1 - gap_inches / fig_width,
        bottom=bottom_inches / fig_height,
        top=1 - (top_inches + title_inches) / fig_height,
        wspace=gap_inches / panel_inches,
        hspace=title_inches / panel_inches,
    )
    return fig


def add_box(ax, box, color, gid: str, linewidth: float, linestyle: str = "-", path_effects=None):
    """Draw an XYXY box outline on ``ax``; ``gid`` names the patch for tests and SVG output."""
    from matplotlib.patches import Rectangle

    x0, y0, x1, y1 = box
    ax.add_patch(
        Rectangle(
            (x0, y0),
            x1 - x0,
            y1 - y0,
            fill=False,
            edgecolor=color,
            linewidth=linewidth,
            linestyle=linestyle,
            gid=gid,
            path_effects=path_effects,
        )
    )
