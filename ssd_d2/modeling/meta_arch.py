import contextlib
import logging
from typing import Dict, List, Optional, Set, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling import (
    META_ARCH_REGISTRY,
    Backbone,
    build_anchor_generator,
    build_backbone,
    detector_postprocess,
)
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.meta_arch.dense_detector import permute_to_N_HWA_K
from detectron2.structures import Boxes, Instances
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage

from ..config import height_width, resolve_device, resolve_image_size
from ..convert import convert_for_model, recognize
from ..ignored_keys import warn_ignored_keys
from .anchor_generator import SSDDefaultBoxGenerator
from .head import build_ssd_head
from .matching import MATCHING_ARITHMETICS, matching_iou, positive_iou_threshold
from .nms import grouped_nms, select_detections
from .precision import LowPrecisionCopy, resolve_precision, training_autocast_dtype

__all__ = ["LOSS_NORMALIZATIONS", "SSD", "resize_to_network_size"]

logger = logging.getLogger(__name__)

# MODEL.SSD.LOSS_NORMALIZATION: what the summed losses are divided by.
LOSS_NORMALIZATIONS = (
    # The positives of the whole batch (lufficc/SSD, ssd.pytorch, torchvision).
    "batch",
    # Each image's positives, then the mean over the images, those without positives counting
    # as 0 (NVIDIA's SSD300): an image with few objects weighs as much as a crowded one.
    "image",
)


def resize_to_network_size(
    image: Tensor, size: Union[int, Tuple[int, int]], boxes: Optional[Boxes] = None
):
    """
    SSD's one resize rule: a float (C, H, W) image stretched bilinearly to ``size`` (a square's
    side or (height, width)), as torchvision's SSD does after normalising (so that converted
    torchvision models give its outputs to the last bits), and XYXY ``boxes`` in its pixels
    scaled with it (a copy when resized).
    """
    height, width = image.shape[-2:]
    new_h, new_w = height_width(size)
    if (height, width) != (new_h, new_w):
        image = F.interpolate(image[None], (new_h, new_w), mode="bilinear", align_corners=False)[0]
        if boxes is not None:
            boxes = boxes.clone()
            boxes.scale(new_w / width, new_h / height)
    return image, boxes


