#!/usr/bin/env python
"""ssd_d2: SSD detectors (SSD300/SSD512 on VGG16, SSDLite320) for Detectron2.

detectron2 itself is not on PyPI under its own name: dev/install.sh installs it (and torch)
before this package. See README.md, "Install".
"""

from setuptools import find_packages, setup

setup(
    name="ssd_d2",
    version="0.1.0",
    description="The SSD family of one-stage detectors as a Detectron2 project",
    packages=find_packages(exclude=("tests", "tests.*", "benchmarks")),
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
            # lufficc/SSD's config system, for the tests that run it as a peer.
            "yacs",
        ],
    },
)
