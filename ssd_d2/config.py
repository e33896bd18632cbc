import os
from typing import Sequence, Tuple

import torch
import yaml

from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

__all__ = ["add_ssd_config", "load_config", "merge_from_file_safely", "resolve_device"]
__all__ += ["height_width", "resolve_image_size"]


def add_ssd_config(cfg):
    """Add ssd_d2's keys to a Detectron2 config, in place, with the SSD300 VOC model's defaults
    (lufficc/SSD vgg_ssd300_voc0712); Detectron2 keys SSD sets differently are in Base-SSD300."""
    _C = cfg

    # "cuda" where this machine has a GPU, else "cpu"; a config file may say "auto" for the
    # same choice, which load_config makes where it reads the file.
    _C.MODEL.DEVICE = resolve_device("auto")

    _C.MODEL.SSD = CN()
    # Foreground classes; the classifier has NUM_CLASSES + 1 outputs, background first.
    _C.MODEL.SSD.NUM_CLASSES = 20
    # Side of the square image the network runs on; every input is resized to it.
    _C.MODEL.SSD.IMAGE_SIZE = 300
    # (height, width) of a non-square network input (e.g. [288, 512] for 16:9 video), with
    # IMAGE_SIZE 0; empty: IMAGE_SIZE squared. Read both through resolve_image_size.
    _C.MODEL.SSD.IMAGE_HEIGHT_WIDTH = []
    # Backbone outputs fed to the head, from the finest to the coarsest level.
    _C.MODEL.SSD.IN_FEATURES = ["conv4_3", "fc7", "conv8_2", "conv9_2", "conv10_2", "conv11_2"]
    # Head, by its SSD_HEAD_REGISTRY name: "SSDConvHead" is the paper's 3x3 conv predictors.
    _C.MODEL.SSD.HEAD_NAME = "SSDConvHead"
    # SSDLiteHead only: the norm after each predictor's depthwise conv ("BN", "SyncBN", ...).
    _C.MODEL.SSD.HEAD_NORM = "BN"
    # SSDLiteHead only: the checkpoint layout to match, "torchvision" or "lufficc".
    _C.MODEL.SSD.HEAD_LAYOUT = "torchvision"
    # Initial foreground probability of the class logits; 0 keeps the published init.
    _C.MODEL.SSD.PRIOR_PROB = 0.0
    # Positive default box: IoU >= this, or a ground truth's best box (SSD paper, 2.2).
    _C.MODEL.SSD.IOU_THRESHOLD = 0.5
    # Whose IoU arithmetic decides the matches: "lufficc" (boxes as fractions of the input,
    # 1e-5 added to the union), "torchvision" (pixels) or "nvidia" (fractions, IoU > threshold).
    _C.MODEL.SSD.MATCHING = "lufficc"
    # Box encoding weights (dx, dy, dw, dh): the paper's variances (0.1, 0.2) inverted.
    _C.MODEL.SSD.BBOX_REG_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
    # Hard negative mining: negatives kept per positive in each image.
    _C.MODEL.SSD.NEG_POS_RATIO = 3
    # Hard negatives kept in an image without positives (0, the peers': such images add nothing).
    _C.MODEL.SSD.MIN_NEGATIVES_PER_IMAGE = 0
    # Loss normaliser: "batch" divides the batch's summed losses by its positives (lufficc/SSD,
    # torchvision); "image" divides each image's by its own, then averages the images (NVIDIA).
    _C.MODEL.SSD.LOSS_NORMALIZATION = "batch"
    # Smooth L1 transition point of the box regression loss.
    _C.MODEL.SSD.SMOOTH_L1_BETA = 1.0
    # Inference: minimum class score of a detection.
    _C.MODEL.SSD.SCORE_THRESH_TEST = 0.01
    # Inference: IoU threshold of the class-wise NMS.
    _C.MODEL.SSD.NMS_THRESH_TEST = 0.45
    # Inference: candidates kept per class (highest scores) before NMS.
    _C.MODEL.SSD.TOPK_CANDIDATES_TEST = 200
    # Inference: clip boxes to the image before NMS (torchvision), not after (lufficc/SSD).
    _C.MODEL.SSD.CLIP_BOXES_BEFORE_NMS = False

    # Default boxes (priors), one entry per level of IN_FEATURES, in input pixels.
    _C.MODEL.SSD.DEFAULT_BOXES = CN()
    # Distance between the centres of neighbouring default boxes of a level.
    _C.MODEL.SSD.DEFAULT_BOXES.STEPS = [8, 16, 32, 64, 100, 300]
    # Side of the small square box of each level.
    _C.MODEL.SSD.DEFAULT_BOXES.MIN_SIZES = [30, 60, 111, 162, 213, 264]
    # The second square box of a level has side sqrt(min_size * max_size).
    _C.MODEL.SSD.DEFAULT_BOXES.MAX_SIZES = [60, 111, 162, 213, 264, 315]
    # Aspect ratios r > 1 of each level; each adds two boxes, r:1 and 1:r.
    _C.MODEL.SSD.DEFAULT_BOXES.ASPECT_RATIOS = [[2], [2, 3], [2, 3], [2, 3], [2], [2]]
    # Boxes past the image: "center_and_size" (lufficc/SSD), "size" (torchvision) or "none".
    _C.MODEL.SSD.DEFAULT_BOXES.CLAMP = "center_and_size"
    _C.register_renamed_key(
        "MODEL.SSD.DEFAULT_BOXES.CLIP",
        "MODEL.SSD.DEFAULT_BOXES.CLAMP",
        message='CLIP: True (width and height capped, torchvision\'s rule) is CLAMP: "size"; '
        'CLIP: False is CLAMP: "none"; lufficc/SSD\'s rule is CLAMP: "center_and_size".',
    )

    # The VGG16 SSD backbone (build_vgg16_ssd_backbone).
    _C.MODEL.VGG = CN()
    # Scales the channels of every layer; 1.0 is the published model.
    _C.MODEL.VGG.WIDTH_MULT = 1.0
    # Norm after each conv: "" (none, as published), "BN", "SyncBN", "FrozenBN", "GN".
    _C.MODEL.VGG.NORM = ""

    # The MobileNet SSDLite backbones (build_mobilenet_v2/v3_ssdlite_backbone).
    _C.MODEL.MOBILENET = CN()
    # Norm of every layer: "BN", "SyncBN" (multi-GPU training) or "FrozenBN" (fine-tuning).
    _C.MODEL.MOBILENET.NORM = "BN"
    # MobileNetV3: halve the channels after stride 16 (torchvision's SSDLite; not ImageNet's).
    _C.MODEL.MOBILENET.REDUCED_TAIL = True
    # MobileNetV2: the SSDLite extras and norm settings to match, "lufficc" or "mmdetection".
    _C.MODEL.MOBILENET.V2_LAYOUT = "lufficc"

    # torchvision's ResNet with its module names (build_torchvision_resnet_backbone).
    _C.MODEL.TORCHVISION_RESNET = CN()
    # 18, 34, 50, 101 or 152.
    _C.MODEL.TORCHVISION_RESNET.DEPTH = 50
    # Norm of every layer: "BN" (NVIDIA's SSD300 trains it), "SyncBN" or "FrozenBN".
    _C.MODEL.TORCHVISION_RESNET.NORM = "BN"
    # Stride of layer3's first block: 1 (NVIDIA's SSD300: layer3 at stride 8) or 2 (ImageNet's).
    _C.MODEL.TORCHVISION_RESNET.LAYER3_STRIDE = 1
    # The stages it outputs ("layer1" ... "layer4"); it ends at the last of them.
    _C.MODEL.TORCHVISION_RESNET.OUT_FEATURES = ["layer3"]

    # SSD's extra levels on any registered backbone (build_ssd_extra_levels_backbone); they are
    # named extra1, extra2, ... and MODEL.SSD.IN_FEATURES ends with them. Defaults: NVIDIA's.
    _C.MODEL.SSD.EXTRA_LEVELS = CN()
    # The BACKBONE_REGISTRY name of the backbone they extend (e.g. "build_resnet_backbone").
    _C.MODEL.SSD.EXTRA_LEVELS.BOTTOM = "build_torchvision_resnet_backbone"
    # Per extra level: channels out of its 3x3 conv.
    _C.MODEL.SSD.EXTRA_LEVELS.OUT_CHANNELS = [512, 512, 256, 256, 256]
    # Per extra level: channels of the 1x1 conv before the 3x3 conv.
    _C.MODEL.SSD.EXTRA_LEVELS.MID_CHANNELS = [256, 256, 128, 128, 128]
    # Per extra level: stride and padding of its 3x3 conv.
    _C.MODEL.SSD.EXTRA_LEVELS.STRIDES = [2, 2, 2, 1, 1]
    _C.MODEL.SSD.EXTRA_LEVELS.PADDINGS = [1, 1, 1, 0, 0]
    # Norm after each conv: "BN" (NVIDIA's), "SyncBN", "GN", or "" (none, conv biases instead).
    _C.MODEL.SSD.EXTRA_LEVELS.NORM = "BN"

    # Warn when training starts from a random backbone; False in configs trained from scratch.
    _C.MODEL.SSD.EXPECT_PRETRAINED_BACKBONE = True

    # Inference arithmetic of backbone and head: "fp32", "bf16" or "fp16" (fp32 where unsupported).
    _C.TEST.PRECISION = "fp32"

    # "SGD" (Detectron2's, with SOLVER.MOMENTUM; the published SSD recipes) or "ADAMW".
    _C.SOLVER.OPTIMIZER = "SGD"

    # True also loads pickled objects from checkpoints, which can run code: trusted files only.
    _C.MODEL.ALLOW_UNSAFE_CHECKPOINTS = False

    # SSD training augmentations (SSDDatasetMapper), applied in this order.
    _C.INPUT.SSD = CN()
    # Photometric distortion: brightness, contrast, saturation and hue in random order.
    _C.INPUT.SSD.PHOTOMETRIC = CN({"ENABLED": True})
    # Brightness delta in pixel values (+-).
    _C.INPUT.SSD.PHOTOMETRIC.BRIGHTNESS_DELTA = 32
    # Contrast and saturation factor ranges.
    _C.INPUT.SSD.PHOTOMETRIC.CONTRAST_RANGE = (0.5, 1.5)
    _C.INPUT.SSD.PHOTOMETRIC.SATURATION_RANGE = (0.5, 1.5)
    # Hue delta in degrees (+-).
    _C.INPUT.SSD.PHOTOMETRIC.HUE_DELTA = 18
    # Then permute the colour channels with this probability (lufficc/SSD, ssd.pytorch).
    _C.INPUT.SSD.PHOTOMETRIC.CHANNEL_SWAP_PROB = 0.5
    # Zoom out, with probability PROB, onto a pixel-mean canvas up to MAX_RATIO times larger.
    _C.INPUT.SSD.EXPAND = CN({"ENABLED": True})
    _C.INPUT.SSD.EXPAND.MAX_RATIO = 4.0
    _C.INPUT.SSD.EXPAND.PROB = 0.5
    # SSD crop: IoU with some box >= one of MIN_IOUS (the peers' set; the paper adds 0.5).
    _C.INPUT.SSD.MIN_IOU_CROP = CN({"ENABLED": True})
    _C.INPUT.SSD.MIN_IOU_CROP.MIN_IOUS = (0.1, 0.3, 0.7, 0.9)
    # Crop side as a fraction of the image side.
    _C.INPUT.SSD.MIN_IOU_CROP.MIN_CROP_SIZE = 0.3
    # Allowed crop aspect ratios (height / width).
    _C.INPUT.SSD.MIN_IOU_CROP.ASPECT_RATIO_RANGE = (0.5, 2.0)
    # Attempts before falling back to the whole image.
    _C.INPUT.SSD.MIN_IOU_CROP.MAX_TRIALS = 50
    # Horizontal flip probability (0 disables).
    _C.INPUT.SSD.FLIP_PROB = 0.5
    # Drop the objects VOC marks difficult, as lufficc/SSD does (Detectron2 trains on them).
    _C.INPUT.SSD.DROP_VOC_DIFFICULT = True


