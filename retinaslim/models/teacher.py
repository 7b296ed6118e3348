"""The teacher: torchvision's ResNet50-FPN RetinaNet (v1 or v2), anchors scaled to the input size."""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.models import ResNet50_Weights
from torchvision.models.detection import retinanet_resnet50_fpn, retinanet_resnet50_fpn_v2

from retinaslim.errors import UserError
from retinaslim.models.common import IgnoreAwareRetinaNet, configure, scaled_anchor_generator
from retinaslim.models.registry import register


def _imagenet_weights(pretrained: bool) -> ResNet50_Weights | None:
    """ImageNet ResNet50 weights from the local torch cache only; a clear error when absent."""
    if not pretrained:
        return None
    weights = ResNet50_Weights.IMAGENET1K_V1
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if not cached.is_file():
        raise UserError(
            f"--pretrained needs torchvision's ImageNet ResNet50 weights at {cached} (nothing is downloaded); "
            "copy the file there or train without --pretrained"
        )
    return weights


def _build(builder, num_classes: int, image_size: int, pretrained: bool):
    stock = builder(weights=None, weights_backbone=_imagenet_weights(pretrained), num_classes=num_classes)
    # torchvision's backbone and head (v1 or v2), in the RetinaNet that honours ignore regions.
    model = IgnoreAwareRetinaNet(stock.backbone, num_classes, anchor_generator=scaled_anchor_generator(image_size), head=stock.head)
    return configure(model)


@register("retinanet_resnet50_fpn", role="teacher")
def retinanet_r50(num_classes: int, image_size: int, pretrained: bool = False):
    """torchvision RetinaNet v1 (no head norm, L1 box loss)."""
    return _build(retinanet_resnet50_fpn, num_classes, image_size, pretrained)


@register("retinanet_resnet50_fpn_v2", role="teacher")
def retinanet_r50_v2(num_classes: int, image_size: int, pretrained: bool = False):
    """torchvision RetinaNet v2 (GroupNorm heads, GIoU box loss, P6 from P5)."""
    return _build(retinanet_resnet50_fpn_v2, num_classes, image_size, pretrained)
