"""
The runtimes an exported SSD runs in: TorchScript (torch), ONNX Runtime and OpenVINO. Writing
each format's file (with the facts a reader checks it by), int8 quantization (onnxruntime's
QDQ quantization for ONNX, NNCF for OpenVINO) and reading a file back as a function of images.
"""

import importlib
import json
import logging
import os
import re
import shutil
import tempfile
import warnings
from typing import Callable, Dict, Iterable, Tuple

import torch
from torch import Tensor

from .formats import FORMATS, OUTPUT_NAMES, ExportError, export_format

__all__ = ["open_exported", "quantize_onnx", "save_onnx_info", "to_openvino"]

INFO_KEY = "ssd_d2"  # the metadata entry that holds the export's facts (JSON)
# int8 covers the backbone only (node names come from the module names): with the head's
# convolutions as well, NNCF's model of the demo lost 0.4 AP50 more (docs/speed.md). The
# head, softmax, box decoding and NMS stay float32.
QUANTIZED_NODES = re.compile(r".*/backbone/.*")
_EXTRA = "pip install 'ssd_d2[export]'"


def _require(module: str):
    """``module`` imported, or ExportError saying which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ExportError(f"This needs the {module} package ({e}): {_EXTRA}.") from None


def save_onnx_info(path: str, info: Dict) -> None:
    """Write ``info`` (JSON) into the ONNX file's metadata."""
    onnx = _require("onnx")
    model = onnx.load(path)
    onnx.helper.set_model_props(model, {INFO_KEY: json.dumps(info, sort_keys=True)})
    onnx.save(model, path)


