"""Fixtures of the weights tests: a loopback HTTP server of published files, and the
download cache."""

import argparse
import functools
import http.server
import os
import threading

import pytest
import torch

import train_net
from ssd_d2 import SSDTrainer, model_zoo
from ssd_d2.engine.checkpoint import split_weights
from ssd_d2.tools.convert import convert

from .peers import FORMATS

REPO_ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


class Server:
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
    server = Server(tmp_path_factory.mktemp("published"))

    @functools.lru_cache(maxsize=None)
    def published(name):
        torch.manual_seed(0)
        data = FORMATS[name][0]()
        torch.save(data, os.path.join(server.directory, name))
        return f"{server.url}/{name}", data

    yield server, published
    server.stop()


def expected_state_dict(name, data):
    """The source converted by the offline converter: what MODEL.WEIGHTS must load."""
    _, source, config, opts = FORMATS[name]
    state_dict = split_weights(data)[0]
    return convert(source, state_dict, model_zoo.get_config_file(config), opts).state_dict


def assert_loaded(model, expected):
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


def load_through_train_net(config, opts, eval_only, tmp_path, monkeypatch, shapes_root):
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
