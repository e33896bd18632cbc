"""
Export to TorchScript, ONNX and OpenVINO in float32: the exported models return eager
inference's detections (boxes within 1e-3 pixel, scores within 1e-4, same classes) at batch
sizes other than the traced one, on random images (many detections) and on drawn scenes.
"""

import os

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from torch import nn

from detectron2.modeling import build_model

from ssd_d2 import SSD
from ssd_d2.data.datasets.shapes import _draw_image
from ssd_d2.export import (
    BOX_TOLERANCE,
    OUTPUT_NAMES,
    SCORE_TOLERANCE,
    ExportError,
    check_exportable,
    compare_with_eager,
    eager_detections,
    example_images,
    export_model,
    matched_differences,
    open_exported,
    verify,
)
from ssd_d2.tools import export as export_tool

from .. import conftest
from ..conftest import CONFIG_DIR

pytestmark = pytest.mark.runtimes

FORMATS = ["torchscript", "onnx", "openvino"]
EXTENSION = {"torchscript": ".ts", "onnx": ".onnx", "openvino": ".xml"}


def load_exported(path):
    return open_exported(path)[0]


def load_config(name, *opts):
    # The exports run in float32, whatever inference precision the config file sets.
    return conftest.load_config(name, "TEST.PRECISION", "fp32", *opts)


def _trained_like(model: nn.Module, images: torch.Tensor, spread=2.5, background=3.0):
    """
    Give a random model the score distribution of a trained one. SSDLite's initialisation
    (N(0, 0.03) convs) makes nearly constant maps, so every score sits near 1 / (K + 1) and
    the detections that make the per-image cut are decided by rounding: He-normal convs
    with norm statistics measured on ``images`` (variance floored at 1, so that no layer
    amplifies rounding errors), class logits of standard deviation ``spread`` and a
    ``background`` bias give scores spread over (0, 1).
    """
    g = torch.Generator().manual_seed(0)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                std = (2.0 / module.weight[0].numel()) ** 0.5
                module.weight.copy_(torch.randn(module.weight.shape, generator=g) * std)
                if module.bias is not None:
                    module.bias.copy_(torch.randn(module.bias.shape, generator=g) * 0.1)
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # the average over the batches seen
        model.train()
        model.predict(model.normalize(images))
        model.eval()
        for norm in norms:
            norm.running_var.clamp_(min=1.0)

        features = model.backbone(model.normalize(images[:1]))
        logits, _ = model.head([features[f] for f in model.head_in_features])
        for predictor, level_logits in zip(model.head.cls_score, logits):
            conv = predictor[-1] if isinstance(predictor, nn.Sequential) else predictor
            scale = spread / level_logits.std()
            conv.weight.mul_(scale)
            conv.bias.mul_(scale)
            conv.bias.view(-1, model.num_classes + 1)[:, 0] += background
    return model


def _build(config_name: str) -> nn.Module:
    torch.manual_seed(0)
    model = build_model(load_config(config_name)).eval()
    if config_name.startswith("ssdlite"):
        _trained_like(model, example_images(model, 2, seed=100))
    return model


def _drawn_scenes(num_images: int, size, seed: int = 0) -> torch.Tensor:
    """Scenes of the ssd_shapes data set (shapes on cluttered, noisy backgrounds), RGB;
    ``size``: a square's side or (height, width)."""
    rng = np.random.default_rng(seed)
    height, width = (size, size) if isinstance(size, int) else size
    images = []
    for _ in range(num_images):
        bgr, _ = _draw_image(
            rng,
            height,
            width,
            8,
            min_shape_size=8,
            max_shape_size=0.5 * min(height, width),
            max_hidden_fraction=0.5,
            min_contrast=40,
        )
        images.append(torch.from_numpy(np.ascontiguousarray(bgr[:, :, ::-1].transpose(2, 0, 1))))
    return torch.stack(images)


_MODELS = {}


def _model(config_name):
    if config_name not in _MODELS:
        _MODELS[config_name] = _build(config_name)
    return _MODELS[config_name]


_EAGER = {}


