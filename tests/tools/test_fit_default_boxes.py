"""python -m ssd_d2.tools.fit_default_boxes: on a small generated ssd_tall_objects split, the
written config loads, builds a model within the budget and matches more ground truth; bad input
gets one clear error."""

import pytest
import torch

from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model

from ssd_d2.config import load_config
from ssd_d2.data.box_statistics import dataset_boxes
from ssd_d2.data.datasets import register_tall_objects
from ssd_d2.modeling import default_box_fitting
from ssd_d2.modeling.default_box_fitting import default_box_set_from_config, matched_ground_truth
from ssd_d2.tools import fit_default_boxes

from ..conftest import CONFIG_DIR

CONFIG = f"{CONFIG_DIR}/ssd160_tall_objects_demo.yaml"
DATASET = "ssd_tall_objects_fit_test"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A registered ssd_tall_objects split of 40 images."""
    root = tmp_path_factory.mktemp("tall_objects")
    register_tall_objects(
        root=str(root), splits={DATASET: {"dirname": "tiny", "seed": 7, "num_images": 40}}
    )
    return DATASET


def _coverage(cfg, dicts):
    boxes = dataset_boxes(dicts)
    box_set = default_box_set_from_config(cfg)
    gt = torch.from_numpy(boxes.at_input(box_set.image_size))
    return float(matched_ground_truth(gt, box_set, 0.5, cfg.MODEL.SSD.MATCHING).float().mean())


@pytest.mark.slow
def test_fitted_config_loads_builds_and_covers_more(dataset, tmp_path, capsys):
    output, picture = tmp_path / "fitted.yaml", tmp_path / "coverage.png"
    argv = ["--config-file", CONFIG, "--output", str(output), "--picture", str(picture)]
    argv += ["--budget", "4000", "DATASETS.TRAIN", f"('{dataset}',)"]
    assert fit_default_boxes.main(argv) == 0
    printed = capsys.readouterr().out
    assert "The config's default boxes (2390 at 160x160)" in printed
    assert picture.stat().st_size > 10000

    # The written config: the base config by path, the command-line data set, fitted boxes.
    fitted = load_config(str(output))
    assert fitted.DATASETS.TRAIN == (dataset,)
    base = load_config(CONFIG, ["DATASETS.TRAIN", f"('{dataset}',)"])
    model = build_model(fitted).eval()
    size = tuple(model.image_size)
    with torch.no_grad():
        features = model.backbone(torch.zeros(1, 3, *size))
    anchors = model.anchor_generator([features[f] for f in fitted.MODEL.SSD.IN_FEATURES])
    assert sum(len(a) for a in anchors) <= 4000
    assert f"{sum(len(a) for a in anchors)} default boxes" in printed

    dicts = DatasetCatalog.get(dataset)
    before, after = _coverage(base, dicts), _coverage(fitted, dicts)
    assert before < 0.5 and after > before + 0.3
    assert f"({100 * after:.1f}%; the base config" in output.read_text()


def _error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        fit_default_boxes.main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_no_train_data_set(tmp_path, capsys):
    argv = ["--config-file", CONFIG, "--output", str(tmp_path / "f.yaml"), "DATASETS.TRAIN", "()"]
    assert "the config has no DATASETS.TRAIN" in _error(argv, capsys)


def test_unregistered_data_set(tmp_path, capsys):
    argv = ["--config-file", CONFIG, "--output", str(tmp_path / "f.yaml")]
    argv += ["DATASETS.TRAIN", "('no_such_set',)"]
    assert "data set 'no_such_set' is not registered" in _error(argv, capsys)


def test_budget_below_minimum(dataset, tmp_path, capsys):
    argv = ["--config-file", CONFIG, "--output", str(tmp_path / "f.yaml"), "--budget", "100"]
    argv += ["DATASETS.TRAIN", f"('{dataset}',)"]
    message = _error(argv, capsys)
    # Two squares per location: 2 x (20x20 + 10x10 + 5x5 + 3x3 + 1x1) at 160x160, the
    # smallest of the sizes tried (the data's 16:9 ones have more locations).
    assert "a budget of 100 default boxes is below the minimum" in message
    assert "--budget 1070 or more" in message
    assert not (tmp_path / "f.yaml").exists()


def test_another_class_count_is_refused(dataset, tmp_path, capsys):
    """A config whose MODEL.SSD.NUM_CLASSES is not the data's would write a fitted config that
    cannot train on them: refused, naming both counts."""
    argv = ["--config-file", CONFIG, "--output", str(tmp_path / "f.yaml")]
    argv += ["DATASETS.TRAIN", f"('{dataset}',)", "MODEL.SSD.NUM_CLASSES", "7"]
    message = _error(argv, capsys)
    assert "MODEL.SSD.NUM_CLASSES is 7" in message and "Set MODEL.SSD.NUM_CLASSES 3" in message
    assert not (tmp_path / "f.yaml").exists()


def test_no_input_size_the_backbone_runs_at(dataset):
    """Every size tried too small for the backbone: the error lists each with the reason, not
    a budget."""
    cfg = load_config(CONFIG, ["DATASETS.TRAIN", f"('{dataset}',)"])
    boxes = dataset_boxes(DatasetCatalog.get(dataset))
    with pytest.raises(ValueError, match=r"runs at none of the input sizes tried:\n  8x8: skipped"):
        default_box_fitting.fit_default_boxes(cfg, boxes.at_input, 4000, 16 / 9, [(8, 8)])
