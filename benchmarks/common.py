"""
What every section of ``python -m benchmarks.run`` shares: timing, the ssd_d2 / torchvision
model pairs with the same weights and score regime, and the machine and row printouts.
"""

import contextlib
import os
import platform
import statistics
import time
from typing import Callable, Dict, List

import torch
import torchvision
from torchvision.models.detection import ssd300_vgg16, ssdlite320_mobilenet_v3_large

import detectron2
from detectron2.modeling import build_model

from ssd_d2.config import load_config
from ssd_d2.convert import coco_category_ids
from ssd_d2.tools.convert import convert

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "..", "configs")
TRAINED_CANDIDATES = 200
# (name, torchvision builder, ssd_d2 config) of the detector pairs compared.
PAIRS = [
    # torchvision's default boxes, matching and clipping rules (the VGG16 SSD's other configs
    # follow lufficc/SSD's), so that both models return the same detections.
    ("ssd300_vgg16", ssd300_vgg16, "ssd300_coco_torchvision"),
    ("ssdlite320_mobilenet_v3", ssdlite320_mobilenet_v3_large, "ssdlite320_mobilenet_v3_coco"),
]


def load_cfg(config_name: str, device: str, *opts):
    return load_config(
        os.path.join(CONFIG_DIR, f"{config_name}.yaml"), ["MODEL.DEVICE", device, *opts]
    )


