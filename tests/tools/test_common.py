"""What the tools share: the parser and config assembly, input checks, and the one image reader."""

import cv2
import numpy as np
import pytest

from detectron2.data import DatasetCatalog

from ssd_d2.data.datasets import register_shapes_dataset
from ssd_d2.tools import common, demo

from ..conftest import CONFIG_DIR

DEMO_CONFIG = f"{CONFIG_DIR}/ssd160_shapes_demo.yaml"


def test_config_options_before_and_after_opts():
    # As the converter and the exporter take them: positional arguments, then KEY VALUE pairs,
    # with or without --opts.
    parser = common.argument_parser("x", "a tool", config_file="optional")
    parser.add_argument("input")
    common.add_trailing_options(parser)
    args = parser.parse_args(["in.pth", "MODEL.SSD.NUM_CLASSES", "5", "--opts", "A", "1"])
    assert args.input == "in.pth" and args.config_file is None
    assert common.config_options(args) == ["MODEL.SSD.NUM_CLASSES", "5", "A", "1"]
    args = parser.parse_args(["--config-file", "c.yaml", "in.pth", "--opts", "A", "1"])
    assert args.config_file == "c.yaml" and common.config_options(args) == ["A", "1"]

    parser = common.argument_parser("x", "a tool", config_file="")
    with pytest.raises(SystemExit):
        parser.parse_args(["--config-file", "c.yaml"])
    assert common.config_options(parser.parse_args([])) == []


def test_parse_config_merges_the_options():
    parser = common.argument_parser("x", "a tool")
    opts = ["MODEL.SSD.SCORE_THRESH_TEST", "0.3", "TEST.DETECTIONS_PER_IMAGE", "7"]
    args, cfg = common.parse_config(parser, ["--config-file", DEMO_CONFIG, "--opts", *opts])
    assert cfg.MODEL.SSD.SCORE_THRESH_TEST == 0.3 and cfg.TEST.DETECTIONS_PER_IMAGE == 7
    assert not cfg.is_frozen()

    with pytest.raises(SystemExit) as e:
        common.parse_config(parser, ["--config-file", "missing.yaml"])
    assert e.value.code == 2


def test_usage_errors_name_the_data_set_and_the_fix(tmp_path, unregister, capsys, monkeypatch):
    splits = {"tools_common_test": {"dirname": "tiny", "seed": 4, "num_images": 2}}
    register_shapes_dataset(root=str(tmp_path), splits=splits)
    DatasetCatalog.register("tools_common_empty", list)
    monkeypatch.chdir(tmp_path)  # no datasets/VOC2007 here
    name, dicts = common.dataset_dicts(None, ["tools_common_test"], "DATASETS.TEST", [0, 1])
    assert name == "tools_common_test" and len(dicts) == 2
    parser = common.argument_parser("x", "a tool")
    for name, defaults, indices, message in [
        (None, [], (), "no --dataset given and the config has no DATASETS.TEST"),
        ("no_such_set", [], (), "data set 'no_such_set' is not registered"),
        (None, ["tools_common_test"], (0, 2), "indices [2]: data set 'tools_common_test' has 2"),
        # ssd_d2.data.load_dataset_dicts's checks: an empty set, a missing built-in one.
        ("tools_common_empty", [], (), "Data set 'tools_common_empty' is empty."),
        ("voc_2007_test", [], (), "under DETECTRON2_DATASETS"),
    ]:
        with pytest.raises(SystemExit) as e, common.usage_errors(parser, ValueError):
            common.dataset_dicts(name, defaults, "DATASETS.TEST", indices)
        assert e.value.code == 2 and message in capsys.readouterr().err


def test_the_demo_reads_16_bit_images_with_the_data_reader(tmp_path, capsys):
    # A 16-bit grey ramp: Detectron2's reader saturates it at 255, the data reader scales it.
    ramp = np.tile(np.linspace(0, 65535, 96), (64, 1)).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "ramp.png"), ramp)
    out = tmp_path / "out"
    argv = ["--config-file", DEMO_CONFIG, "--input", str(tmp_path / "ramp.png")]
    # The default threshold draws nothing on this image: the output is the image as read.
    assert demo.main([*argv, "--output", str(out), "--confidence-threshold", "1.0"]) == 0
    drawn = cv2.imread(str(out / "ramp.png"), cv2.IMREAD_GRAYSCALE).astype(float)
    expected = np.round(ramp / 257.0)
    assert np.abs(drawn - expected).mean() < 2
    assert np.abs(drawn - np.minimum(ramp, 255)).mean() > 50
