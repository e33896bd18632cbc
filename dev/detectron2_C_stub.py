"""
Stand-in for ``detectron2._C`` when detectron2 is installed without its compiled ops.

The PyPI ``pb1-detectron2`` source distribution ships no C++/CUDA sources, so its build
has no extension. Several detectron2 modules import ``_C`` at module level although
only a few layers (deformable conv, rotated boxes, ...) call into it. This module lets
those imports succeed and turns any actual use of a compiled op into a clear error.
``dev/install.sh`` copies it into the detectron2 sources before they are built.
"""

_MESSAGE = (
    "detectron2._C.{name} is unavailable: this detectron2 was installed without its "
    "compiled C++/CUDA ops (the PyPI pb1-detectron2 route). The SSD models of ssd_d2 do "
    "not need them. For deformable conv, rotated boxes or detectron2's fast COCO "
    "evaluation, install detectron2 from source: "
    "pip install 'git+https://github.com/facebookresearch/detectron2.git'"
)


def get_compiler_version():
    # Read by detectron2.utils.collect_env when it logs the environment.
    return "not built (detectron2 installed without compiled ops)"


def get_cuda_version():
    return "not built"


def has_cuda():
    return False


class CompiledOpUnavailable(AttributeError):
    pass


def __getattr__(name):
    # An AttributeError subclass keeps hasattr(_C, name) truthful (False).
    raise CompiledOpUnavailable(_MESSAGE.format(name=name))
