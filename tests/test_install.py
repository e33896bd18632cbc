"""The installed detectron2 imports in any order with ssd_d2, with or without compiled ops."""

import subprocess
import sys

import pytest
import torch


@pytest.mark.parametrize(
    "statement",
    [
        "import detectron2.modeling, detectron2.engine; import ssd_d2",
        "import ssd_d2; import detectron2.modeling, detectron2.engine",
        "import detectron2.layers, detectron2.evaluation.fast_eval_api; import ssd_d2",
    ],
)
def test_imports_in_any_order(statement):
    result = subprocess.run([sys.executable, "-c", statement], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_compiled_op_without_compiled_detectron2_says_so():
    from detectron2 import _C
    from detectron2.layers import ROIAlignRotated

    pooler = ROIAlignRotated(output_size=(2, 2), spatial_scale=1.0, sampling_ratio=0)
    features = torch.rand(1, 1, 8, 8)
    rois = torch.tensor([[0.0, 4, 4, 4, 4, 0]])
    if hasattr(_C, "CompiledOpUnavailable"):  # the PyPI pb1-detectron2 route
        with pytest.raises(AttributeError, match="without its compiled C\\+\\+/CUDA ops"):
            pooler(features, rois)
    else:  # detectron2 built from source: the op runs
        assert pooler(features, rois).shape == (1, 1, 2, 2)
