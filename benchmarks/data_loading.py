"""Throughput of SSDDatasetMapper's full augmentation chain, in one process and in a DataLoader."""

import copy
import os
import tempfile
import time
from typing import List

import cv2
import numpy as np
import torch

from detectron2.data import DatasetFromList, MapDataset

from benchmarks.common import load_cfg, print_row
from ssd_d2 import SSDDatasetMapper


def write_voc_like_images(folder: str, count: int, seed=3) -> List[dict]:
    """500x375 JPEGs of smooth backgrounds with filled boxes, and their dataset dicts."""
    rng = np.random.default_rng(seed)
    dicts = []
    yy, xx = np.mgrid[0:375, 0:500]
    for i in range(count):
        base = rng.integers(0, 256, 3)
        image = (base + 0.2 * xx[..., None] * rng.uniform(-1, 1, 3)).clip(0, 255)
        image = (image + rng.normal(0, 8, image.shape)).clip(0, 255).astype(np.uint8)
        annotations = []
        for _ in range(int(rng.integers(1, 6))):
            x0, y0 = rng.integers(0, 400), rng.integers(0, 300)
            x1, y1 = x0 + rng.integers(20, 100), y0 + rng.integers(20, 75)
            cv2.rectangle(
                image, (int(x0), int(y0)), (int(x1), int(y1)), rng.integers(0, 256, 3).tolist(), -1
            )
            annotations.append(
                {
                    "bbox": [float(x0), float(y0), float(x1), float(y1)],
                    "bbox_mode": 0,
                    "category_id": int(rng.integers(0, 20)),
                }
            )
        path = os.path.join(folder, f"{i:04d}.jpg")
        cv2.imwrite(path, image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        dicts.append(
            {
                "file_name": path,
                "height": 375,
                "width": 500,
                "image_id": i,
                "annotations": annotations,
            }
        )
    return dicts


def section_data(args, report):
    cfg = load_cfg("ssd300_voc", "cpu")
    mapper = SSDDatasetMapper(cfg, is_train=True)
    with tempfile.TemporaryDirectory() as folder:
        dicts = write_voc_like_images(folder, 100)
        for d in dicts[:10]:
            mapper(copy.deepcopy(d))
        start = time.perf_counter()
        for _ in range(args.data_rounds):
            for d in dicts:
                mapper(copy.deepcopy(d))
        per_process = args.data_rounds * len(dicts) / (time.perf_counter() - start)
        row = {"mapper_images_per_s_one_process": per_process}

        dataset = MapDataset(DatasetFromList(dicts * args.data_rounds * 2, copy=True), mapper)
        for workers in sorted({0, args.workers}):
            loader = torch.utils.data.DataLoader(
                dataset, batch_size=8, num_workers=workers, collate_fn=lambda batch: batch
            )
            iterator = iter(loader)
            next(iterator)  # workers started
            start, count = time.perf_counter(), 0
            for batch in iterator:
                count += len(batch)
            row[f"loader_images_per_s_{workers}_workers"] = count / (time.perf_counter() - start)
    row["threads"] = torch.get_num_threads()
    print_row(row)
    report["data"] = row
