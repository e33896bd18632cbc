import math
from typing import List, Sequence, Tuple, Union

import torch
from torch import nn

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling.anchor_generator import ANCHOR_GENERATOR_REGISTRY
from detectron2.structures import Boxes

from ..config import height_width, resolve_image_size

__all__ = ["SSDDefaultBoxGenerator", "DEFAULT_BOX_CLAMPS"]

# MODEL.SSD.DEFAULT_BOXES.CLAMP: how default boxes that reach past the image are limited;
# published weights need the rule they were trained with.
DEFAULT_BOX_CLAMPS = (
    # lufficc/SSD, ssd.pytorch: their (cx, cy, w, h) priors clamped to [0, 1]: a centre past
    # the edge (304 px on SSD300's 10x10 level, step 32) moves to the edge.
    "center_and_size",
    # torchvision (DefaultBoxGenerator(clip=True)): width and height capped, centres kept.
    "size",
    "none",
)


def _cell_box_sizes(min_size: float, max_size: float, aspect_ratios: Sequence[float]):
    """(width, height) of one location's default boxes, in the SSD paper's order: the min-size
    square, the sqrt(min * max) square, then an (r:1, 1:r) pair per aspect ratio."""
    sizes = [(min_size, min_size)]
    side = math.sqrt(min_size * max_size)
    sizes.append((side, side))
    for ratio in aspect_ratios:
        r = math.sqrt(ratio)
        sizes.append((min_size * r, min_size / r))
        sizes.append((min_size / r, min_size * r))
    return sizes


def _step_y_x(level: int, step) -> Tuple[float, float]:
    """A level's STEPS entry as (step_y, step_x): a number is both."""
    if isinstance(step, (int, float)):
        return float(step), float(step)
    if len(step) != 2:
        raise ValueError(
            f"MODEL.SSD.DEFAULT_BOXES.STEPS[{level}] = {list(step)}: give one number (the same "
            "step on both axes) or a [step_y, step_x] pair."
        )
    return float(step[0]), float(step[1])


