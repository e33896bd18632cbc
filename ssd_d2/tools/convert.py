"""Convert published SSD weights into a Detectron2 checkpoint once, and say which config it fits
(MODEL.WEIGHTS takes the published files too, converted as they load by the same rules). The
whole-file conversion lives here: reading the peer's file, building the target config's model
to check the result against, and writing the checkpoint."""

import argparse
import os
import pickle
import sys
from typing import Dict, List, Optional, Sequence

import torch

from detectron2.modeling import build_model

from ssd_d2.config import load_config
from ssd_d2.convert import SOURCES, SPECS, Conversion, ConversionError, core
from ssd_d2.convert.rules import CONV6_7
from ssd_d2.engine import checkpoint
from ssd_d2.model_zoo import get_config_file
from ssd_d2.tools.common import add_trailing_options, argument_parser, config_options

_EXAMPLES = """examples:
  # the source and the config are recognised from the keys and the head's shapes
  python -m ssd_d2.tools.convert ssd300_vgg16_coco-b556d3b4.pth ssd300_coco_torchvision.pth
  python -m ssd_d2.tools.convert --source lufficc vgg_ssd512_coco_trainval35k.pth out.pth
  python -m ssd_d2.tools.convert ssd300_coco_20210803_015428-d231a06e.pth ssd300_coco_mmdet.pth
  python -m ssd_d2.tools.convert nvidia_ssdpyt_amp_200703.pt ssd300_resnet50_coco.pth
  # an ImageNet backbone to train from (extras and heads load as missing)
  python -m ssd_d2.tools.convert --source vgg16 vgg16_reducedfc.pth vgg16_ssd_init.pth
  # a model of another class count: name its config (and options after OUTPUT)
  python -m ssd_d2.tools.convert --source lufficc --config-file ssd300_voc \\
      my_5_classes.pth my_ssd.pth MODEL.SSD.NUM_CLASSES 5
"""


def read_state_dict(path: str, allow_unsafe: bool = False) -> Dict[str, torch.Tensor]:
    """The state dict in a peer's file, read running no code from it unless ``allow_unsafe``."""
    try:
        # torchvision's detection reference scripts save their argparse arguments too.
        data = checkpoint.load_checkpoint_file(
            path, allow_unsafe, [argparse.Namespace], fix="add --allow-unsafe-checkpoint"
        )
    except checkpoint.UnsafeCheckpointError as e:
        raise ConversionError(str(e)) from None
    weights = checkpoint.split_weights(data)[0] if isinstance(data, dict) else data
    if not isinstance(weights, dict) or not weights:
        raise ConversionError(f"{path} holds no state dict (found {type(weights).__name__}).")
    not_tensors = [k for k, v in weights.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ConversionError(
            f"{path} is not a state dict: {not_tensors[:5]} are not tensors (the file has "
            f"keys {list(weights)[:8]})."
        )
    return weights


def save_checkpoint(state_dict: Dict[str, torch.Tensor], path: str, author: str) -> None:
    """A Detectron2 checkpoint of ``state_dict``; for ".pkl", its model zoo format (numpy)."""
    pkl = path.endswith(".pkl")
    # clone(): a slice (fc6/fc7, class outputs) would otherwise save its whole source tensor.
    model = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    model = {k: v.numpy() if pkl else v for k, v in model.items()}
    data, write = {"model": model, "__author__": author}, pickle.dump if pkl else torch.save
    data["matching_heuristics"] = False
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    checkpoint.atomic_write(path, lambda f: write(data, f), mode="wb")


def default_config(result: Conversion) -> str:
    """The model zoo name of the published model whose head ``result`` has."""
    configs = SPECS[result.source].configs
    if result.head is None:
        # No head: the source's usual model, which the error message compares the keys with.
        return configs[None]
    levels, outputs = len(result.head[0]), result.head[1]
    if (levels, outputs) not in configs:
        raise ConversionError(
            f"The checkpoint has {levels} head levels and {outputs - 1} classes, unlike the "
            f"published models of its kind ({', '.join(sorted(set(configs.values())))}): "
            f"pass --config-file (and options such as MODEL.SSD.NUM_CLASSES {outputs - 1} "
            "after OUTPUT)."
        )
    return configs[(levels, outputs)]


def convert(source: Optional[str], state_dict: dict, config_file=None, opts=()) -> Conversion:
    """
    A state dict of ``source`` (one of :data:`~ssd_d2.convert.SOURCES`; None: recognised from
    its keys) in the layout of ``config_file``'s model (a path or a model zoo name; by default
    the published model whose head it has). A ConversionError lists the first keys that do not
    fit.
    """
    if source is None:
        source = core.recognize(state_dict)
        if source is None:
            raise ConversionError(core.unknown_format_message("The checkpoint", state_dict))
        if source == "ssd_d2":
            raise ConversionError(core.ALREADY_OURS)
    if source not in SOURCES:
        raise ConversionError(f"Unknown source {source!r}; choose one of {SOURCES}.")
    result = core.rename(source, state_dict)
    config_file = config_file or default_config(result)
    result.config_file = (
        config_file if os.path.isfile(config_file) else get_config_file(config_file)
    )
    cfg = load_config(result.config_file, [*opts, "MODEL.DEVICE", "cpu"])
    model = build_model(cfg).state_dict()
    prefix = SPECS[result.source].backbone
    if prefix:
        result.expected_missing = [k for k in model if not k.startswith(prefix)]
        if result.source == "vgg16" and CONV6_7[0] not in result.state_dict:
            # No (finite) fc6/fc7: conv6/conv7 start from their initialisation, as
            # torchvision's SSD300 does from its vgg16_features file.
            result.expected_missing += CONV6_7
        l2_norm = ", the conv4_3 L2Norm scale" if result.source == "vgg16" else ""
        result.notes.append(
            f"{len(result.expected_missing)} model tensors (extras, heads{l2_norm}) train from "
            "their initialisation: loading the file lists them as missing, as expected"
        )
    core.check_fits(result, model, target=result.config_file)
    return result


def convert_file(
    source, input_path, output_path, config_file=None, opts: List[str] = (), allow_unsafe=False
) -> Conversion:
    """Read a peer's file, :func:`convert` it and write a checkpoint: the Conversion."""
    if output_path.endswith(".pyth"):
        raise ConversionError(
            f"{output_path}: DetectionCheckpointer reads '.pyth' files as pycls checkpoints; "
            "use '.pth'."
        )
    conversion = convert(source, read_state_dict(input_path, allow_unsafe), config_file, opts)
    title = SPECS[conversion.source].title
    author = f"{title} ({os.path.basename(input_path)}) via ssd_d2.tools.convert"
    save_checkpoint(conversion.state_dict, output_path, author)
    return conversion


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
        help="whose file INPUT is (amdegroot: ssd.pytorch; mmdetection: its SSD300/512 and "
        "SSDLite; vgg16, mobilenet: ImageNet backbones to train from); by default recognised "
        "from its keys",
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
    use = " ".join([conversion.config_file, *config_options(args), "MODEL.WEIGHTS", args.output])
    print(f"Wrote {args.output}; use it with --config-file {use}")
    return conversion


if __name__ == "__main__":
    main()