@META_ARCH_REGISTRY.register()
class SSD(nn.Module):
    """
    SSD: Single Shot MultiBox Detector (Liu et al., ECCV 2016), with Detectron2's model
    contract. It resizes images of any size to ``image_size`` ((height, width)) itself and
    returns boxes in each input's "height" x "width" (default: the image's). Class logits are
    background first, as in the published weights; ``pred_classes`` count from 0.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        head: nn.Module,
        head_in_features: List[str],
        anchor_generator: nn.Module,
        box2box_transform: Box2BoxTransform,
        num_classes: int,
        image_size: Union[int, Tuple[int, int]],
        iou_threshold: float = 0.5,
        matching: str = "lufficc",
        neg_pos_ratio: float = 3.0,
        min_negatives_per_image: int = 0,
        loss_normalization: str = "batch",
        smooth_l1_beta: float = 1.0,
        test_score_thresh: float = 0.01,
        test_topk_candidates: int = 200,
        test_nms_thresh: float = 0.45,
        clip_boxes_before_nms: bool = False,
        max_detections_per_image: int = 100,
        pixel_mean: Tuple[float, ...],
        pixel_std: Tuple[float, ...],
        input_format: str = "RGB",
        test_dtype: torch.dtype = torch.float32,
        train_autocast_dtype: Optional[torch.dtype] = None,
    ):
        """
        Args:
            image_size: the network input, a square's side or (height, width).
            matching: whose IoU arithmetic the matching reproduces, a key of
                :data:`ssd_d2.modeling.matching.MATCHING_ARITHMETICS`.
            min_negatives_per_image: hard negatives kept even in an image without positives.
            loss_normalization: one of :data:`LOSS_NORMALIZATIONS`.
            test_topk_candidates: candidates per class and image before NMS.
            clip_boxes_before_nms: clip decoded boxes before NMS (torchvision), not after it.
            test_dtype: inference arithmetic; bfloat16 / float16 cast the weights once.
            train_autocast_dtype: if set, the network trains under autocast to this dtype.
        """
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"MODEL.SSD.NUM_CLASSES must be >= 1, got {num_classes}.")
        self.backbone, self.head, self.head_in_features = backbone, head, head_in_features
        self.anchor_generator, self.box2box_transform = anchor_generator, box2box_transform
        self.num_classes, self.input_format = num_classes, input_format
        self.image_size = height_width(image_size)  # (height, width)
        # Training. IoU >= threshold (or > it) is positive, below is background; the rule that
        # each ground truth also takes its best default box is applied in label_anchors.
        if matching not in MATCHING_ARITHMETICS:
            raise ValueError(
                f"MODEL.SSD.MATCHING = {matching!r}; choose one of {tuple(MATCHING_ARITHMETICS)}: "
                "the arithmetic of the peer whose weights or training the model reproduces."
            )
        self.matching = MATCHING_ARITHMETICS[matching]
        if self.matching.unit_boxes and not isinstance(anchor_generator, SSDDefaultBoxGenerator):
            raise ValueError(
                f"MODEL.SSD.MATCHING {matching!r} computes the default boxes in [0, 1] units, "
                f"which only SSDDefaultBoxGenerator does, not {type(anchor_generator).__name__}: "
                'use MODEL.SSD.MATCHING "torchvision" (IoU in pixels) with another generator.'
            )
        iou_threshold = positive_iou_threshold(iou_threshold, self.matching)
        self.anchor_matcher = Matcher([iou_threshold], [0, 1], allow_low_quality_matches=False)
        self.neg_pos_ratio, self.smooth_l1_beta = neg_pos_ratio, smooth_l1_beta
        self.min_negatives_per_image = min_negatives_per_image
        if loss_normalization not in LOSS_NORMALIZATIONS:
            raise ValueError(
                f"MODEL.SSD.LOSS_NORMALIZATION = {loss_normalization!r}; choose one of "
                f'{LOSS_NORMALIZATIONS}: "batch" (lufficc/SSD, torchvision) or "image" (NVIDIA).'
            )
        self.loss_normalization = loss_normalization
        # Inference.
        self.test_score_thresh, self.test_nms_thresh = test_score_thresh, test_nms_thresh
        self.test_topk_candidates = test_topk_candidates
        self.clip_boxes_before_nms = clip_boxes_before_nms
        self.max_detections_per_image = max_detections_per_image
        self.test_dtype, self.train_autocast_dtype = test_dtype, train_autocast_dtype
        self._low_precision_network = LowPrecisionCopy(test_dtype)
        # The parts ("backbone", "head") whose weights came from a loaded state dict or from
        # training, not from their initialisation: inference with a random head warns once.
        self.trained_parts: Set[str] = set()
        self._warned_untrained = False
        # Not in checkpoints: they come from the config.
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        # Channels-last convolutions are faster on CPUs (oneDNN) and GPUs (tensor cores).
        self.to(memory_format=torch.channels_last)
        # Detectron2's own DetectionCheckpointer (DefaultPredictor's) hands MODEL.WEIGHTS to
        # load_state_dict as it is: a peer's published file is converted there. (The public
        # name is torch 2.5's; torch 2.4 has the same hook under the private one.)
        if hasattr(self, "register_load_state_dict_pre_hook"):
            self.register_load_state_dict_pre_hook(_take_state_dict)
        else:
            self._register_load_state_dict_pre_hook(_take_state_dict, with_module=True)

    @classmethod
    def from_config(cls, cfg):
        if resolve_device(cfg.MODEL.DEVICE) != cfg.MODEL.DEVICE:
            # build_model moves the model to MODEL.DEVICE after this: it must name a device.
            raise ValueError(
                f"MODEL.DEVICE {cfg.MODEL.DEVICE!r} names no device: assemble the config with "
                'ssd_d2.config.load_config, which settles it, or set "cpu" or "cuda".'
            )
        warn_ignored_keys(cfg)  # every way of building an SSD passes here once
        backbone = build_backbone(cfg)
        backbone_shape = backbone.output_shape()
        in_features = list(cfg.MODEL.SSD.IN_FEATURES)
        missing = [f for f in in_features if f not in backbone_shape]
        if missing:
            raise ValueError(
                f"MODEL.SSD.IN_FEATURES names {missing}, which backbone "
                f"{cfg.MODEL.BACKBONE.NAME} does not output; it has {list(backbone_shape)}."
            )
        feature_shapes = [backbone_shape[f] for f in in_features]
        anchor_generator = build_anchor_generator(cfg, feature_shapes)
        if len(anchor_generator.num_anchors) != len(in_features):
            raise ValueError(
                f"MODEL.SSD.DEFAULT_BOXES describes {len(anchor_generator.num_anchors)} levels "
                f"but MODEL.SSD.IN_FEATURES has {len(in_features)}: {in_features}."
            )
        ssd = cfg.MODEL.SSD
        return {
            "backbone": backbone,
            "head": build_ssd_head(cfg, feature_shapes, anchor_generator.num_anchors),
            "head_in_features": in_features,
            "anchor_generator": anchor_generator,
            "box2box_transform": Box2BoxTransform(weights=ssd.BBOX_REG_WEIGHTS),
            "num_classes": ssd.NUM_CLASSES,
            "image_size": resolve_image_size(cfg),
            "iou_threshold": ssd.IOU_THRESHOLD,
            "matching": ssd.MATCHING,
            "neg_pos_ratio": ssd.NEG_POS_RATIO,
            "min_negatives_per_image": ssd.MIN_NEGATIVES_PER_IMAGE,
            "loss_normalization": ssd.LOSS_NORMALIZATION,
            "smooth_l1_beta": ssd.SMOOTH_L1_BETA,
            "test_score_thresh": ssd.SCORE_THRESH_TEST,
            "test_topk_candidates": ssd.TOPK_CANDIDATES_TEST,
            "test_nms_thresh": ssd.NMS_THRESH_TEST,
            "clip_boxes_before_nms": ssd.CLIP_BOXES_BEFORE_NMS,
            "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "input_format": cfg.INPUT.FORMAT,
            "test_dtype": resolve_precision(cfg.TEST.PRECISION, cfg.MODEL.DEVICE, "TEST.PRECISION"),
            "train_autocast_dtype": training_autocast_dtype(
                cfg.SOLVER.AMP.ENABLED, cfg.MODEL.DEVICE
            ),
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def forward(self, batched_inputs: List[Dict[str, Tensor]]):
        if self.training and "instances" not in batched_inputs[0]:
            raise ValueError("SSD in training mode needs 'instances' in every input dict.")
        inputs = [self._at_network_size(x, self.training) for x in batched_inputs]
        anchors, pred_logits, pred_deltas = self.predict(torch.stack([x for x, _ in inputs]))
        if self.training:
            return self.losses(anchors, pred_logits, pred_deltas, [gt for _, gt in inputs])

        processed_results = []
        results = self.inference(anchors, pred_logits, pred_deltas)
        for results_per_image, input_per_image in zip(results, batched_inputs):
            height = input_per_image.get("height", input_per_image["image"].shape[-2])
            width = input_per_image.get("width", input_per_image["image"].shape[-1])
            r = detector_postprocess(results_per_image, height, width)
            processed_results.append({"instances": r})
        return processed_results

    def normalize(self, images: Tensor) -> Tensor:
        """(C, H, W) or (N, C, H, W) 0-255 images on the model's device, in torchvision's
        order: scaled to [0, 1], then normalised by pixel_mean / 255 and pixel_std / 255."""
        images = images.to(self.device, non_blocking=True).float()
        return (images / 255 - self.pixel_mean / 255) / (self.pixel_std / 255)

    def preprocess_image(self, batched_inputs: List[Dict[str, Tensor]]) -> Tensor:
        """The normalised images at the network size, batched: (N, C, height, width)."""
        return torch.stack([self._at_network_size(x, False)[0] for x in batched_inputs])

    def _at_network_size(
        self, input_per_image, with_gt: bool
    ) -> Tuple[Tensor, Optional[Instances]]:
        """The normalised image at the network size, and ``with_gt`` its valid ground truth."""
        image = input_per_image["image"]
        if image.dim() != 3 or image.shape[0] != self.pixel_mean.shape[0]:
            raise ValueError(
                f"SSD expects each 'image' as a (C, H, W) tensor with C = "
                f"{self.pixel_mean.shape[0]} channels in {self.input_format} order "
                f"(MODEL.PIXEL_MEAN), got shape {tuple(image.shape)}."
            )
        gt = input_per_image["instances"].to(self.device) if with_gt else None
        size = self.image_size
        image, boxes = resize_to_network_size(
            self.normalize(image), size, None if gt is None else gt.gt_boxes
        )
        if gt is None:
            return image, None
        keep = boxes.nonempty() & torch.isfinite(boxes.tensor).all(dim=1)
        return image, Instances(size, gt_boxes=boxes[keep], gt_classes=gt.gt_classes[keep])

    def predict(self, images: Tensor) -> Tuple[Boxes, Tensor, Tensor]:
        """The R default boxes, float32 class logits (N, R, K + 1) and box deltas (N, R, 4) of
        a normalised (N, C, height, width) batch."""
        images = images.contiguous(memory_format=torch.channels_last)
        backbone, head = self.backbone, self.head
        # No autocast context unless asked: a disabled one would also switch off the
        # autocast of Detectron2's AMPTrainer around the model on a GPU.
        context = contextlib.nullcontext()
        if self.training and self.train_autocast_dtype is not None:
            context = torch.autocast(images.device.type, self.train_autocast_dtype)
        elif not self.training and self.test_dtype != torch.float32:
            backbone, head = self._low_precision_network(self.backbone, self.head)
            images = images.to(self.test_dtype)
        if not (self.training or self._warned_untrained or "head" in self.trained_parts):
            self._warned_untrained = True
            logger.warning(
                "The SSD's detection head has random weights: MODEL.WEIGHTS was empty, held only "
                "a backbone (ImageNet weights to train from) or another class count, so these "
                "detections are noise. For inference, set MODEL.WEIGHTS to a trained detector: "
                "your model_final.pth, or a published one (ssd_d2.model_zoo.get_checkpoint_url)."
            )
        with context:
            features = backbone(images)
            features = [features[f] for f in self.head_in_features]
            pred_logits, pred_deltas = head(features)
        anchors = Boxes.cat(self.anchor_generator(features))
        # Decoding and the losses in float32, whatever the network ran in.
        K = self.num_classes + 1
        pred_logits = cat([permute_to_N_HWA_K(x, K).float() for x in pred_logits], 1)
        pred_deltas = cat([permute_to_N_HWA_K(x, 4).float() for x in pred_deltas], 1)
        if pred_logits.shape[1] != len(anchors):
            raise RuntimeError(
                f"The head predicts {pred_logits.shape[1]} boxes but there are {len(anchors)} "
                "default boxes: MODEL.SSD.DEFAULT_BOXES disagrees with the head."
            )
        return anchors, pred_logits, pred_deltas

    @torch.no_grad()
    def label_anchors(self, anchors: Boxes, gt_instances: List[Instances]) -> Tuple[Tensor, Tensor]:
        """
        SSD's matching (paper, 2.2): a default box is positive for the ground truth it overlaps
        most when that IoU >= the threshold, and each ground truth also takes its best default
        box. The IoU is computed as the peer of ``self.matching`` computes it. Returns (N, R)
        labels (0 background, c + 1 class c) and (N, R, 4) matched boxes.
        """
        anchors_in_units = None
        if self.matching.unit_boxes:
            anchors_in_units = self.anchor_generator.in_units(anchors)
        if self.matching.ties_size_first:
            tie_order = self.anchor_generator.size_first_order(anchors)
        gt_labels, matched_gt_boxes = [], []
        for instances in gt_instances:
            if len(instances) == 0:
                gt_labels.append(torch.zeros(len(anchors), dtype=torch.long, device=self.device))
                matched_gt_boxes.append(torch.zeros_like(anchors.tensor))
                continue
            iou = matching_iou(  # (G, R)
                self.matching, instances.gt_boxes, instances.image_size, anchors, anchors_in_units
            )
            matched_idxs, is_positive = self.anchor_matcher(iou)
            # max() rather than argmax(): the first of tied boxes in the peer's order, as the peers
            # pick; a later ground truth takes a box an earlier one also chose, as in theirs
            # (the largest index wins, whatever order a device writes in).
            if self.matching.ties_size_first:
                best_anchor_per_gt = tie_order[iou[:, tie_order].max(dim=1).indices]
            else:
                best_anchor_per_gt = iou.max(dim=1).indices
            owner = torch.full_like(matched_idxs, -1).scatter_reduce(
                0, best_anchor_per_gt, torch.arange(len(instances), device=iou.device), "amax"
            )
            taken = owner >= 0
            matched_idxs[taken] = owner[taken]
            is_positive[taken] = 1
            labels = instances.gt_classes[matched_idxs] + 1
            labels[is_positive == 0] = 0
            gt_labels.append(labels)
            matched_gt_boxes.append(instances.gt_boxes.tensor[matched_idxs])
        return torch.stack(gt_labels), torch.stack(matched_gt_boxes)

    def losses(self, anchors: Boxes, pred_logits, pred_deltas, gt_instances):
        """
        Smooth L1 on the positives' box deltas, and softmax cross-entropy on the positives
        plus the hardest negatives (``neg_pos_ratio`` per positive in each image), both
        summed and divided as ``loss_normalization`` says.
        """
        self.trained_parts.update(("backbone", "head"))
        gt_labels, matched_gt_boxes = self.label_anchors(anchors, gt_instances)
        positive = gt_labels > 0
        num_pos_per_image = positive.sum(dim=1)
        num_pos = num_pos_per_image.sum().item()
        get_event_storage().put_scalar("num_foreground", num_pos / len(gt_instances))

        anchors_per_positive = anchors.tensor.unsqueeze(0).expand_as(matched_gt_boxes)[positive]
        gt_deltas = self.box2box_transform.get_deltas(
            anchors_per_positive, matched_gt_boxes[positive]
        )
        cls_loss = F.cross_entropy(
            pred_logits.flatten(0, 1), gt_labels.flatten(), reduction="none"
        ).view_as(gt_labels)
        negative = self._hard_negatives(cls_loss.detach(), positive, num_pos_per_image)
        if self.loss_normalization == "image":
            return self._per_image_losses(cls_loss, positive, negative, pred_deltas, gt_deltas)

        loss_box_reg = F.smooth_l1_loss(
            pred_deltas[positive], gt_deltas, beta=self.smooth_l1_beta, reduction="sum"
        )
        loss_cls = cls_loss[positive].sum() + cls_loss[negative].sum()
        normalizer = self._loss_normalizer(num_pos)
        return {"loss_cls": loss_cls / normalizer, "loss_box_reg": loss_box_reg / normalizer}

    def _per_image_losses(self, cls_loss, positive, negative, pred_deltas, gt_deltas):
        """Each image's summed losses divided by its positives (at least 1), then the mean over
        the images. An image without positives counts in the mean with the loss of its
        ``min_negatives_per_image`` hard negatives: 0 by default, as in NVIDIA's loss."""
        num_images = len(cls_loss)
        image = torch.arange(num_images, device=cls_loss.device)[:, None].expand_as(positive)
        box_loss = F.smooth_l1_loss(
            pred_deltas[positive], gt_deltas, beta=self.smooth_l1_beta, reduction="none"
        ).sum(dim=1)
        selected = positive | negative
        per_image = {
            "loss_cls": cls_loss.new_zeros(num_images).index_add(
                0, image[selected], cls_loss[selected]
            ),
            "loss_box_reg": box_loss.new_zeros(num_images).index_add(0, image[positive], box_loss),
        }
        num_pos = positive.sum(dim=1).clamp(min=1).to(cls_loss.dtype)
        return {name: (loss / num_pos).mean() for name, loss in per_image.items()}

    def _loss_normalizer(self, num_pos: int) -> float:
        """
        max(1, positives in the whole batch) / number of processes: data parallel training
        averages the processes' gradients, so N processes with batch B/N train as one with B.
        """
        world_size = comm.get_world_size()
        if world_size == 1:
            return max(1.0, float(num_pos))
        total = torch.tensor([float(num_pos)], device=self.device)
        torch.distributed.all_reduce(total)
        return max(1.0, total.item()) / world_size

    @torch.no_grad()
    def _hard_negatives(self, cls_loss: Tensor, positive: Tensor, num_pos_per_image: Tensor):
        """Mask of the negatives with the highest classification loss, per image."""
        num_neg = (num_pos_per_image * self.neg_pos_ratio).long()
        num_neg = num_neg.clamp(min=self.min_negatives_per_image)
        loss = cls_loss.masked_fill(positive, float("-inf"))
        order = loss.argsort(dim=1, descending=True)
        rank = order.argsort(dim=1)
        return (rank < num_neg.unsqueeze(1)) & ~positive

    @torch.no_grad()
    def inference(self, anchors: Boxes, pred_logits: Tensor, pred_deltas: Tensor):
        """Detections in network-input coordinates, one Instances per image."""
        boxes, scores = self.decode(anchors, pred_logits, pred_deltas)
        topk, max_det = self.test_topk_candidates, self.max_detections_per_image
        boxes, scores, classes, images = select_detections(
            boxes, scores, topk, self.per_class_nms, max_det
        )
        boxes, size = self.clip(boxes), self.image_size
        return [
            Instances(size, pred_boxes=Boxes(boxes[i]), scores=scores[i], pred_classes=classes[i])
            for i in (images == n for n in range(len(pred_logits)))
        ]

    def decode(self, anchors: Boxes, pred_logits: Tensor, pred_deltas: Tensor):
        """Boxes (N, R, 4), clipped here with ``clip_boxes_before_nms``, and foreground
        scores (N, R, K) of the predictions: tensors only, so the exports trace it too."""
        num_images, num_boxes, _ = pred_logits.shape
        boxes = self.box2box_transform.apply_deltas(
            pred_deltas.reshape(-1, 4), anchors.tensor.repeat(num_images, 1)
        )
        if self.clip_boxes_before_nms:
            boxes = self.clip(boxes)
        return boxes.view(num_images, num_boxes, 4), pred_logits.softmax(dim=-1)[..., 1:]

    def clip(self, boxes: Tensor) -> Tensor:
        """(M, 4) boxes clipped to the network input: x to its width, y to its height."""
        height, width = self.image_size
        limit = boxes.new_tensor([width, height, width, height])
        return torch.minimum(boxes.clamp(min=0), limit)

    def per_class_nms(self, boxes: Tensor, scores: Tensor) -> Tuple[Tensor, Tensor]:
        """Candidates (G, k, 4) with scores (G, k) -> :func:`grouped_nms` with the score and
        IoU thresholds: group and rank indices of the kept ones, in decreasing score."""
        return grouped_nms(boxes, scores, self.test_score_thresh, self.test_nms_thresh)


