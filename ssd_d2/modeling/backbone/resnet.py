from typing import Dict, List, Optional

import torch
from torchvision.models import resnet

from detectron2.layers import ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, Backbone

from ..layers import check_rgb

__all__ = ["TorchvisionResNet"]

_STAGES = ["layer1", "layer2", "layer3", "layer4"]
_BUILDERS = {18: "resnet18", 34: "resnet34", 50: "resnet50", 101: "resnet101", 152: "resnet152"}


class TorchvisionResNet(Backbone):
    """
    torchvision's ResNet as a Detectron2 backbone, with torchvision's module names (so its
    ImageNet files load by a renaming) and its stages as outputs. NVIDIA's SSD300 runs it up to
    ``layer3`` with that stage's first block at stride 1: a 38x38 map at 300 pixels.
    """

    def __init__(
        self,
        depth: int = 50,
        norm: str = "BN",
        layer3_stride: int = 2,
        out_features: Optional[List[str]] = None,
    ):
        """
        Args:
            depth: 18, 34, 50, 101 or 152.
            norm: a Detectron2 norm name for every BatchNorm of torchvision's ResNet.
            layer3_stride: the stride of layer3's first block: 2 (ImageNet's) or 1 (NVIDIA's
                SSD300, whose first level is layer3 at stride 8).
            out_features: the stages to output; the network ends at the last of them.
        """
        super().__init__()
        if depth not in _BUILDERS:
            raise ValueError(f"MODEL.TORCHVISION_RESNET.DEPTH = {depth}; choose {list(_BUILDERS)}.")
        if layer3_stride not in (1, 2):
            raise ValueError(
                f"MODEL.TORCHVISION_RESNET.LAYER3_STRIDE = {layer3_stride}; choose 2 (ImageNet's "
                "ResNet) or 1 (NVIDIA's SSD300)."
            )
        out_features = list(out_features or ["layer3"])
        unknown = [f for f in out_features if f not in _STAGES]
        if unknown:
            raise ValueError(f"TorchvisionResNet has no stage {unknown}; it has {_STAGES}.")
        body = getattr(resnet, _BUILDERS[depth])(
            weights=None, norm_layer=lambda c: get_norm(norm, c)
        )
        self.conv1, self.bn1, self.relu, self.maxpool = (
            body.conv1,
            body.bn1,
            body.relu,
            body.maxpool,
        )
        self.stages = _STAGES[: max(_STAGES.index(f) for f in out_features) + 1]
        for name in self.stages:
            self.add_module(name, getattr(body, name))
        if layer3_stride == 1 and "layer3" in self.stages:
            first = self.layer3[0]
            # torchvision's v1.5 blocks stride in conv2 (Bottleneck) or conv1 (BasicBlock).
            for conv in (first.conv1, getattr(first, "conv2", None), first.downsample[0]):
                if conv is not None:
                    conv.stride = (1, 1)
        strides, stride = {}, 4
        for name in _STAGES:
            stride *= 1 if name == "layer1" or (name == "layer3" and layer3_stride == 1) else 2
            strides[name] = stride
        width = 1 if depth < 50 else 4
        channels = {name: 64 * 2**i * width for i, name in enumerate(_STAGES)}
        self._out_features = out_features
        self._out_feature_strides = {f: strides[f] for f in out_features}
        self._out_feature_channels = {f: channels[f] for f in out_features}

    def forward(self, x) -> Dict[str, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outputs = {}
        for name in self.stages:
            x = getattr(self, name)(x)
            outputs[name] = x
        return {f: outputs[f] for f in self._out_features}


@BACKBONE_REGISTRY.register()
def build_torchvision_resnet_backbone(cfg, input_shape: ShapeSpec) -> TorchvisionResNet:
    check_rgb(input_shape, "build_torchvision_resnet_backbone")
    options = cfg.MODEL.TORCHVISION_RESNET
    return TorchvisionResNet(
        depth=options.DEPTH,
        norm=options.NORM,
        layer3_stride=options.LAYER3_STRIDE,
        out_features=options.OUT_FEATURES,
    )
