#!/usr/bin/env python
"""ssd_d2: SSD detectors (SSD300/SSD512 on VGG16, SSDLite320) for Detectron2.

detectron2 itself is not on PyPI under its own name: dev/install.sh installs it (and torch)
before this package. See README.md, "Install".
"""

import os

from setuptools import find_packages, setup

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
    python_requires=">=3.9",
    install_requires=[
        "torch>=1.10",
        "torchvision",
        "fvcore",
        "pycocotools>=2.0.2",
        "opencv-python-headless",
    ],
    extras_require={
        # Export to ONNX and checking it; executing the notebook; measuring memory.
        "export": ["onnx", "onnxscript", "onnxruntime"],
        "test": [
            "pytest",
            "pytest-timeout",
            "onnx",
            "onnxscript",
            "onnxruntime",
            "nbclient",
            "nbformat",
            "ipykernel",
            "psutil",
        ],
    },
)
