"""
ssd_d2's ssd300_resnet50_coco against NVIDIA DeepLearningExamples' SSD300-ResNet50, run from its
source (the ``nvidia_root`` fixture): architecture, default boxes, network outputs, loss and
detections, with NVIDIA's random weights converted as MODEL.WEIGHTS converts its checkpoints.
"""

import pytest
import torch
from torchvision.models import resnet50

from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances, pairwise_iou
from detectron2.utils.events import EventStorage

from ssd_d2.modeling import SSDDefaultBoxGenerator

from ..conftest import assert_close_at_scale, load_config
from .matching_cases import matching_cases
from .peers import nvidia_ssd300_state_dict

CONFIG = "ssd300_resnet50_coco"
SIZE = 300
# NVIDIA's input normalisation (torchvision's ImageNet mean and std, RGB, 0-1 images).
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def _nvidia_model(state_dict=None):
    from ssd.model import SSD300, ResNet

    model = SSD300(backbone=ResNet("resnet50", weights=None))
    if state_dict is not None:
        model.load_state_dict(state_dict)
    return model.eval()


@pytest.fixture(scope="module")
def nvidia(nvidia_root):
    """NVIDIA's model with the random weights of ``peers.nvidia_ssd300_state_dict``, whose head
    convs are scaled down: the random norms give outputs in the hundreds, boxes 1e10 pixels
    tall and class scores that saturate at 1.0 (ties that make the top-k choice arbitrary)."""
    state_dict = nvidia_ssd300_state_dict()
    for key in [k for k in state_dict if k.startswith(("conf.", "loc."))]:
        state_dict[key] = state_dict[key] * 0.01
    return _nvidia_model(state_dict), state_dict


@pytest.fixture(scope="module")
def ours(nvidia, tmp_path_factory):
    """ssd_d2's model of the same weights, through MODEL.WEIGHTS and DefaultPredictor."""
    path = tmp_path_factory.mktemp("nvidia") / "nvidia_ssdpyt.pt"
    torch.save({"model": {f"module.{k}": v for k, v in nvidia[1].items()}}, path)
    return DefaultPredictor(load_config(CONFIG, "MODEL.WEIGHTS", str(path)))


def _nvidia_order(feature_sizes, boxes_per_location):
    """For each of ssd_d2's default boxes (location-major), its index in NVIDIA's order (within
    a level: box shape first, then row and column)."""
    order, offset = [], 0
    for size, boxes in zip(feature_sizes, boxes_per_location):
        cells = size * size
        order.append(torch.arange(boxes * cells).view(boxes, cells).t().reshape(-1) + offset)
        offset += boxes * cells
    return torch.cat(order)


FEATURE_SIZES, BOXES = [38, 19, 10, 5, 3, 1], [4, 6, 6, 6, 4, 4]
ORDER = _nvidia_order(FEATURE_SIZES, BOXES)
# For each of NVIDIA's default boxes, its index among ssd_d2's.
INVERSE = torch.empty_like(ORDER)
INVERSE[ORDER] = torch.arange(len(ORDER))


def test_the_published_layout_is_nvidias(nvidia_root):
    ours = {k: v.shape for k, v in nvidia_ssd300_state_dict().items()}
    theirs = {k: v.shape for k, v in _nvidia_model().state_dict().items()}
    assert ours == theirs


def test_same_architecture_and_parameter_count(nvidia, ours):
    count = lambda model: sum(p.numel() for p in model.parameters())  # noqa: E731
    assert count(ours.model) == count(nvidia[0]) == 22_894_902
    # Same buffers too (BatchNorm statistics), but ssd_d2's pixel mean and std.
    buffers = lambda model: sum(b.numel() for b in model.buffers())  # noqa: E731
    assert buffers(ours.model) - 6 == buffers(nvidia[0])


def test_default_boxes_equal_nvidias(nvidia_root):
    from ssd.utils import dboxes300_coco

    theirs = dboxes300_coco()(order="ltrb") * SIZE
    generator = SSDDefaultBoxGenerator(load_config(CONFIG), [])
    boxes = torch.cat(
        [b.tensor for b in generator([torch.zeros(1, 1, s, s) for s in FEATURE_SIZES])]
    )
    assert len(boxes) == len(theirs) == 8732
    # The same set: NVIDIA orders a level's boxes by shape first, ssd_d2 by location, and
    # ORDER is a permutation from one to the other.
    assert sorted(ORDER.tolist()) == list(range(8732))
    torch.testing.assert_close(boxes, theirs[ORDER], rtol=0, atol=0.01)


def _images(count, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, 3, SIZE, SIZE), generator=g, dtype=torch.uint8)


def test_network_outputs_equal_nvidias(nvidia, ours):
    images = _images(2)
    with torch.no_grad():
        _, logits, deltas = ours.model.predict(ours.model.normalize(images))
        locs, confs = nvidia[0]((images / 255 - MEAN) / STD)
    assert_close_at_scale(deltas, locs.permute(0, 2, 1)[:, ORDER])
    assert_close_at_scale(logits, confs.permute(0, 2, 1)[:, ORDER])


