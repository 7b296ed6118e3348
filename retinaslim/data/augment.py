"""Bbox-safe training augmentation presets (albumentations); boxes follow the pixels."""

from __future__ import annotations

import albumentations as A
import numpy as np

AUGMENT_PRESETS = ("none", "light")


def build_augment(preset: str) -> A.Compose | None:
    """The named preset; ``none`` returns None. Works on HWC uint8 images with xyxy pixel boxes."""
    if preset == "none":
        return None
    if preset == "light":
        transforms = [
            A.HorizontalFlip(p=0.5),
            A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5),
            A.HueSaturationValue(hue_shift_limit=5, sat_shift_limit=15, val_shift_limit=0, p=0.3),
        ]
    else:
        raise ValueError(f"unknown augment preset {preset!r}; choose one of {', '.join(AUGMENT_PRESETS)}")
    bbox_params = A.BboxParams(format="pascal_voc", label_fields=["labels"], clip=True, min_width=1, min_height=1)
    return A.Compose(transforms, bbox_params=bbox_params)


def apply_augment(
    augment: A.Compose, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 image, (N, 4) xyxy boxes, (N,) labels -> the same, augmented."""
    out = augment(image=image, bboxes=boxes, labels=labels)
    boxes_out = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
    return out["image"], boxes_out, np.asarray(out["labels"], dtype=np.int64)
