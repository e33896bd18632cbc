"""toy_signs: the second generated data set, registered on import, generated on first use."""

import json
import os

import cv2
import numpy as np
import pytest

from detectron2.data import DatasetCatalog, MetadataCatalog

from ssd_d2.data.datasets import toy_signs
from ssd_d2.data.datasets.toy_signs import TOY_SIGN_CLASSES, generate_toy_signs, register_toy_signs


def _read_json(output_dir):
    with open(os.path.join(output_dir, "annotations.json")) as f:
        return json.load(f)


def _read_image(output_dir, image):
    return cv2.imread(os.path.join(output_dir, "images", image["file_name"]))


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    output_dir = str(tmp_path_factory.mktemp("toy_signs"))
    generate_toy_signs(output_dir, num_images=60, seed=0)
    return output_dir, _read_json(output_dir)


def test_generation_is_deterministic(tmp_path):
    dirs = [str(tmp_path / name) for name in ("a", "b", "c")]
    for output_dir, seed in zip(dirs, (3, 3, 4)):
        generate_toy_signs(output_dir, num_images=6, seed=seed)

    def json_bytes(output_dir):
        with open(os.path.join(output_dir, "annotations.json"), "rb") as f:
            return f.read()

    assert json_bytes(dirs[0]) == json_bytes(dirs[1])
    for image in _read_json(dirs[0])["images"]:
        np.testing.assert_array_equal(_read_image(dirs[0], image), _read_image(dirs[1], image))
    assert json_bytes(dirs[0]) != json_bytes(dirs[2])


def test_annotations_are_valid_and_all_classes_appear(generated):
    output_dir, dataset = generated
    assert [c["name"] for c in dataset["categories"]] == list(TOY_SIGN_CLASSES)
    assert [c["id"] for c in dataset["categories"]] == [1, 2, 3, 4]
    images = {image["id"]: image for image in dataset["images"]}
    for image in images.values():
        assert 256 <= image["width"] <= 384 and image["height"] == image["width"] * 3 // 4
        assert _read_image(output_dir, image).shape == (image["height"], image["width"], 3)

    counts = {image_id: 0 for image_id in images}
    for ann in dataset["annotations"]:
        image = images[ann["image_id"]]
        x, y, w, h = ann["bbox"]
        assert all(isinstance(v, int) for v in ann["bbox"])
        assert x >= 0 and y >= 0 and x + w <= image["width"] and y + h <= image["height"]
        # Diameters of 16-96 pixels; a rotated cross's corners reach a little beyond.
        assert 10 <= max(w, h) <= 110, ann
        assert 0 < ann["area"] <= w * h
        counts[ann["image_id"]] += 1
    assert {ann["category_id"] for ann in dataset["annotations"]} == {1, 2, 3, 4}
    # 2-12 drawn per image, a few hidden by later ones.
    assert max(counts.values()) <= 12 and np.mean(list(counts.values())) > 5


def _saturated(image):
    # The objects are saturated and bright; background and clutter are near grey.
    hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)
    return (hsv[..., 1] >= 120) & (hsv[..., 2] >= 100)


def _box_fit(output_dir, dataset, shift=0):
    """
    (fraction of boxes with object pixels along all four sides, fraction of object pixels
    inside some box), for the boxes moved right by ``shift`` pixels.
    """
    band = 3  # pixels: JPEG softens an arrow's tip
    touching, inside, total = [], 0, 0
    for image in dataset["images"]:
        saturated = _saturated(_read_image(output_dir, image))
        covered = np.zeros_like(saturated)
        for ann in dataset["annotations"]:
            if ann["image_id"] != image["id"]:
                continue
            x, y, w, h = ann["bbox"]
            x += shift
            box = saturated[y : y + h, x : x + w]
            sides = (box[:band], box[-band:], box[:, :band], box[:, -band:])
            touching.append(all(side.any() for side in sides))
            covered[max(0, y - 2) : y + h + 2, max(0, x - 2) : x + w + 2] = True
        inside += int((saturated & covered).sum())
        total += int(saturated.sum())
    return np.mean(touching), inside / total


def test_boxes_fit_the_drawn_pixels(generated):
    output_dir, dataset = generated
    touching, inside = _box_fit(output_dir, dataset)
    assert touching >= 0.99 and inside >= 0.98, (touching, inside)
    # The check can tell: boxes 6 pixels off fail it.
    touching, _ = _box_fit(output_dir, dataset, shift=6)
    assert touching < 0.7, touching


def test_registered_lazily_and_cached(tmp_path, unregister):
    splits = {
        "toy_signs_test_train": {"dirname": "train", "seed": 7, "num_images": 5},
        "toy_signs_test_val": {"dirname": "val", "seed": 8, "num_images": 3},
    }
    register_toy_signs(str(tmp_path), splits)
    assert not os.listdir(tmp_path)  # nothing drawn before the first use

    for name, split in splits.items():
        dicts = DatasetCatalog.get(name)
        assert len(dicts) == split["num_images"]
        assert all(os.path.isfile(d["file_name"]) for d in dicts)
        assert any(d["annotations"] for d in dicts)
        metadata = MetadataCatalog.get(name)
        assert metadata.thing_classes == list(TOY_SIGN_CLASSES)
        assert metadata.evaluator_type == "coco"
        assert metadata.json_file == str(tmp_path / split["dirname"] / "annotations.json")

    # Cached: loading again draws nothing.
    json_file = tmp_path / "train" / "annotations.json"
    mtime = json_file.stat().st_mtime_ns
    DatasetCatalog.get("toy_signs_test_train")
    assert json_file.stat().st_mtime_ns == mtime

    # Registered names are left alone unless replaced; a replacement takes the new splits.
    other = {"toy_signs_test_train": {"dirname": "train4", "seed": 7, "num_images": 4}}
    register_toy_signs(str(tmp_path), other)
    assert len(DatasetCatalog.get("toy_signs_test_train")) == 5
    register_toy_signs(str(tmp_path), other, replace=True)
    assert len(DatasetCatalog.get("toy_signs_test_train")) == 4

    # A cache of another generator version is named, with the fix.
    val_json = tmp_path / "val" / "annotations.json"
    dataset = json.loads(val_json.read_text())
    dataset["info"]["version"] = -1
    val_json.write_text(json.dumps(dataset))
    with pytest.raises(RuntimeError, match="Delete .*val to regenerate"):
        DatasetCatalog.get("toy_signs_test_val")


def test_the_default_splits_are_registered():
    assert {"toy_signs_train", "toy_signs_val"} <= set(DatasetCatalog.list())
    assert MetadataCatalog.get("toy_signs_val").thing_classes == list(TOY_SIGN_CLASSES)


def test_default_splits_and_root(monkeypatch):
    splits = toy_signs.toy_signs_splits()
    assert {name: s["num_images"] for name, s in splits.items()} == {
        "toy_signs_train": 1500,
        "toy_signs_val": 300,
    }
    # Another size is another folder, so that both stay cached.
    assert toy_signs.toy_signs_splits(20, 10)["toy_signs_train"]["dirname"] != (
        splits["toy_signs_train"]["dirname"]
    )
    monkeypatch.setenv("SSD_D2_DATASETS", "/data/sets")
    assert toy_signs.toy_signs_root() == "/data/sets/toy_signs"
    assert toy_signs.toy_signs_root("/elsewhere") == "/elsewhere"