@ANCHOR_GENERATOR_REGISTRY.register()
class SSDDefaultBoxGenerator(nn.Module):
    """
    The default boxes of SSD (Liu et al., ECCV 2016, section 2.2), in XYXY pixels of the
    network input (square or not: a box's sizes are in pixels, so squares stay square). Unlike
    Detectron2's DefaultAnchorGenerator (a sizes x ratios product), each level has its own box
    set: two squares plus two boxes per aspect ratio.
    Boxes are ordered by (row, column, box), which is the order of ``permute_to_N_HWA_K``.
    """

    @configurable
    def __init__(
        self,
        *,
        image_size: Union[int, Tuple[int, int]],
        steps: List[Union[float, Sequence[float]]],
        min_sizes: List[float],
        max_sizes: List[float],
        aspect_ratios: List[List[float]],
        clamp: str = "center_and_size",
    ):
        """
        ``image_size``: the network input, a square's side or (height, width).
        Per level: ``steps`` is the distance between box centres, a number or a (step_y, step_x)
        pair for an input whose rows and columns differ; the two squares have sides
        min_size and sqrt(min_size * max_size), each aspect ratio r >= 1 adds an r:1 and a 1:r
        box. ``clamp``: one of :data:`DEFAULT_BOX_CLAMPS`.
        """
        super().__init__()
        num_levels = len(steps)
        if not (len(min_sizes) == len(max_sizes) == len(aspect_ratios) == num_levels):
            raise ValueError(
                "MODEL.SSD.DEFAULT_BOXES needs one entry per level in STEPS, MIN_SIZES, "
                f"MAX_SIZES and ASPECT_RATIOS; got {len(steps)}, {len(min_sizes)}, "
                f"{len(max_sizes)} and {len(aspect_ratios)}."
            )
        for level, ratios in enumerate(aspect_ratios):
            if any(r < 1 for r in ratios):
                raise ValueError(
                    f"MODEL.SSD.DEFAULT_BOXES.ASPECT_RATIOS[{level}] = {list(ratios)}: give each "
                    "ratio as r >= 1; the 1:r box is added for it."
                )
        if clamp not in DEFAULT_BOX_CLAMPS:
            raise ValueError(
                f"MODEL.SSD.DEFAULT_BOXES.CLAMP = {clamp!r}; choose one of {DEFAULT_BOX_CLAMPS}: "
                '"center_and_size" for lufficc/SSD and ssd.pytorch weights, "size" for '
                "torchvision's."
            )
        self.image_size = height_width(image_size)
        self.steps = [_step_y_x(level, step) for level, step in enumerate(steps)]
        self.clamp = clamp
        self.cell_sizes = [
            _cell_box_sizes(mn, mx, ratios)
            for mn, mx, ratios in zip(min_sizes, max_sizes, aspect_ratios)
        ]
        self._level_definitions = list(zip(min_sizes, max_sizes, aspect_ratios))
        self._cache = {}
        self._cache_in_units = {}

    @classmethod
    def from_config(cls, cfg, input_shape: List[ShapeSpec]):
        boxes = cfg.MODEL.SSD.DEFAULT_BOXES
        return {
            "image_size": resolve_image_size(cfg),
            "steps": boxes.STEPS,
            "min_sizes": boxes.MIN_SIZES,
            "max_sizes": boxes.MAX_SIZES,
            "aspect_ratios": boxes.ASPECT_RATIOS,
            "clamp": boxes.CLAMP,
        }

    @property
    def num_anchors(self) -> List[int]:
        """Default boxes per location, for each level (Detectron2's ``num_cell_anchors``)."""
        return [len(sizes) for sizes in self.cell_sizes]

    num_cell_anchors = num_anchors

    def _level_boxes(self, level: int, height: int, width: int) -> torch.Tensor:
        (step_y, step_x), (image_h, image_w) = self.steps[level], self.image_size
        for axis, cells, step, pixels in (
            ("rows", height, step_y, image_h),
            ("columns", width, step_x, image_w),
        ):
            if abs(cells * step - pixels) > step:
                raise ValueError(
                    f"Feature level {level} is {height}x{width}, but MODEL.SSD.DEFAULT_BOXES.STEPS"
                    f"[{level}] puts its {cells} {axis} of default boxes {step:g} pixels apart, "
                    f"over {cells * step:g} of the input's {pixels} (the network input is "
                    f"{image_h}x{image_w}, MODEL.SSD.IMAGE_SIZE / IMAGE_HEIGHT_WIDTH). Make the "
                    "steps match the backbone's feature maps at this image size: "
                    f"about {pixels / cells:g} here ([step_y, step_x] where the axes differ)."
                )
        wh = torch.tensor(self.cell_sizes[level], dtype=torch.float64)
        ys = (torch.arange(height, dtype=torch.float64) + 0.5) * step_y
        xs = (torch.arange(width, dtype=torch.float64) + 0.5) * step_x
        # Widths and x to the input's width, heights and y to its height.
        limit = torch.tensor([image_w, image_h], dtype=torch.float64)
        if self.clamp != "none":
            wh = torch.minimum(wh, limit)
        if self.clamp == "center_and_size":
            ys, xs = ys.clamp(max=image_h), xs.clamp(max=image_w)
        cy, cx = torch.meshgrid(ys, xs, indexing="ij")
        centres = torch.stack([cx, cy], dim=-1).reshape(-1, 1, 2)  # (H*W, 1, 2)
        half = wh.view(1, -1, 2) / 2  # (1, A, 2)
        boxes = torch.cat([centres - half, centres + half], dim=-1)  # (H*W, A, 4)
        return boxes.reshape(-1, 4).float()

    def _level_boxes_in_units(self, level: int, height: int, width: int) -> torch.Tensor:
        """
        The level's boxes as XYXY fractions of the input's width and height, rounded as
        lufficc/SSD and NVIDIA's SSD round their priors: centres and sizes computed in float64
        fractions, stored as float32 (cx, cy, w, h), clamped, then turned into corners in
        float32. Dividing the pixel boxes instead moves most of them by a float32 ulp, enough
        to flip the peers' picks between default boxes of mathematically equal IoU.
        """
        image_height, image_width = self.image_size
        min_size, max_size, ratios = self._level_definitions[level]
        widths = _cell_box_sizes(min_size / image_width, max_size / image_width, ratios)
        heights = _cell_box_sizes(min_size / image_height, max_size / image_height, ratios)
        # Centres as (index + 0.5) / (number of steps over the input), the peers' order.
        step_y, step_x = self.steps[level]
        xs = (torch.arange(width, dtype=torch.float64) + 0.5) / (image_width / step_x)
        ys = (torch.arange(height, dtype=torch.float64) + 0.5) / (image_height / step_y)
        cy, cx = torch.meshgrid(ys, xs, indexing="ij")
        num_cell = len(widths)
        centres = torch.stack([cx, cy], dim=-1).reshape(-1, 1, 2).expand(-1, num_cell, 2)
        wh = torch.tensor([(w, h) for (w, _), (_, h) in zip(widths, heights)], dtype=torch.float64)
        wh = wh.view(1, -1, 2).expand_as(centres)
        center_form = torch.cat([centres, wh], dim=-1).reshape(-1, 4).float()
        if self.clamp == "center_and_size":
            center_form = center_form.clamp(min=0, max=1)
        elif self.clamp == "size":
            center_form[:, 2:] = center_form[:, 2:].clamp(max=1)
        half = center_form[:, 2:] / 2
        return torch.cat([center_form[:, :2] - half, center_form[:, :2] + half], dim=1)

    def _feature_shapes(self, default_boxes: Boxes):
        """The feature map shapes of the forward that made ``default_boxes``."""
        for (shapes, _), levels in self._cache.items():
            if levels[0].device == default_boxes.device and torch.equal(
                torch.cat(levels), default_boxes.tensor
            ):
                return shapes
        raise ValueError(
            "These boxes are not default boxes this generator made: pass the Boxes.cat of its "
            "output for one set of feature maps."
        )

    def in_units(self, default_boxes: Boxes) -> torch.Tensor:
        """
        ``default_boxes``, this generator's boxes of one forward (its levels concatenated, as
        the SSD uses them), as XYXY fractions of the input's width and height, computed in
        those units (see :meth:`_level_boxes_in_units`), not divided from the pixels.
        """
        shapes = self._feature_shapes(default_boxes)
        if shapes not in self._cache_in_units:
            self._cache_in_units[shapes] = torch.cat(
                [self._level_boxes_in_units(i, h, w) for i, (h, w) in enumerate(shapes)]
            )
        return self._cache_in_units[shapes].to(default_boxes.device)

    def size_first_order(self, default_boxes: Boxes) -> torch.Tensor:
        """
        The indices of ``default_boxes`` (as in :meth:`in_units`) in NVIDIA's SSD order: each
        level's boxes size by size, each size over all locations (ssd_d2 lists each location's
        boxes together).
        """
        order, offset = [], 0
        for (height, width), num_cell in zip(self._feature_shapes(default_boxes), self.num_anchors):
            count = height * width * num_cell
            order.append(torch.arange(offset, offset + count).view(-1, num_cell).t().reshape(-1))
            offset += count
        return torch.cat(order).to(default_boxes.device)

    @torch.no_grad()
    def forward(self, features: List[torch.Tensor]) -> List[Boxes]:
        """Per level (feature map (N, C, Hi, Wi)), the Boxes of its Hi * Wi * Ai default boxes."""
        device = features[0].device
        shapes = tuple(tuple(f.shape[-2:]) for f in features)
        key = (shapes, str(device))
        if key not in self._cache:
            self._cache[key] = [
                self._level_boxes(level, h, w).to(device) for level, (h, w) in enumerate(shapes)
            ]
        return [Boxes(b) for b in self._cache[key]]
