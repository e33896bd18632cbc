"""
ssd_d2 against NVIDIA's SSD300-ResNet50 (DeepLearningExamples), run from its source (the
``nvidia_ssd_utils`` fixture): default boxes and the matching of default boxes to ground truth.
"""

import pytest
import torch

from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances

from ..conftest import load_config
from .matching_cases import matching_cases

FEATURE_MAPS = [38, 19, 10, 5, 3, 1]


@pytest.fixture(scope="module")
def coco_models():
    """SSD300 COCO (NVIDIA's default boxes: lufficc/SSD's COCO sizes, centres and sizes
    clamped) with NVIDIA's and torchvision's matching arithmetic."""
    return {
        rule: build_model(
            load_config("ssd300_coco", "MODEL.WEIGHTS", "", "MODEL.SSD.MATCHING", rule)
        )
        for rule in ("nvidia", "torchvision")
    }


def _default_boxes(model):
    return Boxes.cat(model.anchor_generator([torch.zeros(1, 1, s, s) for s in FEATURE_MAPS]))


def _nvidia_order(theirs: torch.Tensor, ours: torch.Tensor) -> torch.Tensor:
    """For each of NVIDIA's boxes, the index of the same box (within 0.01 px) among ssd_d2's:
    NVIDIA orders a level's boxes by size, then location; ssd_d2 by location, then size."""
    distance, index = torch.cdist(theirs, ours, compute_mode="donot_use_mm_for_euclid_dist").min(
        dim=1
    )
    assert distance.max() <= 0.01
    assert len(set(index.tolist())) == len(ours)  # one to one: the same set of boxes
    return index


def test_default_boxes_are_nvidias(nvidia_ssd_utils, coco_models):
    theirs = nvidia_ssd_utils.dboxes300_coco()(order="ltrb") * 300
    ours = _default_boxes(coco_models["nvidia"]).tensor
    assert theirs.shape == ours.shape == (8732, 4)
    _nvidia_order(theirs, ours)


def test_matching_equals_nvidias(nvidia_ssd_utils, coco_models):
    encoder = nvidia_ssd_utils.Encoder(nvidia_ssd_utils.dboxes300_coco())
    default_boxes = _default_boxes(coco_models["nvidia"])
    order = _nvidia_order(encoder.dboxes * 300, default_boxes.tensor)
    differing = {rule: [] for rule in coco_models}
    for i, (boxes, classes) in enumerate(matching_cases(default_boxes.tensor, 200, 1, 80)):
        # Encoder.encode takes boxes as fractions of the input, matches at IoU > 0.5 and
        # returns, for each default box, the matched box in (cx, cy, w, h) and its label.
        their_boxes, their_labels = encoder.encode(boxes / 300, classes + 1, criteria=0.5)
        for rule, model in coco_models.items():
            instances = Instances((300, 300), gt_boxes=Boxes(boxes), gt_classes=classes)
            labels, matched_boxes = model.label_anchors(default_boxes, [instances])
            labels, matched_boxes = labels[0][order], matched_boxes[0][order] / 300
            positive = labels > 0
            # NVIDIA keeps a background box's own default box where ssd_d2 keeps its best
            # ground truth: only the positives' boxes are compared.
            centre = (matched_boxes[:, :2] + matched_boxes[:, 2:]) / 2
            size = matched_boxes[:, 2:] - matched_boxes[:, :2]
            matched_center_form = torch.cat([centre, size], dim=1)
            same_boxes = torch.equal(matched_center_form[positive], their_boxes[positive])
            if not (torch.equal(labels, their_labels) and same_boxes):
                differing[rule].append(i)
    assert differing["nvidia"] == []
    # The comparison is sensitive: the IoU of pixel boxes at or above 0.5 (torchvision's)
    # labels other default boxes.
    assert len(differing["torchvision"]) > 20
