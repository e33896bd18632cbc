"""The generated family (sparse_clutter, many_classes): registered on import, each drawn as its
FamilyMember says, byte-identical for the same arguments."""

import json
import os

import cv2
import numpy as np
import pytest

from detectron2.data import MetadataCatalog

import ssd_d2.data.datasets  # noqa: F401  (registers the family)
from ssd_d2.data.datasets.shape_family import FAMILY, generate_family_member


def _read_json(output_dir):
    with open(os.path.join(output_dir, "annotations.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module", params=sorted(FAMILY))
def generated(request, tmp_path_factory):
    name = request.param
    output_dir = str(tmp_path_factory.mktemp(name))
    generate_family_member(name, output_dir, num_images=80, seed=5)
    return name, output_dir, _read_json(output_dir)


def test_generation_is_deterministic(tmp_path):
    for name in FAMILY:
        dirs = [str(tmp_path / f"{name}{i}") for i in range(3)]
        for output_dir, seed in zip(dirs, (3, 3, 4)):
            generate_family_member(name, output_dir, num_images=4, seed=seed)
        first, same, other = (_read_json(d) for d in dirs)
        assert first == same and first != other
        for image in first["images"]:
            pixels = [cv2.imread(os.path.join(d, "images", image["file_name"])) for d in dirs[:2]]
            np.testing.assert_array_equal(*pixels)


def test_annotations_follow_the_member(generated):
    name, output_dir, dataset = generated
    member = FAMILY[name]
    assert [c["name"] for c in dataset["categories"]] == list(member.classes)
    images = {image["id"]: image for image in dataset["images"]}
    per_image = {image_id: [] for image_id in images}
    for ann in dataset["annotations"]:
        per_image[ann["image_id"]].append(ann)
        image = images[ann["image_id"]]
        x, y, w, h = ann["bbox"]
        assert x >= 0 and y >= 0 and x + w <= image["width"] and y + h <= image["height"]
        longest = member.max_object_fraction * min(image["width"], image["height"])
        # A drawn shape's box is at most its diameter, plus a pixel of rounding.
        assert max(w, h) <= longest + 2, ann
        assert 0 < ann["area"] <= w * h
    counts = [len(anns) for anns in per_image.values()]
    assert max(counts) <= member.num_objects[1]
    empty_share = counts.count(0) / len(counts)
    # Empty images: the member's share (+- sampling), plus a few whose objects were all hidden.
    assert member.empty_fraction - 0.15 <= empty_share <= member.empty_fraction + 0.2
    sizes = [max(a["bbox"][2:]) for a in dataset["annotations"]]
    assert min(sizes) < 2 * member.min_object_size + 2


def test_members_are_registered_with_their_classes():
    for name, member in FAMILY.items():
        for split in ("train", "val"):
            metadata = MetadataCatalog.get(f"{name}_{split}")
            assert metadata.thing_classes == list(member.classes)
            assert metadata.evaluator_type == "coco"
            assert f"{os.sep}{name}{os.sep}" in metadata.json_file
