"""Bbox-safe training augmentation presets (albumentations); boxes follow the pixels."""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # else importing it asks PyPI for a newer version (2 s timeout)
import albumentations as A  # noqa: E402
import numpy as np  # noqa: E402

from retinaslim.errors import UserError  # noqa: E402

AUGMENT_PRESETS = ("none", "light", "strong", "mosaic")


def build_augment(preset: str) -> A.Compose | None:
    """The named preset's per-image transforms; ``none`` returns None. Works on HWC uint8 images with xyxy pixel boxes.

    ``mosaic`` is ``light`` here: its four-image tiling happens first, in ``data.dataset.DetectionDataset``.
    """
    if preset == "none":
        return None
    colour = [
        A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5),
        A.HueSaturationValue(hue_shift_limit=5, sat_shift_limit=15, val_shift_limit=0, p=0.3),
    ]
    if preset in ("light", "mosaic"):
        transforms = [A.HorizontalFlip(p=0.5), *colour]
    elif preset == "strong":
        # Phone photos: cards at any scale and position, tilted, seen at an angle, blurred, recompressed.
        transforms = [
            A.HorizontalFlip(p=0.5),
            A.Affine(scale=(0.6, 1.4), translate_percent=(-0.15, 0.15), rotate=(-20, 20), border_mode=0, p=0.7),
            A.Perspective(scale=(0.02, 0.06), p=0.3),
            *colour,
            A.GaussianBlur(sigma_limit=(0.3, 1.5), p=0.2),
            A.ImageCompression(quality_range=(40, 90), p=0.3),
        ]
    else:
        raise UserError(f"`augment` {preset!r}: choose {', '.join(AUGMENT_PRESETS)}")
    # Boxes that leave the frame are clipped; ones left under 1 px (or 20% of their area) are dropped.
    bbox_params = A.BboxParams(format="pascal_voc", label_fields=["labels"], clip=True, min_width=1, min_height=1,
                               min_visibility=0.2)
    return A.Compose(transforms, bbox_params=bbox_params)


def apply_augment(
    augment: A.Compose, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 image, (N, 4) xyxy boxes, (N,) labels -> the same, augmented."""
    out = augment(image=image, bboxes=boxes, labels=labels)
    boxes_out = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
    return out["image"], boxes_out, np.asarray(out["labels"], dtype=np.int64)
