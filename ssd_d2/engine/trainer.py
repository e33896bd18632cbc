import contextlib
import logging
import os
import re
import weakref

import torch

from detectron2.data import MetadataCatalog, build_detection_test_loader
from detectron2.engine import defaults as d2_defaults
from detectron2.evaluation import COCOEvaluator, PascalVOCDetectionEvaluator
from detectron2.solver import build_optimizer
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage

from ..config import resolve_device
from ..data import (
    DatasetError,
    SSDDatasetMapper,
    build_ssd_train_loader,
    check_dataset_files,
    load_dataset_dicts,
)
from ..modeling.precision import resolve_precision
from .checkpoint import SSDCheckpointer, warn_if_backbone_uninitialized
from .compat import TrainerWithState, has_compiled_coco_eval

__all__ = ["SSDTrainer"]

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def _ddp_without_device_ids_on_cpu():
    """
    Detectron2's ``create_ddp_model`` passes ``device_ids=[local_rank]`` even when the model
    is on the CPU, which DistributedDataParallel rejects; drop it for CPU models.
    """
    create_ddp_model = d2_defaults.create_ddp_model

    def create_cpu_compatible_ddp_model(model, **kwargs):
        if comm.get_world_size() > 1 and not next(model.parameters()).is_cuda:
            kwargs.setdefault("device_ids", None)
        return create_ddp_model(model, **kwargs)

    d2_defaults.create_ddp_model = create_cpu_compatible_ddp_model
    try:
        yield
    finally:
        d2_defaults.create_ddp_model = create_ddp_model


