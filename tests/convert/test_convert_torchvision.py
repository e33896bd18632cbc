"""
ssd_d2.tools.convert on torchvision's SSDs: the converted SSD300 and SSDLite320 models detect
what torchvision's detect, and a converted COCO checkpoint fine-tunes on VOC.
"""

import copy
import subprocess
import sys

import pytest
import torch

from detectron2.modeling import build_model

from ssd_d2.convert import SOURCES, coco_category_ids
from ssd_d2.tools.convert import main

from ..conftest import load_config
from .peers import assert_loads_cleanly, load_checkpoint
from .torchvision_peers import (
    compare_with_torchvision,
    random_torchvision_ssdlite,
    trained_like_torchvision_ssd,
)


def test_help_shows_examples():
    result = subprocess.run(
        [sys.executable, "-m", "ssd_d2.tools.convert", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    for text in ["--source", ",".join(SOURCES), "--config-file", "examples"]:
        assert text in result.stdout


@pytest.fixture(scope="module")
def torchvision_converted(tmp_path_factory):
    """(torchvision model, path of its converted checkpoint, Conversion)."""
    directory = tmp_path_factory.mktemp("torchvision")
    model = trained_like_torchvision_ssd()
    source = str(directory / "ssd300_vgg16_coco.pth")
    # A checkpoint dict around the state dict, as training scripts save it.
    torch.save({"model": model.state_dict(), "epoch": 3}, source)
    output = str(directory / "ssd300_coco_torchvision.pth")
    conversion = main(["--source", "torchvision", source, output])
    return model, output, conversion


def test_torchvision_ssd300_detections_equal(torchvision_converted):
    theirs, path, conversion = torchvision_converted
    assert conversion.config_file.endswith("ssd300_coco_torchvision.yaml")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    assert set(checkpoint) == {"model", "__author__", "matching_heuristics"}
    assert checkpoint["matching_heuristics"] is False

    # torchvision's inference settings and rules (ssd300_coco has lufficc/SSD's).
    # fmt: off
    cfg = load_config(
        "ssd300_coco_torchvision",
        "MODEL.SSD.SCORE_THRESH_TEST", "0.01",
        "MODEL.SSD.NMS_THRESH_TEST", "0.45",
        "MODEL.SSD.TOPK_CANDIDATES_TEST", "400",
        "TEST.DETECTIONS_PER_IMAGE", "200",
        "MODEL.SSD.DEFAULT_BOXES.CLAMP", "size",
        "MODEL.SSD.CLIP_BOXES_BEFORE_NMS", "True",
    )
    # fmt: on
    ours = build_model(cfg).eval()
    assert_loads_cleanly(ours, path)

    counts, max_box, max_score = compare_with_torchvision(ours, theirs, seed=5)
    assert all(10 <= n < 200 for n in counts), counts  # a moderate number, below the cap
    assert max_box <= 1e-3
    assert max_score <= 1e-5


def test_torchvision_ssdlite_detections_equal(tmp_path):
    theirs = random_torchvision_ssdlite().to(memory_format=torch.channels_last)
    source, output = str(tmp_path / "ssdlite.pth"), str(tmp_path / "ssdlite_d2.pth")
    torch.save(theirs.state_dict(), source)
    conversion = main(["--source", "torchvision", source, output])
    # torchvision's COCO SSDLite, with the reduced tail of its training from scratch.
    assert conversion.config_file.endswith("ssdlite320_mobilenet_v3_coco.yaml")
    ours = build_model(load_config("ssdlite320_mobilenet_v3_coco"))
    ours.eval()
    assert_loads_cleanly(ours, output)

    # The same normalised input gives the same features, and the same head outputs once
    # torchvision's category ids are re-indexed.
    g = torch.Generator().manual_seed(7)
    image = torch.randint(0, 256, (3, 320, 320), generator=g).float() / 255
    keep = torch.tensor([0] + coco_category_ids())
    with torch.no_grad():
        batch = theirs.transform([image])[0].tensors
        their_features = list(theirs.backbone(batch).values())
        our_features = ours.backbone(batch)
        our_features = [our_features[f] for f in ours.head_in_features]
        our_logits, our_deltas = ours.head(our_features)
        for level, (mine, expected) in enumerate(zip(our_features, their_features)):
            torch.testing.assert_close(mine, expected, rtol=0, atol=0)
            logits = theirs.head.classification_head.module_list[level](expected)
            n, _, h, w = logits.shape
            logits = logits.view(n, -1, 91, h, w)[:, :, keep].reshape(n, -1, h, w)
            deltas = theirs.head.regression_head.module_list[level](expected)
            torch.testing.assert_close(our_logits[level], logits, rtol=1e-6, atol=1e-5)
            torch.testing.assert_close(our_deltas[level], deltas, rtol=1e-6, atol=1e-5)

    # End to end, with the config's inference settings (torchvision's 0.001 / 0.55 / 300 / 300).
    counts, max_box, max_score = compare_with_torchvision(ours, theirs, seed=6)
    assert all(10 <= n < 300 for n in counts), counts
    assert max_box <= 1e-3
    assert max_score <= 1e-5


def test_converted_coco_checkpoint_fine_tunes_on_voc(torchvision_converted):
    """81-class logits do not fit a 20-class model: the checkpointer skips them, loads the rest."""
    _, path, _ = torchvision_converted
    model = build_model(load_config("ssd300_voc"))
    initial_logits = copy.deepcopy(model.head.cls_score.state_dict())
    incompatible = load_checkpoint(model, path)

    cls_keys = {f"head.cls_score.{level}.{n}" for level in range(6) for n in ("weight", "bias")}
    assert {k for k, _, _ in incompatible.incorrect_shapes} == cls_keys
    assert set(incompatible.missing_keys) == cls_keys
    assert incompatible.unexpected_keys == []
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)["model"]
    for key, value in model.state_dict().items():
        if key in cls_keys:
            continue
        assert torch.equal(value, checkpoint[key]), key
    for key, value in model.head.cls_score.state_dict().items():
        assert torch.equal(value, initial_logits[key])


def test_an_incomplete_or_missing_head_is_compared_with_torchvisions_own_config():
    from torchvision.models.detection import ssd300_vgg16

    from ssd_d2.convert import ConversionError
    from ssd_d2.tools.convert import convert

    weights = ssd300_vgg16(weights=None, weights_backbone=None).state_dict()
    # One level's box regressor missing: the missing tensors are named, not a 3-level head.
    cut = {k: v for k, v in weights.items() if ".regression_head.module_list.3." not in k}
    with pytest.raises(ConversionError) as error:
        convert("torchvision", cut, None, [])
    message = str(error.value)
    assert "ssd300_coco_torchvision.yaml" in message and "head.bbox_pred.3.weight" in message
    assert "head levels" not in message
    headless = {k: v for k, v in weights.items() if not k.startswith("head.")}
    with pytest.raises(ConversionError, match=r"does not fit \S*ssd300_coco_torchvision\.yaml"):
        convert("torchvision", headless, None, [])
