import glob
import os

import pytest
import torch
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

import ssd_d2.config
from ssd_d2 import add_ssd_config
from ssd_d2.modeling import VGG16SSD, resize_to_network_size

from ..conftest import CONFIG_DIR, load_config

VGG_CONFIGS = ["ssd300_voc", "ssd300_coco", "ssd512_voc", "ssd512_coco"]


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(CONFIG_DIR, "*.yaml"))))
def test_every_config_loads(path):
    cfg = ssd_d2.config.load_config(path)
    assert cfg.MODEL.META_ARCHITECTURE == "SSD"


@pytest.mark.parametrize(
    "config_name, num_params",
    [("ssd300_voc", 26_285_486), ("ssd512_voc", 27_188_676), ("ssd300_coco", 34_305_206)],
)
def test_parameter_count_equals_published_model(config_name, num_params):
    model = build_model(load_config(config_name))
    assert sum(p.numel() for p in model.parameters()) == num_params


@pytest.mark.parametrize(
    "image_size, sizes, channels",
    [
        (300, [38, 19, 10, 5, 3, 1], [512, 1024, 512, 256, 256, 256]),
        (512, [64, 32, 16, 8, 4, 2, 1], [512, 1024, 512, 256, 256, 256, 256]),
    ],
)
def test_vgg_output_shape_agrees_with_forward(image_size, sizes, channels):
    backbone = VGG16SSD(image_size)
    with torch.no_grad():
        outputs = backbone(torch.zeros(1, 3, image_size, image_size))
    shapes = backbone.output_shape()
    assert list(outputs) == list(shapes)
    assert [o.shape[-1] for o in outputs.values()] == sizes
    assert [o.shape[1] for o in outputs.values()] == channels
    assert [s.channels for s in shapes.values()] == channels
    # conv4_3 is L2-normalised with the initial scale 20.
    norms = outputs["conv4_3"].norm(dim=1)
    assert torch.allclose(norms[norms > 0], torch.tensor(20.0), rtol=1e-4)


def _inputs(image_sizes, boxes_per_image, num_classes=20):
    inputs = []
    for (h, w), n in zip(image_sizes, boxes_per_image):
        xy = torch.rand(n, 2) * torch.tensor([w, h]) * 0.6
        wh = torch.rand(n, 2) * torch.tensor([w, h]) * 0.4 + 2
        instances = Instances((h, w))
        instances.gt_boxes = Boxes(torch.cat([xy, xy + wh], dim=1))
        instances.gt_classes = torch.randint(0, num_classes, (n,))
        image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8)
        inputs.append({"image": image, "instances": instances, "height": h, "width": w})
    return inputs


def check_train_and_eval_forward(model, odd_size, max_detections, num_classes=20):
    """
    Train forwards (an image without boxes, one not at the network size, a batch without any
    box) with finite losses and gradients, then an eval forward at 240 x 320. Returns the
    gradients and the detections.
    """
    size = model.image_size
    model.train()
    with EventStorage():
        # The second image has no boxes, the third is not at the network size.
        losses = model(_inputs([size, size, odd_size], [3, 0, 2], num_classes))
        assert set(losses) == {"loss_cls", "loss_box_reg"}
        assert all(torch.isfinite(v) for v in losses.values())
        sum(losses.values()).backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert all(torch.isfinite(g).all() for g in grads)
        # A batch without any box trains too, with a zero box loss.
        losses = model(_inputs([size] * 2, [0, 0], num_classes))
        assert all(torch.isfinite(v) for v in losses.values())
        assert losses["loss_box_reg"].item() == 0

    model.eval()
    with torch.no_grad():
        outputs = model([{"image": torch.randint(0, 256, (3, 240, 320), dtype=torch.uint8)}])
    instances = outputs[0]["instances"]
    assert instances.image_size == (240, 320)
    assert 0 < len(instances) <= max_detections
    boxes = instances.pred_boxes.tensor
    assert (boxes[:, 0::2] <= 320).all() and (boxes[:, 1::2] <= 240).all() and (boxes >= 0).all()
    assert instances.pred_classes.max() < model.num_classes
    return grads, instances


@pytest.mark.parametrize("config_name", VGG_CONFIGS)
def test_train_and_eval_forward(config_name):
    check_train_and_eval_forward(build_model(load_config(config_name)), (200, 260), 100)


def test_empty_images_with_min_negatives_learn_background():
    model = build_model(load_config("ssd300_voc", "MODEL.SSD.MIN_NEGATIVES_PER_IMAGE", "10"))
    with EventStorage():
        losses = model.train()(_inputs([(300, 300)], [0]))
    assert losses["loss_cls"].item() > 0
    model = build_model(load_config("ssd300_voc"))
    with EventStorage():
        losses = model.train()(_inputs([(300, 300)], [0]))
    assert losses["loss_cls"].item() == 0