def _take_state_dict(module: SSD, state_dict, prefix: str, *args) -> None:
    """
    A load_state_dict pre-hook: renames, in place, the tensors of a peer's published file to
    the SSD's own names (:func:`ssd_d2.convert.convert_for_model`), and notes which parts of
    the model the state dict sets (:attr:`SSD.trained_parts`).
    """
    keys = [k for k in state_dict if k.startswith(prefix)]
    ours, own = {k[len(prefix) :]: state_dict[k] for k in keys}, module.state_dict()
    if ours and recognize(ours) != "ssd_d2":
        ours = convert_for_model(ours, own, origin="The state dict loaded into the SSD model")[0]
        # Left out, as Detectron2's checkpointer leaves out other shapes (it saw the peer's names).
        skipped = [k for k, v in ours.items() if k in own and v.shape != own[k].shape]
        if skipped:
            logger.warning(f"Not loaded, their shapes differ from the model's: {skipped}")
        for key in keys:
            del state_dict[key]
        state_dict.update({prefix + k: v for k, v in ours.items() if k not in skipped})
    loaded = {k for k, v in ours.items() if k in own and v.shape == own[k].shape}
    if any(k.startswith("backbone.") for k in loaded):
        module.trained_parts.add("backbone")
    # Every class predictor loaded (SSDLite's depthwise convs fit another class count too).
    if {k for k in own if k.startswith("head.cls_score.")} <= loaded:
        module.trained_parts.add("head")
