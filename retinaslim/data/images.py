"""Robust image decoding and image lists.

Every image becomes a (3, H, W) float tensor in [0, 1], RGB, in its displayed orientation (EXIF
rotation applied), whatever its mode (grayscale, palette, RGBA, CMYK, 16-bit).

An image declaring more than ``max_image_pixels()`` pixels (``RETINASLIM_MAX_IMAGE_PIXELS``, default 100
million) is refused before it is decoded: a tiny file can declare a size whose pixels fill the memory.
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
MAX_PIXELS_ENV = "RETINASLIM_MAX_IMAGE_PIXELS"
DEFAULT_MAX_PIXELS = 100_000_000

# retinaslim checks the declared size itself (read_image), with its own limit and message; PIL's check
# would only warn between its limit and twice its limit, then decode.
Image.MAX_IMAGE_PIXELS = None


class ImageError(Exception):
    """An image file that cannot be decoded; callers skip and count it."""


class SizeMismatch(Exception):
    """An image that is not the shape its label file declares: its boxes were drawn on another picture."""


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


def max_image_pixels() -> int:
    """The largest width x height an image may declare: ``RETINASLIM_MAX_IMAGE_PIXELS`` or 100 million."""
    text = os.environ.get(MAX_PIXELS_ENV)
    if text is None:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(float(text))
    except ValueError:
        value = 0
    if value < 1:
        raise UserError(f"{MAX_PIXELS_ENV}={text!r}: expected a positive number of pixels, e.g. 200000000")
    return value


def read_rgb(path: Path, max_pixels: int | None = None) -> Image.Image:
    """Decode ``path`` -> an RGB PIL image in its displayed orientation (EXIF applied); raises ``ImageError``.

    ``max_pixels``: refuse images declaring more pixels (default ``max_image_pixels()``).
    """
    max_pixels = max_pixels or max_image_pixels()
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise ImageError(f"{path}: declares {width} x {height} = {width * height:,} pixels, more than the "
                                 f"limit of {max_pixels:,} (a decompression bomb?); set {MAX_PIXELS_ENV} to allow it")
            image = ImageOps.exif_transpose(image)
            return _to_rgb(image)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        raise ImageError(f"{path}: cannot decode image ({e.__class__.__name__}: {e})") from None


def read_image(path: Path, max_pixels: int | None = None) -> torch.Tensor:
    """Decode ``path`` -> (3, H, W) float32 in [0, 1], EXIF orientation applied; raises ``ImageError``."""
    array = np.asarray(read_rgb(path, max_pixels), dtype=np.uint8)  # (H, W, 3)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


def _header(path: Path) -> tuple[int, int, int]:
    """(width, height, EXIF orientation) of an image as displayed, read from its header only."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError, SyntaxError) as e:
        raise ImageError(f"{path}: cannot read image size ({e.__class__.__name__}: {e})") from None
    if orientation in (5, 6, 7, 8):  # a quarter turn swaps the sides
        return height, width, orientation
    return width, height, orientation


def displayed_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image as displayed (EXIF rotation applied), read from its header only."""
    return _header(path)[:2]


def same_shape(size: tuple[int, int], other: tuple[int, int]) -> bool:
    """Whether two (width, height) sizes are the same picture at two scales (to a pixel)."""
    (width, height), (other_width, other_height) = size, other
    return abs(width * other_height / height - other_width) <= 1 and abs(height * other_width / width - other_height) <= 1


def check_declared_size(path: Path, width: int, height: int) -> tuple[int, int]:
    """The displayed size of the image at ``path`` (header only, EXIF rotation applied), checked against the
    ``width`` x ``height`` a label file declares for it.

    The same size, or the same shape at another size (a resized copy, whose boxes scale by displayed /
    declared), is returned; a different shape raises ``SizeMismatch`` naming both sizes (the boxes were drawn
    on another picture, or before an EXIF rotation); an unreadable header raises ``ImageError``.
    """
    shown_width, shown_height, orientation = _header(path)
    if not same_shape((width, height), (shown_width, shown_height)):
        turned = f" (its EXIF orientation {orientation} turns it a quarter)" if orientation in (5, 6, 7, 8) else ""
        raise SizeMismatch(f"declares {width} x {height}, but the image is {shown_width} x {shown_height} as "
                           f"displayed{turned}")
    return shown_width, shown_height


def list_images(source: Path) -> list[Path]:
    """Image files under a folder (recursive, sorted), listed one per line in a text file, or one image file."""
    source = Path(source)
    if source.is_file() and source.suffix.lower() in IMAGE_SUFFIXES:
        return [source]
    if source.is_dir():
        paths = []
        for root, _dirs, files in os.walk(source):  # os.walk does not follow symlinked folders: no loops
            paths += [Path(root) / f for f in files if f.lower().endswith(IMAGE_SUFFIXES)]
        if not paths:
            raise UserError(f"{source}: no images found (looked for {', '.join(IMAGE_SUFFIXES)})")
        return sorted(paths)
    if source.is_file() and source.suffix.lower() == ".json":
        raise UserError(f"{source}: a JSON file, not images; pass the folder of images (a COCO file's images are in the "
                        "folder its file_name entries are relative to)")
    if source.is_file():
        try:
            lines = [line.strip() for line in source.read_text().splitlines()]
        except UnicodeDecodeError:
            weights = "; it looks like weights, which go after --weights or --teacher" if source.suffix.lower() in (
                ".pt", ".pth", ".onnx") else ""
            raise UserError(f"{source}: a binary file that is not an image ({', '.join(IMAGE_SUFFIXES)}); expected an "
                            f"image, a folder of images or a text file listing them, one per line{weights}") from None
        paths = [(source.parent / line) for line in lines if line and not line.startswith("#")]
        if not paths:
            raise UserError(f"{source}: the image list is empty")
        if not any(path.name.lower().endswith(IMAGE_SUFFIXES) for path in paths):
            raise UserError(f"{source}: none of its {len(paths)} lines names an image file ({', '.join(IMAGE_SUFFIXES)}); "
                            "expected one image path per line")
        return paths
    raise UserError(f"{source}: no such folder or image-list file")


class ImageListDataset(torch.utils.data.Dataset):
    """Decodes images in DataLoader workers; yields (index, image or None, error message or None)."""

    def __init__(self, paths: list[Path]):
        self.paths = paths
        self.max_pixels = max_image_pixels()  # read here: a bad setting is a UserError in the main process

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            return index, read_image(self.paths[index], self.max_pixels), None
        except ImageError as e:
            return index, None, str(e)


def collate_list(batch: list) -> list:
    """Keep a batch as a list: detection images differ in size."""
    return batch
