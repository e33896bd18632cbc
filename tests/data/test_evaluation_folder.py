"""Evaluation files go where Detectron2's train_net.py puts them: OUTPUT_DIR/inference."""

import json
import os

import torch

from detectron2.evaluation import inference_on_dataset
from detectron2.modeling import build_model

from ssd_d2 import SSDTrainer
from ssd_d2.data.datasets import register_shapes_dataset
from ssd_d2.engine.compat import has_compiled_coco_eval

from ..conftest import load_config

# Detectron2's own train_net.py (installed with it) is the reference.
from tools.train_net import build_evaluator as detectron2_build_evaluator  # isort:skip

SPLITS = {
    "eval_folder_shapes_a": {"dirname": "a", "seed": 11, "num_images": 3},
    "eval_folder_shapes_b": {"dirname": "b", "seed": 12, "num_images": 2},
}


def _files(folder):
    return sorted(
        os.path.relpath(os.path.join(root, name), folder)
        for root, _, names in os.walk(folder)
        for name in names
    )


def test_two_test_sets_write_what_detectron2s_train_net_writes(tmp_path):
    register_shapes_dataset(str(tmp_path / "datasets"), SPLITS)
    names = tuple(SPLITS)
    opts = ["DATASETS.TEST", str(names), "DATALOADER.NUM_WORKERS", "0"]
    opts += ["TEST.DETECTIONS_PER_IMAGE", "20"]
    ours = load_config("ssd160_shapes_demo", *opts, "OUTPUT_DIR", str(tmp_path / "ours"))
    reference = load_config("ssd160_shapes_demo", *opts, "OUTPUT_DIR", str(tmp_path / "d2"))
    model = build_model(ours).eval()

    results = SSDTrainer.test(ours, model)
    assert set(results) == set(names) and all("bbox" in r for r in results.values())
    for name in names:
        # Detectron2's build_evaluator, given the same model and test loader.
        loader = SSDTrainer.build_test_loader(reference, name)
        evaluator = detectron2_build_evaluator(reference, name)
        # Where detectron2 lacks its compiled COCOeval, pycocotools' (as SSDTrainer does).
        evaluator._use_fast_impl = has_compiled_coco_eval()
        inference_on_dataset(model, loader, evaluator)

    inference = tmp_path / "ours" / "inference"
    assert _files(inference) == _files(tmp_path / "d2" / "inference")
    assert "coco_instances_results.json" in _files(inference)  # no per-data-set subfolder
    for name in _files(inference):
        if name.endswith(".json"):
            with open(inference / name) as a, open(tmp_path / "d2" / "inference" / name) as b:
                assert json.load(a) == json.load(b), name
        else:
            a = torch.load(inference / name, weights_only=False)
            b = torch.load(tmp_path / "d2" / "inference" / name, weights_only=False)
            assert len(a) == len(b) and [x["image_id"] for x in a] == [x["image_id"] for x in b]
