#!/usr/bin/env python
"""
Train and evaluate SSD models with Detectron2.

    python train_net.py --config-file configs/ssd300_voc.yaml --num-gpus 2
    python train_net.py --config-file configs/ssd300_voc.yaml --eval-only MODEL.WEIGHTS model.pth

Without GPUs, --num-gpus N runs N data-parallel gloo processes on the CPU.
"""

from datetime import timedelta

from detectron2.engine import default_argument_parser, default_setup
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ssd_d2 import SSDTrainer
from ssd_d2.config import load_config
from ssd_d2.data import register_config_datasets
from ssd_d2.engine import SSDCheckpointer, default_timeout, launch
from ssd_d2.export import ExportedSSD, ExportError, is_exported_model


def setup(args):
    cfg = load_config(args.config_file, args.opts)
    # Before default_setup writes config.yaml: it then names the files by absolute paths.
    register_config_datasets(cfg)
    cfg.freeze()
    default_setup(cfg, args)
    # default_setup logs detectron2's and fvcore's messages; ssd_d2's data checks go there too.
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="ssd_d2")
    return cfg


def main(args):
    cfg = setup(args)
    exported = is_exported_model(cfg.MODEL.WEIGHTS)
    if exported and not args.eval_only:
        raise ExportError(
            f"MODEL.WEIGHTS {cfg.MODEL.WEIGHTS} is an exported model, which only infers: "
            "evaluate it with --eval-only, or train from a .pth checkpoint."
        )
    if args.eval_only:
        if exported:  # evaluated in its runtime, with the config's evaluators
            model = ExportedSSD.from_config(cfg)
        else:
            model = SSDTrainer.build_model(cfg)
            SSDCheckpointer(
                model, save_dir=cfg.OUTPUT_DIR, allow_unsafe=cfg.MODEL.ALLOW_UNSAFE_CHECKPOINTS
            ).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        results = SSDTrainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, results)
        return results

    trainer = SSDTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def argument_parser():
    parser = default_argument_parser()
    parser.add_argument(
        "--dist-timeout",
        type=float,
        default=default_timeout().total_seconds(),
        metavar="SECONDS",
        help="with several processes, how long one waits for the others in a collective "
        "before it fails instead of hanging (default: %(default)s; 1800 with GPUs, as "
        "Detectron2, 600 on the CPU)",
    )
    return parser


def run(args, main_func=main):
    """
    ``main_func(args)`` in every process that the parsed command line ``args`` asks for
    (--num-gpus, --num-machines). A script that registers its own data sets passes a
    ``main_func`` that registers them and then calls :func:`main`: each process needs them.
    """
    launch(
        main_func,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
        timeout=timedelta(seconds=args.dist_timeout),
    )


if __name__ == "__main__":
    args = argument_parser().parse_args()
    print("Command Line Args:", args)
    run(args)