def test_imagenet_resnet50_computes_nvidias_backbone(nvidia_root, ours):
    """torchvision's ImageNet ResNet-50 file, as MODEL.WEIGHTS loads it, gives NVIDIA's
    feature extractor's layer3 map (at stride 8) from the same weights."""
    from ssd.model import ResNet

    imagenet = resnet50(weights=None).state_dict()
    model = DefaultPredictor(load_config(CONFIG, "MODEL.WEIGHTS", "")).model
    model.load_state_dict(imagenet, strict=False)  # converted by the model's load hook
    backbone = ResNet("resnet50", weights=None)
    backbone_state = {
        f"feature_extractor.{i}.{k}": v
        for i, name in enumerate(["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3"])
        for k, v in imagenet.items()
        if k.startswith(name + ".")
        for k in [k[len(name) + 1 :]]
    }
    backbone.load_state_dict(backbone_state)
    x = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        theirs = backbone.eval()(x)
        features = model.backbone(x)
    assert theirs.shape == (1, 1024, 38, 38)
    assert_close_at_scale(features["layer3"], theirs)


def _random_ground_truth(count, g):
    """``count`` integer-pixel boxes (XYXY) and COCO classes (0 ... 79)."""
    corners = torch.randint(0, SIZE, (count, 2, 2), generator=g).float()
    low, high = corners.min(dim=1).values, corners.max(dim=1).values + 1
    boxes = torch.cat([low, high.clamp(max=SIZE)], dim=1)
    return boxes, torch.randint(0, 80, (count,), generator=g)


def test_loss_equals_nvidias(nvidia, ours, nvidia_root):
    from ssd.model import Loss
    from ssd.utils import Encoder, dboxes300_coco

    model, g = ours.model, torch.Generator().manual_seed(0)
    images = _images(4, seed=1)
    gt = [_random_ground_truth(n, g) for n in (1, 3, 8, 5)]
    with torch.no_grad():
        anchors, logits, deltas = model.predict(model.normalize(images))
    with EventStorage():
        instances = [Instances((SIZE, SIZE), gt_boxes=Boxes(b), gt_classes=c) for b, c in gt]
        losses = model.losses(anchors, logits, deltas, instances)
    ours_total = sum(losses.values()).item()

    dboxes = dboxes300_coco()
    encoder = Encoder(dboxes)
    targets = [encoder.encode(b / SIZE, c + 1) for b, c in gt]
    gloc = torch.stack([t[0] for t in targets]).transpose(1, 2)
    glabel = torch.stack([t[1] for t in targets])
    ploc = deltas[:, INVERSE].transpose(1, 2)
    plabel = logits[:, INVERSE].transpose(1, 2)
    theirs = Loss(dboxes)(ploc, plabel, gloc, glabel).item()
    assert ours_total == pytest.approx(theirs, rel=1e-4)


def test_detections_through_default_predictor_are_nvidias(nvidia, ours, nvidia_root):
    from ssd.utils import Encoder, dboxes300_coco

    images = _images(3, seed=2)
    encoder = Encoder(dboxes300_coco())
    with torch.no_grad():
        locs, confs = nvidia[0]((images / 255 - MEAN) / STD)
    theirs = encoder.decode_batch(locs, confs, criteria=0.5, max_output=200)
    found = total = 0
    for image, (boxes, labels, scores) in zip(images, theirs):
        # DefaultPredictor takes BGR uint8 HWC images.
        instances = ours(image.flip(0).permute(1, 2, 0).numpy())["instances"]
        boxes = (boxes * SIZE).clamp(0, SIZE)
        assert len(boxes) > 20, "the test needs detections to compare"
        total += len(boxes)
        iou = pairwise_iou(Boxes(boxes), instances.pred_boxes)
        same = (
            (iou > 0.99)
            & (labels[:, None] - 1 == instances.pred_classes[None])
            & ((scores[:, None] - instances.scores[None]).abs() < 1e-4)
        )
        found += int(same.any(dim=1).sum())
    print(f"{found} of NVIDIA's {total} detections")
    assert found / total >= 0.99, f"{found} of NVIDIA's {total} detections"


@pytest.fixture(scope="module")
def coco_models():
    """NVIDIA's default boxes with NVIDIA's and torchvision's matching arithmetic."""
    return {
        rule: build_model(load_config(CONFIG, "MODEL.WEIGHTS", "", "MODEL.SSD.MATCHING", rule))
        for rule in ("nvidia", "torchvision")
    }


def test_matching_equals_nvidias(nvidia_root, coco_models):
    """Over 200 random ground-truth sets (with boxes that tie and IoUs near 0.5), the labels
    and matched boxes of MATCHING "nvidia" are Encoder.encode's, bit for bit."""
    from ssd.utils import Encoder, dboxes300_coco

    encoder = Encoder(dboxes300_coco())
    default_boxes = Boxes.cat(
        coco_models["nvidia"].anchor_generator([torch.zeros(1, 1, s, s) for s in FEATURE_SIZES])
    )
    differing = {rule: [] for rule in coco_models}
    for i, (boxes, classes) in enumerate(matching_cases(default_boxes.tensor, 200, 1, 80)):
        # Encoder.encode takes boxes as fractions of the input, matches at IoU > 0.5 and
        # returns, for each default box, the matched box in (cx, cy, w, h) and its label.
        their_boxes, their_labels = encoder.encode(boxes / SIZE, classes + 1, criteria=0.5)
        for rule, model in coco_models.items():
            instances = Instances((SIZE, SIZE), gt_boxes=Boxes(boxes), gt_classes=classes)
            labels, matched_boxes = model.label_anchors(default_boxes, [instances])
            labels, matched_boxes = labels[0][INVERSE], matched_boxes[0][INVERSE] / SIZE
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
