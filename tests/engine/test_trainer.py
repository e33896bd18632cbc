"""SSDTrainer itself: the inner trainer and loader it builds, and model_final after a resume."""

import copy

import pytest
import torch

from detectron2.engine import SimpleTrainer

from ssd_d2.data import SeededTrainLoader
from ssd_d2.engine import SSDCheckpointer, SSDTrainer


def test_the_trainer_drives_the_seeded_loader_it_built(tiny_cfg):
    trainer = SSDTrainer(tiny_cfg())
    assert isinstance(trainer.train_loader, SeededTrainLoader)
    assert trainer._trainer.data_loader is trainer.train_loader
    # One process on the CPU: no DDP wrapper; the checkpoints go through SSDCheckpointer.
    assert type(trainer._trainer) is SimpleTrainer
    assert type(trainer.checkpointer) is SSDCheckpointer
    assert trainer.checkpointer.model is trainer._trainer.model


def test_a_loader_without_the_seeded_interface_is_refused_naming_the_fix(tiny_cfg):
    class ListLoaderTrainer(SSDTrainer):
        @classmethod
        def build_train_loader(cls, cfg):
            return [[{}]]

    with pytest.raises(TypeError, match=r"returned a list.*return build_ssd_train_loader\(cfg\)"):
        ListLoaderTrainer(tiny_cfg())


def test_a_run_killed_before_model_final_writes_it_when_resumed(tmp_path, tiny_cfg):
    out = tmp_path / "out"
    cfg = tiny_cfg(
        "SOLVER.MAX_ITER", 3, "SOLVER.CHECKPOINT_PERIOD", 1, "SOLVER.WARMUP_ITERS", 1
    )  # fmt: skip
    trainer = SSDTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    # As if killed after the last iteration's checkpoint, before model_final.
    (out / "model_final.pth").unlink()
    (out / "last_checkpoint").write_text("model_0000002.pth")
    trainer = SSDTrainer(cfg)
    trainer.resume_or_load(resume=True)
    assert trainer.start_iter == 3
    trainer.train()
    final = torch.load(out / "model_final.pth", weights_only=True)
    last = torch.load(out / "model_0000002.pth", weights_only=True)
    assert final["iteration"] == 2
    assert all(torch.equal(final["model"][k], v) for k, v in last["model"].items())


def test_adamw_clips_each_gradient_as_detectron2_does(tiny_cfg):
    # SSDTrainer's fused AdamW with its multi-tensor clipping against Detectron2's per-parameter
    # loop (CLIP_TYPE "norm"): the same clipped gradients, the same step but for rounding.
    from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping

    cfg = tiny_cfg(
        "SOLVER.OPTIMIZER", "ADAMW", "SOLVER.CLIP_GRADIENTS.ENABLED", True,
        "SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "norm", "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", 2.0,
    )  # fmt: skip
    torch.manual_seed(0)
    ours = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    theirs = copy.deepcopy(ours)
    for model in (ours, theirs):
        for scale, p in zip((100.0, 0.01, 5.0, 1.0), model.parameters()):
            p.grad = torch.full_like(p, scale)
    params = get_default_optimizer_params(
        theirs, base_lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY
    )
    reference = maybe_add_gradient_clipping(cfg, torch.optim.AdamW)(params, lr=cfg.SOLVER.BASE_LR)
    SSDTrainer.build_optimizer(cfg, ours).step()
    reference.step()
    for p, q in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=0)
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    # Clipped to norm 2 where it was larger, untouched where it was smaller.
    norms = [p.grad.norm().item() for p in ours.parameters()]
    assert norms[0] == pytest.approx(2.0, rel=1e-5) and norms[1] < 0.1
