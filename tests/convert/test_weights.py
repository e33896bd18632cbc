"""
MODEL.WEIGHTS, the one weights entrance: every published file format, served by URL from a
loopback HTTP server, loads through train_net.py's training and --eval-only paths and through
Detectron2's DefaultPredictor, converted as the offline converter converts it; the download is
cached; a file of no known format fails naming it.
"""

import argparse
import os
import subprocess
import sys

import pytest
import torch
from torchvision.models import mobilenet_v2, mobilenet_v3_large

from detectron2.engine import DefaultPredictor

from ssd_d2 import SSDTrainer, model_zoo
from ssd_d2.convert import KNOWN_FORMATS, ConversionError
from ssd_d2.engine import SSDCheckpointer, SSDPredictor
from ssd_d2.engine.checkpoint import UnsafeCheckpointError
from ssd_d2.tools.convert import convert

from ..conftest import load_config
from .conftest import REPO_ROOT, Server, assert_loaded, expected_state_dict, load_through_train_net
from .peers import FORMATS


@pytest.mark.parametrize("path", ["train", "eval_only", "DefaultPredictor"])
@pytest.mark.parametrize("name", list(FORMATS))
def test_every_published_format_loads_by_url(
    name, path, weights_server, tmp_path, monkeypatch, shapes_root
):
    _, published = weights_server
    url, data = published(name)
    _, _, config, config_opts = FORMATS[name]
    opts = [*config_opts, "MODEL.WEIGHTS", url]
    if path == "DefaultPredictor" and "meta" in data:
        # mmdetection's {"meta", "state_dict"}: Detectron2's checkpointer takes the whole file
        # for a state dict and refuses "meta" (test_convert_mmdetection); ssd_d2's reads it.
        model = SSDPredictor(load_config(config, *opts)).model
    elif path == "DefaultPredictor":
        model = DefaultPredictor(load_config(config, *opts)).model
    else:
        model = load_through_train_net(
            config, opts, path == "eval_only", tmp_path, monkeypatch, shapes_root
        )
    assert_loaded(model, expected_state_dict(name, data))


