"""Robust image decoding and image lists.

Every image becomes a (3, H, W) float tensor in [0, 1], RGB, in its displayed orientation (EXIF
rotation applied), whatever its mode (grayscale, palette, RGBA, CMYK, 16-bit).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from retinaslim.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
EXIF_ORIENTATION = 0x0112


class ImageError(Exception):
    """An image file that cannot be decoded; callers skip and count it."""


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # PIL's convert("RGB") clips 16-bit values at 255; rescale to 8 bits first.
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / top * 255.0, 0, 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent pixels become white, as in a viewer, not the black hidden under the alpha.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def read_rgb(path: Path) -> Image.Image:
    """Decode ``path`` -> an RGB PIL image in its displayed orientation (EXIF applied); raises ``ImageError``."""
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            return _to_rgb(image)
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError, SyntaxError) as e:
        raise ImageError(f"{path}: cannot decode image ({e.__class__.__name__}: {e})") from None


def read_image(path: Path) -> torch.Tensor:
    """Decode ``path`` -> (3, H, W) float32 in [0, 1], EXIF orientation applied; raises ``ImageError``."""
    array = np.asarray(read_rgb(path), dtype=np.uint8)  # (H, W, 3)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


def displayed_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image as displayed (EXIF rotation applied), read from its header only."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            if image.getexif().get(EXIF_ORIENTATION, 1) in (5, 6, 7, 8):  # a quarter turn swaps the sides
                return height, width
            return width, height
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError, SyntaxError) as e:
        raise ImageError(f"{path}: cannot read image size ({e.__class__.__name__}: {e})") from None


def list_images(source: Path) -> list[Path]:
    """Image files under a folder (recursive, sorted) or listed one per line in a text file."""
    source = Path(source)
    if source.is_dir():
        paths = []
        for root, _dirs, files in os.walk(source):  # os.walk does not follow symlinked folders: no loops
            paths += [Path(root) / f for f in files if f.lower().endswith(IMAGE_SUFFIXES)]
        if not paths:
            raise UserError(f"{source}: no images found (looked for {', '.join(IMAGE_SUFFIXES)})")
        return sorted(paths)
    if source.is_file():
        lines = [line.strip() for line in source.read_text().splitlines()]
        paths = [(source.parent / line) for line in lines if line and not line.startswith("#")]
        if not paths:
            raise UserError(f"{source}: the image list is empty")
        return paths
    raise UserError(f"{source}: no such folder or image-list file")


class ImageListDataset(torch.utils.data.Dataset):
    """Decodes images in DataLoader workers; yields (index, image or None, error message or None)."""

    def __init__(self, paths: list[Path]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            return index, read_image(self.paths[index]), None
        except ImageError as e:
            return index, None, str(e)


def collate_list(batch: list) -> list:
    """Keep a batch as a list: detection images differ in size."""
    return batch
