"""Anchors fitted to the training boxes: sizes and aspect ratios as fractions of the input side.

An anchor set is ``{"scales": [[s, ...], ...], "ratios": [r, ...]}``: per FPN level its sizes
(sqrt(w*h) / image side) and, shared by every level, aspect ratios (h / w), so each location has
len(scales[0]) * len(ratios) anchors (torchvision needs the same number on every level). The set is
stored in the checkpoint's ``arch_options``, so a model is rebuilt with the anchors it was trained with.

Students (levels C3-C5) fit sizes by k-means (``fit_anchors``). The ResNet50 teacher (P3-P7) keeps
torchvision's layout and fits one scale to the boxes at their real positions on its anchor grid
(``fit_retinanet_anchors``): anchors much smaller than their level's stride leave boxes that fall between
anchor centres without any anchor of IoU >= 0.5, which starves the classifier of positives.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import box_iou

from retinaslim.models.lean import SIZE_DIVISIBLE  # the models pad their input to a multiple of it

# ID-1 cards spanning ~10% to ~65% of the frame, in both orientations.
DEFAULT_ANCHORS: dict[str, Any] = {"scales": [[0.1, 0.159], [0.2, 0.318], [0.4, 0.636]], "ratios": [0.63, 1.0, 1.59]}

# torchvision RetinaNet's levels P3-P7 and its anchors: three sizes 2^(1/3) apart per level, the smallest
# RETINANET_STRIDE_MULTIPLE x the level's stride (32..512 px; Lin et al., "Focal Loss", 2017, section 4).
RETINANET_STRIDES = (8, 16, 32, 64, 128)
RETINANET_STRIDE_MULTIPLE = 4.0
RETINANET_RATIOS = (0.5, 1.0, 2.0)
MATCH_IOU = 0.5  # RetinaNet's foreground IoU: an anchor at or above it is a positive for the box
MAX_FIT_BOXES = 2000  # boxes a fit looks at (a seeded sample beyond this)
LOW_COVERAGE = 0.8  # a class with fewer of its boxes covered by an anchor is warned about


def anchor_generator(image_size: int, anchors: dict[str, Any]) -> AnchorGenerator:
    sizes = tuple(tuple(image_size * s for s in level) for level in anchors["scales"])
    return AnchorGenerator(sizes, (tuple(anchors["ratios"]),) * len(sizes))


def _kmeans_1d(values: torch.Tensor, k: int, iterations: int = 100) -> list[float]:
    """Lloyd's k-means on 1-D values, started at evenly spaced quantiles; centres ascending."""
    centres = torch.quantile(values, torch.linspace(0, 1, k + 2, dtype=values.dtype)[1:-1])
    for _ in range(iterations):
        assign = (values[:, None] - centres[None]).abs().argmin(dim=1)
        new = torch.stack([values[assign == j].mean() if (assign == j).any() else centres[j] for j in range(k)])
        if torch.allclose(new, centres):
            break
        centres = new
    return sorted(centres.tolist())


def shape_iou(boxes_wh: torch.Tensor, anchors: dict[str, Any]) -> torch.Tensor:
    """(M,) best IoU of each box shape (relative w, h) with any anchor shape, both centred at one point."""
    shapes = torch.tensor([[s / r ** 0.5, s * r ** 0.5] for level in anchors["scales"] for s in level for r in anchors["ratios"]],
                          dtype=boxes_wh.dtype)  # (A, 2): w, h
    inter = torch.minimum(boxes_wh[:, None], shapes[None]).prod(dim=2)  # (M, A)
    union = boxes_wh.prod(dim=1)[:, None] + shapes.prod(dim=1)[None] - inter
    return (inter / union).amax(dim=1)


def fit_anchors(boxes_wh: torch.Tensor, levels: int = 3, sizes_per_level: int = 2, num_ratios: int = 3) -> dict[str, Any]:
    """Anchors from box shapes: k-means on log size (split evenly over the levels, smallest first) and on
    log aspect ratio. boxes_wh: (M, 2) widths and heights as fractions of the image side (after resize)."""
    sizes = _kmeans_1d(boxes_wh.prod(dim=1).sqrt().log(), levels * sizes_per_level)
    ratios = _kmeans_1d((boxes_wh[:, 1] / boxes_wh[:, 0]).log(), num_ratios)
    scales = [[round(math.exp(s), 4) for s in sizes[i * sizes_per_level:(i + 1) * sizes_per_level]] for i in range(levels)]
    return {"scales": scales, "ratios": [round(math.exp(r), 4) for r in ratios]}


