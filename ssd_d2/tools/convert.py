"""
Convert published SSD weights into Detectron2 checkpoints of ssd_d2's models, offline:

    python -m ssd_d2.tools.convert ssd300_vgg16_coco-b556d3b4.pth out.pth
    python train_net.py --config-file configs/ssd300_coco_torchvision.yaml --eval-only \\
        MODEL.WEIGHTS out.pth

MODEL.WEIGHTS takes the published files themselves too (converted as they are loaded, by the
same rules, :mod:`ssd_d2.convert`); this tool writes the converted checkpoint once, and says
which config it fits.
"""

import argparse
import sys
from typing import Optional, Sequence

from ssd_d2.convert import (
    SOURCES,
    Conversion,
    ConversionError,
    coco_category_ids,
    convert,
    convert_file,
    load_state_dict,
    save_checkpoint,
    summarize,
)

__all__ = [
    "SOURCES",
    "Conversion",
    "ConversionError",
    "build_argument_parser",
    "coco_category_ids",
    "convert",
    "convert_file",
    "load_state_dict",
    "main",
    "save_checkpoint",
    "summarize",
]

_EXAMPLES = """
examples:
  # torchvision's COCO SSD300 -> configs/ssd300_coco_torchvision.yaml (91 category ids -> 80
  # classes); the source is recognised from the keys, --source only checks it
  python -m ssd_d2.tools.convert ssd300_vgg16_coco-b556d3b4.pth ssd300_coco_torchvision.pth
  # torchvision's COCO SSDLite320 MobileNetV3 -> configs/ssdlite320_mobilenet_v3_coco.yaml
  # (with MODEL.MOBILENET.REDUCED_TAIL True, as torchvision built it)
  python -m ssd_d2.tools.convert --source torchvision \\
      ssdlite320_mobilenet_v3_large_coco-a79551df.pth ssdlite320_coco_torchvision.pth
  # lufficc/SSD: 300 or 512 (head levels) and VOC or COCO (class outputs) come from the shapes
  python -m ssd_d2.tools.convert --source lufficc vgg_ssd512_coco_trainval35k.pth \\
      ssd512_coco_lufficc.pth
  # lufficc/SSD's MobileNetV2 SSDLite320 VOC -> configs/ssdlite320_mobilenet_v2_voc.yaml
  python -m ssd_d2.tools.convert --source lufficc mobilenet_v2_ssd320_voc0712_v2.pth \\
      ssdlite320_voc_lufficc.pth
  # amdegroot/ssd.pytorch SSD300 VOC -> configs/ssd300_voc.yaml
  python -m ssd_d2.tools.convert --source amdegroot ssd300_mAP_77.43_v2.pth ssd300_voc_amdegroot.pth
  # ImageNet backbones to train from: ssd.pytorch's vgg16_reducedfc.pth, torchvision's vgg16
  # (fc6/fc7 subsampled into the dilated conv6 and conv7), mobilenet_v2, mobilenet_v3_large;
  # extras and heads are not in them, so loading one reports those as missing: they train
  # from their initialisation. (The configs name these files in MODEL.WEIGHTS already.)
  python -m ssd_d2.tools.convert --source vgg16 vgg16_reducedfc.pth vgg16_ssd_init.pth
  python -m ssd_d2.tools.convert --source mobilenet mobilenet_v2-b0353104.pth mnv2_init.pth
  # a model of another class count: name its config (and config options after OUTPUT)
  python -m ssd_d2.tools.convert --source lufficc --config-file configs/ssd300_voc.yaml \\
      my_5_classes.pth my_ssd.pth MODEL.SSD.NUM_CLASSES 5

then:
  python train_net.py --config-file configs/ssd300_coco_torchvision.yaml --eval-only \\
      MODEL.WEIGHTS ssd300_coco_torchvision.pth
"""


def build_argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ssd_d2.tools.convert",
        description="Convert published SSD weights into a Detectron2 checkpoint that an "
        "ssd_d2 config\nloads with MODEL.WEIGHTS, with no missing or unexpected keys.",
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--source",
        default=None,
        choices=SOURCES,
        help="torchvision: ssd300_vgg16 or ssdlite320_mobilenet_v3_large (COCO); lufficc: "
        "lufficc/SSD vgg_ssd300/512 (VOC or COCO) or mobilenet_v2_ssd320 (VOC); amdegroot: "
        "ssd.pytorch SSD300; vgg16: torchvision vgg16 or ssd.pytorch vgg16_reducedfc.pth, "
        "mobilenet: torchvision mobilenet_v2 or mobilenet_v3_large, to train from "
        "(default: recognised from the keys)",
    )
    parser.add_argument(
        "--config-file",
        default=None,
        metavar="FILE",
        help="the ssd_d2 config to convert to (a path or a name in configs/); by default the "
        "one the head's shapes imply (ssd300/ssd512 x voc/coco, ssd300_coco_torchvision, "
        "ssdlite320_mobilenet_v3_coco, "
        "ssdlite320_mobilenet_v2_voc; ssd300_voc.yaml for vgg16, the SSDLite config of the "
        "MobileNet for mobilenet)",
    )
    parser.add_argument(
        "--allow-unsafe-checkpoint",
        action="store_true",
        help="read INPUT with full unpickling (torch.load(weights_only=False)), which runs any "
        "code the file holds: only for a file from a source you trust",
    )
    parser.add_argument("input", metavar="INPUT", help="the checkpoint to convert (.pth)")
    parser.add_argument(
        "output", metavar="OUTPUT", help="the Detectron2 checkpoint to write (.pth or .pkl)"
    )
    parser.add_argument(
        "opts",
        nargs=argparse.REMAINDER,
        metavar="KEY VALUE",
        help="config options applied to the target config, e.g. MODEL.SSD.NUM_CLASSES 5",
    )
    return parser


def main(argv: Optional[Sequence[str]] = None) -> Conversion:
    args = build_argument_parser().parse_args(argv)
    try:
        conversion = convert_file(
            args.source,
            args.input,
            args.output,
            args.config_file,
            args.opts,
            allow_unsafe=args.allow_unsafe_checkpoint,
        )
    except ConversionError as e:
        sys.exit(f"error: {args.input}: {e}")
    print("\n".join(summarize(conversion)))
    print(
        f"Wrote {args.output}; use it with --config-file {conversion.config_file} "
        + "".join(f"{o} " for o in conversion.config_opts)
        + f"MODEL.WEIGHTS {args.output}"
    )
    return conversion


if __name__ == "__main__":
    main()
