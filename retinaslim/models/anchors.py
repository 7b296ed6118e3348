"""Student anchors: sizes and aspect ratios as fractions of the input side, fitted to the training boxes.

An anchor set is ``{"scales": [[s, s], [s, s], [s, s]], "ratios": [r, r, r]}``: per FPN level (C3, C4, C5)
its sizes (sqrt(w*h) / image side) and, shared by every level, aspect ratios (h / w), so each location
has len(scales[0]) * len(ratios) anchors (torchvision needs the same number on every level). The set is
stored in the checkpoint's ``arch_options``, so a model is rebuilt with the anchors it was trained with.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator

# ID-1 cards spanning ~10% to ~65% of the frame, in both orientations.
DEFAULT_ANCHORS: dict[str, Any] = {"scales": [[0.1, 0.159], [0.2, 0.318], [0.4, 0.636]], "ratios": [0.63, 1.0, 1.59]}


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


def fitted_or_default(boxes_wh: torch.Tensor, min_boxes: int = 20) -> tuple[dict[str, Any], str]:
    """Anchors fitted to box shapes (``fit_anchors``), kept only when their mean best shape IoU with the boxes beats
    ``DEFAULT_ANCHORS``'s; with a line saying which set was chosen and why. boxes_wh: as for ``fit_anchors``."""
    if len(boxes_wh) < min_boxes:
        return DEFAULT_ANCHORS, f"anchors: default ({len(boxes_wh)} boxes are too few to fit)"
    fitted = fit_anchors(boxes_wh)
    fitted_iou, default_iou = shape_iou(boxes_wh, fitted).mean().item(), shape_iou(boxes_wh, DEFAULT_ANCHORS).mean().item()
    if fitted_iou <= default_iou:
        return DEFAULT_ANCHORS, (f"anchors: default (mean best IoU with {len(boxes_wh)} boxes {default_iou:.3f}, "
                                 f"fitted {fitted_iou:.3f})")
    return fitted, (f"anchors fitted to {len(boxes_wh)} boxes: mean best IoU {fitted_iou:.3f} (default {default_iou:.3f}); "
                    f"sizes {fitted['scales']} of the input side, ratios {fitted['ratios']}")