def fitted_or_default(boxes: torch.Tensor, min_boxes: int = 20) -> tuple[dict[str, Any], str]:
    """Student anchors fitted to box shapes (``fit_anchors``), kept only when their mean best shape IoU with the boxes
    beats ``DEFAULT_ANCHORS``'s; with a line saying which set was chosen and why. boxes: (M, 4) xyxy as fractions
    of the image side (``data.coco.relative_boxes``)."""
    boxes_wh = boxes[:, 2:] - boxes[:, :2]
    if len(boxes_wh) < min_boxes:
        return DEFAULT_ANCHORS, f"anchors: default ({len(boxes_wh)} boxes are too few to fit)"
    fitted = fit_anchors(boxes_wh)
    fitted_iou, default_iou = shape_iou(boxes_wh, fitted).mean().item(), shape_iou(boxes_wh, DEFAULT_ANCHORS).mean().item()
    if fitted_iou <= default_iou:
        return DEFAULT_ANCHORS, (f"anchors: default (mean best IoU with {len(boxes_wh)} boxes {default_iou:.3f}, "
                                 f"fitted {fitted_iou:.3f})")
    return fitted, (f"anchors fitted to {len(boxes_wh)} boxes: mean best IoU {fitted_iou:.3f} (default {default_iou:.3f}); "
                    f"sizes {fitted['scales']} of the input side, ratios {fitted['ratios']}")


def retinanet_anchors(image_size: int, multiple: float, ratios) -> dict[str, Any]:
    """torchvision's P3-P7 layout with the smallest anchor of each level ``multiple`` x its stride."""
    scales = [[round(multiple * stride * 2 ** (k / 3) / image_size, 5) for k in range(3)] for stride in RETINANET_STRIDES]
    return {"scales": scales, "ratios": [round(float(r), 4) for r in ratios]}


def covered(boxes_xyxy: torch.Tensor, image_size: int, anchors: dict[str, Any]) -> torch.Tensor:
    """(M,) bool: whether each box has an anchor of IoU >= 0.5 (a positive for it) on the anchor grid at its
    position. The levels are strides 8, 16, ... (one per ``anchors["scales"]`` entry: C3-C5 for the students,
    P3-P7 for the ResNet50). boxes_xyxy: (M, 4) pixels in images resized so that the longer side is
    ``image_size``. The grid is laid on the input padded to a multiple of 32, as the models pad it, so that
    its feature maps and strides are the network's own at any ``image_size``."""
    strides = RETINANET_STRIDES[:len(anchors["scales"])]
    padded = math.ceil(image_size / SIZE_DIVISIBLE) * SIZE_DIVISIBLE
    generator = anchor_generator(image_size, anchors)
    feature_maps = [torch.zeros(1, 1, math.ceil(padded / s), math.ceil(padded / s)) for s in strides]
    grid = generator(ImageList(torch.zeros(1, 3, padded, padded), [(image_size, image_size)]), feature_maps)[0]
    parts = [box_iou(chunk.float(), grid).amax(dim=1) >= MATCH_IOU for chunk in boxes_xyxy.split(256)]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.bool)


def grid_coverage(boxes_xyxy: torch.Tensor, image_size: int, anchors: dict[str, Any]) -> float:
    """Share (0..1) of boxes that have an anchor of IoU >= 0.5 on the anchor grid at their position (``covered``)."""
    return covered(boxes_xyxy, image_size, anchors).float().sum().item() / max(len(boxes_xyxy), 1)


