import json
import multiprocessing as mp
import os

import cv2
import numpy as np
import pytest

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from ssd_d2.data.datasets.shapes import (
    SHAPE_CLASSES,
    SHAPES_SPLITS,
    generate_shapes_dataset,
    register_shapes_dataset,
    shapes_dataset_root,
)


def _read_json(output_dir):
    with open(os.path.join(output_dir, "annotations.json")) as f:
        return json.load(f)


def _read_image(output_dir, image):
    return cv2.imread(os.path.join(output_dir, "images", image["file_name"]))


def _tiny_splits(train_images=6, val_images=4):
    # Names of their own, so that the tests never replace a real registration.
    return {
        "ssd_shapes_test_train": {"dirname": "train", "seed": 0, "num_images": train_images},
        "ssd_shapes_test_val": {"dirname": "val", "seed": 1, "num_images": val_images},
    }


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    output_dir = str(tmp_path_factory.mktemp("shapes"))
    generate_shapes_dataset(output_dir, num_images=100, seed=0)
    return output_dir, _read_json(output_dir)


def test_default_splits():
    assert SHAPE_CLASSES == ("circle", "square", "triangle", "star", "ellipse")
    assert SHAPES_SPLITS == {
        "ssd_shapes_train": {"dirname": "train", "seed": 0, "num_images": 2000},
        "ssd_shapes_val": {"dirname": "val", "seed": 1, "num_images": 300},
    }


def test_generation_is_deterministic(tmp_path):
    dirs = [str(tmp_path / name) for name in ("a", "b", "c")]
    generate_shapes_dataset(dirs[0], num_images=10, seed=3)
    generate_shapes_dataset(dirs[1], num_images=10, seed=3)
    generate_shapes_dataset(dirs[2], num_images=10, seed=4)

    def json_bytes(output_dir):
        with open(os.path.join(output_dir, "annotations.json"), "rb") as f:
            return f.read()

    assert json_bytes(dirs[0]) == json_bytes(dirs[1])
    images = _read_json(dirs[0])["images"]
    assert len(images) == 10
    for image in images:
        np.testing.assert_array_equal(_read_image(dirs[0], image), _read_image(dirs[1], image))

    assert json_bytes(dirs[0]) != json_bytes(dirs[2])
    first, other_first = (_read_image(d, _read_json(d)["images"][0]) for d in (dirs[0], dirs[2]))
    assert first.shape != other_first.shape or not np.array_equal(first, other_first)


def test_image_does_not_depend_on_dataset_size(tmp_path):
    # Each image has its own random stream: a smaller split is a prefix of a larger one.
    generate_shapes_dataset(str(tmp_path / "small"), num_images=3, seed=5)
    generate_shapes_dataset(str(tmp_path / "large"), num_images=6, seed=5)
    small, large = _read_json(str(tmp_path / "small")), _read_json(str(tmp_path / "large"))
    assert large["images"][:3] == small["images"]
    assert large["annotations"][: len(small["annotations"])] == small["annotations"]


def test_annotations_are_valid(generated):
    output_dir, dataset = generated
    assert dataset["categories"] == [
        {"id": i + 1, "name": name, "supercategory": "shape"}
        for i, name in enumerate(SHAPE_CLASSES)
    ]
    images = {image["id"]: image for image in dataset["images"]}
    assert len(images) == 100
    assert len({ann["id"] for ann in dataset["annotations"]}) == len(dataset["annotations"])

    for image in images.values():
        assert 240 <= image["width"] <= 400 and 240 <= image["height"] <= 400
        pixels = _read_image(output_dir, image)
        assert pixels.shape == (image["height"], image["width"], 3)

    sizes, categories = [], set()
    for ann in dataset["annotations"]:
        image = images[ann["image_id"]]
        x, y, w, h = ann["bbox"]
        assert all(isinstance(v, int) for v in ann["bbox"])
        assert w > 0 and h > 0
        assert x >= 0 and y >= 0 and x + w <= image["width"] and y + h <= image["height"]
        assert 0 < ann["area"] <= w * h
        assert ann["iscrowd"] == 0
        categories.add(ann["category_id"])
        sizes.append(max(w, h) / min(image["width"], image["height"]))
    assert categories == {1, 2, 3, 4, 5}
    # Small objects (about 12 pixels) as well as large ones (up to ~60% of the image side).
    assert min(sizes) < 16 / 240 and max(sizes) > 0.45

    annotated = {ann["image_id"] for ann in dataset["annotations"]}
    empty = [image for image in images.values() if image["id"] not in annotated]
    # 8% asked for: 100 draws give 8 +- 3 (binomial std).
    assert 0.03 <= len(empty) / len(images) <= 0.15
    for image in empty:
        # An image without objects still has a cluttered background, not a flat one.
        assert _read_image(output_dir, image).std() > 5


