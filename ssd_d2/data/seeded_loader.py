"""A training loader whose batches depend only on the seed and the iteration, so that a resumed run
sees exactly the batches of an uninterrupted one: a permutation per epoch seeded by ``(seed,
epoch)``, process ``r`` of ``W`` at positions ``r, r + W, ...`` (as ``TrainingSampler``), each
sample mapped under RNGs seeded by ``(seed, position)``, worker ``w`` of ``K`` at ``i % K == w``."""

import contextlib
import itertools
import logging
import random
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from detectron2.data import MetadataCatalog
from detectron2.data.build import (
    filter_images_with_only_crowd_annotations,
    print_instances_class_histogram,
    trivial_batch_collator,
)
from detectron2.data.common import DatasetFromList
from detectron2.data.detection_utils import check_metadata_consistency
from detectron2.utils import comm

from .checks import check_dataset_dicts, load_dataset_dicts
from .dataset_mapper import SSDDatasetMapper, UnreadableImageError
from .datasets import drop_voc_difficult

__all__ = ["SeededTrainingStream", "SeededTrainLoader", "build_ssd_train_loader"]

logger = logging.getLogger(__name__)

# First words of the seeds of the sample order, the augmentations and substitutes.
_ORDER_STREAM, _AUGMENTATION_STREAM, _SUBSTITUTE_STREAM = 0, 1, 2
_MAX_SUBSTITUTIONS = 100  # unreadable images in a row before an error


class SeededTrainingStream(IterableDataset):
    """The endless training batches of one process, as ``(batch, skipped)`` pairs: the mapped
    dicts, and (file name, reason) of each unreadable image, replaced by a sample drawn from the
    seed and the position."""

    def __init__(
        self,
        dataset: Sequence[dict],
        mapper: Callable[[dict], Optional[dict]],
        *,
        batch_size: int,
        seed: int,
        start_iter: int = 0,
        rank: Optional[int] = None,
        world_size: Optional[int] = None,
    ):
        if len(dataset) == 0:
            raise ValueError("The training data set is empty.")
        self.dataset = dataset
        self.mapper = mapper
        self.batch_size = batch_size
        self.seed = int(seed)
        self.start_iter = int(start_iter)
        self.rank = comm.get_rank() if rank is None else rank
        self.world_size = comm.get_world_size() if world_size is None else world_size
        self._epoch_cache = {}
        self._unreadable = {}  # dataset index -> reason, so that a bad file is read once

    def _index_at(self, position: int) -> int:
        epoch, offset = divmod(position, len(self.dataset))
        if epoch not in self._epoch_cache:
            # At most two neighbouring epochs are in flight at a time.
            if len(self._epoch_cache) >= 2:
                self._epoch_cache.pop(min(self._epoch_cache))
            rng = np.random.default_rng([_ORDER_STREAM, self.seed, epoch])
            self._epoch_cache[epoch] = rng.permutation(len(self.dataset))
        return int(self._epoch_cache[epoch][offset])

    def batch(self, iteration: int) -> Tuple[List[dict], List[Tuple[str, str]]]:
        """The mapped batch of ``iteration`` and the images skipped to build it."""
        skipped = []
        first = iteration * self.batch_size
        positions = [(first + s) * self.world_size + self.rank for s in range(self.batch_size)]
        return [self._map_position(p, skipped) for p in positions], skipped

    def _map_position(self, position: int, skipped: List[Tuple[str, str]]) -> dict:
        index = self._index_at(position)
        for attempt in range(_MAX_SUBSTITUTIONS + 1):
            if attempt > 0:
                # Another sample, drawn from the position and the attempt only.
                rng = np.random.default_rng([_SUBSTITUTE_STREAM, self.seed, position, attempt])
                index = int(rng.integers(len(self.dataset)))
            dataset_dict = self.dataset[index]
            reason = self._unreadable.get(index)
            if reason is None:
                with _seeded_rngs([_AUGMENTATION_STREAM, self.seed, position, attempt]):
                    try:
                        mapped = self.mapper(dataset_dict)
                    except UnreadableImageError as e:
                        mapped, reason = None, e.reason
                if mapped is not None:
                    return mapped
                reason = reason or "the mapper returned None"
                self._unreadable[index] = reason
            skipped.append((dataset_dict.get("file_name", f"index {index}"), reason))
        raise RuntimeError(
            f"{_MAX_SUBSTITUTIONS + 1} training images in a row could not be read; the "
            f"last: {skipped[-1][0]} ({skipped[-1][1]}). Check the image files of the data set."
        )

    def __iter__(self):
        worker = get_worker_info()
        worker_id, num_workers = (0, 1) if worker is None else (worker.id, worker.num_workers)
        for iteration in itertools.count(self.start_iter + worker_id, num_workers):
            yield self.batch(iteration)