@pytest.mark.parametrize(
    "name, config",
    [
        ("mobilenet_v2-b0353104.pth", "ssdlite320_mobilenet_v2_voc"),
        ("mobilenet_v3_large-8738ca79.pth", "ssdlite320_mobilenet_v3_coco_imagenet"),
    ],
)
def test_imagenet_mobilenet_computes_torchvision_features(name, config, weights_server):
    """The ImageNet classifier's body, loaded by URL, computes what torchvision's computes."""
    _, published = weights_server
    url, data = published(name)
    theirs = (mobilenet_v2 if "v2" in name else mobilenet_v3_large)(weights=None).eval()
    theirs.load_state_dict(data)
    ours = DefaultPredictor(load_config(config, "MODEL.WEIGHTS", url)).model
    x = torch.randn(2, 3, 320, 320, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        features = ours.backbone(x)
        body = theirs.features
        if "v2" in name:
            # lufficc/SSD's first map: the output of the last stride-16 block.
            c4 = body[:14](x)
        else:
            # torchvision's SSDLite's first map: the 1x1 expansion of the stride-32 block.
            c4 = body[13].block[0](body[:13](x))
        c5 = body(x)
    torch.testing.assert_close(features["c4"], c4, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(features["c5"], c5, rtol=1e-4, atol=1e-4)


def test_second_load_comes_from_the_cache(weights_cache, tmp_path):
    """A fresh process loads a URL it downloaded before with the server gone."""
    server = Server(tmp_path)
    name = "ssdlite320_mobilenet_v3_large_coco-a79551df.pth"
    data = FORMATS[name][0]()
    torch.save(data, tmp_path / name)
    url = f"{server.url}/{name}"
    load = (
        "import sys, torch; from detectron2.modeling import build_model; "
        "from ssd_d2 import model_zoo; from ssd_d2.engine import load_weights; "
        "cfg = model_zoo.get_config('ssdlite320_mobilenet_v3_coco'); "
        "cfg.merge_from_list(['MODEL.DEVICE', 'cpu', 'MODEL.MOBILENET.REDUCED_TAIL', 'True', "
        "'MODEL.WEIGHTS', sys.argv[1]]); model = build_model(cfg); load_weights(model, cfg); "
        "torch.save(model.state_dict(), sys.argv[2])"
    )
    env = dict(os.environ, FVCORE_CACHE=str(weights_cache / "fresh"), PYTHONPATH=REPO_ROOT)
    outputs = []
    for attempt in range(2):
        output = str(tmp_path / f"loaded{attempt}.pth")
        result = subprocess.run(
            [sys.executable, "-c", load, url, output],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        outputs.append(torch.load(output, weights_only=True))
        if attempt == 0:
            assert server.requests == [f"/{name}"]
            server.stop()
            (tmp_path / name).unlink()
    cached = weights_cache / "fresh" / name
    assert cached.is_file()
    expected = expected_state_dict(name, data)
    for state_dict in outputs:
        for key, value in expected.items():
            assert torch.equal(state_dict[key], value), key


def test_unknown_file_fails_naming_it_and_the_formats(weights_server):
    server, _ = weights_server
    name = "notes_of_another_network.pth"
    torch.save({"encoder.layer.0.weight": torch.zeros(3, 3)}, os.path.join(server.directory, name))
    cfg = load_config("ssd300_voc", "MODEL.WEIGHTS", f"{server.url}/{name}")
    model = SSDTrainer.build_model(cfg)
    with pytest.raises(ConversionError) as error:
        SSDCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    message = str(error.value)
    assert name in message and "encoder.layer.0.weight" in message
    for known in KNOWN_FORMATS:
        assert known in message
    # Detectron2's DefaultPredictor: the SSD model refuses it in load_state_dict.
    with pytest.raises(ConversionError, match="not a weights file ssd_d2 knows"):
        DefaultPredictor(cfg)


def test_a_peer_file_of_another_architecture_is_an_error(weights_server):
    _, published = weights_server
    url, _ = published("mobilenet_v2-b0353104.pth")
    model = SSDTrainer.build_model(load_config("ssd300_voc"))
    with pytest.raises(ConversionError, match=r"mobilenet_v2-b0353104\.pth .*does not fit"):
        SSDCheckpointer(model).load(url)


def test_mobilenet_v3_imagenet_weights_need_the_full_tail(weights_server):
    _, published = weights_server
    url, _ = published("mobilenet_v3_large-8738ca79.pth")
    cfg = load_config("ssdlite320_mobilenet_v3_coco", "MODEL.MOBILENET.REDUCED_TAIL", "True")
    with pytest.raises(ConversionError, match="MODEL.MOBILENET.REDUCED_TAIL False"):
        SSDCheckpointer(SSDTrainer.build_model(cfg)).load(url)


def test_unsafe_peer_file_needs_the_flag_on_every_path(weights_server):
    """A torchvision reference-script checkpoint (its args pickled) through our predictor."""
    server, _ = weights_server
    name = "ssdlite_with_args.pth"
    state_dict = FORMATS["ssdlite320_mobilenet_v3_large_coco-a79551df.pth"][0]()
    torch.save(
        {"model": state_dict, "args": argparse.Namespace(lr=0.15)},
        os.path.join(server.directory, name),
    )
    opts = ["MODEL.MOBILENET.REDUCED_TAIL", "True", "MODEL.WEIGHTS", f"{server.url}/{name}"]
    cfg = load_config("ssdlite320_mobilenet_v3_coco", *opts)
    with pytest.raises(UnsafeCheckpointError, match="MODEL.ALLOW_UNSAFE_CHECKPOINTS"):
        SSDPredictor(cfg)
    cfg.MODEL.ALLOW_UNSAFE_CHECKPOINTS = True
    predictor = SSDPredictor(cfg)
    config_file = model_zoo.get_config_file("ssdlite320_mobilenet_v3_coco")
    expected = convert("torchvision", state_dict, config_file, opts[:2])
    assert_loaded(predictor.model, expected.state_dict)


def test_the_tools_load_through_the_entrance(weights_server, tmp_path):
    """The demo, plot_evaluation and export read MODEL.WEIGHTS as training does: a peer's
    URL converted, and a file that needs full unpickling refused unless the flag is set."""
    from ssd_d2.tools import demo
    from ssd_d2.tools import export as export_tool
    from ssd_d2.tools import plot_evaluation

    server, published = weights_server
    url, data = published("mobilenet_v2_ssd320_voc0712_v2.pth")
    config = "ssdlite320_mobilenet_v2_voc"
    runner = demo.DemoRunner(load_config(config, "MODEL.WEIGHTS", url))
    assert_loaded(
        runner.predictor.model, expected_state_dict("mobilenet_v2_ssd320_voc0712_v2.pth", data)
    )

    unsafe = "lufficc_with_args.pth"
    torch.save(
        {**data, "args": argparse.Namespace(lr=1e-3)}, os.path.join(server.directory, unsafe)
    )
    cfg = load_config(config, "MODEL.WEIGHTS", f"{server.url}/{unsafe}")
    with pytest.raises(UnsafeCheckpointError, match="MODEL.ALLOW_UNSAFE_CHECKPOINTS"):
        demo.DemoRunner(cfg)
    with pytest.raises(UnsafeCheckpointError, match="MODEL.ALLOW_UNSAFE_CHECKPOINTS"):
        plot_evaluation.predict_coco_results(cfg, [], None)
    args = ["--format", "onnx", "--config-file", model_zoo.get_config_file(config)]
    args += ["--output", str(tmp_path / "m.onnx"), "MODEL.WEIGHTS", cfg.MODEL.WEIGHTS]
    with pytest.raises(SystemExit, match="MODEL.ALLOW_UNSAFE_CHECKPOINTS"):
        export_tool.main(args)
    cfg.MODEL.ALLOW_UNSAFE_CHECKPOINTS = True
    runner = demo.DemoRunner(cfg)
    assert_loaded(
        runner.predictor.model, expected_state_dict("mobilenet_v2_ssd320_voc0712_v2.pth", data)
    )
