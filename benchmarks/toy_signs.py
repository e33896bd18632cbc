"""
Train on ``toy_signs`` splits of other sizes or in another folder (ssd_d2 registers the
default ones, which ``train_net.py`` takes as they are):

    python -m benchmarks.toy_signs --train-images 64 --val-images 16 \\
        --config-file configs/ssd160_toy_signs_demo.yaml SOLVER.MAX_ITER 20

Everything after this module's own options is train_net.py's command line.
"""

import argparse
import functools
import os
import sys

from ssd_d2.data.datasets.toy_signs import register_toy_signs, toy_signs_root, toy_signs_splits


def _register_and_train(root: str, splits, args):
    """train_net.py's main in a process that has these splits registered."""
    import train_net

    register_toy_signs(root, splits, replace=True)
    return train_net.main(args)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", help="cache folder (default: $SSD_D2_DATASETS/toy_signs)")
    parser.add_argument("--train-images", type=int, default=1500, help="size of toy_signs_train")
    parser.add_argument("--val-images", type=int, default=300, help="size of toy_signs_val")
    args, train_net_argv = parser.parse_known_args(argv)
    root = toy_signs_root(args.root)
    splits = toy_signs_splits(args.train_images, args.val_images)
    # train_net.py lives at the repository root, next to this package.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import train_net

    train_args = train_net.argument_parser().parse_args(train_net_argv)
    print("Command Line Args:", train_args)
    train_net.run(train_args, functools.partial(_register_and_train, root, splits))


if __name__ == "__main__":
    main()