class SSDTrainer(TrainerWithState):
    """
    DefaultTrainer with SSD's data pipeline (SSDDatasetMapper), evaluators chosen by each
    data set's ``evaluator_type``, atomic checkpoints that include the optimizer state, and
    CPU data-parallel training. The rest (warmup multi-step schedule, ``resume_or_load``,
    periodic evaluation, metrics.json and tensorboard events) is Detectron2's.

    The training data are checked when the loader is built (a report per data set in the
    log), and each batch is a function of ``SEED`` and the iteration only
    (:func:`~ssd_d2.data.build_ssd_train_loader`): a run resumed from a checkpoint continues
    with the batches, augmentations included, that the uninterrupted run would have seen.
    Training images that cannot be decoded are skipped and counted in ``metrics.json`` as
    ``data/skipped_images``.
    """

    def __init__(self, cfg):
        # Detectron2's AMPTrainer is CUDA's (float16 autocast and a GradScaler). On the CPU,
        # SOLVER.AMP.ENABLED runs the SSD network under bfloat16 autocast instead, which
        # needs no gradient scaling, in Detectron2's SimpleTrainer.
        cpu_amp = cfg.SOLVER.AMP.ENABLED and resolve_device(cfg.MODEL.DEVICE) == "cpu"
        d2_cfg = cfg
        if cpu_amp:
            d2_cfg = cfg.clone()
            d2_cfg.defrost()
            d2_cfg.SOLVER.AMP.ENABLED = False
        with _ddp_without_device_ids_on_cpu():
            super().__init__(d2_cfg)
        if cpu_amp:
            dtype = resolve_precision("bf16", "cpu", "SOLVER.AMP.ENABLED")
            model = self._trainer.model
            model = model.module if hasattr(model, "module") else model
            model.train_autocast_dtype = dtype if dtype != torch.float32 else None

    def build_hooks(self):
        # DefaultTrainer.__init__ calls this right after creating its checkpointer: replace it
        # here, before the checkpoint hook takes it, with one that saves atomically.
        self.checkpointer = SSDCheckpointer(
            self._trainer.model,
            self.cfg.OUTPUT_DIR,
            allow_unsafe=self.cfg.MODEL.ALLOW_UNSAFE_CHECKPOINTS,
            trainer=weakref.proxy(self),
        )
        return super().build_hooks()

    def resume_or_load(self, resume=True):
        super().resume_or_load(resume=resume)
        if self.start_iter == 0:
            # A run that starts (not one resumed) from a randomly initialised backbone
            # cannot reach the published results: say so, with the fix.
            warn_if_backbone_uninitialized(self.cfg, self.checkpointer.loaded_model_keys)

    def train(self):
        # The loader starts its workers at the first batch, at the iteration resumed from.
        data_loader = self._trainer.data_loader
        if hasattr(data_loader, "start_iter"):
            data_loader.start_iter = self.start_iter
        results = super().train()
        # A run killed between its last periodic checkpoint and model_final resumes with no
        # iteration left, so Detectron2's checkpoint hook never writes model_final: write it.
        final = os.path.join(self.cfg.OUTPUT_DIR, "model_final.pth")
        if (
            self.start_iter >= self.max_iter
            and comm.is_main_process()
            and not os.path.exists(final)
        ):
            self.checkpointer.save("model_final", iteration=self.max_iter - 1)
        return results

    def run_step(self):
        try:
            super().run_step()
        except FloatingPointError as e:
            last = self.checkpointer.get_checkpoint_file() or "none yet"
            # Detectron2 prints the losses as numpy scalars, which numpy 2 shows as
            # "np.float64(nan)": show the numbers.
            losses = re.sub(r"np\.\w+\(([^()]*)\)", r"\1", str(e))
            raise FloatingPointError(
                f"{losses}\nTraining stopped at iteration {self.iter}. Last checkpoint: {last}. "
                "Lower SOLVER.BASE_LR or enable SOLVER.CLIP_GRADIENTS, then continue with "
                "--resume."
            ) from e
        num_skipped = getattr(self._trainer.data_loader, "num_skipped", None)
        if num_skipped is not None:
            get_event_storage().put_scalar("data/skipped_images", num_skipped, smoothing_hint=False)

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
        return maybe_add_gradient_clipping(cfg, torch.optim.AdamW)(params, lr=cfg.SOLVER.BASE_LR)

    @classmethod
    def build_train_loader(cls, cfg):
        check_dataset_files(cfg.DATASETS.TRAIN)
        return build_ssd_train_loader(cfg, mapper=SSDDatasetMapper(cfg, is_train=True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        check_dataset_files([dataset_name])
        dataset_dicts = load_dataset_dicts(dataset_name)
        # Every test image counts in the metrics: a missing one stops here, before inference.
        missing = [d["file_name"] for d in dataset_dicts if not os.path.isfile(d["file_name"])]
        if missing:
            raise DatasetError(
                f"{len(missing)} of the {len(dataset_dicts)} images of test data set "
                f"{dataset_name!r} do not exist, e.g. {', '.join(missing[:3])}. Check the image "
                "root it is registered with (for the built-in data sets, $DETECTRON2_DATASETS)."
            )
        return build_detection_test_loader(
            dataset_dicts,
            mapper=SSDDatasetMapper(cfg, is_train=False),
            num_workers=cfg.DATALOADER.NUM_WORKERS,
        )

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        """
        The data set's evaluator, writing into ``OUTPUT_DIR/inference``. That is where
        Detectron2's train_net.py puts every test data set's files, so tools made for it find
        them; the same file names too (with several COCO-style test sets,
        ``coco_instances_results.json`` holds the last one's, as it does in Detectron2).
        """
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference")
        evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
        if evaluator_type == "pascal_voc":
            return PascalVOCDetectionEvaluator(dataset_name)
        if evaluator_type == "coco":
            # Without detectron2's compiled COCOeval, pycocotools' own gives the same numbers.
            return COCOEvaluator(
                dataset_name,
                tasks=("bbox",),
                distributed=True,
                output_dir=output_folder,
                use_fast_impl=has_compiled_coco_eval(),
            )
        raise ValueError(
            f"No evaluator for data set {dataset_name!r} (evaluator_type {evaluator_type!r}): "
            "set MetadataCatalog.get(name).evaluator_type to 'coco' or 'pascal_voc', or "
            "override SSDTrainer.build_evaluator."
        )