@contextlib.contextmanager
def _seeded_rngs(key: Sequence[int]):
    """Seed numpy's, Python's and torch's global RNGs from ``key``; restore them after."""
    states = (np.random.get_state(), random.getstate(), torch.random.get_rng_state())
    words = np.random.SeedSequence(list(key)).generate_state(4)
    np.random.seed(words)
    random.seed(int(words[0]) << 32 | int(words[1]))
    torch.manual_seed(int(words[2]) << 32 | int(words[3]))
    try:
        yield
    finally:
        np.random.set_state(states[0])
        random.setstate(states[1])
        torch.random.set_rng_state(states[2])


class SeededTrainLoader:
    """The batches of a :class:`SeededTrainingStream`, built by ``num_workers`` workers; SSDTrainer
    uses :meth:`start_at` and ``num_skipped`` (the unreadable images skipped so far)."""

    def __init__(self, stream: SeededTrainingStream, num_workers: int = 0):
        self.stream = stream
        self.num_workers = num_workers
        self.num_skipped = 0

    def start_at(self, iteration: int) -> None:
        """Start the batches at ``iteration`` (the workers start at the first ``next()``)."""
        self.stream.start_iter = int(iteration)

    def __iter__(self):
        # No worker_init_fn: every sample seeds its own RNGs, so per-worker seeds would change
        # nothing.
        loader = DataLoader(
            self.stream,
            batch_size=None,
            num_workers=self.num_workers,
            collate_fn=trivial_batch_collator,
        )
        for batch, skipped in loader:
            for file_name, reason in skipped:
                self.num_skipped += 1
                logger.warning(
                    f"Skipped unreadable training image {file_name} ({reason}); "
                    f"{self.num_skipped} skipped so far."
                )
            yield batch


def build_ssd_train_loader(cfg, mapper=None) -> SeededTrainLoader:
    """The data sets of ``cfg.DATASETS.TRAIN`` loaded and checked once, VOC's difficult objects and
    (``DATALOADER.FILTER_EMPTY_ANNOTATIONS``) images without boxes dropped, in batches seeded by
    ``cfg.SEED`` and the iteration (no aspect-ratio grouping, which would chain the batches)."""
    if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
        raise ValueError(
            f"DATALOADER.SAMPLER_TRAIN = {cfg.DATALOADER.SAMPLER_TRAIN!r}: SSDTrainer's "
            "resumable loader implements 'TrainingSampler' (a random permutation per epoch) only."
        )
    dataset_dicts = []
    for name in cfg.DATASETS.TRAIN:
        dicts = load_dataset_dicts(name)
        if cfg.INPUT.SSD.DROP_VOC_DIFFICULT:
            dicts, _ = drop_voc_difficult(name, dicts)
        dicts, report = check_dataset_dicts(
            dicts, num_classes=cfg.MODEL.SSD.NUM_CLASSES, dataset_name=name
        )
        logger.info(report.summary())
        dataset_dicts.extend(dicts)
    if cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS:
        dataset_dicts = filter_images_with_only_crowd_annotations(dataset_dicts)
    with contextlib.suppress(AttributeError):  # data sets without class names
        check_metadata_consistency("thing_classes", cfg.DATASETS.TRAIN)
        thing_classes = MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).thing_classes
        print_instances_class_histogram(dataset_dicts, thing_classes)

    if mapper is None:
        mapper = SSDDatasetMapper(cfg, is_train=True)
    world_size = comm.get_world_size()
    if cfg.SOLVER.IMS_PER_BATCH % world_size != 0:
        raise ValueError(
            f"SOLVER.IMS_PER_BATCH = {cfg.SOLVER.IMS_PER_BATCH} is the batch of all processes "
            f"together and must be divisible by their number, {world_size}."
        )
    seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
    stream = SeededTrainingStream(
        # Detectron2's serialised list, which the data loader workers share unchanged.
        DatasetFromList(dataset_dicts, copy=False, serialize=True),
        mapper,
        batch_size=cfg.SOLVER.IMS_PER_BATCH // world_size,
        seed=seed,
    )
    return SeededTrainLoader(stream, num_workers=cfg.DATALOADER.NUM_WORKERS)
