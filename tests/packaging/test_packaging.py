"""
ssd_d2's own install: what setup.py declares, and that `pip install -e .` keeps an
environment's numpy, OpenCV flavour and Detectron2 working.
"""

import os
import subprocess
import sys
import textwrap

import pytest

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def _requirements(tmp_path):
    """The requirements setup.py declares for the environment running the tests."""
    subprocess.run(
        [sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(tmp_path)],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
    )
    requires = (tmp_path / "ssd_d2.egg-info" / "requires.txt").read_text()
    return requires.split("\n\n[")[0].split()  # the unconditional ones


def test_declares_what_it_imports_and_keeps_an_installed_opencv(tmp_path):
    names = {r.split(">")[0].split("<")[0].split("=")[0] for r in _requirements(tmp_path)}
    declared = "torch torchvision fvcore pycocotools numpy Pillow matplotlib PyYAML tqdm"
    for imported in declared.split():
        assert imported in names
    # This environment has an OpenCV already (each flavour owns the cv2 package): no second.
    assert not any(name.startswith("opencv") for name in names)


def test_the_export_extra_takes_the_installed_numpy(tmp_path):
    _requirements(tmp_path)
    requires = (tmp_path / "ssd_d2.egg-info" / "requires.txt").read_text()
    export = requires.split("[export]\n")[1].split("\n\n")[0].split()
    import numpy

    if tuple(int(p) for p in numpy.__version__.split(".")[:2]) < (1, 24):
        # Detectron2 v0.6's numpy: the releases that take it, never an upgrade of numpy.
        assert {"openvino<2026", "nncf<2.15", "numpy<1.24"} <= set(export)
    else:
        assert {"openvino", "nncf"} <= set(export)
    assert {"onnx", "onnxruntime"} <= set(export)


VOC_EVALUATION = textwrap.dedent("""
    import os, sys
    import numpy as np, torch, cv2
    import ssd_d2
    from detectron2.data import MetadataCatalog
    from detectron2.data.datasets import register_pascal_voc
    from detectron2.evaluation import PascalVOCDetectionEvaluator
    from detectron2.structures import Boxes, Instances

    root = sys.argv[1]
    for folder in ("Annotations", "ImageSets/Main", "JPEGImages"):
        os.makedirs(os.path.join(root, folder), exist_ok=True)
    boxes = {"a": (10, 12, 40, 50), "b": (5, 5, 60, 30)}
    for name, (x0, y0, x1, y1) in boxes.items():
        cv2.imwrite(os.path.join(root, "JPEGImages", name + ".jpg"), np.zeros((64, 64, 3), np.uint8))
        with open(os.path.join(root, "Annotations", name + ".xml"), "w") as f:
            f.write(
                f"<annotation><filename>{name}.jpg</filename><size><width>64</width>"
                f"<height>64</height><depth>3</depth></size><object><name>cat</name>"
                f"<pose>Unspecified</pose><truncated>0</truncated><difficult>0</difficult>"
                f"<bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax>"
                f"</bndbox></object></annotation>"
            )
    with open(os.path.join(root, "ImageSets/Main/test.txt"), "w") as f:
        f.write("a\\nb\\n")
    register_pascal_voc("packaging_voc", root, "test", 2007, class_names=["cat"])
    evaluator = PascalVOCDetectionEvaluator("packaging_voc")
    evaluator.reset()
    for name, (x0, y0, x1, y1) in boxes.items():
        instances = Instances((64, 64))
        # VOC boxes are 1-based; Detectron2's loader subtracts 1 from the minima.
        instances.pred_boxes = Boxes(torch.tensor([[x0 - 1.0, y0 - 1.0, x1, y1]]))
        instances.scores = torch.tensor([0.9])
        instances.pred_classes = torch.tensor([0])
        evaluator.process([{"image_id": name}], [{"instances": instances}])
    print("AP50", evaluator.evaluate()["bbox"]["AP50"])
    """)


@pytest.mark.slow
def test_pip_install_in_a_detectron2_v06_environment_keeps_numpy_and_voc_evaluation(tmp_path):
    """
    In a Detectron2 v0.6 environment without OpenCV (numpy < 1.24, as v0.6 needs), a plain
    `pip install -e .` must not pull an OpenCV that needs numpy 2: v0.6's VOC evaluation uses
    numpy aliases that numpy 1.24 removed. Then, with the GUI flavour of OpenCV installed
    instead, a reinstall must not add the headless one beside it.
    """
    venv = tmp_path / "venv"
    env = dict(
        os.environ,
        SSD_D2_VENV=str(venv),
        SSD_D2_DETECTRON2_SOURCE="pypi-0.6",
        SSD_D2_INSTALL_DETECTRON2_ONLY="1",
    )
    subprocess.run([os.path.join(REPO_ROOT, "dev", "install.sh")], env=env, check=True)
    python = str(venv / "bin" / "python")
    pip = [python, "-m", "pip", "--disable-pip-version-check", "-q"]

    def installed(name):
        result = subprocess.run(
            [python, "-c", f"import importlib.metadata as m; print(m.version({name!r}))"],
            capture_output=True,
            text=True,
        )
        return result.stdout.strip() if result.returncode == 0 else None

    numpy_before = installed("numpy")
    assert numpy_before and numpy_before.startswith("1.")
    assert installed("opencv-python-headless") is None and installed("opencv-python") is None

    subprocess.run([*pip, "install", "-e", REPO_ROOT], check=True)
    assert installed("numpy") == numpy_before
    assert installed("opencv-python-headless") is not None
    result = subprocess.run(
        [python, "-c", VOC_EVALUATION, str(tmp_path / "voc")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "AP50 100.0" in result.stdout

    # The export extra (onnxruntime, OpenVINO, NNCF) keeps numpy too, and its int8 tools work.
    subprocess.run([*pip, "install", "-e", f"{REPO_ROOT}[export]"], check=True)
    assert installed("numpy") == numpy_before
    probe = "import nncf, openvino, onnxruntime.quantization; print(nncf.__version__)"
    result = subprocess.run([python, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]

    subprocess.run([*pip, "uninstall", "-y", "opencv-python-headless"], check=True)
    subprocess.run([*pip, "install", "opencv-python<4.12"], check=True)
    subprocess.run([*pip, "install", "-e", REPO_ROOT], check=True)
    assert installed("opencv-python-headless") is None
    assert installed("numpy") == numpy_before
