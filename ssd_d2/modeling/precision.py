"""Lower precision for the SSD network (backbone and head): bfloat16 autocast in training
(``SOLVER.AMP.ENABLED`` on a CPU), weights cast once for inference (``TEST.PRECISION``)."""

import copy
import itertools
import logging
from typing import Optional, Tuple

import torch
from torch import nn

__all__ = ["PRECISIONS", "LowPrecisionCopy", "resolve_precision", "training_autocast_dtype"]

logger = logging.getLogger(__name__)

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# Normalisation layers keep float32 weights and statistics: they take low-precision inputs,
# and a variance rounded to 8 bits would shift every output of the layer.
_NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)

_warned = set()


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def resolve_precision(name: str, device: str, key: str) -> torch.dtype:
    """The dtype of config key ``key`` = ``name`` ("fp32", "bf16", "fp16") on ``device``:
    float32, with one warning, where the device has no fast arithmetic in it."""
    if name not in PRECISIONS:
        raise ValueError(f"{key} = {name!r}: use one of {sorted(PRECISIONS)}.")
    dtype = PRECISIONS[name]
    device_type = torch.device(device).type
    reason = None
    if device_type == "cpu" and dtype == torch.float16:
        reason = "CPUs have no fast float16 convolutions; use bf16"
    elif device_type == "cpu" and dtype == torch.bfloat16 and not cpu_has_fast_bf16():
        reason = "this CPU has neither AVX512-BF16 nor AMX"
    elif device_type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        reason = "this GPU has no bfloat16; use fp16"
    if reason is None:
        return dtype
    if (key, name, device_type) not in _warned:
        _warned.add((key, name, device_type))
        logger.warning(f"{key} = {name!r} runs in fp32 on this {device_type}: {reason}.")
    return torch.float32


def training_autocast_dtype(amp_enabled: bool, device: str) -> Optional[torch.dtype]:
    """The SSD's own training autocast: bfloat16 for SOLVER.AMP.ENABLED on a CPU that has it.
    None elsewhere: on a GPU, Detectron2's AMPTrainer autocasts (float16, with a grad scaler)."""
    if not amp_enabled or torch.device(device).type != "cpu":
        return None
    dtype = resolve_precision("bf16", "cpu", "SOLVER.AMP.ENABLED")
    return None if dtype == torch.float32 else dtype


class LowPrecisionCopy:
    """
    Modules with their weights cast once to a dtype, for inference: autocast would cast every
    weight at each call. The copy is made again when a weight of the originals changes (an
    optimizer step, ``load_state_dict``, ``.to()``): each tensor's version and address show it.
    """

    def __init__(self, dtype: torch.dtype):
        self.dtype, self._key, self._modules = dtype, None, None

    def __call__(self, *modules: nn.Module) -> Tuple[nn.Module, ...]:
        tensors = itertools.chain.from_iterable(
            itertools.chain(m.parameters(), m.buffers()) for m in modules
        )
        key = tuple((t.data_ptr(), t._version) for t in tensors)
        if key != self._key:
            with torch.no_grad():
                cast = copy.deepcopy(nn.ModuleList(modules)).to(self.dtype).eval()
                for module in cast.modules():
                    if isinstance(module, _NORM_LAYERS):
                        module.float()
                cast.requires_grad_(False)
            self._key, self._modules = key, tuple(cast)
        return self._modules
