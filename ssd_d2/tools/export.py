"""
Export an SSD (normalisation, network, decoding, NMS) to TorchScript, ONNX or OpenVINO, in
float32 or int8 (post-training quantization calibrated on images of DATASETS.TRAIN), and check
it against eager inference (ssd_d2.export describes the exported model):

    python -m ssd_d2.tools.export --format onnx --config-file FILE --output FILE [KEY VALUE ...]
    python -m ssd_d2.tools.export --format openvino --precision int8 --config-file FILE \
        --output model.xml MODEL.WEIGHTS model_final.pth
"""

import argparse
import os
import pickle
import sys
import time
from typing import Dict, List, Optional

import numpy as np
import torch

from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model

from ssd_d2 import export
from ssd_d2.data import load_dataset_dicts, read_image
from ssd_d2.engine import load_weights
from ssd_d2.modeling import resize_to_network_size
from ssd_d2.tools.common import (
    add_trailing_options,
    argument_parser,
    check_weights_file,
    parse_config,
)

DEFAULT_CALIBRATION_IMAGES = 100
# int8's check: the first of the calibration images, real ones (random ones detect nothing).
INT8_CHECK_IMAGES = 16


def build_argument_parser() -> argparse.ArgumentParser:
    parser = argument_parser("export", __doc__, config_help="the model's config")
    add = parser.add_argument
    add("--format", required=True, choices=export.FORMATS, help="what to export to")
    add("--output", required=True, metavar="FILE", help="the file to write (.ts, .onnx, .xml)")
    add("--precision", choices=export.PRECISIONS, default="fp32", help="int8: onnx, openvino")
    add(
        "--calibration-images",
        type=int,
        default=DEFAULT_CALIBRATION_IMAGES,
        metavar="N",
        help="int8: images of DATASETS.TRAIN to calibrate on",
    )
    add(
        "--input-dtype",
        choices=("uint8", "float32"),
        default="uint8",
        help="the model's input type",
    )
    add("--opset", type=int, default=export.DEFAULT_ONNX_OPSET, help="ONNX opset (at least 11)")
    add("--device", help="default MODEL.DEVICE (cpu without CUDA); TorchScript stays on it")
    add("--verify-images", nargs="+", default=[], metavar="IMAGE", help="check these too")
    add("--no-verify", action="store_true", help="skip the check against eager inference")
    add_trailing_options(parser)
    return parser


def read_images(paths: List[str], fmt: str, size, dtype: torch.dtype) -> torch.Tensor:
    """Image files in ``fmt`` at the network size ``size`` ((height, width), or a square's
    side), by the model's resize rule: (N, C, height, width)."""
    images = [torch.from_numpy(read_image(p, fmt).copy()).permute(2, 0, 1).float() for p in paths]
    images = [resize_to_network_size(image, size)[0] for image in images]
    return torch.stack(images).round().clamp(0, 255).to(dtype)


def calibration_images(cfg, count: int, size, dtype: torch.dtype) -> torch.Tensor:
    """``count`` images of DATASETS.TRAIN, spread evenly over it, at the network size."""
    if count < 1:
        raise export.ExportError(f"--calibration-images must be at least 1, got {count}.")
    names = list(cfg.DATASETS.TRAIN)
    if not names:
        raise export.ExportError(
            "DATASETS.TRAIN is empty: int8 calibrates on its images. Name a registered data "
            "set with images like the ones the model will see, e.g. DATASETS.TRAIN \"('x',)\"."
        )
    dicts = []
    for name in names:
        if name not in DatasetCatalog.list():
            raise export.ExportError(
                f"DATASETS.TRAIN names {name!r}, which is not a registered data set: int8 "
                "calibrates on its images. Register it, or set DATASETS.TRAIN on the command "
                "line to one that is (detectron2.data.DatasetCatalog.list() names them)."
            )
        dicts += load_dataset_dicts(name)
    picks = np.unique(np.linspace(0, len(dicts) - 1, min(count, len(dicts))).round().astype(int))
    return read_images([dicts[i]["file_name"] for i in picks], cfg.INPUT.FORMAT, size, dtype)


def main(argv: Optional[List[str]] = None) -> Dict[str, object]:
    """Returns {"path", "seconds": export time, "checks": compare_with_eager's, per batch}."""
    try:
        args, cfg = parse_config(build_argument_parser(), argv)
        cfg.TEST.PRECISION = "fp32"  # the exported graph runs in float32 whatever the config says
        device = args.device or cfg.MODEL.DEVICE
        if not args.device and device.startswith("cuda") and not torch.cuda.is_available():
            device = "cpu"
        cfg.MODEL.DEVICE = device
        if cfg.MODEL.META_ARCHITECTURE != "SSD":
            raise export.ExportError(
                f"MODEL.META_ARCHITECTURE is {cfg.MODEL.META_ARCHITECTURE!r}: this tool "
                "exports ssd_d2's SSD models only."
            )
        export.check_request(args.format, args.precision, args.output)
        check_weights_file(cfg)
        model = build_model(cfg).eval()
        try:
            load_weights(model, cfg)
        # Unreadable, unsafe or mismatched weights; an error of the exporters keeps its trace.
        except (RuntimeError, pickle.UnpicklingError) as e:
            raise export.ExportError(str(e)) from None
        dtype = getattr(torch, args.input_dtype)
        example = export.example_images(model, 2, dtype=dtype)
        # Batch sizes other than the example's: the check shows the batch size is free.
        batches = [(f"{n} random", export.example_images(model, n, n, dtype)) for n in (1, 3)]
        calibration = None
        if args.precision == "int8":
            calibration = calibration_images(cfg, args.calibration_images, model.image_size, dtype)
            # On random images a trained model detects nothing to compare: real ones instead.
            real = calibration[:INT8_CHECK_IMAGES].to(device)
            batches = [(f"{len(real)} calibration", real)]
        if args.verify_images and not args.no_verify:
            images = read_images(args.verify_images, cfg.INPUT.FORMAT, model.image_size, dtype)
            batches.append((f"{len(images)} given", images.to(device)))

        start = time.perf_counter()
        export.export_model(
            model,
            args.format,
            args.output,
            example=example,
            opset=args.opset,
            precision=args.precision,
            calibration=calibration,
        )
        seconds = time.perf_counter() - start
        (channels, height, width), mib = example.shape[1:], _file_mib(args.output)
        print(
            f"Wrote {args.output} ({args.format} {args.precision}, {mib:.1f} MiB) in "
            f"{seconds:.1f} s: input images (N, {channels}, {height}, {width}) {args.input_dtype} "
            f"{cfg.INPUT.FORMAT} 0-255"
        )
        checks = []
        if not args.no_verify:
            exported, _ = export.open_exported(args.output, device=device)
            checks = export.verify(model, exported, batches, args.precision)
        return {"path": args.output, "seconds": seconds, "checks": checks}
    # ExportError is a ValueError, as are the config's errors; missing files are OSErrors.
    except (ValueError, OSError) as e:
        sys.exit(f"error: {e}")


def _file_mib(path: str) -> float:
    """The exported model's size, OpenVINO's .bin included."""
    paths = [path] + ([os.path.splitext(path)[0] + ".bin"] if path.endswith(".xml") else [])
    return sum(os.path.getsize(p) for p in paths) / 2**20


if __name__ == "__main__":
    main()