def _save_openvino(model, xml_path: str) -> None:
    ov = _require("openvino")
    # Saved beside, then moved into place: no half-written model under the name.
    tmp_dir = tempfile.mkdtemp(dir=os.path.dirname(os.path.abspath(xml_path)))
    try:
        tmp_xml = os.path.join(tmp_dir, "model.xml")
        # As computed: OpenVINO would store float32 weights as float16 by default.
        ov.save_model(model, tmp_xml, compress_to_fp16=False)
        os.replace(tmp_xml[:-4] + ".bin", os.path.splitext(xml_path)[0] + ".bin")
        os.replace(tmp_xml, xml_path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def quantize_onnx(source: str, target: str, calibration: Iterable[Tensor]) -> None:
    """
    ``source``'s backbone convolutions in int8 (QDQ: int8 weights per output channel, uint8
    activations calibrated on ``calibration``'s images by their range), written to
    ``target``. Everything else stays float32.
    """
    quantization = _require("onnxruntime.quantization")
    onnx = _require("onnx")
    # The backbone's convolutions only: quantizing its other operations as well (ReLU,
    # HardSwish, pooling) measured slower (docs/speed.md).
    backbone = [n.name for n in onnx.load(source).graph.node if QUANTIZED_NODES.match(n.name)]

    class Reader(quantization.CalibrationDataReader):
        def __init__(self):
            self.images = iter(calibration)

        def get_next(self):
            image = next(self.images, None)
            return None if image is None else {"images": image[None].cpu().numpy()}

    quantization.quantize_static(
        source,
        target,
        Reader(),
        quant_format=quantization.QuantFormat.QDQ,
        op_types_to_quantize=["Conv"],
        nodes_to_quantize=backbone,
        per_channel=True,
        # 7-bit weights: x86 CPUs without VNNI multiply uint8 by int8 in 16-bit sums that
        # saturate with full-range weights (onnxruntime's note on U8S8); a model file runs on
        # whatever CPU it is given.
        reduce_range=True,
    )


def to_openvino(onnx_path: str, xml_path: str, info: Dict, calibration=None) -> None:
    """
    The ONNX model as OpenVINO IR (``xml_path`` and its .bin) with ``info`` in its metadata,
    float32 weights; with ``calibration`` (images) quantized to int8 by NNCF's post-training
    quantization.
    """
    ov = _require("openvino")
    model = ov.Core().read_model(onnx_path)
    if calibration is not None:
        nncf = _require("nncf")
        images = [image[None].cpu().numpy() for image in calibration]
        # Every node outside the backbone stays float (NNCF's own choice would also quantize
        # inputs of the box decoding).
        outside = nncf.IgnoredScope(patterns=[f"(?!{QUANTIZED_NODES.pattern}$).*"], validate=False)
        nncf_logger = logging.getLogger("nncf")
        level = nncf_logger.level
        nncf_logger.setLevel(logging.WARNING)  # a line per node it leaves float otherwise
        try:
            model = nncf.quantize(
                model, nncf.Dataset(images), subset_size=len(images), ignored_scope=outside
            )
        finally:
            nncf_logger.setLevel(level)
    model.set_rt_info(json.dumps(info, sort_keys=True), [INFO_KEY])
    _save_openvino(model, xml_path)


def open_exported(path: str, device: str = "cpu") -> Tuple[Callable, Dict]:
    """
    An exported model as (run, info). ``run``: images (N, C, S, S) to CPU tensors (boxes,
    scores, classes, num_detections); TorchScript runs on ``device``, ONNX in an onnxruntime
    CPU session, OpenVINO IR on the CPU in float32 arithmetic (OpenVINO's default on CPUs
    with bfloat16 is bfloat16). ``info``: the facts the export wrote into the file
    (:func:`ssd_d2.export.export_info`). ExportError for a file that is missing, damaged or not
    written by ssd_d2's export, or a runtime that is not installed.
    """
    format = export_format(path)
    if not os.path.isfile(path):
        raise ExportError(f"{path}: no such file.")
    if format == "openvino" and not os.path.isfile(os.path.splitext(path)[0] + ".bin"):
        raise ExportError(
            f"{path}: its weights, {os.path.splitext(path)[0]}.bin, are missing: an OpenVINO "
            "model is the .xml and the .bin beside it; copy both."
        )
    try:
        return _OPENERS[format](path, device)
    except ExportError:
        raise
    except Exception as e:  # each runtime has its own errors for a broken file
        reason = " ".join(str(e).split())[:300]
        raise ExportError(
            f"{path} cannot be read as an exported {format} model ({type(e).__name__}: "
            f"{reason}): it is damaged or truncated; export it again."
        ) from None


def _info(path: str, text) -> Dict:
    if not text:
        raise ExportError(
            f"{path} carries no ssd_d2 export metadata: it was not written by "
            "python -m ssd_d2.tools.export (or by an older version); export it again."
        )
    return json.loads(text)


def _open_torchscript(path: str, device: str):
    extra = {f"{INFO_KEY}.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
        module = torch.jit.load(path, map_location=device, _extra_files=extra)
    info = _info(path, extra[f"{INFO_KEY}.json"])
    return torch.no_grad()(lambda images: tuple(t.cpu() for t in module(images.to(device)))), info


def _open_onnx(path: str, device: str):
    onnxruntime = _require("onnxruntime")
    options = onnxruntime.SessionOptions()
    # Its threads sleep between calls rather than spin: they would hold the cores that the
    # caller's own work (resizing, drawing, other models) needs.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only: not its notes on the graphs it optimises
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    info = _info(path, session.get_modelmeta().custom_metadata_map.get(INFO_KEY))

    def run(images: Tensor) -> Tuple[Tensor, ...]:
        outputs = session.run(list(OUTPUT_NAMES), {"images": images.cpu().numpy()})
        return tuple(map(torch.from_numpy, outputs))

    return run, info


def _open_openvino(path: str, device: str):
    ov = _require("openvino")
    core = ov.Core()
    model = core.read_model(path)
    text = model.get_rt_info([INFO_KEY]).astype(str) if model.has_rt_info([INFO_KEY]) else None
    info = _info(path, text)
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    outputs = [compiled.output(name) for name in OUTPUT_NAMES]

    def run(images: Tensor) -> Tuple[Tensor, ...]:
        results = compiled(images.cpu().numpy())
        return tuple(torch.from_numpy(results[output].copy()) for output in outputs)

    return run, info


_OPENERS = {"torchscript": _open_torchscript, "onnx": _open_onnx, "openvino": _open_openvino}
assert set(_OPENERS) == set(FORMATS)