def resolve_device(device: str) -> str:
    """MODEL.DEVICE as a torch device here: "auto" (or "") is "cuda" if available, else "cpu"."""
    if device.strip().lower() in ("auto", ""):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def height_width(size) -> Tuple[int, int]:
    """A network size as (height, width): an int is a square's side, a pair is (h, w)."""
    if isinstance(size, (int, float)):
        return int(size), int(size)
    height, width = size
    return int(height), int(width)


def resolve_image_size(cfg) -> Tuple[int, int]:
    """
    The (height, width) every image is resized to: MODEL.SSD.IMAGE_HEIGHT_WIDTH when set, else
    MODEL.SSD.IMAGE_SIZE squared. A ValueError names the keys when they are malformed or
    disagree (IMAGE_SIZE must then be 0 or the side of the square IMAGE_HEIGHT_WIDTH gives).
    """
    side, pair = cfg.MODEL.SSD.IMAGE_SIZE, tuple(cfg.MODEL.SSD.IMAGE_HEIGHT_WIDTH)
    if not pair:
        if side <= 0:
            raise ValueError(
                f"MODEL.SSD.IMAGE_SIZE is {side} and MODEL.SSD.IMAGE_HEIGHT_WIDTH is empty: set "
                "IMAGE_SIZE to the side of a square input, or IMAGE_HEIGHT_WIDTH to "
                "[height, width]."
            )
        return side, side
    if len(pair) != 2 or not all(isinstance(v, int) and v > 0 for v in pair):
        raise ValueError(
            f"MODEL.SSD.IMAGE_HEIGHT_WIDTH = {list(pair)}: give two positive whole numbers, "
            "[height, width] in pixels (e.g. [288, 512]), or [] for a square IMAGE_SIZE."
        )
    if side != 0 and pair != (side, side):
        raise ValueError(
            f"MODEL.SSD.IMAGE_SIZE = {side} and MODEL.SSD.IMAGE_HEIGHT_WIDTH = {list(pair)} "
            "disagree: with IMAGE_HEIGHT_WIDTH set IMAGE_SIZE 0 (e.g. on the command line "
            'MODEL.SSD.IMAGE_SIZE 0 MODEL.SSD.IMAGE_HEIGHT_WIDTH "[288, 512]"), or empty '
            "IMAGE_HEIGHT_WIDTH for a square input."
        )
    return pair


