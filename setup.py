#!/usr/bin/env python
"""ssd_d2: SSD detectors (SSD300/SSD512 on VGG16, SSDLite320) for Detectron2.

detectron2 itself is not on PyPI under its own name: dev/install.sh installs it (and torch)
before this package. See docs/install.md.
"""

import json
import os
import subprocess
import sys

from setuptools import find_packages, setup

# The oldest releases that have every API ssd_d2 calls, read from the code and from each
# package's release notes and sources, not tested: CI runs only the versions that
# docs/install.md lists, and its "Version floors" names the API behind each floor. torch 2.4
# counts on the fallbacks that ssd_d2 takes by feature where torch < 2.5 lacks an API
# (torch.serialization.safe_globals, the public load_state_dict pre-hook, the dynamo keyword of
# torch.onnx.export).
REQUIREMENTS = [
    # torch.serialization.add_safe_globals and its "GLOBAL" refusals (checkpoint reading).
    "torch>=2.4",
    # torch 2.4's release; ssd_d2's own calls (weights=None, Conv2dNormActivation) are 0.13's.
    "torchvision>=0.19",
    # Detectron2's own floor: ssd_d2 uses fvcore only through Detectron2.
    "fvcore>=0.1.5",
    # The first built against numpy 2 (older releases fail to import under it).
    "pycocotools>=2.0.8",
    # np.random.default_rng, SeedSequence, Generator.integers.
    "numpy>=1.17",
    # PIL.ExifTags.Base (9.3), Image.Transpose (9.1).
    "Pillow>=9.3",
    # matplotlib.colormaps, Axes.set_yticks(ticks, labels).
    "matplotlib>=3.5",
    # fvcore's floor; ssd_d2 itself only catches yaml.constructor.ConstructorError.
    "PyYAML>=5.1",
    # tqdm(iterable, desc=, file=).
    "tqdm>=4.0",
]

OPENCV_DISTRIBUTIONS = (
    "opencv-python",
    "opencv-python-headless",
    "opencv-contrib-python",
    "opencv-contrib-python-headless",
)


def _installed_versions(names):
    """
    Versions of the distributions ``names`` in the environment pip installs into. pip builds
    in an isolated environment that hides the target's packages, but runs this file with the
    target's interpreter: ask it in a process of its own, isolated from pip's path changes.
    """
    probe = (
        "import json, sys, importlib.metadata as m\n"
        "found = {}\n"
        "for name in sys.argv[1:]:\n"
        "    try: found[name] = m.version(name)\n"
        "    except m.PackageNotFoundError: pass\n"
        "print(json.dumps(found))\n"
    )
    try:
        out = subprocess.run(
            [sys.executable, "-I", "-c", probe, *names],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
        return json.loads(out)
    except (OSError, subprocess.SubprocessError, ValueError):
        return {}


def opencv_requirement():
    """
    Any OpenCV flavour that is installed already is used as it is (each owns the ``cv2``
    package, so adding a second one would overwrite the first). Otherwise the headless one,
    no newer than the installed numpy supports: OpenCV 4.12 and later need numpy 2, which would
    replace a numpy 1 that other packages (detectron2 v0.6) depend on.
    """
    installed = _installed_versions(OPENCV_DISTRIBUTIONS + ("numpy",))
    if any(name in installed for name in OPENCV_DISTRIBUTIONS):
        return []
    numpy_major = int(installed.get("numpy", "2").split(".")[0])
    return ["opencv-python-headless<4.12" if numpy_major < 2 else "opencv-python-headless"]


def export_requirements():
    """
    The runtimes the exports run in and the int8 quantizers: onnx, onnxruntime (and its
    quantization), OpenVINO and NNCF. Where the installed numpy is older than 1.24 (Detectron2
    v0.6 needs one), the newest releases that take it, and numpy held below 1.24: NNCF 2.15 and
    later need numpy >= 1.24, and NNCF 2.14 drives OpenVINO through ``openvino.runtime``, which
    OpenVINO 2026 removed.
    """
    numpy = _installed_versions(("numpy",)).get("numpy", "2")
    old_numpy = tuple(int(part) for part in numpy.split(".")[:2] if part.isdigit()) < (1, 24)
    runtimes = ["openvino", "nncf"]
    if old_numpy:
        # numpy itself held too: NNCF's newest SciPy and scikit-learn would pull a newer one.
        runtimes = ["openvino<2026", "nncf<2.15", "numpy<1.24"]
    return ["onnx", "onnxscript", "onnxruntime"] + runtimes


_HERE = os.path.dirname(os.path.abspath(__file__))


def model_zoo_configs():
    """
    configs/ stays at the repository root (users run --config-file configs/...); it ships
    inside the package as ssd_d2/configs, a link to it (a copy where links are not
    available), so that ssd_d2.model_zoo finds the configs in a non-editable install.
    """
    source = os.path.join(_HERE, "configs")
    target = os.path.join(_HERE, "ssd_d2", "configs")
    if os.path.isdir(source) and not os.path.exists(target):
        try:
            os.symlink(os.path.join("..", "configs"), target)
        except OSError:
            import shutil

            shutil.copytree(source, target)
    return ["configs/*.yaml"]


setup(
    name="ssd_d2",
    version="0.1.0",
    description="The SSD family of one-stage detectors as a Detectron2 project",
    packages=find_packages(exclude=("tests", "tests.*", "benchmarks")),
    package_data={"ssd_d2": model_zoo_configs()},
    # CI runs Python 3.11 only. 3.9 and 3.10: untested (the code uses nothing newer that we
    # know of); 3.12 and later: untested, and no numpy < 1.24 for Detectron2 v0.6 exists there.
    python_requires=">=3.11",
    install_requires=REQUIREMENTS + opencv_requirement(),
    extras_require={
        # Export to ONNX and OpenVINO, int8 quantization, and running the exported models.
        "export": export_requirements(),
        # The test suite: exporting, executing the notebook, measuring memory.
        "test": [
            "pytest",
            "pytest-timeout",
            *export_requirements(),
            "nbclient",
            "nbformat",
            "ipykernel",
            "psutil",
            # lufficc/SSD's config system, for the tests that run it as a peer.
            "yacs",
        ],
    },
)
