"""
Export an SSD model, whole (normalisation, backbone, head, box decoding, per-class top-k and
NMS), to TorchScript or ONNX, then check the exported model against eager inference.

    python -m ssd_d2.tools.export --format onnx --config-file configs/ssd300_coco.yaml \\
        --output ssd300_coco.onnx MODEL.WEIGHTS ssd300_coco.pth

The exported model takes a batch of images at the network size and returns padded
detections (see ``ssd_d2.export``). Config options come after the arguments (or after
--opts), as train_net.py takes them.
"""

import argparse
import os
import sys
import time
from typing import Dict, List, Optional, Sequence

import cv2
import numpy as np
import torch

from detectron2.config import CfgNode
from detectron2.data.detection_utils import read_image
from detectron2.modeling import build_model

from ssd_d2.config import load_config, resolve_device
from ssd_d2.convert import ConversionError
from ssd_d2.engine import load_weights
from ssd_d2.engine.checkpoint import UnsafeCheckpointError
from ssd_d2.export import (
    DEFAULT_ONNX_OPSET,
    FORMATS,
    ExportError,
    compare_with_eager,
    example_images,
    export_model,
    input_shape,
    load_exported,
)

__all__ = ["BOX_TOLERANCE", "SCORE_TOLERANCE", "build_argument_parser", "main", "setup_cfg"]

# The largest differences from eager inference that the check accepts.
BOX_TOLERANCE = 1e-3  # pixels
SCORE_TOLERANCE = 1e-4
# The batch sizes of the check: other than the traced example's (2), so that it shows
# the batch size is free.
VERIFY_BATCH_SIZES = (1, 3)

_EXAMPLES = """
examples:
  # ONNX (run with onnxruntime), from a trained or converted checkpoint
  python -m ssd_d2.tools.export --format onnx --config-file configs/ssd300_coco.yaml \\
      --output ssd300_coco.onnx MODEL.WEIGHTS ssd300_coco.pth
  # TorchScript (torch.jit.load after `import torchvision`), the demo model
  python -m ssd_d2.tools.export --format torchscript \\
      --config-file configs/ssd160_shapes_demo.yaml --output ssd160.ts \\
      --opts MODEL.WEIGHTS output/ssd160_shapes_demo/model_final.pth
  # float32 input instead of uint8, checked on your own images too
  python -m ssd_d2.tools.export --format onnx --input-dtype float32 \\
      --config-file configs/ssdlite320_mobilenet_v3_coco.yaml --output ssdlite.onnx \\
      --verify-images photo1.jpg photo2.jpg MODEL.WEIGHTS ssdlite320_coco.pth

The exported model:
  input   images          (N, 3, S, S) uint8 (or float32), 0-255, in INPUT.FORMAT (RGB),
                          resized to S = MODEL.SSD.IMAGE_SIZE by the caller; any N
  outputs boxes           (N, D, 4) float32, XYXY pixels of the S x S input
          scores          (N, D) float32
          classes         (N, D) int64, foreground classes from 0; -1 in padding rows
          num_detections  (N,) int64: image i's detections are rows 0 .. num_detections[i] - 1,
                          in decreasing score; D = TEST.DETECTIONS_PER_IMAGE
"""


def build_argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ssd_d2.tools.export",
        description="Export an SSD model (preprocessing, network, decoding and NMS) to "
        "TorchScript or ONNX,\nthen check it against eager inference on random images.",
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--format", required=True, choices=FORMATS, help="what to export to")
    parser.add_argument("--config-file", required=True, metavar="FILE", help="the model's config")
    parser.add_argument("--output", required=True, metavar="FILE", help="the file to write")
    parser.add_argument(
        "--input-dtype",
        choices=("uint8", "float32"),
        default="uint8",
        help="the input type of an ONNX model (0-255 either way; default uint8); a "
        "TorchScript model takes both",
    )
    parser.add_argument(
        "--opset",
        type=int,
        default=DEFAULT_ONNX_OPSET,
        help=f"ONNX opset (default {DEFAULT_ONNX_OPSET}, at least 11)",
    )
    parser.add_argument(
        "--device",
        default=None,
        help="device to export on (default MODEL.DEVICE, or cpu without CUDA); a TorchScript "
        "model runs on the device it was exported on",
    )
    parser.add_argument(
        "--verify-images",
        nargs="+",
        default=[],
        metavar="IMAGE",
        help="image files to check the exported model on as well (resized to the network "
        "size first)",
    )
    parser.add_argument(
        "--no-verify", action="store_true", help="skip the check against eager inference"
    )
    parser.add_argument(
        "--opts",
        nargs=argparse.REMAINDER,
        default=[],
        metavar="KEY VALUE",
        help="config options, e.g. MODEL.WEIGHTS model.pth (or give them after the arguments)",
    )
    parser.add_argument(
        "overrides", nargs=argparse.REMAINDER, metavar="KEY VALUE", help="config options"
    )
    return parser


