"""
MODEL.WEIGHTS, the one weights entrance: every published file format, served by URL from a
loopback HTTP server, loads through train_net.py's training and --eval-only paths and through
Detectron2's DefaultPredictor, converted as the offline converter converts it; the download is
cached; a file of no known format fails naming it; the model zoo's torchvision entries detect
what torchvision's models detect; an uninitialised backbone is warned about.
"""

import argparse
import dataclasses
import functools
import http.server
import logging
import os
import subprocess
import sys
import threading

import pytest
import torch
from torchvision.models import mobilenet_v2, mobilenet_v3_large, vgg16
from torchvision.models.detection import ssd300_vgg16, ssdlite320_mobilenet_v3_large

from detectron2.engine import DefaultPredictor

import train_net
from ssd_d2 import SSDTrainer, model_zoo
from ssd_d2.convert import KNOWN_FORMATS, ConversionError, convert
from ssd_d2.engine import SSDCheckpointer, SSDPredictor
from ssd_d2.engine.checkpoint import UnsafeCheckpointError, warn_if_backbone_uninitialized
from ssd_d2.tools.convert import main as convert_main

from .conftest import load_config
from .test_convert import (
    AMDEGROOT_NAMES,
    LUFFICC_NAMES,
    PUBLISHED_VGG_CONVS,
    _compare_with_torchvision,
    _random_torchvision_ssdlite,
    _trained_like_torchvision_ssd,
    lufficc_mobilenet_v2_ssdlite_shapes,
    published_state_dict,
)

REPO_ROOT = os.path.join(os.path.dirname(__file__), "..")


# ---------------------------------------------------------------------------------------
# The published files, with random weights: (file name, how it is saved, config, options).


def _random_like(shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        k: (
            torch.randint(0, 1000, s, generator=g)
            if k.endswith("num_batches_tracked")
            else torch.randn(s, generator=g)
        )
        for k, s in shapes.items()
    }


def _vgg16_reducedfc():
    # ssd.pytorch's file: its VGG layer list, fc6/fc7 already reduced to conv6/conv7.
    shapes = {}
    for index, (c_in, c_out, kernel) in PUBLISHED_VGG_CONVS.items():
        shapes[f"{index}.weight"] = (c_out, c_in, kernel, kernel)
        shapes[f"{index}.bias"] = (c_out,)
    return _random_like(shapes)


def _torchvision_vgg16_features():
    # torchvision's vgg16_features file is a vgg16 state dict whose fc layers are NaN; its
    # 400 MB of NaN fc layers are left out here (test_convert covers them).
    features = vgg16(weights=None).features.state_dict()
    return {f"features.{k}": v for k, v in features.items()}


def _randomized(model):
    """``model`` with random norm affines and statistics (torchvision initialises them to the
    identity, under which a misplaced norm layer would go unnoticed)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(1 + 0.1 * torch.randn(m.num_features, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.num_features, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


FORMATS = {
    "vgg16_features-amdegroot-88682ab5.pth": (
        _torchvision_vgg16_features,
        "vgg16",
        "ssd300_coco_torchvision",
        (),
    ),
    "vgg16_reducedfc.pth": (_vgg16_reducedfc, "vgg16", "ssd300_voc", ()),
    "mobilenet_v2-b0353104.pth": (
        lambda: _randomized(mobilenet_v2(weights=None)).state_dict(),
        "mobilenet",
        "ssdlite320_mobilenet_v2_voc",
        (),
    ),
    "mobilenet_v3_large-8738ca79.pth": (
        lambda: _randomized(mobilenet_v3_large(weights=None)).state_dict(),
        "mobilenet",
        "ssdlite320_mobilenet_v3_coco",
        (),
    ),
    "ssd300_vgg16_coco-b556d3b4.pth": (
        lambda: ssd300_vgg16(weights=None, weights_backbone=None).state_dict(),
        "torchvision",
        "ssd300_coco_torchvision",
        (),
    ),
    "ssdlite320_mobilenet_v3_large_coco-a79551df.pth": (
        lambda: _randomized(
            ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None)
        ).state_dict(),
        "torchvision",
        "ssdlite320_mobilenet_v3_coco",
        ("MODEL.MOBILENET.REDUCED_TAIL", "True"),
    ),
    # lufficc/SSD saves {"model": state_dict, "iteration": ...}.
    "vgg_ssd300_voc0712.pth": (
        lambda: {"model": published_state_dict(LUFFICC_NAMES, 300, 21), "iteration": 120000},
        "lufficc",
        "ssd300_voc",
        (),
    ),
    "mobilenet_v2_ssd320_voc0712_v2.pth": (
        lambda: {"model": _random_like(lufficc_mobilenet_v2_ssdlite_shapes())},
        "lufficc",
        "ssdlite320_mobilenet_v2_voc",
        (),
    ),
    "ssd300_mAP_77.43_v2.pth": (
        lambda: published_state_dict(AMDEGROOT_NAMES, 300, 21),
        "amdegroot",
        "ssd300_voc",
        (),
    ),
}


class _Server:
    """A loopback HTTP server of one folder, in a thread, that records the paths it serves."""

    def __init__(self, directory):
        self.directory = str(directory)
        self.requests = []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=server.directory, **kwargs)

            def do_GET(self):
                server.requests.append(self.path)
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture(scope="module")
def weights_cache(tmp_path_factory):
    """Detectron2's download cache ($FVCORE_CACHE), in a temporary folder."""
    cache = tmp_path_factory.mktemp("fvcore_cache")
    with pytest.MonkeyPatch.context() as m:
        m.setenv("FVCORE_CACHE", str(cache))
        yield cache


