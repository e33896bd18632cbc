import importlib.util
import os
import sys
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

import ssd_d2.config

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "..", "configs")


def load_config(name: str, *opts):
    """
    The config ``configs/<name>.yaml`` on the CPU, with ``opts`` merged, not frozen. The class
    logits start as published (``MODEL.SSD.PRIOR_PROB 0``), so that a model with random
    weights detects something: the demo config's 1% foreground start scores every box below
    the test threshold.
    """
    path = os.path.join(CONFIG_DIR, f"{name}.yaml")
    return ssd_d2.config.load_config(
        path, ["MODEL.DEVICE", "cpu", "MODEL.SSD.PRIOR_PROB", 0.0, *opts]
    )


def assert_close_at_scale(ours, theirs):
    """Equal but for float32 rounding through tens of layers (channels-last convolutions in
    ssd_d2, another summation order elsewhere): within 1e-5 of the largest value."""
    atol = 1e-5 * theirs.abs().max().item()
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=atol)


def conv_init_stats(modules):
    """(weight shape, Xavier-uniform bound / max |weight|, bias all zero) of each conv."""
    stats = []
    for m in modules:
        if isinstance(m, nn.Conv2d):
            fan_in = m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
            fan_out = m.out_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
            bound = (6 / (fan_in + fan_out)) ** 0.5
            ratio = bound / m.weight.detach().abs().max().item()
            stats.append((tuple(m.weight.shape), round(ratio, 2), bool((m.bias == 0).all())))
    return stats


def pytest_collection_modifyitems(config, items):
    """
    The tests marked ``runtimes`` run after all others. With OpenVINO and NNCF loaded in the
    pytest process (Detectron2 v0.6's environment), a later test's ``subprocess.run`` took the
    whole process down with SIGSEGV; a fresh process (``--eval-only``, the tools) is not
    affected.
    """
    late = [item for item in items if item.get_closest_marker("runtimes")]
    items[:] = [item for item in items if not item.get_closest_marker("runtimes")] + late


@pytest.fixture
def unregister():
    """Removes from the catalogs, after the test, the data sets the test registered."""
    before = set(DatasetCatalog.list())
    yield
    for name in set(DatasetCatalog.list()) - before:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


@pytest.fixture
def tiny_cfg(tmp_path, unregister):
    """``tiny_cfg(*opts, config="ssd160_shapes_demo")``: the config training on four 64x48
    images, batch 2, no evaluation, in the main process, writing to tmp_path/out."""
    name = "tiny_train"
    path = str(tmp_path / "image.jpg")
    Image.fromarray(np.full((48, 64, 3), 100, np.uint8)).save(path)
    box = {"bbox": [5, 5, 40, 40], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 1}
    dicts = [{"file_name": path, "image_id": i, "width": 64, "height": 48, "annotations": [box]}
             for i in range(4)]  # fmt: skip
    DatasetCatalog.register(name, lambda: dicts)
    MetadataCatalog.get(name).set(thing_classes=["x"] * 5)
    return lambda *opts, config="ssd160_shapes_demo": load_config(
        config,
        "DATASETS.TRAIN", (name,), "DATASETS.TEST", (), "SOLVER.IMS_PER_BATCH", 2,
        "DATALOADER.NUM_WORKERS", 0, "OUTPUT_DIR", str(tmp_path / "out"), *opts,
    )  # fmt: skip


@pytest.fixture(autouse=True)
def _fixed_seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory):
    """One ssd_shapes cache (SSD_D2_DATASETS) for the tests that run train_net.py."""
    return tmp_path_factory.mktemp("ssd_shapes")


def _vendored(name: str) -> str:
    """The path of a peer's source archive next to the repository, as CI and the development
    machines have it."""
    return os.path.join(os.path.dirname(__file__), "..", "..", "shared", "vendor", name)


def _extract_peer(tmp_path_factory, archive: str, peer: str, missing=None):
    """
    The folder a peer's source ``archive`` is extracted to. Fails in CI (``CI`` set) when the
    archive is missing (or ``missing``, a reason the peer cannot run, is given), skips elsewhere.
    """
    archive = os.path.abspath(archive)
    if not os.path.isfile(archive):
        missing = f"{peer}'s source archive {archive} is missing."
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"{missing} CI runs the comparisons with {peer}.")
        pytest.skip(missing)
    target = tmp_path_factory.mktemp("peer")
    with tarfile.open(archive) as tar:
        # The "data" filter (refuse links and paths out of the target) where Python has it.
        kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(target, **kwargs)
    return target


# lufficc/SSD, the reference implementation, as a peer to run (never copied): its source at a
# fixed commit, or where SSD_D2_LUFFICC_ARCHIVE points.
LUFFICC_ARCHIVE = os.environ.get("SSD_D2_LUFFICC_ARCHIVE", _vendored("lufficc-SSD-68dc0a2.tar.gz"))


# NVIDIA's SSD300-ResNet50 (DeepLearningExamples PyTorch/Detection/SSD) as a peer to run
# (never copied), or where SSD_D2_NVIDIA_ARCHIVE points.
NVIDIA_ARCHIVE = os.environ.get("SSD_D2_NVIDIA_ARCHIVE", _vendored("nvidia-DLE-SSD-729963d.tar.gz"))


@pytest.fixture(scope="module")
def nvidia_root(tmp_path_factory):
    """
    NVIDIA DeepLearningExamples' SSD300-ResNet50 source root, importable as ``ssd`` for one test
    module (lufficc/SSD's package is ``ssd`` too: its modules are set aside meanwhile). Its
    model module builds an ImageNet ResNet-50 (a download) as a default argument at import:
    that default becomes None here, and the tests pass their own backbone.
    """
    root = _extract_peer(tmp_path_factory, NVIDIA_ARCHIVE, "NVIDIA's SSD") / "nvidia-ssd"
    model = root / "ssd" / "model.py"
    source = model.read_text()
    default = "backbone=ResNet('resnet50')"
    assert default in source, f"{model} no longer has the default argument this fixture patches."
    model.write_text(source.replace(default, "backbone=None"))
    set_aside = {m: sys.modules.pop(m) for m in list(sys.modules) if m.split(".")[0] == "ssd"}
    sys.path.insert(0, str(root))
    try:
        yield root
    finally:
        sys.path.remove(str(root))
        for name in [m for m in sys.modules if m.split(".")[0] == "ssd"]:
            del sys.modules[name]
        sys.modules.update(set_aside)


@pytest.fixture(scope="session")
def lufficc_root(tmp_path_factory):
    """
    lufficc/SSD's source root, extracted once per session and importable as ``ssd``. Fails
    in CI (``CI`` set) when the archive is missing, skips elsewhere.
    """
    missing = None
    if importlib.util.find_spec("yacs") is None:
        missing = "lufficc/SSD's config needs yacs: pip install -e '.[test]'."
    target = _extract_peer(tmp_path_factory, LUFFICC_ARCHIVE, "lufficc/SSD", missing)
    root = target / "lufficc-SSD"
    # Its NMS import compares version strings ('0.29.1' < '0.3.0'): every torchvision that
    # ssd_d2 runs on has torchvision.ops.nms.
    nms = root / "ssd" / "utils" / "nms.py"
    source = nms.read_text()
    check = "if torchvision.__version__ >= '0.3.0':"
    assert check in source, f"{nms} no longer has the version check this fixture patches."
    nms.write_text(source.replace(check, "if True:"))
    sys.path.insert(0, str(root))
    try:
        yield root
    finally:
        sys.path.remove(str(root))
        for name in [m for m in sys.modules if m == "ssd" or m.startswith("ssd.")]:
            del sys.modules[name]