def setup_cfg(args: argparse.Namespace) -> CfgNode:
    """The config: defaults, the config file, then the options, as train_net.py builds it."""
    if not os.path.isfile(args.config_file):
        raise ExportError(f"Config file not found: {args.config_file}")
    # Options after the arguments may include --opts and more options: argparse leaves them
    # all to the trailing ones.
    opts = [o for o in args.overrides if o != "--opts"] + list(args.opts)
    # The exported graph runs in float32 whatever the config's inference precision.
    cfg = load_config(args.config_file, opts + ["TEST.PRECISION", "fp32"])
    if args.device:
        cfg.MODEL.DEVICE = args.device
    else:
        # The device is read below (loading the exported model), not only by build_model.
        cfg.MODEL.DEVICE = resolve_device(cfg.MODEL.DEVICE)
        if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
            cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    return cfg


def _read_images(paths: Sequence[str], cfg: CfgNode, size: int) -> torch.Tensor:
    """The images, in INPUT.FORMAT, resized to size x size (bilinear), as (N, C, S, S) uint8."""
    images = []
    for path in paths:
        if not os.path.isfile(path):
            raise ExportError(f"Image not found: {path}")
        image = read_image(path, format=cfg.INPUT.FORMAT)
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)
        images.append(torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))))
    return torch.stack(images)


def _export(args: argparse.Namespace) -> Dict[str, object]:
    cfg = setup_cfg(args)
    if cfg.MODEL.META_ARCHITECTURE != "SSD":
        raise ExportError(
            f"MODEL.META_ARCHITECTURE is {cfg.MODEL.META_ARCHITECTURE!r}: this tool exports "
            "ssd_d2's SSD models only."
        )
    weights = cfg.MODEL.WEIGHTS
    # URLs and detectron2:// names are the checkpointer's to resolve.
    if weights and "://" not in weights and not os.path.isfile(weights):
        raise ExportError(f"MODEL.WEIGHTS file not found: {weights}")
    model = build_model(cfg)
    if weights:
        try:
            load_weights(model, cfg)
        except (RuntimeError, UnsafeCheckpointError, ConversionError) as e:
            raise ExportError(str(e)) from None
    else:
        print("note: MODEL.WEIGHTS is empty: exporting the model's random initialisation")
    model.eval()
    dtype = getattr(torch, args.input_dtype)
    channels, size, _ = input_shape(model)
    given = None
    if args.verify_images and not args.no_verify:
        given = _read_images(args.verify_images, cfg, size).to(model.device, dtype)

    start = time.perf_counter()
    kwargs = {"example": example_images(model, 2, dtype=dtype)}
    if args.format == "onnx":
        kwargs["opset"] = args.opset
    export_model(model, args.format, args.output, **kwargs)
    seconds = time.perf_counter() - start
    print(
        f"Wrote {args.output} ({args.format}, {os.path.getsize(args.output) / 2**20:.1f} MiB) in "
        f"{seconds:.1f} s: input images (N, {channels}, {size}, {size}) {args.input_dtype} "
        f"{cfg.INPUT.FORMAT} 0-255; outputs boxes (N, {cfg.TEST.DETECTIONS_PER_IMAGE}, 4), "
        "scores, classes, num_detections"
    )
    result = {"path": args.output, "seconds": seconds, "checks": []}
    if args.no_verify:
        return result

    exported = load_exported(args.format, args.output, device=cfg.MODEL.DEVICE)
    batches = [
        (f"{n} random", example_images(model, n, seed=n, dtype=dtype)) for n in VERIFY_BATCH_SIZES
    ]
    if given is not None:
        batches.append((f"{len(given)} given", given))
    for name, images in batches:
        try:
            check = compare_with_eager(model, exported, images)
        except ExportError as e:
            if cfg.MODEL.WEIGHTS:
                raise
            raise ExportError(
                f"{e} (MODEL.WEIGHTS is empty: the scores of a randomly initialised model can "
                "be nearly equal, and which of them make the cut then depends on rounding; "
                "check with trained weights, or pass --no-verify)"
            ) from None
        print(
            f"Checked against eager inference on {name} image(s): detections "
            f"{check['detections']}, max |box| diff {check['max_box_diff']:.2e} px, "
            f"max |score| diff {check['max_score_diff']:.2e}"
        )
        if check["max_box_diff"] > BOX_TOLERANCE or check["max_score_diff"] > SCORE_TOLERANCE:
            raise ExportError(
                f"The exported model's detections differ from eager inference's by more than "
                f"{BOX_TOLERANCE} px or {SCORE_TOLERANCE} in score."
            )
        result["checks"].append(check)
    return result


def main(argv: Optional[List[str]] = None) -> Dict[str, object]:
    """
    Returns:
        {"path", "seconds": export time, "checks": per checked batch, compare_with_eager's}.
    """
    args = build_argument_parser().parse_args(argv)
    try:
        return _export(args)
    except ExportError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