@pytest.fixture(scope="module")
def weights_server(tmp_path_factory, weights_cache):
    """(server, published(name) -> (URL, the file's object)): files written on first use."""
    server = _Server(tmp_path_factory.mktemp("published"))

    @functools.lru_cache(maxsize=None)
    def published(name):
        torch.manual_seed(0)
        data = FORMATS[name][0]()
        torch.save(data, os.path.join(server.directory, name))
        return f"{server.url}/{name}", data

    yield server, published
    server.stop()


def _expected(name, data):
    """The source converted by the offline converter: what MODEL.WEIGHTS must load."""
    _, source, config, opts = FORMATS[name]
    state_dict = data["model"] if isinstance(data.get("model"), dict) else data
    return convert(source, state_dict, model_zoo.get_config_file(config), opts).state_dict


def _assert_loaded(model, expected):
    loaded = model.state_dict()
    for key, value in expected.items():
        assert torch.equal(loaded[key].cpu(), value.to(loaded[key].dtype)), key


def _train_net_args(config, opts, eval_only):
    return argparse.Namespace(
        config_file=model_zoo.get_config_file(config),
        eval_only=eval_only,
        resume=False,
        num_gpus=1,
        opts=list(opts),
    )


def _load_through_train_net(config, opts, eval_only, tmp_path, monkeypatch, shapes_root):
    """train_net.main's model after it loaded MODEL.WEIGHTS, stopped before any iteration."""
    monkeypatch.setenv("SSD_D2_DATASETS", str(shapes_root))
    models = []
    if eval_only:
        monkeypatch.setattr(SSDTrainer, "test", classmethod(lambda cls, cfg, m: models.append(m)))
    else:
        monkeypatch.setattr(SSDTrainer, "train", lambda self: models.append(self.model))
    small = [
        "DATASETS.TRAIN", "('ssd_shapes_val',)", "DATASETS.TEST", "()",
        "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "2",
        "OUTPUT_DIR", str(tmp_path),
    ]  # fmt: skip
    train_net.main(_train_net_args(config, [*opts, *small], eval_only))
    assert len(models) == 1
    return models[0]


@pytest.mark.parametrize("path", ["train", "eval_only", "DefaultPredictor"])
@pytest.mark.parametrize("name", list(FORMATS))
def test_every_published_format_loads_by_url(
    name, path, weights_server, tmp_path, monkeypatch, shapes_root
):
    _, published = weights_server
    url, data = published(name)
    _, _, config, config_opts = FORMATS[name]
    opts = [*config_opts, "MODEL.WEIGHTS", url]
    if path == "DefaultPredictor":
        model = DefaultPredictor(load_config(config, *opts)).model
    else:
        model = _load_through_train_net(
            config, opts, path == "eval_only", tmp_path, monkeypatch, shapes_root
        )
    _assert_loaded(model, _expected(name, data))


