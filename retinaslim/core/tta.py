"""Test-time transforms for multi-transform inference, each with its exact inverse.

A transform resizes an image (longer side ``scale * image_size`` pixels, ``image_size`` being the longer side
as everywhere in retinaslim; or, when ``short_side`` is set, shorter side ``short_side`` pixels, Data
Distillation's absolute sizes), then optionally flips it horizontally and/or vertically, then rotates it
counter-clockwise by a multiple of 90 degrees. ``invert`` maps boxes predicted on the transformed image
back to original-image pixels, so the predictions of every transform can be fused in one space.
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


def _unrotate_once(boxes: torch.Tensor, rotated_hw: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
    """Undo one counter-clockwise quarter turn: input point (x, y) went to (y, W - x) on the (W, H) image."""
    h, w = rotated_hw  # h is the unrotated image's width
    out = torch.stack([h - boxes[:, 3], boxes[:, 0], h - boxes[:, 1], boxes[:, 2]], dim=1)
    return out, (w, h)


@dataclass(frozen=True)
class Transform:
    """Resize, then flip(s), then rotate by ``rot`` degrees counter-clockwise (0, 90, 180 or 270)."""

    scale: float = 1.0
    hflip: bool = False
    vflip: bool = False
    rot: int = 0
    short_side: int | None = None  # absolute shorter side in pixels; replaces ``scale`` when set

    def __post_init__(self) -> None:
        if self.rot not in (0, 90, 180, 270):
            raise ValueError(f"rotation {self.rot} is not a multiple of 90 degrees in [0, 270]")

    @property
    def name(self) -> str:
        size = f"short{self.short_side}" if self.short_side else f"scale{self.scale:g}"
        return size + "+hflip" * self.hflip + "+vflip" * self.vflip + (f"+rot{self.rot}" if self.rot else "")

    @classmethod
    def from_name(cls, name: str) -> Transform:
        """The transform a ``name`` describes ('scale0.75+hflip', 'short800+vflip+rot90')."""
        size, *flags = name.split("+")
        options: dict = {"short_side": int(size[5:])} if size.startswith("short") else {"scale": float(size[5:])}
        for flag in flags:
            if flag in ("hflip", "vflip"):
                options[flag] = True
            else:
                options["rot"] = int(flag.removeprefix("rot"))
        return cls(**options)

    def resized_size(self, height: int, width: int, image_size: int) -> tuple[int, int]:
        if self.short_side:
            ratio = self.short_side / min(height, width)
            return max(1, round(height * ratio)), max(1, round(width * ratio))
        return long_side_size(height, width, round(self.scale * image_size))

    def apply(self, image: torch.Tensor, image_size: int) -> torch.Tensor:
        """(3, H, W) original image -> (3, h, w) transformed image."""
        out = resize_image(image, self.resized_size(*image.shape[-2:], image_size))
        if self.hflip:
            out = out.flip(-1)
        if self.vflip:
            out = out.flip(-2)
        return torch.rot90(out, self.rot // 90, dims=(-2, -1)) if self.rot else out

    def invert(self, boxes: torch.Tensor, transformed_hw: tuple[int, int], original_hw: tuple[int, int]) -> torch.Tensor:
        """(N, 4) xyxy boxes on the transformed image -> (N, 4) xyxy boxes in original-image pixels."""
        boxes, size = boxes.clone(), tuple(transformed_hw)
        for _ in range(self.rot // 90):
            boxes, size = _unrotate_once(boxes, size)
        h, w = size
        if self.vflip:
            boxes[:, [1, 3]] = h - boxes[:, [3, 1]]
        if self.hflip:
            boxes[:, [0, 2]] = w - boxes[:, [2, 0]]
        height, width = original_hw
        boxes[:, [0, 2]] *= width / w
        boxes[:, [1, 3]] *= height / h
        return boxes


def make_transforms(scales: tuple[float, ...], hflip: bool, vflip: bool = False, rot90: bool = False,
                    short_sides: tuple[int, ...] = ()) -> list[Transform]:
    """Every size x (with and without each enabled flip) x (0 and +-90 degrees when ``rot90``).

    Sizes: each of ``scales`` (factors of ``image_size``), then each of ``short_sides`` (shorter sides in pixels).
    """
    sizes = [{"scale": s} for s in scales] + [{"short_side": int(s)} for s in short_sides]
    hflips = (False, True) if hflip else (False,)
    vflips = (False, True) if vflip else (False,)
    rotations = (0, 90, 270) if rot90 else (0,)
    return [Transform(hflip=h, vflip=v, rot=r, **size) for size in sizes for h in hflips for v in vflips for r in rotations]
