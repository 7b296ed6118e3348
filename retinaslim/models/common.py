"""Pieces every registered RetinaNet shares."""

from __future__ import annotations

import torch
from torchvision.models.detection.transform import GeneralizedRCNNTransform


class NoResizeTransform(GeneralizedRCNNTransform):
    """torchvision's normalise-and-pad transform without its resize.

    retinaslim sizes images itself (``core.tta.Transform``) so that training, evaluation and every
    test-time transform share one exact, invertible resize; torchvision's own resize would undo it.
    """

    def __init__(self) -> None:
        super().__init__(min_size=1, max_size=1, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])

    def resize(self, image: torch.Tensor, target=None):
        return image, target


def configure(model, detections_per_image: int = 100):
    """Install the no-resize transform and the inference settings shared by every model."""
    model.transform = NoResizeTransform()
    model.score_thresh = 0.05
    model.detections_per_img = detections_per_image
    return model