def test_shapes_are_visible_in_their_boxes(generated):
    output_dir, dataset = generated
    boxes_per_image = {}
    for ann in dataset["annotations"]:
        boxes_per_image.setdefault(ann["image_id"], []).append(ann["bbox"])

    def overlaps(a, b):
        return (
            a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]
        )

    contrasts = []
    for image in dataset["images"]:
        boxes = boxes_per_image.get(image["id"], [])
        pixels = _read_image(output_dir, image).astype(np.float32)
        for box in boxes:
            x, y, w, h = box
            if min(w, h) < 24 or any(overlaps(box, other) for other in boxes if other is not box):
                continue
            # The middle of a lone shape's box is inside the shape (true of every class) ...
            cx, cy = x + w // 2, y + h // 2
            center = pixels[cy - 2 : cy + 3, cx - 2 : cx + 3].reshape(-1, 3).mean(axis=0)
            # ... and a ring just outside the box is background.
            x0, y0 = max(x - 4, 0), max(y - 4, 0)
            ring = np.ones(pixels.shape[:2], dtype=bool)
            ring[y : y + h, x : x + w] = False
            ring[:y0] = ring[y + h + 4 :] = False
            ring[:, :x0] = ring[:, x + w + 4 :] = False
            if ring.sum() < 20:
                continue
            background = np.median(pixels[ring], axis=0)
            contrasts.append(np.linalg.norm(center - background))

    assert len(contrasts) >= 30
    # Shape colours are drawn at least 90 (RGB distance) from what they cover; JPEG, noise
    # and the varying background take some of that away.
    assert np.mean(np.array(contrasts) > 40) >= 0.85
    # A flat image would give 0 everywhere.
    assert np.median(contrasts) > 80


def test_registration_is_lazy(tmp_path, unregister):
    splits = _tiny_splits()
    register_shapes_dataset(root=str(tmp_path), splits=splits)
    assert os.listdir(tmp_path) == []

    meta = MetadataCatalog.get("ssd_shapes_test_train")
    assert meta.json_file == str(tmp_path / "train" / "annotations.json")
    assert meta.image_root == str(tmp_path / "train" / "images")
    assert meta.evaluator_type == "coco"
    assert meta.thing_classes == list(SHAPE_CLASSES)

    dicts = DatasetCatalog.get("ssd_shapes_test_train")
    assert len(dicts) == 6
    assert os.path.isfile(meta.json_file)
    assert sorted(os.listdir(tmp_path)) == ["train"]  # only the split asked for
    assert sorted(os.listdir(meta.image_root)) == ["{:06d}.jpg".format(i) for i in range(1, 7)]
    assert meta.thing_dataset_id_to_contiguous_id == {1: 0, 2: 1, 3: 2, 4: 3, 5: 4}
    num_boxes = 0
    for record in dicts:
        assert os.path.isfile(record["file_name"])
        for obj in record["annotations"]:
            assert obj["bbox_mode"] == BoxMode.XYWH_ABS
            assert 0 <= obj["category_id"] < len(SHAPE_CLASSES)
            num_boxes += 1
    assert num_boxes == len(_read_json(str(tmp_path / "train"))["annotations"]) > 0

    # A second get reuses the cache instead of drawing again.
    mtime = os.stat(meta.json_file).st_mtime_ns
    assert DatasetCatalog.get("ssd_shapes_test_train") == dicts
    assert os.stat(meta.json_file).st_mtime_ns == mtime

    assert len(DatasetCatalog.get("ssd_shapes_test_val")) == 4
    assert sorted(os.listdir(tmp_path)) == ["train", "val"]


def test_coco_evaluator_reads_the_split(tmp_path, unregister):
    from detectron2.evaluation import COCOEvaluator

    register_shapes_dataset(root=str(tmp_path), splits=_tiny_splits())
    DatasetCatalog.get("ssd_shapes_test_val")
    evaluator = COCOEvaluator("ssd_shapes_test_val", tasks=("bbox",), distributed=False)
    assert len(evaluator._coco_api.getImgIds()) == 4
    assert len(evaluator._coco_api.getCatIds()) == len(SHAPE_CLASSES)


