"""Batched inference under a list of test-time transforms, boxes mapped back to original pixels."""

from __future__ import annotations

import torch

from retinaslim.core.detections import Detections
from retinaslim.core.tta import Transform
from retinaslim.models.lean import LeanDetector


@torch.no_grad()
def detect(
    detector: LeanDetector, images: list[torch.Tensor], image_size: int, transforms: list[Transform], device: torch.device
) -> list[list[Detections]]:
    """Run ``detector`` on every transform of every image.

    images: original (3, H, W) float images in [0, 1].
    Returns detections per image, per transform (in ``transforms`` order), boxes xyxy in each
    original image's pixels, on the CPU.
    """
    results: list[list[Detections]] = [[] for _ in images]
    for transform in transforms:
        batch = [transform.apply(image.to(device), image_size) for image in images]
        with torch.autocast(device.type, enabled=device.type == "cuda"):
            outputs = detector(batch)
        for i, (image, transformed, out) in enumerate(zip(images, batch, outputs)):
            boxes = transform.invert(out["boxes"].float().cpu(), transformed.shape[-2:], image.shape[-2:])
            results[i].append(Detections(boxes, out["scores"].float().cpu(), out["labels"].cpu()))
    return results
