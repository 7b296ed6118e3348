"""Test-time transforms for multi-transform inference, each with its exact inverse.

A transform resizes an image so that its longer side is ``scale * image_size`` pixels and may flip
it horizontally. ``invert`` maps boxes predicted on the transformed image back to original-image
pixels, so predictions from every transform can be fused in one coordinate space.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def long_side_size(height: int, width: int, long_side: int) -> tuple[int, int]:
    """(height, width) scaled so that the longer side is ``long_side``, aspect ratio kept."""
    ratio = long_side / max(height, width)
    return max(1, round(height * ratio)), max(1, round(width * ratio))


def resize_image(image: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of a (3, H, W) float image to (3, h, w); antialiased so downscaling keeps detail."""
    if tuple(image.shape[-2:]) == tuple(size_hw):
        return image
    return F.interpolate(image[None], size=size_hw, mode="bilinear", antialias=True, align_corners=False)[0]


@dataclass(frozen=True)
class Transform:
    """Resize to ``scale * image_size`` on the longer side, then optionally flip horizontally."""

    scale: float = 1.0
    hflip: bool = False

    @property
    def name(self) -> str:
        return f"scale{self.scale:g}" + ("+hflip" if self.hflip else "")

    def apply(self, image: torch.Tensor, image_size: int) -> torch.Tensor:
        """(3, H, W) original image -> (3, h, w) transformed image."""
        height, width = image.shape[-2:]
        out = resize_image(image, long_side_size(height, width, round(self.scale * image_size)))
        return out.flip(-1) if self.hflip else out

    def invert(self, boxes: torch.Tensor, transformed_hw: tuple[int, int], original_hw: tuple[int, int]) -> torch.Tensor:
        """(N, 4) xyxy boxes on the transformed image -> (N, 4) xyxy boxes in original-image pixels."""
        h, w = transformed_hw
        height, width = original_hw
        boxes = boxes.clone()
        if self.hflip:
            boxes[:, [0, 2]] = w - boxes[:, [2, 0]]
        boxes[:, [0, 2]] *= width / w
        boxes[:, [1, 3]] *= height / h
        return boxes


def make_transforms(scales: tuple[float, ...], hflip: bool) -> list[Transform]:
    """Every scale, each with and without a horizontal flip when ``hflip``."""
    flips = (False, True) if hflip else (False,)
    return [Transform(scale, flip) for scale in scales for flip in flips]