def test_eval_output_is_in_requested_resolution():
    model = build_model(load_config("ssd300_voc")).eval()
    image = torch.randint(0, 256, (3, 300, 300), dtype=torch.uint8)
    with torch.no_grad():
        full = model([{"image": image}])[0]["instances"]
        half = model([{"image": image, "height": 150, "width": 600}])[0]["instances"]
    torch.testing.assert_close(
        half.pred_boxes.tensor, full.pred_boxes.tensor * torch.tensor([2, 0.5, 2, 0.5])
    )


def test_wrong_channel_count_fails_clearly():
    model = build_model(load_config("ssd300_voc")).eval()
    with pytest.raises(ValueError, match="3 channels"):
        model([{"image": torch.zeros(1, 300, 300)}])


def test_in_features_the_backbone_lacks_fail_clearly():
    with pytest.raises(ValueError, match="IN_FEATURES"):
        build_model(load_config("ssd300_voc", "MODEL.SSD.IN_FEATURES", "['conv4_3', 'fc8']"))


def test_default_boxes_for_fewer_levels_than_the_head_fail_clearly():
    cfg = load_config(
        "ssd300_voc",
        "MODEL.SSD.DEFAULT_BOXES.STEPS",
        "[8, 16, 32, 64, 100]",
        "MODEL.SSD.DEFAULT_BOXES.MIN_SIZES",
        "[30, 60, 111, 162, 213]",
        "MODEL.SSD.DEFAULT_BOXES.MAX_SIZES",
        "[60, 111, 162, 213, 264]",
        "MODEL.SSD.DEFAULT_BOXES.ASPECT_RATIOS",
        "[[2], [2, 3], [2, 3], [2, 3], [2]]",
    )
    with pytest.raises(ValueError, match="IN_FEATURES"):
        build_model(cfg)


def test_unknown_config_key_fails():
    cfg = get_cfg()
    add_ssd_config(cfg)
    with pytest.raises(AssertionError, match="MODEL.SSD.NUM_CLASS"):
        cfg.merge_from_list(["MODEL.SSD.NUM_CLASS", "3"])


@pytest.mark.parametrize("config_name", ["ssd160_shapes_demo", "ssdlite320_mobilenet_v3_coco"])
def test_prior_prob_starts_the_classifier_at_that_foreground_probability(config_name):
    num_classes = 5
    cfg = load_config(
        config_name, "MODEL.SSD.PRIOR_PROB", 0.01, "MODEL.SSD.NUM_CLASSES", num_classes
    )
    model = build_model(cfg).eval()
    images = [{"image": torch.randint(0, 256, (3, 100, 120), dtype=torch.uint8)}]
    with torch.no_grad():
        _, logits, _ = model.predict(model.preprocess_image(images))
    probs = logits.softmax(-1)
    foreground = probs[..., 1:].sum(-1)
    assert abs(foreground.mean().item() - 0.01) < 0.003
    # Foreground classes start alike; no default box starts confident.
    assert foreground.max().item() < 0.05
    assert (probs[..., 1:].std(-1) < 0.01).all()


def test_prior_prob_out_of_range_fails_clearly():
    with pytest.raises(ValueError, match="MODEL.SSD.PRIOR_PROB must be in"):
        build_model(load_config("ssd160_shapes_demo", "MODEL.SSD.PRIOR_PROB", 1.5))


def test_the_resize_rule_is_torchvisions_for_images_and_boxes():
    # torchvision's SSD transform at a fixed size, as ssd300_vgg16 builds it.
    theirs = GeneralizedRCNNTransform(12, 12, [0.0] * 3, [1.0] * 3, fixed_size=(12, 12)).eval()
    image = torch.rand(3, 4, 6) * 255
    boxes = Boxes(torch.tensor([[0.0, 0, 6, 4], [3, 1, 4, 2]]))
    resized, scaled = resize_to_network_size(image, 12, boxes)
    expected_image, expected = theirs.resize(image, {"boxes": boxes.tensor.clone()})
    torch.testing.assert_close(resized, expected_image, rtol=0, atol=0)
    torch.testing.assert_close(scaled.tensor, expected["boxes"], rtol=0, atol=0)
    # x scaled by 12 / 6, y by 12 / 4; the given boxes are left as they were.
    assert scaled.tensor.tolist() == [[0, 0, 12, 12], [6, 3, 8, 6]]
    assert boxes.tensor.tolist() == [[0, 0, 6, 4], [3, 1, 4, 2]]
    # At the network size already: nothing to do.
    same, same_boxes = resize_to_network_size(resized, 12, scaled)
    assert same is resized and same_boxes is scaled
