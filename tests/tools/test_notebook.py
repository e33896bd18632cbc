"""notebooks/quickstart.ipynb runs from the first cell to the last, headless, on the CPU."""

import json
import os
import sys

import pytest
import torch

from detectron2.modeling import build_model

from ..conftest import load_config

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")
pytest.importorskip("ipykernel")

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
NOTEBOOK = os.path.join(REPO_ROOT, "notebooks", "quickstart.ipynb")
KERNEL_NAME = "ssd_d2_test_python"


def _install_kernelspec(jupyter_dir) -> None:
    """A kernelspec that starts this interpreter, found through JUPYTER_PATH."""
    kernel_dir = jupyter_dir / "kernels" / KERNEL_NAME
    kernel_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "ssd_d2 tests",
        "language": "python",
    }
    (kernel_dir / "kernel.json").write_text(json.dumps(spec))


def _outputs(notebook, output_type=None):
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        for output in cell.outputs:
            if output_type is None or output.output_type == output_type:
                yield output


def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    # A checkpoint of the demo model with random weights stands in for a trained one.
    model = build_model(load_config("ssd160_shapes_demo"))
    weights = tmp_path / "model.pth"
    torch.save({"model": model.state_dict()}, weights)
    _install_kernelspec(tmp_path / "jupyter")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("SSD_D2_WEIGHTS", str(weights))
    monkeypatch.setenv("SSD_D2_DATASETS", str(tmp_path / "datasets"))
    monkeypatch.setenv("SSD_D2_EVAL_IMAGES", "8")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert not list(_outputs(notebook)), "commit the notebook without outputs"
    client = nbclient.NotebookClient(
        notebook,
        timeout=300,
        kernel_name=KERNEL_NAME,
        resources={"metadata": {"path": os.path.join(REPO_ROOT, "notebooks")}},
    )
    client.execute()  # raises CellExecutionError, with the traceback, if a cell fails

    assert not list(_outputs(notebook, "error"))
    # Two figures: the drawn detections and the per-class AP.
    figures = [o for o in _outputs(notebook, "display_data") if "image/png" in o.data]
    assert len(figures) == 2
    text = "".join(o.text for o in _outputs(notebook, "stream") if o.name == "stdout")
    assert "ssd_shapes_val ['circle', 'square', 'triangle', 'star', 'ellipse']" in text
    assert "'AP50':" in text
    # The data set went where the test asked, not into the repository.
    assert (tmp_path / "datasets" / "val" / "annotations.json").exists()