def test_registration_is_idempotent(tmp_path, unregister):
    register_shapes_dataset(root=str(tmp_path), splits=_tiny_splits())
    register_shapes_dataset(root=str(tmp_path), splits=_tiny_splits())
    assert DatasetCatalog.list().count("ssd_shapes_test_train") == 1

    # The default splits too; registering draws nothing, so this stays fast.
    register_shapes_dataset(root=str(tmp_path))
    register_shapes_dataset(root=str(tmp_path))
    for name, dirname in (("ssd_shapes_train", "train"), ("ssd_shapes_val", "val")):
        assert DatasetCatalog.list().count(name) == 1
        meta = MetadataCatalog.get(name)
        assert meta.evaluator_type == "coco"
        assert meta.json_file.endswith(os.path.join(dirname, "annotations.json"))
    assert os.listdir(tmp_path) == []


def test_incomplete_split_folder_is_regenerated(tmp_path, unregister):
    # What an interrupted copy leaves: images but no json.
    os.makedirs(tmp_path / "train" / "images")
    (tmp_path / "train" / "images" / "000001.jpg").write_bytes(b"partial")
    register_shapes_dataset(root=str(tmp_path), splits=_tiny_splits(train_images=3))

    dicts = DatasetCatalog.get("ssd_shapes_test_train")
    assert len(dicts) == 3
    for record in dicts:
        assert cv2.imread(record["file_name"]).shape == (record["height"], record["width"], 3)
    # No temporary or set-aside folder is left behind.
    assert os.listdir(tmp_path) == ["train"]


def test_cache_made_with_other_parameters_is_rejected(tmp_path, unregister):
    generate_shapes_dataset(str(tmp_path / "train"), num_images=2, seed=0)
    register_shapes_dataset(root=str(tmp_path), splits=_tiny_splits(train_images=3))
    with pytest.raises(RuntimeError, match="Delete"):
        DatasetCatalog.get("ssd_shapes_test_train")


def test_dataset_root(tmp_path, monkeypatch):
    monkeypatch.delenv("SSD_D2_DATASETS", raising=False)
    monkeypatch.delenv("DETECTRON2_DATASETS", raising=False)
    monkeypatch.chdir(tmp_path)
    assert shapes_dataset_root() == str(tmp_path / "datasets" / "ssd_shapes")

    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "d2"))
    assert shapes_dataset_root() == str(tmp_path / "d2" / "ssd_shapes")

    monkeypatch.setenv("SSD_D2_DATASETS", str(tmp_path / "ssd"))
    assert shapes_dataset_root() == str(tmp_path / "ssd")

    assert shapes_dataset_root(str(tmp_path / "explicit")) == str(tmp_path / "explicit")
    assert shapes_dataset_root("relative") == str(tmp_path / "relative")


def _load_split_in_child(root, splits, barrier, results):
    from ssd_d2.data.datasets import shapes

    # Count the generations this process runs, to show that both really raced.
    num_generations = []
    generate = shapes.generate_shapes_dataset

    def counting_generate(*args, **kwargs):
        num_generations.append(1)
        return generate(*args, **kwargs)

    shapes.generate_shapes_dataset = counting_generate
    register_shapes_dataset(root=root, splits=splits)
    barrier.wait()  # both processes ask for the missing split at the same moment
    dicts = DatasetCatalog.get("ssd_shapes_test_train")
    results.put((len(num_generations), [record["file_name"] for record in dicts]))


def test_concurrent_generation(tmp_path):
    # "fork", as PyTorch starts DataLoader workers on Linux (and as fast as a test needs).
    context = mp.get_context("fork")
    splits = _tiny_splits(train_images=40)
    barrier, results = context.Barrier(2), context.Queue()
    processes = [
        context.Process(target=_load_split_in_child, args=(str(tmp_path), splits, barrier, results))
        for _ in range(2)
    ]
    for process in processes:
        process.start()
    num_generations, file_lists = zip(*[results.get(timeout=60) for _ in processes])
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0

    # Both drew the split (drawing 40 images takes far longer than the barrier's skew), one
    # rename won, and the other copy was dropped: one complete split, no leftovers, and both
    # processes read the same files.
    assert num_generations == (1, 1)
    assert os.listdir(tmp_path) == ["train"]
    expected = [str(tmp_path / "train" / "images" / "{:06d}.jpg".format(i)) for i in range(1, 41)]
    assert file_lists[0] == file_lists[1] == expected
    assert sorted(os.listdir(tmp_path / "train" / "images")) == [
        os.path.basename(path) for path in expected
    ]
    for path in expected:
        assert cv2.imread(path) is not None
    reference = tmp_path / "reference"
    generate_shapes_dataset(str(reference), num_images=40, seed=0)
    assert _read_json(str(tmp_path / "train")) == _read_json(str(reference))
