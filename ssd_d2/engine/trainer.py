import logging
import os
import re
import weakref

import torch

from detectron2.data import MetadataCatalog, build_detection_test_loader
from detectron2.engine import AMPTrainer, SimpleTrainer, TrainerBase, create_ddp_model
from detectron2.evaluation import COCOEvaluator, PascalVOCDetectionEvaluator
from detectron2.solver import build_optimizer
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage
from detectron2.utils.logger import setup_logger

from ..data import (
    SeededTrainLoader,
    SSDDatasetMapper,
    build_ssd_train_loader,
    check_images_exist,
    load_dataset_dicts,
    register_config_datasets,
)
from .checkpoint import SSDCheckpointer, warn_if_backbone_uninitialized
from .compat import TrainerWithState, has_compiled_coco_eval

__all__ = ["SSDTrainer"]


class SSDTrainer(TrainerWithState):
    """DefaultTrainer with SSD's data pipeline (a :class:`~ssd_d2.data.SeededTrainLoader`: exact
    resume, unreadable images skipped and counted as ``data/skipped_images``), evaluators by
    ``evaluator_type``, checkpoints with the optimizer state and CPU data-parallel training
    (bfloat16 autocast under SOLVER.AMP.ENABLED)."""

    def __init__(self, cfg):
        # DefaultTrainer.__init__ with CPU DDP, CPU AMP (bf16, no grad scaler) and SSDCheckpointer.
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        register_config_datasets(cfg)  # a script's own config: train_net.py has registered them
        cfg = self.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        self.train_loader = self.build_train_loader(cfg)
        if not isinstance(self.train_loader, SeededTrainLoader):
            raise TypeError(
                f"{type(self).__name__}.build_train_loader returned a "
                f"{type(self.train_loader).__name__}: SSDTrainer resumes and counts skipped "
                "images through ssd_d2.data.SeededTrainLoader; return build_ssd_train_loader(cfg)."
            )
        self._ssd = model  # the model behind the data-parallel wrapper
        on_cpu = torch.device(cfg.MODEL.DEVICE).type == "cpu"
        # On a CPU the SSD autocasts to bfloat16 itself (SSD.from_config).
        inner = AMPTrainer if cfg.SOLVER.AMP.ENABLED and not on_cpu else SimpleTrainer
        # Detectron2 passes device_ids=[local_rank] unless told, which DDP rejects on the CPU.
        ddp_kwargs = {"device_ids": None} if on_cpu else {}
        model = create_ddp_model(model, broadcast_buffers=False, **ddp_kwargs)
        self._trainer = inner(model, self.train_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = SSDCheckpointer(
            model,
            cfg.OUTPUT_DIR,
            allow_unsafe=cfg.MODEL.ALLOW_UNSAFE_CHECKPOINTS,
            trainer=weakref.proxy(self),
        )
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def resume_or_load(self, resume=True):
        super().resume_or_load(resume=resume)
        if self.start_iter == 0:
            # A new run from a random backbone cannot reach the published results: say so.
            warn_if_backbone_uninitialized(self.cfg, self._ssd)

    def train(self):
        # The loader's workers start at the first batch, at the iteration resumed from.
        self.train_loader.start_at(self.start_iter)
        results = super().train()
        # A run killed after its last periodic checkpoint resumes with nothing left: save it.
        done = self.start_iter >= self.max_iter and comm.is_main_process()
        if done and not os.path.exists(os.path.join(self.cfg.OUTPUT_DIR, "model_final.pth")):
            self.checkpointer.save("model_final", iteration=self.max_iter - 1)
        return results

    def run_step(self):
        try:
            super().run_step()
        except FloatingPointError as e:
            last = self.checkpointer.get_checkpoint_file() or "none yet"
            # Numpy 2 shows Detectron2's numpy scalars as "np.float64(nan)": show the numbers.
            losses = re.sub(r"np\.\w+\(([^()]*)\)", r"\1", str(e))
            raise FloatingPointError(
                f"{losses}\nTraining stopped at iteration {self.iter}. Last checkpoint: {last}. "
                "Lower SOLVER.BASE_LR or enable SOLVER.CLIP_GRADIENTS, then continue with "
                "--resume."
            ) from e
        num_skipped = self.train_loader.num_skipped
        get_event_storage().put_scalar("data/skipped_images", num_skipped, smoothing_hint=False)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        register_config_datasets(cfg)  # as in __init__: data sets named by their files
        return super().test(cfg, model, evaluators)

    @classmethod
    def build_optimizer(cls, cfg, model):
        """Detectron2's SGD, or AdamW (``SOLVER.OPTIMIZER``) with the same parameter groups."""
        name = cfg.SOLVER.OPTIMIZER.upper()
        if name == "SGD":
            return build_optimizer(cfg, model)
        if name != "ADAMW":
            raise ValueError(f"SOLVER.OPTIMIZER = {cfg.SOLVER.OPTIMIZER!r}: use 'SGD' or 'ADAMW'.")
        params = get_default_optimizer_params(
            model,
            base_lr=cfg.SOLVER.BASE_LR,
            weight_decay=cfg.SOLVER.WEIGHT_DECAY,
            weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
            bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
            weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
        )
        clip = cfg.SOLVER.CLIP_GRADIENTS
        if clip.ENABLED and clip.CLIP_TYPE == "norm":
            optimizer_type = _with_each_gradient_norm_clipped(clip.CLIP_VALUE, clip.NORM_TYPE)
        else:
            optimizer_type = maybe_add_gradient_clipping(cfg, torch.optim.AdamW)
        # The fused kernel: one pass over all parameters instead of a loop of small operations.
        return optimizer_type(params, lr=cfg.SOLVER.BASE_LR, fused=True)

    @classmethod
    def build_train_loader(cls, cfg) -> SeededTrainLoader:
        return build_ssd_train_loader(cfg)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        dataset_dicts = load_dataset_dicts(dataset_name)
        check_images_exist(dataset_dicts, dataset_name)  # before inference, not during it
        return build_detection_test_loader(
            dataset_dicts,
            mapper=SSDDatasetMapper(cfg, is_train=False),
            num_workers=cfg.DATALOADER.NUM_WORKERS,
        )

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        """The data set's evaluator, writing where Detectron2's train_net.py does."""
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
        evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
        if evaluator_type == "pascal_voc":
            return PascalVOCDetectionEvaluator(dataset_name)
        if evaluator_type == "coco":
            return COCOEvaluator(
                dataset_name,
                tasks=("bbox",),
                output_dir=output_folder,
                use_fast_impl=has_compiled_coco_eval(),
            )
        raise ValueError(
            f"No evaluator for data set {dataset_name!r} (evaluator_type {evaluator_type!r}): "
            "set MetadataCatalog.get(name).evaluator_type to 'coco' or 'pascal_voc', or "
            "override SSDTrainer.build_evaluator."
        )


def _with_each_gradient_norm_clipped(max_norm: float, norm_type: float):
    """AdamW with Detectron2's clipping of each parameter's gradient to norm ``max_norm``
    (SOLVER.CLIP_GRADIENTS.CLIP_TYPE "norm"), in two multi-tensor operations instead of two
    per parameter."""

    class AdamWWithClipping(torch.optim.AdamW):
        def step(self, closure=None):
            grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
            if grads:
                norms = torch.stack(torch._foreach_norm(grads, norm_type))
                # torch.nn.utils.clip_grad_norm_'s factor, applied to each gradient alone.
                factors = (max_norm / (norms + 1e-6)).clamp(max=1.0)
                torch._foreach_mul_(grads, factors.tolist())
            return super().step(closure)

    return AdamWWithClipping
