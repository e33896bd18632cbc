"""
ssd_d2's matching, box encoding, loss and post-processing against torchvision's SSD, run on
the same default boxes, predictions and targets.
"""

import pytest
import torch
from torchvision.models.detection import ssd300_vgg16
from torchvision.models.detection.image_list import ImageList

from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances, pairwise_iou
from detectron2.utils.events import EventStorage

from ..conftest import conv_init_stats, load_config

NUM_CLASSES = 20  # foreground; torchvision counts background too (21)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    ours = build_model(
        load_config(
            "ssd300_voc",
            "MODEL.SSD.TOPK_CANDIDATES_TEST",
            "400",
            "TEST.DETECTIONS_PER_IMAGE",
            "200",
            # torchvision's default-box, clipping and matching rules (ssd300_voc has lufficc/SSD's).
            "MODEL.SSD.DEFAULT_BOXES.CLAMP",
            "size",
            "MODEL.SSD.CLIP_BOXES_BEFORE_NMS",
            "True",
            "MODEL.SSD.MATCHING",
            "torchvision",
        )
    )
    theirs = ssd300_vgg16(weights=None, weights_backbone=None, num_classes=NUM_CLASSES + 1)
    # torchvision's VGG16 SSD300 default boxes are the VOC geometry's at scales 0.1 ... 1.05.
    theirs.anchor_generator.scales = [
        30 / 300,
        60 / 300,
        111 / 300,
        162 / 300,
        213 / 300,
        264 / 300,
        315 / 300,
    ]
    theirs.anchor_generator._wh_pairs = theirs.anchor_generator._generate_wh_pairs(
        len(theirs.anchor_generator.scales) - 1
    )
    return ours.eval(), theirs.eval()


def _anchors(ours, theirs):
    maps = [torch.zeros(1, 1, s, s) for s in [38, 19, 10, 5, 3, 1]]
    our_anchors = Boxes.cat(ours.anchor_generator(maps))
    their_anchors = theirs.anchor_generator(
        ImageList(torch.zeros(1, 3, 300, 300), [(300, 300)]), maps
    )[0]
    return our_anchors, their_anchors


def _random_targets(num_images, generator):
    targets = []
    for i in range(num_images):
        n = [3, 0, 7, 1][i % 4]
        xy = torch.rand(n, 2, generator=generator) * 240
        wh = torch.rand(n, 2, generator=generator) * 150 + 4
        boxes = torch.cat([xy, (xy + wh).clamp(max=300)], dim=1)
        labels = torch.randint(0, NUM_CLASSES, (n,), generator=generator)
        targets.append((boxes, labels))
    return targets


def test_default_boxes_equal(models):
    ours, theirs = _anchors(*models)
    assert (ours.tensor - theirs).abs().max() <= 1e-4


def test_box_encoding_equal(models):
    ours, theirs = models
    g = torch.Generator().manual_seed(1)
    anchors = torch.rand(1000, 2, generator=g) * 200
    anchors = torch.cat([anchors, anchors + torch.rand(1000, 2, generator=g) * 90 + 1], 1)
    gt = torch.rand(1000, 2, generator=g) * 200
    gt = torch.cat([gt, gt + torch.rand(1000, 2, generator=g) * 90 + 1], 1)
    ours_deltas = ours.box2box_transform.get_deltas(anchors, gt)
    theirs_deltas = theirs.box_coder.encode_single(gt, anchors)
    torch.testing.assert_close(ours_deltas, theirs_deltas, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        ours.box2box_transform.apply_deltas(ours_deltas, anchors),
        theirs.box_coder.decode_single(theirs_deltas, anchors),
        rtol=1e-5,
        atol=1e-4,
    )


def test_matching_equal(models):
    ours, theirs = models
    our_anchors, _ = _anchors(ours, theirs)
    g = torch.Generator().manual_seed(2)
    for boxes, labels in _random_targets(4, g):
        if len(boxes) == 0:
            continue
        instances = Instances((300, 300), gt_boxes=Boxes(boxes), gt_classes=labels)
        gt_labels, _ = ours.label_anchors(our_anchors, [instances])
        matched = theirs.proposal_matcher(pairwise_iou(Boxes(boxes), our_anchors))
        expected = torch.where(matched >= 0, labels[matched.clamp(min=0)] + 1, 0)
        assert torch.equal(gt_labels[0], expected)
        # Every ground truth got at least its best default box.
        assert set((gt_labels[0] > 0).nonzero().flatten().tolist()) >= set(
            pairwise_iou(Boxes(boxes), our_anchors).argmax(dim=1).tolist()
        )


