import numpy as np
import torch

from detectron2.engine import DefaultPredictor

from .conftest import load_config


def test_default_predictor_takes_bgr_images_of_any_size():
    cfg = load_config("ssd160_shapes_demo")
    predictor = DefaultPredictor(cfg)  # random weights: no MODEL.WEIGHTS
    rng = np.random.default_rng(0)
    bgr = rng.integers(0, 256, (240, 333, 3), dtype=np.uint8)
    instances = predictor(bgr)["instances"]
    assert instances.image_size == (240, 333)
    assert len(instances) > 0

    # The predictor only flips BGR to RGB: the model sees the original pixels, any size.
    rgb = torch.as_tensor(np.ascontiguousarray(bgr[:, :, ::-1].transpose(2, 0, 1)))
    with torch.no_grad():
        expected = predictor.model([{"image": rgb}])[0]["instances"]
    torch.testing.assert_close(instances.pred_boxes.tensor, expected.pred_boxes.tensor)
    torch.testing.assert_close(instances.scores, expected.scores)