def synchronize(device: str):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable, device: str) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def median_times(fns: Dict[str, Callable], device: str, repeats: int, warmup: int):
    """Median seconds of each function, timed in turns."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(timed(fn, device))
    return {name: statistics.median(t) for name, t in times.items()}


def autocast(device: str, enabled: bool, dtype=torch.float16):
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def under_bf16(fn: Callable, device: str) -> Callable:
    """``fn`` run under bfloat16 autocast (torchvision's way to lower precision)."""

    def run():
        with autocast(device, True, torch.bfloat16):
            return fn()

    return run


def bf16_times(t: Dict[str, float]) -> dict:
    """
    The figures of a bf16 row from ``median_times`` of "ssd_d2" and "torchvision" in bf16 and
    "ssd_d2_fp32" and "torchvision_fp32": ratio compares the two in bf16, as in the other rows.
    """
    row = {f"{name}_ms": 1000 * seconds for name, seconds in t.items()}
    row["ratio"] = t["ssd_d2"] / t["torchvision"]
    row["ratio_vs_torchvision_fp32"] = t["ssd_d2"] / t["torchvision_fp32"]
    row["ratio_vs_ssd_d2_fp32"] = t["ssd_d2"] / t["ssd_d2_fp32"]
    return row


# ----------------------------------------------------------------------------------------
# The model pairs
# ----------------------------------------------------------------------------------------


def _class_convs(torchvision_model):
    """torchvision's last class-logit conv of each level."""
    convs = []
    for block in torchvision_model.head.classification_head.module_list:
        convs.append(block[-1] if isinstance(block, torch.nn.Sequential) else block)
    return convs


@torch.no_grad()
def _set_regime(model, regime: str, images: List[torch.Tensor]):
    """
    Give torchvision's model the score distribution of ``regime``. The 11 COCO ids without a
    category get a very low logit (as in a trained model), so that the 80-class conversion
    computes the same softmax.
    """
    used = torch.tensor(coco_category_ids(), device=images[0].device)
    unused = [i for i in range(1, 91) if i not in coco_category_ids()]
    convs = _class_convs(model)
    if regime == "trained":
        # Spread the categories' logits (std 2); the background is raised below.
        batch = model.transform(images)[0].tensors
        features = list(model.backbone(batch).values())
        blocks = model.head.classification_head.module_list
        for conv, block, feature in zip(convs, blocks, features):
            x = block[:-1](feature) if isinstance(block, torch.nn.Sequential) else feature
            out = conv(x)
            out = out.view(len(images), -1, 91, *out.shape[-2:])[:, :, used]
            conv.weight.mul_(2.0 / out.std())
    for conv in convs:
        conv.weight.view(-1, 91, *conv.weight.shape[1:])[:, unused] = 0.0
        conv.bias.view(-1, 91)[:, unused] = -30.0
    if regime == "worst":
        return
    # Raise the background until about TRAINED_CANDIDATES (box, class) pairs per image pass
    # the score threshold.
    logits = []
    for conv, block, feature in zip(convs, blocks, features):
        x = block[:-1](feature) if isinstance(block, torch.nn.Sequential) else feature
        out = conv(x)
        n, _, h, w = out.shape
        logits.append(out.view(n, -1, 91, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, 91))
    logits = torch.cat(logits, dim=1)
    low, high = 0.0, 30.0
    for _ in range(40):
        bias = (low + high) / 2
        shifted = logits.clone()
        shifted[..., 0] += bias
        passing = (shifted.softmax(-1)[..., 1:] > model.score_thresh).sum().item() / len(images)
        low, high = (bias, high) if passing > TRAINED_CANDIDATES else (low, bias)
    for conv in convs:
        conv.bias.view(-1, 91)[:, 0] += high


def build_ours(theirs, config_name: str, device: str, *opts):
    """The ssd_d2 model of ``config_name`` (and ``opts``) with the settings of ``theirs``."""
    cfg = load_cfg(
        config_name,
        device,
        # torchvision's inference settings, so that both do the same work.
        "MODEL.SSD.SCORE_THRESH_TEST",
        str(theirs.score_thresh),
        "MODEL.SSD.NMS_THRESH_TEST",
        str(theirs.nms_thresh),
        "MODEL.SSD.TOPK_CANDIDATES_TEST",
        str(theirs.topk_candidates),
        "TEST.DETECTIONS_PER_IMAGE",
        str(theirs.detections_per_img),
        *opts,
    )
    return build_model(cfg).eval()


def build_pair(builder, config_name: str, regime: str, device: str, images):
    """torchvision's model and the ssd_d2 model converted from its weights, both in eval."""
    torch.manual_seed(0)
    theirs = builder(weights=None, weights_backbone=None).eval().to(device)
    _set_regime(theirs, regime, [x.float() / 255 for x in images[:2]])
    ours = build_ours(theirs, config_name, device)
    weights = {k: v.cpu() for k, v in theirs.state_dict().items()}
    ours.load_state_dict(convert("torchvision", weights, config_name + ".yaml").state_dict)
    return ours, theirs


def calibrated_pairs(device: str):
    """(name, config name, regime, 8 random images, ssd_d2 model, torchvision model) for each
    pair and score regime."""
    for name, builder, config_name in PAIRS:
        for regime in ("trained", "worst"):
            images = random_images(8, seed=1, device=device)
            yield (name, config_name, regime, images) + build_pair(
                builder, config_name, regime, device, images
            )


def random_images(count: int, seed: int, height=375, width=500, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randint(0, 256, (3, height, width), generator=g, dtype=torch.uint8).to(device)
        for _ in range(count)
    ]


# ----------------------------------------------------------------------------------------
# Printouts
# ----------------------------------------------------------------------------------------


def print_row(row: dict):
    print("  " + "  ".join(f"{k}={_fmt(v)}" for k, v in row.items()), flush=True)


def _fmt(value):
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def machine_description(device: str) -> dict:
    info = {
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "detectron2": detectron2.__version__,
    }
    info.update(cpu_kind())
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
    return info


# The CPU flags that decide the speed of float32 (AVX2, AVX-512), bfloat16 and int8 arithmetic.
SPEED_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def cpu_kind() -> dict:
    """The CPU's model name and which of SPEED_FLAGS it has (Linux; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return {}
    fields = {}
    for line in lines:
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", "").split())
    return {
        "cpu_model": fields.get("model name", ""),
        "cpu_flags": [f for f in SPEED_FLAGS if f in flags],
    }