def test_loss_equal(models):
    ours, theirs = models
    our_anchors, _ = _anchors(ours, theirs)
    g = torch.Generator().manual_seed(3)
    num_images, num_anchors = 4, len(our_anchors)
    logits = torch.randn(num_images, num_anchors, NUM_CLASSES + 1, generator=g) * 3
    deltas = torch.randn(num_images, num_anchors, 4, generator=g)
    targets = _random_targets(num_images, g)

    gt_instances = [Instances((300, 300), gt_boxes=Boxes(b), gt_classes=c) for b, c in targets]
    with EventStorage():
        our_losses = ours.losses(our_anchors, logits, deltas, gt_instances)

    # Both sides get the same default boxes and IoU matrix, so that ties between equally
    # good default boxes (common: a ground truth that contains several) break the same way.
    their_targets, matched_idxs = [], []
    for boxes, labels in targets:
        their_targets.append({"boxes": boxes, "labels": labels + 1})
        if len(boxes) == 0:
            matched_idxs.append(torch.full((num_anchors,), -1, dtype=torch.int64))
        else:
            matched_idxs.append(theirs.proposal_matcher(pairwise_iou(Boxes(boxes), our_anchors)))
    their_losses = theirs.compute_loss(
        their_targets,
        {"cls_logits": logits, "bbox_regression": deltas},
        [our_anchors.tensor] * num_images,
        matched_idxs,
    )
    torch.testing.assert_close(our_losses["loss_cls"], their_losses["classification"])
    torch.testing.assert_close(our_losses["loss_box_reg"], their_losses["bbox_regression"])


@pytest.mark.parametrize("background_logit", [0.0, 6.0])
def test_postprocessing_equal(models, background_logit):
    """
    Background logit 0: nearly every class of every box passes the 0.01 threshold (the worst
    case); 6: most boxes are confidently background, as in a trained model.
    """
    ours, theirs = models
    our_anchors, their_anchors = _anchors(ours, theirs)
    g = torch.Generator().manual_seed(4)
    num_images = 3
    logits = torch.randn(num_images, len(our_anchors), NUM_CLASSES + 1, generator=g) * 2
    logits[..., 0] += background_logit
    deltas = torch.randn(num_images, len(our_anchors), 4, generator=g) * 0.5

    our_results = ours.inference(our_anchors, logits, deltas)
    their_results = theirs.postprocess_detections(
        {"cls_logits": logits, "bbox_regression": deltas},
        [their_anchors] * num_images,
        [(300, 300)] * num_images,
    )
    for mine, expected in zip(our_results, their_results):
        assert len(mine) == len(expected["scores"]) > 0
        _assert_same_detections(
            (mine.pred_boxes.tensor, mine.scores, mine.pred_classes),
            (expected["boxes"], expected["scores"], expected["labels"] - 1),
        )
        _assert_same_detections(
            (expected["boxes"], expected["scores"], expected["labels"] - 1),
            (mine.pred_boxes.tensor, mine.scores, mine.pred_classes),
        )


def _assert_same_detections(a, b, box_tol=1e-3, score_tol=1e-5):
    """Each detection of ``a`` has one in ``b`` of the same class, box and score."""
    boxes_a, scores_a, classes_a = a
    boxes_b, scores_b, classes_b = b
    distance = (boxes_a[:, None] - boxes_b[None]).abs().amax(dim=2)
    distance += (scores_a[:, None] - scores_b[None]).abs() / score_tol * box_tol
    distance[classes_a[:, None] != classes_b[None]] = float("inf")
    assert distance.min(dim=1).values.max() <= 2 * box_tol


def test_vgg_fc_and_extras_initialised_as_torchvision(models):
    ours, theirs = models
    # torchvision's extra[0] is conv5 (ImageNet layers, PyTorch's init) then fc6/fc7.
    their_fc = theirs.backbone.extra[0][-1]
    their_stats = conv_init_stats(
        list(their_fc.modules()) + list(theirs.backbone.extra[1:].modules())
    )
    our_fc = [m for m in ours.backbone.vgg if isinstance(m, torch.nn.Conv2d)][-2:]
    our_stats = conv_init_stats(our_fc + list(ours.backbone.extras.modules()))
    assert our_stats == their_stats
    assert {(r, b) for _, r, b in our_stats} == {(1.0, True)}
