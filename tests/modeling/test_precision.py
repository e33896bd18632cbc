"""
Lower precision: TEST.PRECISION for inference (weights cast once, decoding in float32), and
SOLVER.AMP.ENABLED on a CPU (bfloat16 autocast of the network, Detectron2's SimpleTrainer).
"""

import logging

import pytest
import torch

from detectron2.engine import SimpleTrainer
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

import ssd_d2.modeling.precision as precision
from ssd_d2.engine import SSDTrainer
from ssd_d2.modeling.precision import resolve_precision

from ..conftest import load_config


def _images(n, size=(120, 160), seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"image": torch.randint(0, 256, (3,) + size, generator=g).float()} for _ in range(n)]


def _dtypes_seen_by_head(model, batch):
    """The dtypes of the feature maps the head gets during one forward."""
    seen = []
    handle = model.head.register_forward_pre_hook(
        lambda module, args: seen.extend(f.dtype for f in args[0])
    )
    try:
        with EventStorage():
            output = model(batch)
    finally:
        handle.remove()
    return set(seen), output


def test_unknown_precision_names_the_key():
    with pytest.raises(ValueError, match="TEST.PRECISION = 'half'.*bf16"):
        resolve_precision("half", "cpu", "TEST.PRECISION")


def test_precision_a_device_lacks_falls_back_to_fp32_with_one_warning(monkeypatch, caplog):
    monkeypatch.setattr(precision, "_warned", set())
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: False)
    with caplog.at_level(logging.WARNING, logger=precision.__name__):
        for _ in range(3):
            assert resolve_precision("bf16", "cpu", "TEST.PRECISION") == torch.float32
            assert resolve_precision("fp16", "cpu", "TEST.PRECISION") == torch.float32
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages
    assert "TEST.PRECISION = 'bf16' runs in fp32" in messages[0]
    assert "AVX512-BF16 nor AMX" in messages[0]
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: True)
    assert resolve_precision("bf16", "cpu", "TEST.PRECISION") == torch.bfloat16
    assert resolve_precision("fp32", "cpu", "TEST.PRECISION") == torch.float32


@pytest.fixture
def bf16_model(monkeypatch):
    # The bf16 path itself, on any CPU (without AVX512-BF16 oneDNN emulates it).
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: True)
    torch.manual_seed(0)
    model = build_model(load_config("ssd160_shapes_demo", "TEST.PRECISION", "bf16"))
    return model.eval()


def test_bf16_inference_runs_the_network_in_bf16_and_returns_float32(bf16_model):
    assert bf16_model.test_dtype == torch.bfloat16
    keys = set(bf16_model.state_dict())
    with torch.no_grad():
        head_dtypes, outputs = _dtypes_seen_by_head(bf16_model, _images(2))
    assert head_dtypes == {torch.bfloat16}
    for output in outputs:
        instances = output["instances"]
        assert instances.pred_boxes.tensor.dtype == torch.float32
        assert instances.scores.dtype == torch.float32
    # The cast copy is not part of the model: checkpoints are unchanged.
    assert set(bf16_model.state_dict()) == keys
    assert all(p.dtype == torch.float32 for p in bf16_model.parameters())


def test_bf16_copy_is_made_once_and_again_when_the_weights_change(bf16_model):
    copy = bf16_model._low_precision_network
    with torch.no_grad():
        bf16_model(_images(1))
        first = copy(bf16_model.backbone, bf16_model.head)
        bf16_model(_images(1))
        assert copy(bf16_model.backbone, bf16_model.head)[0] is first[0]
        # Normalisation layers keep float32 statistics; convolutions are cast.
        norms = [m for m in first[0].modules() if isinstance(m, torch.nn.BatchNorm2d)]
        convs = [m for m in first[0].modules() if isinstance(m, torch.nn.Conv2d)]
        assert norms and all(m.running_var.dtype == torch.float32 for m in norms)
        assert convs and all(m.weight.dtype == torch.bfloat16 for m in convs)

        # New weights (as load_state_dict or an optimizer step write them in place).
        state = {k: v.clone() for k, v in bf16_model.state_dict().items()}
        head_weight = next(k for k in state if k.startswith("head.") and k.endswith("weight"))
        state[head_weight] += 1.0
        bf16_model.load_state_dict(state)
        second = copy(bf16_model.backbone, bf16_model.head)
    assert second[1] is not first[1]
    new_weight = dict(second[1].named_parameters())[head_weight[len("head.") :]]
    assert torch.equal(new_weight, state[head_weight].to(torch.bfloat16))


def test_bf16_and_fp32_inference_agree_on_the_same_weights(bf16_model):
    fp32_model = build_model(load_config("ssd160_shapes_demo")).eval()
    fp32_model.load_state_dict(bf16_model.state_dict())
    # Scores from the logits that both see; bf16 keeps 8 bits of mantissa.
    images = fp32_model.preprocess_image(_images(2, size=(160, 160), seed=3))
    with torch.no_grad():
        _, logits32, deltas32 = fp32_model.predict(images)
        _, logits16, deltas16 = bf16_model.predict(images)
    assert logits16.dtype == deltas16.dtype == torch.float32
    scores32, scores16 = logits32.softmax(-1), logits16.softmax(-1)
    assert (scores16 - scores32).abs().max() < 0.05
    assert (deltas16 - deltas32).abs().max() < 0.1 * deltas32.abs().max()


def test_cpu_amp_trains_under_bf16_autocast_with_simple_trainer(monkeypatch, tmp_path, shapes_root):
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: True)
    monkeypatch.setenv("SSD_D2_DATASETS", str(shapes_root))
    cfg = load_config(
        "ssd160_shapes_demo",
        "SOLVER.AMP.ENABLED", True, "MODEL.DEVICE", "cpu", "DATASETS.TRAIN", ("ssd_shapes_val",),
        "DATASETS.TEST", (), "SOLVER.IMS_PER_BATCH", 2, "SOLVER.MAX_ITER", 3,
        "DATALOADER.NUM_WORKERS", 0, "OUTPUT_DIR", str(tmp_path),
    )  # fmt: skip
    trainer = SSDTrainer(cfg)
    # Detectron2's AMPTrainer would assert that CUDA is available at the first step.
    assert type(trainer._trainer) is SimpleTrainer
    model = trainer._trainer.model
    assert model.train_autocast_dtype == torch.bfloat16
    before = {k: v.clone() for k, v in model.state_dict().items()}
    head_dtypes = set()
    model.head.register_forward_pre_hook(
        lambda m, args: head_dtypes.update(f.dtype for f in args[0])
    )
    trainer.train()
    assert head_dtypes == {torch.bfloat16}
    after = model.state_dict()
    assert all(v.dtype == before[k].dtype for k, v in after.items())
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())
    assert any(not torch.equal(after[k], before[k]) for k in before)


def test_export_refuses_a_low_precision_model(bf16_model):
    from ssd_d2.export import ExportError, check_exportable

    with pytest.raises(ExportError, match="TEST.PRECISION 'fp32'"):
        check_exportable(bf16_model)
