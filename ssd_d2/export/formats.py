"""What an exported SSD is: the formats and precisions, the file names, the outputs."""

import os

__all__ = ["EXTENSIONS", "FORMATS", "OUTPUT_NAMES", "PRECISIONS", "ExportError"]
__all__ += ["check_request", "export_format"]

FORMATS = ("torchscript", "onnx", "openvino")
PRECISIONS = ("fp32", "int8")
# The file name extension of each format: how the tools tell an exported MODEL.WEIGHTS.
EXTENSIONS = {".ts": "torchscript", ".onnx": "onnx", ".xml": "openvino"}
OUTPUT_NAMES = ("boxes", "scores", "classes", "num_detections")


class ExportError(ValueError):
    """A model, an export request or an exported file that does not work; the message says
    why and what to do."""


def export_format(path: str) -> str:
    """The format of an exported file, by its extension; ExportError for another one."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in EXTENSIONS:
        raise ExportError(
            f"{path}: not an exported model's name; exported models end in "
            f"{', '.join(EXTENSIONS)} ({', '.join(EXTENSIONS.values())})."
        )
    return EXTENSIONS[ext]


def check_request(format: str, precision: str, path: str) -> None:
    """ExportError, saying why, for a format, precision and file name that do not go together."""
    if format not in FORMATS:
        raise ExportError(f"Unknown export format {format!r}; choose one of {FORMATS}.")
    if precision not in PRECISIONS:
        raise ExportError(f"Unknown precision {precision!r}; choose one of {PRECISIONS}.")
    if format == "torchscript" and precision != "fp32":
        raise ExportError(
            "TorchScript exports run in float32 only; for int8 export to onnx or openvino."
        )
    extension = {f: ext for ext, f in EXTENSIONS.items()}[format]
    if os.path.splitext(path)[1].lower() != extension:
        raise ExportError(f"{path}: {format} models are written to {extension} files.")