def _images_and_eager(config_name):
    """
    Three images, two random (a random model finds a full page of detections in them) and a
    drawn scene, and eager inference's detections on them: one batch, other than the traced
    example's two images.
    """
    if config_name not in _EAGER:
        model = _model(config_name)
        images = torch.cat(
            [example_images(model, 2, seed=1), _drawn_scenes(1, model.image_size, seed=2)]
        )
        _EAGER[config_name] = images, eager_detections(model, images)
    return _EAGER[config_name]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(config name, format) -> (model, run function, path); each exported once."""
    cache = {}

    def get(config_name, format):
        if (config_name, format) not in cache:
            model = _model(config_name)
            path = str(tmp_path_factory.mktemp("export") / f"{config_name}{EXTENSION[format]}")
            export_model(model, format, path)  # traced on two images
            cache[config_name, format] = model, load_exported(path), path
        return cache[config_name, format]

    yield get
    _MODELS.clear()
    _EAGER.clear()


@pytest.mark.parametrize("format", FORMATS)
@pytest.mark.parametrize(
    "config_name", ["ssd160_shapes_demo", "ssdlite320_mobilenet_v3_coco", "ssd160x288_shapes_demo"]
)
def test_exported_detections_equal_eager(exported, config_name, format):
    model, run, _ = exported(config_name, format)
    images, expected = _images_and_eager(config_name)
    result = compare_with_eager(model, run, images, expected)
    print(f"{config_name} {format}: {result}")
    assert result["max_box_diff"] <= BOX_TOLERANCE
    assert result["max_score_diff"] <= SCORE_TOLERANCE
    random_counts, scene_count = result["detections"][:2], result["detections"][2]
    assert random_counts == [model.max_detections_per_image] * 2
    assert scene_count > 0


def _model_with_few_detections():
    """
    The demo model with a score threshold between its two best images' best scores: one
    of the three images has detections, two have none. Returns the model and the images.
    """
    if "few detections" not in _MODELS:
        torch.manual_seed(0)
        model = build_model(load_config("ssd160_shapes_demo")).eval()
        images = torch.cat(
            [example_images(model, 2, seed=1), _drawn_scenes(1, model.image_size, seed=2)]
        )
        _trained_like(model, images, spread=0.5, background=2.0)
        model.test_score_thresh = 0.0
        best = sorted(float(scores.max()) for _, scores, _ in eager_detections(model, images))
        model.test_score_thresh = (best[-1] + best[-2]) / 2
        _MODELS["few detections"] = model, images
    return _MODELS["few detections"]


@pytest.mark.parametrize("format", FORMATS)
def test_images_without_detections(tmp_path, format):
    model, images = _model_with_few_detections()
    path = str(tmp_path / f"model{EXTENSION[format]}")
    export_model(model, format, path)
    run = load_exported(path)
    result = compare_with_eager(model, run, images)
    assert sorted(result["detections"])[:2] == [0, 0] and max(result["detections"]) > 0
    assert result["max_box_diff"] <= BOX_TOLERANCE
    assert result["max_score_diff"] <= SCORE_TOLERANCE
    # No detection in the whole batch.
    empty = images[torch.tensor(result["detections"]) == 0]
    boxes, scores, classes, counts = run(empty)
    assert counts.tolist() == [0, 0] and (classes == -1).all() and (scores == 0).all()


def test_output_contract(exported):
    model, run, _ = exported("ssd160_shapes_demo", "torchscript")
    cfg = load_config("ssd160_shapes_demo", "MODEL.SSD.SCORE_THRESH_TEST", "0.3")
    images = example_images(model, 2, seed=3)
    boxes, scores, classes, counts = run(images)
    num_detections = cfg.TEST.DETECTIONS_PER_IMAGE
    assert boxes.shape == (2, num_detections, 4) and boxes.dtype == torch.float32
    assert scores.shape == (2, num_detections) and scores.dtype == torch.float32
    assert classes.shape == (2, num_detections) and classes.dtype == torch.int64
    assert counts.shape == (2,) and counts.dtype == torch.int64
    # A TorchScript model takes float images as well as the uint8 ones it was traced with.
    for a, b in zip(run(images.float()), (boxes, scores, classes, counts)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for i, n in enumerate(counts.tolist()):
        assert scores[i, :n].diff().le(0).all()  # decreasing score
        assert (scores[i, :n] > model.test_score_thresh).all()
        assert ((classes[i, :n] >= 0) & (classes[i, :n] < model.num_classes)).all()
        height, width = model.image_size
        assert (boxes[i, :n] >= 0).all()
        assert (boxes[i, :n, 0::2] <= width).all() and (boxes[i, :n, 1::2] <= height).all()
        assert (boxes[i, :n, 2:] > boxes[i, :n, :2]).all()  # no empty box
        assert (classes[i, n:] == -1).all() and (scores[i, n:] == 0).all()
        assert (boxes[i, n:] == 0).all()


def test_onnx_graph(exported):
    model, _, path = exported("ssd160_shapes_demo", "onnx")
    graph = onnx.load(path)
    onnx.checker.check_model(graph)
    (image_input,) = graph.graph.input
    assert image_input.name == "images"
    assert image_input.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = image_input.type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch"  # any batch size
    assert [d.dim_value for d in dims[1:]] == [3, *model.image_size]
    assert [o.name for o in graph.graph.output] == list(OUTPUT_NAMES)
    # One NMS for all images and classes.
    assert [n.op_type for n in graph.graph.node].count("NonMaxSuppression") == 1


def test_matched_differences_pairs_tied_detections():
    boxes = torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30], [5, 5, 8, 8]])
    scores = torch.tensor([0.5, 0.5, 0.2])
    classes = torch.tensor([1, 1, 0])
    order = torch.tensor([1, 0, 2])  # the tie listed the other way round
    moved = boxes[order] + torch.tensor([0.0, 0, 0, 1e-4])
    box, score = matched_differences((boxes, scores, classes), (moved, scores[order], classes))
    assert box == pytest.approx(1e-4, rel=1e-2) and score == 0.0
    with pytest.raises(ValueError, match="no counterpart"):
        matched_differences((boxes, scores, classes), (boxes, scores, torch.tensor([1, 1, 1])))
    with pytest.raises(ValueError, match="2 detections where 3"):
        matched_differences((boxes, scores, classes), (boxes[:2], scores[:2], classes[:2]))


def test_verify_refuses_differences_past_the_tolerance(exported, capsys):
    model, run, _ = exported("ssd160_shapes_demo", "torchscript")
    images = example_images(model, 2, seed=6)

    def shifted(images):
        boxes, scores, classes, counts = run(images)
        return boxes + 2e-3, scores, classes, counts

    model.trained_parts.add("head")  # as if MODEL.WEIGHTS held a detector
    assert len(verify(model, run, [("2 random", images)])) == 1
    with pytest.raises(ExportError, match=r"more than 0.001 px or 0.0001 in score\.$"):
        verify(model, shifted, [("2 random", images)])
    model.trained_parts.clear()
    with pytest.raises(ExportError, match="in score. .the head is untrained.*--no-verify"):
        verify(model, shifted, [("2 random", images)])
    assert "max |box| diff 2.00e-03 px" in capsys.readouterr().out


def test_unsupported_exports_fail_clearly(tmp_path):
    model = _model("ssd160_shapes_demo")
    with pytest.raises(ExportError, match="Unknown export format 'tflite'"):
        export_model(model, "tflite", str(tmp_path / "model.tflite"))
    with pytest.raises(ExportError, match="opset 10 is too old.*NonMaxSuppression"):
        export_model(model, "onnx", str(tmp_path / "model.onnx"), opset=10)
    with pytest.raises(ExportError, match="Only ssd_d2's SSD models"):
        check_exportable(nn.Conv2d(3, 8, 3))

    class OwnNMS(SSD):
        def per_class_nms(self, boxes, scores):
            return super().per_class_nms(boxes, scores)

    with pytest.raises(ExportError, match="overrides SSD.per_class_nms"):
        check_exportable(OwnNMS.__new__(OwnNMS))
    assert not os.path.exists(tmp_path / "model.onnx")


def test_cli_exports_the_checkpoint_and_checks_it(tmp_path, capsys):
    config_file = os.path.join(CONFIG_DIR, "ssd160_shapes_demo.yaml")
    torch.manual_seed(1)  # weights other than the _model() ones
    trained = build_model(load_config("ssd160_shapes_demo")).eval()
    weights = str(tmp_path / "model.pth")
    torch.save({"model": trained.state_dict()}, weights)
    output = str(tmp_path / "model.ts")
    # fmt: off
    result = export_tool.main([
        "--format", "torchscript", "--config-file", config_file, "--output", output,
        "MODEL.DEVICE", "cpu", "--opts", "MODEL.WEIGHTS", weights,
    ])
    # fmt: on
    printed = capsys.readouterr().out
    assert f"Wrote {output} (torchscript" in printed
    assert printed.count("Checked against eager inference") == 2
    assert [len(c["detections"]) for c in result["checks"]] == [1, 3]
    # The file holds the checkpoint's model, not a fresh initialisation.
    images = example_images(trained, 2, seed=4)
    result = compare_with_eager(trained, load_exported(output), images)
    assert result["max_box_diff"] == 0.0 and result["max_score_diff"] == 0.0


def test_cli_checks_given_images_read_by_the_one_reader(tmp_path, capsys):
    config_file = os.path.join(CONFIG_DIR, "ssd160_shapes_demo.yaml")
    torch.manual_seed(1)
    weights = str(tmp_path / "model.pth")
    torch.save({"model": build_model(load_config("ssd160_shapes_demo")).state_dict()}, weights)
    # Scenes at other sizes, and a 16-bit grey image (the reader scales it to 8 bits).
    scenes = _drawn_scenes(2, 200, seed=5).permute(0, 2, 3, 1).numpy()
    Image.fromarray(scenes[0, 40:190]).save(tmp_path / "wide.png")
    Image.fromarray(scenes[1, :, 30:170]).save(tmp_path / "tall.jpg")
    grey = np.linspace(0, 65535, 120 * 90).reshape(90, 120).astype(np.uint16)
    Image.fromarray(grey).save(tmp_path / "grey16.png")
    paths = [str(tmp_path / name) for name in ("wide.png", "tall.jpg", "grey16.png")]
    images = export_tool.read_images(paths, "RGB", 160, torch.uint8)
    assert images.shape == (3, 3, 160, 160) and images.dtype == torch.uint8
    assert images[2].max() == 255 and (images[2][0] == images[2][2]).all()  # grey, not clipped
    # fmt: off
    result = export_tool.main([
        "--format", "torchscript", "--config-file", config_file, "--output", str(tmp_path / "m.ts"),
        "--verify-images", *paths[:2], "--opts", "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", weights,
    ])
    # fmt: on
    assert "Checked against eager inference on 2 given image(s)" in capsys.readouterr().out
    assert [len(c["detections"]) for c in result["checks"]] == [1, 3, 2]


def test_cli_refuses_what_it_cannot_export(tmp_path, capsys):
    config_file = os.path.join(CONFIG_DIR, "ssd160_shapes_demo.yaml")
    output = str(tmp_path / "model.onnx")
    common = ["--config-file", config_file, "--output", output]
    with pytest.raises(SystemExit, match="this tool exports ssd_d2's SSD models only"):
        export_tool.main(["--format", "onnx", *common, "MODEL.META_ARCHITECTURE", "RetinaNet"])
    missing = str(tmp_path / "missing.pth")
    with pytest.raises(SystemExit, match="MODEL.WEIGHTS file not found: .*missing.pth"):
        export_tool.main(["--format", "onnx", *common, "MODEL.WEIGHTS", missing])
    with pytest.raises(SystemExit, match="opset 9 is too old"):
        export_tool.main(["--format", "onnx", "--opset", "9", *common, "MODEL.DEVICE", "cpu"])
    with pytest.raises(SystemExit) as exit_info:
        export_tool.main(["--format", "tensorrt", *common])
    assert exit_info.value.code == 2
    assert "invalid choice: 'tensorrt'" in capsys.readouterr().err
    assert not os.path.exists(output)


@pytest.mark.slow
@pytest.mark.parametrize("format", FORMATS)
def test_ssd300_exported_detections_equal_eager(tmp_path, format):
    torch.manual_seed(0)
    model = build_model(load_config("ssd300_coco")).eval()
    path = str(tmp_path / f"ssd300{EXTENSION[format]}")
    export_model(model, format, path)
    run = load_exported(path)
    for images in (example_images(model, 3, seed=1), _drawn_scenes(1, 300, seed=2)):
        result = compare_with_eager(model, run, images)
        print(f"ssd300_coco {format}: {result}")
        assert result["max_box_diff"] <= BOX_TOLERANCE
        assert result["max_score_diff"] <= SCORE_TOLERANCE
        assert all(n > 0 for n in result["detections"])


def test_exporting_and_checking_keep_the_models_mode(tmp_path):
    model = build_model(load_config("ssd160_shapes_demo")).train()
    export_model(model, "torchscript", str(tmp_path / "model.ts"))
    eager_detections(model, example_images(model, 1))
    assert model.training
