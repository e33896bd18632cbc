"""
SSDLite320 on MobileNetV2 (lufficc/SSD's layout) and MobileNetV3-Large (torchvision's
ssdlite320_mobilenet_v3_large layout): sizes, default boxes, numerical agreement with
torchvision, norm choice, and training on the CPU.
"""

import copy
import math
from functools import partial

import pytest
import torch
from torch import nn
from torchvision.models.detection import ssdlite320_mobilenet_v3_large
from torchvision.models.detection.image_list import ImageList

from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_model
from detectron2.modeling.meta_arch.dense_detector import permute_to_N_HWA_K
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from ssd_d2.modeling import MobileNetV2SSDLite, MobileNetV3SSDLite, SSDDefaultBoxGenerator

from ..conftest import load_config
from .test_modeling import _inputs, check_train_and_eval_forward

V2 = "ssdlite320_mobilenet_v2_voc"
V3 = "ssdlite320_mobilenet_v3_coco"
MAPS = [20, 10, 5, 3, 2, 1]
# torchvision's COCO model has 91 classes with background; in MODEL.SSD.NUM_CLASSES terms, 90.
TORCHVISION_COCO_CLASSES = "90"
# torchvision builds its COCO model without ImageNet weights, so with the reduced tail; V3's
# config starts from ImageNet weights, with the full one.
TORCHVISION_TAIL = ("MODEL.MOBILENET.REDUCED_TAIL", "True")


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    # Depthwise convs gain little from intra-op threads, and on a shared CPU OpenMP's spinning
    # threads make them several times slower: one thread keeps this file fast.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def torchvision_ssdlite():
    torch.manual_seed(0)
    return ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None).eval()


def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _feature_maps(sizes):
    return [torch.zeros(1, 1, s, s) for s in sizes]


def test_v2_parameter_count_equals_lufficc():
    # lufficc/SSD's mobilenet_v2_ssd320_voc0712 (21 classes with background).
    assert _num_params(build_model(load_config(V2))) == 3_304_708


def test_v3_parameter_count_equals_torchvision(torchvision_ssdlite):
    model = build_model(
        load_config(V3, "MODEL.SSD.NUM_CLASSES", TORCHVISION_COCO_CLASSES, *TORCHVISION_TAIL)
    )
    assert _num_params(torchvision_ssdlite) == 3_440_060
    assert _num_params(model) == 3_440_060


def _torchvision_state_dict_for_ssd_d2(state_dict):
    """torchvision's SSDLite weights under ssd_d2's names: only the head's prefixes differ."""
    renames = {
        "head.classification_head.module_list.": "head.cls_score.",
        "head.regression_head.module_list.": "head.bbox_pred.",
    }
    result = {}
    for key, value in state_dict.items():
        for old, new in renames.items():
            if key.startswith(old):
                key = new + key[len(old) :]
        result[key] = value
    return result