@pytest.mark.parametrize(
    "name, config",
    [
        ("mobilenet_v2-b0353104.pth", "ssdlite320_mobilenet_v2_voc"),
        ("mobilenet_v3_large-8738ca79.pth", "ssdlite320_mobilenet_v3_coco"),
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
    server = _Server(tmp_path)
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
    expected = _expected(name, data)
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
    _assert_loaded(predictor.model, expected.state_dict)


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
    _assert_loaded(runner.predictor.model, _expected("mobilenet_v2_ssd320_voc0712_v2.pth", data))

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
    _assert_loaded(runner.predictor.model, _expected("mobilenet_v2_ssd320_voc0712_v2.pth", data))


# ---------------------------------------------------------------------------------------
# The model zoo's torchvision entries detect what torchvision's models detect.


def _serve_zoo_entry(monkeypatch, server, name, model):
    entry = model_zoo.ZOO[name]
    filename = entry.url.rsplit("/", 1)[1]
    torch.save(model.state_dict(), os.path.join(server.directory, "zoo_" + filename))
    monkeypatch.setitem(
        model_zoo.ZOO, name, dataclasses.replace(entry, url=f"{server.url}/zoo_{filename}")
    )


def test_model_zoo_torchvision_ssd300_detects_as_torchvision(weights_server, monkeypatch):
    server, _ = weights_server
    theirs = _trained_like_torchvision_ssd()
    _serve_zoo_entry(monkeypatch, server, "ssd300_coco_torchvision", theirs)
    ours = model_zoo.get("ssd300_coco_torchvision", trained=True, device="cpu")
    assert not ours.training
    counts, max_box, max_score = _compare_with_torchvision(ours, theirs, seed=5)
    assert all(10 <= n < 200 for n in counts), counts
    assert max_box <= 1e-3
    assert max_score <= 1e-5


def test_model_zoo_torchvision_ssdlite_detects_as_torchvision(weights_server, monkeypatch):
    server, _ = weights_server
    theirs = _random_torchvision_ssdlite()
    _serve_zoo_entry(monkeypatch, server, "ssdlite320_mobilenet_v3_coco", theirs)
    ours = model_zoo.get("ssdlite320_mobilenet_v3_coco", trained=True, device="cpu")
    counts, max_box, max_score = _compare_with_torchvision(ours, theirs, seed=6)
    assert all(10 <= n < 300 for n in counts), counts
    assert max_box <= 1e-3
    assert max_score <= 1e-5


def test_model_zoo_configs():
    for name, entry in model_zoo.ZOO.items():
        assert os.path.samefile(
            model_zoo.get_config_file(name), os.path.join(REPO_ROOT, "configs", entry.config)
        )
        untrained, trained = model_zoo.get_config(name), model_zoo.get_config(name, True)
        assert trained.MODEL.WEIGHTS == entry.url
        # Untrained: the ImageNet backbone the peer starts from.
        assert (
            untrained.MODEL.WEIGHTS
            == model_zoo.IMAGENET_BACKBONES.get(untrained.MODEL.BACKBONE.NAME)
            or name == "ssd300_coco_torchvision"
        )
    assert model_zoo.get_config("ssd300_coco_torchvision").MODEL.WEIGHTS.endswith(
        "vgg16_features-amdegroot-88682ab5.pth"
    )
    assert (
        model_zoo.get_config("ssdlite320_mobilenet_v3_coco").MODEL.MOBILENET.REDUCED_TAIL is False
    )
    assert model_zoo.get_config("ssdlite320_mobilenet_v3_coco", True).MODEL.MOBILENET.REDUCED_TAIL
    with pytest.raises(FileNotFoundError, match="ssd300_voc"):
        model_zoo.get_config_file("ssd301_voc")


# ---------------------------------------------------------------------------------------
# The warning about a backbone that starts at random.


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def warnings_logged():
    handler = _Records()
    logger = logging.getLogger("ssd_d2.engine.checkpoint")
    logger.addHandler(handler)
    yield handler.messages
    logger.removeHandler(handler)


def _start_training(config, opts, tmp_path, monkeypatch, shapes_root):
    return _load_through_train_net(config, opts, False, tmp_path, monkeypatch, shapes_root)


@pytest.mark.parametrize(
    "config, weights, warns",
    [
        ("ssd300_voc", "", True),  # published architecture, no weights
        ("ssd300_voc", "head_only.pth", True),  # a file without backbone weights
        ("ssd300_voc", "vgg16_reducedfc.pth", False),  # the ImageNet start
        ("ssd300_shapes", "", False),  # from scratch on purpose
    ],
)
def test_uninitialised_backbone_warning(
    config, weights, warns, weights_server, warnings_logged, tmp_path, monkeypatch, shapes_root
):
    server, published = weights_server
    if weights == "head_only.pth":
        model = SSDTrainer.build_model(load_config("ssd300_voc"))
        head = {k: v for k, v in model.state_dict().items() if k.startswith("head.")}
        torch.save({"model": head}, tmp_path / weights)
        weights = str(tmp_path / weights)
    elif weights:
        weights = published(weights)[0]
    _start_training(config, ["MODEL.WEIGHTS", weights], tmp_path, monkeypatch, shapes_root)
    backbone_warnings = [m for m in warnings_logged if "randomly initialised backbone" in m]
    assert len(backbone_warnings) == int(warns), warnings_logged
    if warns:
        (message,) = backbone_warnings
        # It names the fix: the ImageNet file, and the switch for training from scratch.
        assert "MODEL.WEIGHTS https://s3.amazonaws.com/amdegroot-models/vgg16_reducedfc.pth" in (
            message
        )
        assert "MODEL.SSD.EXPECT_PRETRAINED_BACKBONE False" in message
        assert ("is empty" in message) == (weights == "")


def test_warning_names_each_backbones_imagenet_file():
    for config, file in [
        ("ssdlite320_mobilenet_v2_voc", "mobilenet_v2-b0353104.pth"),
        ("ssdlite320_mobilenet_v3_coco", "mobilenet_v3_large-8738ca79.pth"),
        ("ssd512_coco", "vgg16_reducedfc.pth"),
    ]:
        cfg = load_config(config, "MODEL.WEIGHTS", "")
        assert file in warn_if_backbone_uninitialized(cfg, None)
        assert cfg.MODEL.SSD.EXPECT_PRETRAINED_BACKBONE
    assert warn_if_backbone_uninitialized(load_config("ssd160_shapes_demo"), None) is None


# ---------------------------------------------------------------------------------------
# The offline converter: the same rules, the source recognised from the keys.


@pytest.mark.parametrize(
    "name, config, opts",
    [
        ("mobilenet_v3_large-8738ca79.pth", "ssdlite320_mobilenet_v3_coco.yaml", []),
        (
            "ssdlite320_mobilenet_v3_large_coco-a79551df.pth",
            "ssdlite320_mobilenet_v3_coco.yaml",
            ["MODEL.MOBILENET.REDUCED_TAIL", "True"],
        ),
    ],
)
def test_converter_recognises_the_source(name, config, opts, tmp_path, capsys):
    data = FORMATS[name][0]()
    source, output = str(tmp_path / name), str(tmp_path / "converted.pth")
    torch.save(data, source)
    conversion = convert_main([source, output])  # no --source
    assert conversion.config_file.endswith(config) and conversion.config_opts == opts
    assert f"--config-file {conversion.config_file} {' '.join(opts + [''])}MODEL.WEIGHTS" in (
        capsys.readouterr().out
    )
    # MODEL.WEIGHTS takes the converted file as it is, and the published one to the same
    # tensors.
    model = SSDTrainer.build_model(load_config(config[: -len(".yaml")], *opts))
    SSDCheckpointer(model).load(output)
    _assert_loaded(model, _expected(name, data))
    with pytest.raises(SystemExit, match="keys are ssd_d2's already"):
        convert_main([output, str(tmp_path / "again.pth")])


def test_tools_warn_about_imagenet_weights():
    from ssd_d2.tools.common import check_weights

    for config in ["ssd300_voc", "ssd300_coco_torchvision", "ssdlite320_mobilenet_v3_coco"]:
        assert "ImageNet backbone weights" in check_weights(load_config(config))
        assert check_weights(model_zoo.get_config(config, trained=True)) is None