def class_coverage(boxes: torch.Tensor, labels: torch.Tensor, names: Sequence[str], image_size: int,
                   anchors: dict[str, Any], seed: int = 0) -> tuple[dict[str, float], str]:
    """Per class, the share (0..1) of its boxes with an anchor of IoU >= 0.5 on the grid (``covered``), and a
    line saying so; the line starts with "warning:" when a class is below ``LOW_COVERAGE``, as its boxes then
    get few or no positive anchors and the class is learnt poorly or not at all. boxes: (M, 4) xyxy as
    fractions of the image side (``data.coco.relative_boxes``); labels: (M,) 0-based indices into
    ``names``; a seeded sample per class of ``MAX_FIT_BOXES`` shared among the classes but at least 100 is looked
    at (about ``MAX_FIT_BOXES`` in all up to 20 classes, 100 per class beyond), so the check stays seconds at any
    dataset size."""
    shares = {}
    per_class = max(100, MAX_FIT_BOXES // max(len(names), 1))
    for k, name in enumerate(names):
        mine = boxes[labels == k]
        if len(mine) > per_class:
            mine = mine[torch.randperm(len(mine), generator=torch.Generator().manual_seed(seed))[:per_class]]
        if len(mine):
            shares[name] = grid_coverage(mine * image_size, image_size, anchors)
    low = [name for name, share in shares.items() if share < LOW_COVERAGE]
    line = (f"boxes with an anchor of IoU >= {MATCH_IOU} at {image_size} px: "
            + (", ".join(f"{name} {share:.0%}" for name, share in shares.items()) or "no boxes"))
    if low:
        line = (f"warning: {line}; {', '.join(low)} below {LOW_COVERAGE:.0%}: few positive anchors, so poorly learnt "
                "(a larger --image-size helps: the anchor grid's strides are fixed in pixels)")
    return shares, line


def retinanet_fit(boxes: torch.Tensor, image_size: int) -> tuple[dict[str, Any], str]:
    """The teacher's anchors (``fit_retinanet_anchors``) with a line saying what was chosen. boxes: (M, 4) xyxy as
    fractions of the image side (``data.coco.relative_boxes``), ``image_size``: the training input's longer side (px)."""
    anchors, coverage = fit_retinanet_anchors(boxes * image_size, image_size)
    smallest = [round(level[0] * image_size, 1) for level in anchors["scales"]]
    return anchors, (f"anchors fitted to {len(boxes)} boxes: smallest per level P3-P7 {smallest} px, ratios "
                     f"{anchors['ratios']}; {coverage:.0%} of the boxes have an anchor of IoU >= {MATCH_IOU}")


def fit_retinanet_anchors(boxes_xyxy: torch.Tensor, image_size: int, seed: int = 0) -> tuple[dict[str, Any], float]:
    """Anchors for the ResNet50 teacher fitted to its training boxes; returns (anchors, grid coverage 0..1).

    boxes_xyxy: (M, 4) pixels in images resized so that the longer side is ``image_size``. Ratios: k-means
    on log aspect ratio (three; torchvision's 0.5, 1, 2 for fewer than 20 boxes). Sizes: torchvision's layout
    with the smallest anchor of each level m x its stride, m the largest of 4, 4 * 2^-1/4, ..., 1 whose grid
    coverage is within one point of the best m: torchvision's own anchors where the boxes allow, smaller ones
    only as far as small boxes need.
    """
    if len(boxes_xyxy) > MAX_FIT_BOXES:
        boxes_xyxy = boxes_xyxy[torch.randperm(len(boxes_xyxy), generator=torch.Generator().manual_seed(seed))[:MAX_FIT_BOXES]]
    wh = boxes_xyxy[:, 2:] - boxes_xyxy[:, :2]
    ratios = [math.exp(r) for r in _kmeans_1d((wh[:, 1] / wh[:, 0]).log().double(), 3)] if len(wh) >= 20 else RETINANET_RATIOS
    candidates = [retinanet_anchors(image_size, RETINANET_STRIDE_MULTIPLE * 2 ** (-k / 4), ratios) for k in range(9)]
    coverage = [grid_coverage(boxes_xyxy, image_size, c) for c in candidates]
    best = max(coverage)
    chosen = next(i for i, c in enumerate(coverage) if c >= best - 0.01)
    return candidates[chosen], coverage[chosen]
