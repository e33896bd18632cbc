import contextlib
from typing import Callable, Dict, List, Optional, Tuple

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
from detectron2.modeling.meta_arch.dense_detector import DenseDetector, permute_to_N_HWA_K
from detectron2.structures import Boxes, Instances, pairwise_iou
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage

from ..config import settle_device
from ..convert import convert_for_model, recognize
from ..ignored_keys import warn_ignored_keys
from .head import build_ssd_head
from .nms import grouped_nms
from .precision import LowPrecisionCopy, resolve_precision

__all__ = ["SSD"]


@META_ARCH_REGISTRY.register()
class SSD(DenseDetector):
    """
    SSD: Single Shot MultiBox Detector (Liu et al., ECCV 2016).

    The model resizes every input image to ``image_size`` x ``image_size`` itself, so it
    takes images of any size (from DefaultPredictor, a custom loader or any mapper) and
    returns boxes in each input's "height" x "width" (default: the image's own size).
    Classification logits have ``num_classes + 1`` channels per default box, background
    first, as in the published SSD weights; ``pred_classes`` count foreground classes from 0.
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
        image_size: int,
        iou_threshold: float = 0.5,
        neg_pos_ratio: float = 3.0,
        min_negatives_per_image: int = 0,
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
            backbone: a Backbone whose outputs include ``head_in_features``.
            head: returns per-level (class logits, box deltas) for a list of feature maps.
            head_in_features: backbone outputs the head uses, finest level first.
            anchor_generator: SSDDefaultBoxGenerator (or any generator with the same API).
            box2box_transform: encodes matched boxes against default boxes.
            num_classes: number of foreground classes.
            image_size: side of the square network input.
            iou_threshold: a default box with IoU >= this to a ground truth is positive.
            neg_pos_ratio: hard negatives kept per positive, per image.
            min_negatives_per_image: hard negatives kept even in an image without positives.
            smooth_l1_beta: transition point of the smooth L1 box loss.
            test_score_thresh, test_topk_candidates, test_nms_thresh: inference filtering:
                score threshold and top-k candidates per class, then class-wise NMS.
            clip_boxes_before_nms: clip decoded boxes to the image before NMS (torchvision)
                rather than after it (lufficc/SSD, ssd.pytorch): boxes that reach past the
                image overlap others differently once clipped.
            max_detections_per_image: detections returned per image.
            pixel_mean, pixel_std: input normalisation, in ``input_format`` channel order.
            input_format: channel order of the images ("RGB" or "BGR").
            test_dtype: the network's arithmetic in inference: float32, or bfloat16 / float16
                with the weights cast once (:class:`LowPrecisionCopy`).
            train_autocast_dtype: if set, the network runs under autocast to this dtype in
                training (SSDTrainer sets bfloat16 for ``SOLVER.AMP.ENABLED`` on a CPU).
        """
        super().__init__(
            backbone, head, head_in_features, pixel_mean=pixel_mean, pixel_std=pixel_std
        )
        if num_classes < 1:
            raise ValueError(f"MODEL.SSD.NUM_CLASSES must be >= 1, got {num_classes}.")
        self.anchor_generator = anchor_generator
        self.box2box_transform = box2box_transform
        # SSD's matching: IoU >= threshold is positive, below is background; the rule that
        # each ground truth also takes its best default box is applied in label_anchors.
        self.anchor_matcher = Matcher([iou_threshold], [0, 1], allow_low_quality_matches=False)
        self.num_classes = num_classes
        self.image_size = image_size
        self.neg_pos_ratio = neg_pos_ratio
        self.min_negatives_per_image = min_negatives_per_image
        self.smooth_l1_beta = smooth_l1_beta
        # Attribute names that DenseDetector's helpers read.
        self.test_score_thresh = test_score_thresh
        self.test_topk_candidates = test_topk_candidates
        self.test_nms_thresh = test_nms_thresh
        self.clip_boxes_before_nms = clip_boxes_before_nms
        self.max_detections_per_image = max_detections_per_image
        self.input_format = input_format
        self.test_dtype = test_dtype
        self.train_autocast_dtype = train_autocast_dtype
        self._low_precision_network = LowPrecisionCopy(test_dtype)
        # Channels-last convolutions are faster on CPUs (oneDNN) and GPUs (tensor cores).
        self.to(memory_format=torch.channels_last)
        # Detectron2's own DetectionCheckpointer (DefaultPredictor's) hands MODEL.WEIGHTS to
        # load_state_dict as it is: a peer's published file is converted there.
        self.register_load_state_dict_pre_hook(_convert_published_weights)

    @classmethod
    def from_config(cls, cfg):
        # Every way of building an SSD model (training, evaluation, DefaultPredictor, the
        # tools) passes here once: the place to settle MODEL.DEVICE "auto" before
        # Detectron2's build_model reads it, and to name the Detectron2 keys SSD ignores.
        settle_device(cfg)
        warn_ignored_keys(cfg)
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
        head = build_ssd_head(cfg, feature_shapes, anchor_generator.num_anchors)
        return {
            "backbone": backbone,
            "head": head,
            "head_in_features": in_features,
            "anchor_generator": anchor_generator,
            "box2box_transform": Box2BoxTransform(weights=cfg.MODEL.SSD.BBOX_REG_WEIGHTS),
            "num_classes": cfg.MODEL.SSD.NUM_CLASSES,
            "image_size": cfg.MODEL.SSD.IMAGE_SIZE,
            "iou_threshold": cfg.MODEL.SSD.IOU_THRESHOLD,
            "neg_pos_ratio": cfg.MODEL.SSD.NEG_POS_RATIO,
            "min_negatives_per_image": cfg.MODEL.SSD.MIN_NEGATIVES_PER_IMAGE,
            "smooth_l1_beta": cfg.MODEL.SSD.SMOOTH_L1_BETA,
            "test_score_thresh": cfg.MODEL.SSD.SCORE_THRESH_TEST,
            "test_topk_candidates": cfg.MODEL.SSD.TOPK_CANDIDATES_TEST,
            "test_nms_thresh": cfg.MODEL.SSD.NMS_THRESH_TEST,
            "clip_boxes_before_nms": cfg.MODEL.SSD.CLIP_BOXES_BEFORE_NMS,
            "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "input_format": cfg.INPUT.FORMAT,
            "test_dtype": resolve_precision(cfg.TEST.PRECISION, cfg.MODEL.DEVICE, "TEST.PRECISION"),
        }

    def forward(self, batched_inputs: List[Dict[str, Tensor]]):
        """
        Args:
            batched_inputs: a list of dicts with "image" (C, H, W) in ``input_format``, and
                optionally "height"/"width" (output resolution) and, in training,
                "instances" (gt_boxes, gt_classes) in the image's coordinates.
        Returns:
            training: {"loss_cls", "loss_box_reg"}; inference: [{"instances": Instances}].
        """
        images = self.preprocess_image(batched_inputs)
        anchors, pred_logits, pred_deltas = self.predict(images)

        if self.training:
            if "instances" not in batched_inputs[0]:
                raise ValueError("SSD in training mode needs 'instances' in every input dict.")
            gt_instances = [self._instances_at_network_size(x) for x in batched_inputs]
            return self.losses(anchors, pred_logits, pred_deltas, gt_instances)

        results = self.inference(anchors, pred_logits, pred_deltas)
        processed_results = []
        for results_per_image, input_per_image in zip(results, batched_inputs):
            height = input_per_image.get("height", input_per_image["image"].shape[-2])
            width = input_per_image.get("width", input_per_image["image"].shape[-1])
            r = detector_postprocess(results_per_image, height, width)
            processed_results.append({"instances": r})
        return processed_results

    def predict(self, images: Tensor) -> Tuple[Boxes, Tensor, Tensor]:
        """
        Run the backbone and the head on a normalised (N, C, S, S) batch.

        Returns:
            the R default boxes, class logits (N, R, K + 1) and box deltas (N, R, 4).
        """
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

    def normalize(self, images: Tensor) -> Tensor:
        """
        Images (C, H, W) or (N, C, H, W), 0-255 in ``input_format``, on the model's device,
        scaled to [0, 1] and then normalised by pixel_mean / 255 and pixel_std / 255.
        """
        images = images.to(self.device, non_blocking=True).float()
        return (images / 255 - self.pixel_mean / 255) / (self.pixel_std / 255)

    def preprocess_image(self, batched_inputs: List[Dict[str, Tensor]]) -> Tensor:
        """Normalise, resize every image to the network size, and batch: (N, C, S, S)."""
        size = (self.image_size, self.image_size)
        # torchvision's order and rounding (scale to [0, 1], normalise, then resize), so that
        # converted torchvision models give its outputs to the last bits.
        images = []
        for x in batched_inputs:
            image = x["image"]
            if image.dim() != 3 or image.shape[0] != self.pixel_mean.shape[0]:
                raise ValueError(
                    f"SSD expects each 'image' as a (C, H, W) tensor with C = "
                    f"{self.pixel_mean.shape[0]} channels in {self.input_format} order "
                    f"(MODEL.PIXEL_MEAN), got shape {tuple(image.shape)}."
                )
            image = self.normalize(image)
            if tuple(image.shape[-2:]) != size:
                image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)
                image = image[0]
            images.append(image)
        return torch.stack(images)

    def _instances_at_network_size(self, input_per_image) -> Instances:
        """Ground truth moved to the network input's coordinates, degenerate boxes dropped."""
        instances = input_per_image["instances"].to(self.device)
        height, width = input_per_image["image"].shape[-2:]
        boxes = instances.gt_boxes.clone()
        if (height, width) != (self.image_size, self.image_size):
            boxes.scale(self.image_size / width, self.image_size / height)
        result = Instances((self.image_size, self.image_size))
        result.gt_boxes = boxes
        result.gt_classes = instances.gt_classes
        keep = boxes.nonempty() & torch.isfinite(boxes.tensor).all(dim=1)
        return result[keep]

    @torch.no_grad()
    def label_anchors(self, anchors: Boxes, gt_instances: List[Instances]) -> Tuple[Tensor, Tensor]:
        """
        Match default boxes to ground truth (SSD paper, 2.2): a default box is positive for
        the ground truth it overlaps most when that IoU >= the threshold, and each ground
        truth also takes the default box it overlaps most, whatever the IoU.

        Returns:
            gt_labels: (N, R) class per default box, 0 = background, c + 1 = class c.
            matched_gt_boxes: (N, R, 4) the matched ground-truth box (anything for background).
        """
        gt_labels, matched_gt_boxes = [], []
        for instances in gt_instances:
            if len(instances) == 0:
                gt_labels.append(torch.zeros(len(anchors), dtype=torch.long, device=self.device))
                matched_gt_boxes.append(torch.zeros_like(anchors.tensor))
                continue
            iou = pairwise_iou(instances.gt_boxes, anchors)  # (G, R)
            matched_idxs, is_positive = self.anchor_matcher(iou)
            # max() rather than argmax(): the same pick among tied boxes as torchvision's SSD.
            best_anchor_per_gt = iou.max(dim=1).indices
            matched_idxs[best_anchor_per_gt] = torch.arange(
                len(instances), device=matched_idxs.device
            )
            is_positive[best_anchor_per_gt] = 1
            labels = instances.gt_classes[matched_idxs] + 1
            labels[is_positive == 0] = 0
            gt_labels.append(labels)
            matched_gt_boxes.append(instances.gt_boxes.tensor[matched_idxs])
        return torch.stack(gt_labels), torch.stack(matched_gt_boxes)

    def losses(self, anchors: Boxes, pred_logits, pred_deltas, gt_instances):
        """
        Smooth L1 on the positives' box deltas, and softmax cross-entropy on the positives
        plus the hardest negatives (``neg_pos_ratio`` per positive in each image), both
        summed and divided by max(1, number of positives in the batch).
        """
        gt_labels, matched_gt_boxes = self.label_anchors(anchors, gt_instances)
        positive = gt_labels > 0
        num_pos_per_image = positive.sum(dim=1)
        num_pos = num_pos_per_image.sum().item()
        get_event_storage().put_scalar("num_foreground", num_pos / len(gt_instances))
        normalizer = self._loss_normalizer(num_pos)

        anchors_per_positive = anchors.tensor.unsqueeze(0).expand_as(matched_gt_boxes)[positive]
        gt_deltas = self.box2box_transform.get_deltas(
            anchors_per_positive, matched_gt_boxes[positive]
        )
        loss_box_reg = F.smooth_l1_loss(
            pred_deltas[positive], gt_deltas, beta=self.smooth_l1_beta, reduction="sum"
        )

        cls_loss = F.cross_entropy(
            pred_logits.flatten(0, 1), gt_labels.flatten(), reduction="none"
        ).view_as(gt_labels)
        negative = self._hard_negatives(cls_loss.detach(), positive, num_pos_per_image)
        loss_cls = cls_loss[positive].sum() + cls_loss[negative].sum()
        return {"loss_cls": loss_cls / normalizer, "loss_box_reg": loss_box_reg / normalizer}

    def _loss_normalizer(self, num_pos: int) -> float:
        """
        max(1, positives in the whole batch), divided by the number of processes: data
        parallel training averages the gradients of the processes, so N processes with
        batch B/N then train exactly as one process with batch B.
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
        """
        Softmax scores, per-class score threshold and top-k, then class-wise NMS, for the
        whole batch at once (``detect``).

        Returns:
            list[Instances] in network-input coordinates, one per image.
        """
        boxes, scores, classes, image_idx = self.detect(anchors.tensor, pred_logits, pred_deltas)
        results = []
        for i in range(len(pred_logits)):
            in_image = image_idx == i
            result = Instances((self.image_size, self.image_size))
            result.pred_boxes = Boxes(boxes[in_image])
            result.scores = scores[in_image]
            result.pred_classes = classes[in_image]
            results.append(result)
        return results

    def detect(
        self,
        anchors: Tensor,
        pred_logits: Tensor,
        pred_deltas: Tensor,
        per_class_nms: Optional[Callable[[Tensor, Tensor], Tuple[Tensor, Tensor]]] = None,
    ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """
        Inference on tensors only, shared by eager inference and the exported models
        (ssd_d2.export): decode the boxes, take the top-k candidates of each class and image,
        NMS them (``per_class_nms``), keep each image's best detections, clipped to the image
        (before NMS with ``clip_boxes_before_nms``, after it otherwise).

        Args:
            anchors: (R, 4) default boxes; pred_logits: (N, R, K + 1); pred_deltas: (N, R, 4).
            per_class_nms: replaces ``self.per_class_nms``, with its arguments and results (an
                export substitutes its format's NMS operator).

        Returns:
            boxes (M, 4) in network-input pixels, scores (M,), classes (M,) and image indices
            (M,) of the detections, in decreasing score (images mixed).
        """
        num_images, num_boxes, _ = pred_logits.shape
        scores = pred_logits.softmax(dim=-1)[..., 1:]  # (N, R, K), background dropped
        boxes = self.box2box_transform.apply_deltas(
            pred_deltas.reshape(-1, 4), anchors.repeat(num_images, 1)
        )
        if self.clip_boxes_before_nms:
            boxes = self._clip(boxes)
        boxes = boxes.view(num_images, num_boxes, 4)

        k = min(self.test_topk_candidates, num_boxes)
        top_scores, top_anchor = scores.transpose(1, 2).topk(k, dim=2)  # (N, K, k)
        # Candidates grouped by image and class: group g is image g // K, class g % K.
        top_scores = top_scores.reshape(-1, k)
        top_boxes = boxes.gather(1, top_anchor.reshape(num_images, -1, 1).expand(-1, -1, 4))
        top_boxes = top_boxes.view(-1, k, 4)
        group_idx, rank_idx = (per_class_nms or self.per_class_nms)(top_boxes, top_scores)

        image_idx = torch.div(group_idx, self.num_classes, rounding_mode="floor")
        # Detections come in decreasing score, so each image's first ones are its best.
        keep = rank_within_images(image_idx, num_images) < self.max_detections_per_image
        group_idx, rank_idx, image_idx = group_idx[keep], rank_idx[keep], image_idx[keep]
        return (
            self._clip(top_boxes[group_idx, rank_idx]),
            top_scores[group_idx, rank_idx],
            group_idx - image_idx * self.num_classes,
            image_idx,
        )

    def _clip(self, boxes: Tensor) -> Tensor:
        """(M, 4) boxes clipped to the network input."""
        boxes = Boxes(boxes)
        boxes.clip((self.image_size, self.image_size))
        return boxes.tensor

    def per_class_nms(self, boxes: Tensor, scores: Tensor) -> Tuple[Tensor, Tensor]:
        """
        Drop candidates with a score <= the score threshold, then NMS each group of
        candidates (one image's class) separately (``grouped_nms``).

        Args:
            boxes: (G, k, 4) candidate boxes; scores: (G, k) their scores, each group sorted
                by decreasing score.
        Returns:
            group and candidate indices of the kept boxes, in decreasing score.
        """
        return grouped_nms(boxes, scores, self.test_score_thresh, self.test_nms_thresh)


def _convert_published_weights(module: SSD, state_dict, prefix: str, *args) -> None:
    """
    A load_state_dict pre-hook: rename, in place, the tensors of a peer's published file
    (see :func:`ssd_d2.convert.convert_for_model`) to the SSD's own names.
    """
    keys = [k for k in state_dict if k.startswith(prefix)]
    ours = {k[len(prefix) :]: state_dict[k] for k in keys}
    if not ours or recognize(ours) == "ssd_d2":
        return
    converted, _ = convert_for_model(
        ours, module.state_dict(), origin="The state dict loaded into the SSD model"
    )
    for key in keys:
        del state_dict[key]
    state_dict.update({prefix + k: v for k, v in converted.items()})


def rank_within_images(image_idx: Tensor, num_images: int) -> Tensor:
    """
    The 0-based position of each detection among its image's, in the given order; a
    cumulative count rather than a loop over images, so that a traced model keeps it for
    any batch size.
    """
    in_image = (image_idx[:, None] == torch.arange(num_images, device=image_idx.device)).long()
    return (in_image.cumsum(dim=0) * in_image).sum(dim=1) - 1