def merge_from_file_safely(cfg, filename: str) -> None:
    """``cfg.merge_from_file`` with YAML's safe loader only (Detectron2's falls back to
    ``yaml.unsafe_load``, which runs the code a ``!!python/...`` tag names)."""
    try:
        cfg.merge_from_file(filename, allow_unsafe=False)
    except yaml.constructor.ConstructorError as e:
        raise ValueError(
            f"Config file {filename} (or one of its _BASE_ files) contains a Python tag "
            f"({e.problem}{e.problem_mark}). ssd_d2 reads configs with YAML's safe loader, "
            "which never builds Python objects, since such a tag can run any code on your "
            "machine. Replace the tag with a plain value."
        ) from e


def load_config(config_file: str, opts: Sequence[str] = ()) -> CN:
    """The one config assembly of ssd_d2: ``config_file`` (safe YAML) merged onto Detectron2's
    and ssd_d2's defaults, then ``opts`` (KEY VALUE pairs), with MODEL.DEVICE "auto" made the
    device it means here (so the config.yaml a run writes names it). Not frozen."""
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"Config file not found: {config_file}")
    cfg = get_cfg()
    add_ssd_config(cfg)
    merge_from_file_safely(cfg, config_file)
    cfg.merge_from_list(list(opts))
    cfg.MODEL.DEVICE = resolve_device(cfg.MODEL.DEVICE)
    return cfg
