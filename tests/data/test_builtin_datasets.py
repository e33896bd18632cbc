import pytest

from ssd_d2.data import check_dataset_files
from ssd_d2.engine import SSDTrainer

from ..conftest import load_config


@pytest.mark.parametrize(
    "dataset_name, expected_path",
    [("voc_2007_trainval", "VOC2007"), ("coco_2017_val", "val2017.json")],
)
def test_missing_builtin_dataset_names_the_path_and_the_fix(
    dataset_name, expected_path, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # Detectron2's default root "datasets" is relative
    with pytest.raises(FileNotFoundError, match=f"{expected_path}.*DETECTRON2_DATASETS"):
        check_dataset_files([dataset_name])


def test_trainer_checks_before_loading(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="voc_2007_test"):
        SSDTrainer.build_test_loader(load_config("ssd300_voc"), "voc_2007_test")


def test_other_datasets_are_not_checked():
    check_dataset_files(["ssd_shapes_train", "my_own_dataset"])


def test_a_users_coco_named_dataset_gets_no_builtin_advice(tmp_path):
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import register_coco_instances

    from ssd_d2.data import load_dataset_dicts

    register_coco_instances("coco_mine", {}, str(tmp_path / "missing.json"), str(tmp_path))
    try:
        check_dataset_files(["coco_mine"])
        with pytest.raises(FileNotFoundError) as raised:
            load_dataset_dicts("coco_mine")
        assert "DETECTRON2_DATASETS" not in str(raised.value)
    finally:
        DatasetCatalog.remove("coco_mine")
        MetadataCatalog.remove("coco_mine")
