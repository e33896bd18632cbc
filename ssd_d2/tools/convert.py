"""
Convert published SSD weights into a Detectron2 checkpoint of ssd_d2's models, once, and say
which config it fits. MODEL.WEIGHTS takes the published files themselves too (converted as they
are loaded, by the same rules: :mod:`ssd_d2.convert`).
"""

import argparse
import sys
from typing import List, Optional, Sequence

from ssd_d2.convert import SOURCES, SPECS, Conversion, ConversionError
from ssd_d2.engine.checkpoint import convert_file

__all__ = ["build_argument_parser", "main", "summarize"]

_EXAMPLES = """examples:
  # torchvision's COCO SSD300 -> ssd300_coco_torchvision.yaml (91 category ids -> 80 classes);
  # the source is recognised from the keys, --source only checks it
  python -m ssd_d2.tools.convert ssd300_vgg16_coco-b556d3b4.pth ssd300_coco_torchvision.pth
  # lufficc/SSD: 300 or 512 (head levels) and VOC or COCO (class outputs) come from the shapes
  python -m ssd_d2.tools.convert --source lufficc vgg_ssd512_coco_trainval35k.pth out.pth
  # ImageNet backbones to train from (fc6/fc7 of torchvision's vgg16 subsampled into conv6 and
  # conv7); extras and heads are not in them, so loading one reports those as missing
  python -m ssd_d2.tools.convert --source vgg16 vgg16_reducedfc.pth vgg16_ssd_init.pth
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
        choices=SOURCES,
        help="torchvision: ssd300_vgg16 or ssdlite320_mobilenet_v3_large (COCO); lufficc: "
        "vgg_ssd300/512 (VOC or COCO) or mobilenet_v2_ssd320 (VOC); amdegroot: ssd.pytorch "
        "SSD300; vgg16: torchvision vgg16 or vgg16_reducedfc.pth, mobilenet: torchvision "
        "mobilenet_v2 or mobilenet_v3_large, to train from (default: recognised from the keys)",
    )
    parser.add_argument(
        "--config-file",
        metavar="FILE",
        help="the ssd_d2 config to convert to (a path or a model zoo name); by default the "
        "published model's the head's shapes imply, or for a backbone its usual SSD's",
    )
    parser.add_argument(
        "--allow-unsafe-checkpoint",
        action="store_true",
        help="read INPUT with full unpickling (torch.load(weights_only=False)), which runs any "
        "code the file holds: only for a file from a source you trust",
    )
    parser.add_argument("input", metavar="INPUT", help="the checkpoint to convert (.pth)")
    parser.add_argument("output", metavar="OUTPUT", help="the checkpoint to write (.pth or .pkl)")
    parser.add_argument(
        "opts",
        nargs=argparse.REMAINDER,
        metavar="KEY VALUE",
        help="config options applied to the target config, e.g. MODEL.SSD.NUM_CLASSES 5",
    )
    return parser


def summarize(conversion: Conversion) -> List[str]:
    """Lines that say what was converted: tensors and values per module, and notes."""
    groups = {}
    for key, value in conversion.state_dict.items():
        group = groups.setdefault(".".join(key.split(".")[:2]), [0, 0])
        group[0] += 1
        group[1] += value.numel()
    total = sum(n for _, n in groups.values())
    lines = [
        f"Converted {len(conversion.state_dict)} tensors ({total:,} values) from "
        f"{SPECS[conversion.source].title} for {conversion.config_file}:"
    ]
    lines += [f"  {name:<18} {n:>3} tensors {p:>12,} values" for name, (n, p) in groups.items()]
    return lines + [f"  note: {note}" for note in conversion.notes]


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
    options = "".join(f"{o} " for o in conversion.config_opts)
    print(
        f"Wrote {args.output}; use it with --config-file {conversion.config_file} {options}MODEL.WEIGHTS {args.output}"
    )
    return conversion


if __name__ == "__main__":
    main()
