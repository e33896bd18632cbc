"""Convert published SSD weights into a Detectron2 checkpoint once, and say which config it fits
(MODEL.WEIGHTS takes the published files too, converted as they load by the same rules)."""

import sys
from typing import Optional, Sequence

from ssd_d2.convert import SOURCES, SPECS, Conversion, ConversionError
from ssd_d2.engine.checkpoint import convert_file
from ssd_d2.tools.common import add_trailing_options, argument_parser, config_options

_EXAMPLES = """examples:
  # the source and the config are recognised from the keys and the head's shapes
  python -m ssd_d2.tools.convert ssd300_vgg16_coco-b556d3b4.pth ssd300_coco_torchvision.pth
  python -m ssd_d2.tools.convert --source lufficc vgg_ssd512_coco_trainval35k.pth out.pth
  # an ImageNet backbone to train from (extras and heads load as missing)
  python -m ssd_d2.tools.convert --source vgg16 vgg16_reducedfc.pth vgg16_ssd_init.pth
  # a model of another class count: name its config (and options after OUTPUT)
  python -m ssd_d2.tools.convert --source lufficc --config-file ssd300_voc \\
      my_5_classes.pth my_ssd.pth MODEL.SSD.NUM_CLASSES 5
"""


def build_argument_parser():
    parser = argument_parser(
        "convert",
        "Convert published SSD weights into a Detectron2 checkpoint that an ssd_d2 config\n"
        "loads with MODEL.WEIGHTS, with no missing or unexpected keys.",
        config_file="optional",
        config_help="the config to convert to (a path or a model zoo name; default: from the head)",
    )
    parser.epilog = _EXAMPLES
    parser.add_argument(
        "--source",
        choices=SOURCES,
        help="whose file INPUT is (amdegroot: ssd.pytorch; vgg16, mobilenet: ImageNet backbones "
        "to train from); by default recognised from its keys",
    )
    parser.add_argument(
        "--allow-unsafe-checkpoint",
        action="store_true",
        help="read INPUT with full unpickling (torch.load(weights_only=False)), which runs any "
        "code the file holds: only for a file from a source you trust",
    )
    parser.add_argument("input", metavar="INPUT", help="the checkpoint to convert (.pth)")
    parser.add_argument("output", metavar="OUTPUT", help="the checkpoint to write (.pth or .pkl)")
    add_trailing_options(parser)  # e.g. MODEL.SSD.NUM_CLASSES 5, applied to the target config
    return parser


def main(argv: Optional[Sequence[str]] = None) -> Conversion:
    args = build_argument_parser().parse_args(argv)
    what = (args.source, args.input, args.output, args.config_file, config_options(args))
    try:
        conversion = convert_file(*what, args.allow_unsafe_checkpoint)
    except (ConversionError, FileNotFoundError) as e:
        sys.exit(f"error: {args.input}: {e}")
    # Tensors and values per module, e.g. "backbone.vgg".
    groups = {}
    for key, value in conversion.state_dict.items():
        groups.setdefault(".".join(key.split(".")[:2]), []).append(value.numel())
    total = sum(map(sum, groups.values()))
    n, title = len(conversion.state_dict), SPECS[conversion.source].title
    print(f"Converted {n} tensors ({total:,} values) from {title} for {conversion.config_file}:")
    for group, sizes in groups.items():
        print(f"  {group:<18} {len(sizes):>3} tensors {sum(sizes):>12,} values")
    for note in conversion.notes:
        print(f"  note: {note}")
    use = " ".join([conversion.config_file, *conversion.config_opts, "MODEL.WEIGHTS", args.output])
    print(f"Wrote {args.output}; use it with --config-file {use}")
    return conversion


if __name__ == "__main__":
    main()