def test_v3_computes_what_torchvision_computes(torchvision_ssdlite):
    """Same weights in, same normalised image, feature maps and predictions out."""
    theirs = copy.deepcopy(torchvision_ssdlite)
    # Non-trivial norm statistics, so that a misplaced norm or another epsilon would show.
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in theirs.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)
    ours = build_model(
        load_config(V3, "MODEL.SSD.NUM_CLASSES", TORCHVISION_COCO_CLASSES, *TORCHVISION_TAIL)
    ).eval()
    ours.load_state_dict(_torchvision_state_dict_for_ssd_d2(theirs.state_dict()))

    image = torch.randint(0, 256, (3, 320, 320), dtype=torch.uint8, generator=g)
    with torch.no_grad():
        our_input = ours.preprocess_image([{"image": image}])
        their_input = theirs.transform([image.float() / 255])[0].tensors
        torch.testing.assert_close(our_input, their_input, rtol=0, atol=0)

        our_features = ours.backbone(their_input)
        their_features = theirs.backbone(their_input)
        assert len(our_features) == len(their_features) == 6
        for mine, expected in zip(our_features.values(), their_features.values()):
            torch.testing.assert_close(mine, expected, rtol=1e-4, atol=1e-4)

        features = list(their_features.values())
        logits, deltas = ours.head(features)
        expected = theirs.head(features)
    logits = torch.cat([permute_to_N_HWA_K(x, 91) for x in logits], dim=1)
    deltas = torch.cat([permute_to_N_HWA_K(x, 4) for x in deltas], dim=1)
    assert logits.shape == (1, 3234, 91)
    torch.testing.assert_close(logits, expected["cls_logits"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(deltas, expected["bbox_regression"], rtol=1e-4, atol=1e-4)


def test_v3_default_boxes_equal_torchvision(torchvision_ssdlite):
    generator = SSDDefaultBoxGenerator(load_config(V3), [])
    ours = torch.cat([b.tensor for b in generator(_feature_maps(MAPS))])
    # The model's own DefaultBoxGenerator([[2, 3]] * 6, min_ratio=0.2, max_ratio=0.95).
    theirs = torchvision_ssdlite.anchor_generator
    assert theirs.scales == pytest.approx([0.2, 0.35, 0.5, 0.65, 0.8, 0.95, 1.0])
    theirs = theirs(ImageList(torch.zeros(1, 3, 320, 320), [(320, 320)]), _feature_maps(MAPS))[0]
    assert ours.shape == theirs.shape == (3234, 4)
    assert (ours - theirs).abs().max().item() <= 1e-3


def test_v2_default_boxes_by_hand():
    generator = SSDDefaultBoxGenerator(load_config(V2), [])
    assert generator.num_anchors == [6] * 6
    boxes = generator(_feature_maps(MAPS))
    assert [len(b) for b in boxes] == [2400, 600, 150, 54, 24, 6]

    def cell(cx, cy, min_size, max_size, image_size=320):
        sizes = [(min_size, min_size), (math.sqrt(min_size * max_size),) * 2]
        for r in (2, 3):
            w, h = min_size * math.sqrt(r), min_size / math.sqrt(r)
            sizes += [(w, h), (h, w)]
        # Width and height are capped at the image size; no centre lies past the image.
        sizes = [(min(w, image_size), min(h, image_size)) for w, h in sizes]
        return torch.tensor([[cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2] for w, h in sizes])

    # First location of the 20x20 level: step 16, centre (8, 8), sizes 60 and 105.
    torch.testing.assert_close(boxes[0].tensor[:6], cell(8, 8, 60, 105), atol=1e-4, rtol=0)
    # The 3x3 level: lufficc's step 107 puts the centres at 53.5, 160.5 and 267.5.
    torch.testing.assert_close(
        boxes[3].tensor[-6:], cell(267.5, 267.5, 195, 240), atol=1e-4, rtol=0
    )
    # The 1x1 level: step 320, centre 160; sizes 285 and 330. The 2:1 and 3:1 boxes are
    # wider than 320 px and capped at 320 about that centre.
    expected = cell(160, 160, 285, 330)
    assert expected[2].tolist() == pytest.approx(
        [0, 160 - 285 / math.sqrt(2) / 2, 320, 160 + 285 / math.sqrt(2) / 2]
    )
    torch.testing.assert_close(boxes[5].tensor, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "backbone_class, channels",
    [
        (MobileNetV2SSDLite, [96, 1280, 512, 256, 256, 64]),
        (partial(MobileNetV2SSDLite, layout="mmdetection"), [96, 1280, 512, 256, 256, 128]),
        (MobileNetV3SSDLite, [672, 480, 512, 256, 256, 128]),
    ],
)
def test_output_shape_agrees_with_forward(backbone_class, channels):
    backbone = backbone_class().eval()
    with torch.no_grad():
        outputs = backbone(torch.zeros(1, 3, 320, 320))
    shapes = backbone.output_shape()
    assert list(outputs) == list(shapes) == ["c4", "c5", "extra1", "extra2", "extra3", "extra4"]
    assert [o.shape[1] for o in outputs.values()] == [s.channels for s in shapes.values()]
    assert [s.channels for s in shapes.values()] == channels
    assert [tuple(o.shape[-2:]) for o in outputs.values()] == [(s, s) for s in MAPS]
    # The first three strides are exact (320 / 20, 10, 5); the others are nominal.
    assert [shapes[n].stride for n in ["c4", "c5", "extra1"]] == [16, 32, 64]


def test_mobilenet_v2_layout_is_checked():
    with pytest.raises(ValueError, match=r"V2_LAYOUT = 'mmdet'; choose one of \['lufficc', "):
        MobileNetV2SSDLite(layout="mmdet")


@pytest.mark.parametrize("config_name, eps", [(V2, 1e-5), (V3, 1e-3)])
def test_norm_is_selectable(config_name, eps):
    cfg = load_config(
        config_name, "MODEL.MOBILENET.NORM", "FrozenBN", "MODEL.SSD.HEAD_NORM", "SyncBN"
    )
    model = build_model(cfg)
    backbone_norms = [m for m in model.backbone.modules() if isinstance(m, FrozenBatchNorm2d)]
    head_norms = [m for m in model.head.modules() if isinstance(m, nn.SyncBatchNorm)]
    assert len(backbone_norms) > 50 and len(head_norms) == 10 + (config_name == V3) * 2
    assert not any(type(m) is nn.BatchNorm2d for m in model.modules())
    # Each peer's norm epsilon, in the backbone and the head.
    assert {m.eps for m in backbone_norms + head_norms} == {eps}
    # SyncBN runs as plain BN in a single CPU process. Two images: the 1x1 level has one value
    # per channel and image, and batch statistics need more than one.
    inputs = _inputs([(320, 320)] * 2, [2, 1], num_classes=cfg.MODEL.SSD.NUM_CLASSES)
    with EventStorage():
        losses = model.train()(inputs)
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())


def test_unknown_head_layout_fails_clearly():
    with pytest.raises(ValueError, match="HEAD_LAYOUT"):
        build_model(load_config(V2, "MODEL.SSD.HEAD_LAYOUT", "mmdet"))


@pytest.mark.parametrize("config_name", [V2, V3])
def test_train_and_eval_forward(config_name):
    cfg = load_config(config_name)
    model = build_model(cfg)
    grads, instances = check_train_and_eval_forward(
        model, (240, 300), cfg.TEST.DETECTIONS_PER_IMAGE, cfg.MODEL.SSD.NUM_CLASSES
    )
    assert len(grads) == len(list(model.parameters()))
    assert instances.scores.min() >= cfg.MODEL.SSD.SCORE_THRESH_TEST


def _rectangles(num_images, size=320, seed=0):
    """Grey images with one or two filled rectangles, whose colour is their class (0, 1, 2)."""
    colours = torch.tensor([[220, 40, 40], [40, 200, 40], [40, 60, 220]], dtype=torch.uint8)
    g = torch.Generator().manual_seed(seed)
    inputs = []
    for _ in range(num_images):
        image = torch.full((3, size, size), 128, dtype=torch.uint8)
        boxes, classes = [], []
        for _ in range(int(torch.randint(1, 3, (1,), generator=g))):
            w, h = torch.randint(60, 160, (2,), generator=g).tolist()
            x, y = torch.randint(0, size - 160, (2,), generator=g).tolist()
            c = int(torch.randint(0, 3, (1,), generator=g))
            image[:, y : y + h, x : x + w] = colours[c].view(3, 1, 1)
            boxes.append([x, y, x + w, y + h])
            classes.append(c)
        instances = Instances((size, size))
        instances.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
        instances.gt_classes = torch.tensor(classes)
        inputs.append({"image": image, "instances": instances})
    return inputs


@pytest.mark.parametrize("config_name", [V2, V3])
def test_a_few_iterations_reduce_the_loss(config_name):
    model = build_model(load_config(config_name)).train()
    data = _rectangles(4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    losses = []
    with EventStorage():
        for it in range(16):
            batch = data[(it % 2) * 2 : (it % 2) * 2 + 2]
            loss = sum(model(batch).values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    # Each pair of iterations sees all four images once.
    first, last = sum(losses[:2]) / 2, sum(losses[-2:]) / 2
    assert last < 0.6 * first, losses
