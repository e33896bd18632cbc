"""
Numerics of the SSD loss: finite losses and gradients for every batch the data path can
produce, and a non-finite loss anyway stops training with a message that says where.
"""

import pytest
import torch

from detectron2.engine import HookBase
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from ssd_d2.engine import SSDTrainer

from ..conftest import load_config

SIZE = 160


@pytest.fixture(scope="module")
def model():
    model = build_model(load_config("ssd160_shapes_demo"))
    model.train()
    return model


def _input(boxes, size=(SIZE, SIZE), classes=None):
    boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    instances = Instances(size)
    instances.gt_boxes = Boxes(boxes)
    instances.gt_classes = torch.as_tensor(classes if classes is not None else [1] * len(boxes))
    image = torch.randint(0, 256, (3,) + size, dtype=torch.uint8)
    return {"image": image, "instances": instances}


def _losses_and_grads(model, batch):
    model.zero_grad()
    with EventStorage():
        losses = model(batch)
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return losses, grads


def _assert_finite(losses, grads):
    for name, value in losses.items():
        assert torch.isfinite(value), (name, value)
    assert grads and all(torch.isfinite(g).all() for g in grads)


BATCHES = {
    "all images empty": [_input([]), _input([]), _input([])],
    "every box tiny": [
        _input([[10, 10, 10.001, 10.001], [0, 0, 1e-4, 1e-4], [159.99, 159.99, 160, 160]]),
        _input([[80, 80, 80 + 1e-20, 80 + 1e-20]]),  # its area underflows to 0 in float32
        _input([[5, 5, 5.5, 5.2]], size=(2000, 2000)),  # tiny after the resize to 160
    ],
    # (Two images at least: the demo model's BatchNorm needs more than one value per channel.)
    "extreme aspect ratios": [_input([[0, 80, 160, 80.001]]), _input([[80, 0, 80.001, 160]])],
    "boxes far outside the image": [
        _input([[-1e6, -1e6, 1e6, 1e6]]),
        _input([[1e5, 1e5, 2e5, 2e5]]),
    ],
    "degenerate and non-finite boxes": [
        _input([[10, 10, 10, 30], [30, 30, 20, 20], [float("nan"), 0, 5, 5]]),
        _input([[0, 0, float("inf"), 5], [20, 20, 60, 60]]),
    ],
}


# The network in float32, and under the bfloat16 autocast of SOLVER.AMP.ENABLED on a CPU.
@pytest.mark.parametrize("autocast_dtype", [None, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize(
    "name, min_negatives", [(name, 0) for name in BATCHES] + [("all images empty", 10)]
)
def test_loss_and_gradients_are_finite(name, min_negatives, autocast_dtype, model):
    model.min_negatives_per_image = min_negatives
    model.train_autocast_dtype = autocast_dtype
    try:
        losses, grads = _losses_and_grads(model, BATCHES[name])
    finally:
        model.min_negatives_per_image = 0
        model.train_autocast_dtype = None
    _assert_finite(losses, grads)
    if name == "all images empty":
        assert losses["loss_box_reg"].item() == 0
        assert (losses["loss_cls"].item() > 0) == (min_negatives > 0)


def test_non_finite_loss_stops_training_naming_iteration_losses_and_checkpoint(tmp_path, tiny_cfg):
    cfg = tiny_cfg("SOLVER.MAX_ITER", 10, "SOLVER.CHECKPOINT_PERIOD", 2, "SOLVER.WARMUP_ITERS", 1)

    class BreakWeightsAfterIteration(HookBase):
        def after_step(self):
            if self.trainer.iter == 3:
                with torch.no_grad():
                    next(self.trainer.model.parameters()).fill_(float("nan"))

    trainer = SSDTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.register_hooks([BreakWeightsAfterIteration()])
    with pytest.raises(FloatingPointError) as error:
        trainer.train()
    message = str(error.value)
    assert "Loss became infinite or NaN at iteration=4" in message
    assert "'loss_cls': nan" in message and "'loss_box_reg'" in message
    assert "Training stopped at iteration 4" in message
    assert f"Last checkpoint: {tmp_path / 'out' / 'model_0000003.pth'}" in message
    assert "--resume" in message
