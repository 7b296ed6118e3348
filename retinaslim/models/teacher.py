"""The teacher: torchvision's ResNet50-FPN RetinaNet (v1 or v2).

A teacher trained here has anchors fitted to its training boxes (``models.anchors.fit_retinanet_anchors``;
teachers trained before that scaled torchvision's to the input size). A teacher trained elsewhere with torchvision
(``retinaslim import-teacher``) keeps torchvision's own anchors and postprocess: ``TORCHVISION_INFERENCE``
are the builder options its checkpoint stores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torchvision.models import ResNet50_Weights
from torchvision.models.detection import (RetinaNet_ResNet50_FPN_V2_Weights, RetinaNet_ResNet50_FPN_Weights,
                                          retinanet_resnet50_fpn, retinanet_resnet50_fpn_v2)

from retinaslim.errors import UserError
from retinaslim.models.anchors import anchor_generator
from retinaslim.models.common import IgnoreAwareRetinaNet, configure, scaled_anchor_generator
from retinaslim.models.registry import register

# torchvision's RetinaNet at inference: its 32-512 px anchors and up to 300 boxes per image (score 0.05,
# top-1000 candidates per level and NMS 0.5 are every retinaslim model's settings too).
TORCHVISION_INFERENCE = {"anchor_sizes": "torchvision", "detections_per_image": 300}

# torchvision's COCO weights per teacher architecture (91 outputs: COCO category ids, with gaps).
COCO_WEIGHTS = {"retinanet_resnet50_fpn": RetinaNet_ResNet50_FPN_Weights.COCO_V1,
                "retinanet_resnet50_fpn_v2": RetinaNet_ResNet50_FPN_V2_Weights.COCO_V1}


def cached_weights_path(url: str) -> Path:
    """Where torchvision keeps the file ``url`` names: the local torch hub cache (``$TORCH_HOME/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name


def coco_weights_path(arch: str) -> Path:
    """torchvision's COCO weights file for teacher ``arch`` in the local torch cache (nothing is downloaded).

    Raises ``UserError`` for an architecture without COCO weights, or when the file is not there.
    """
    if arch not in COCO_WEIGHTS:
        raise UserError(f"`init` coco: torchvision has COCO weights for {', '.join(COCO_WEIGHTS)} only, not {arch}")
    path = cached_weights_path(COCO_WEIGHTS[arch].url)
    if not path.is_file():
        raise UserError(f"`init` coco needs torchvision's COCO weights for {arch} at {path} (nothing is downloaded); "
                        "copy the file there or pass its path to `init`")
    return path


def _imagenet_weights(pretrained: bool) -> ResNet50_Weights | None:
    """ImageNet ResNet50 weights from the local torch cache only; a clear error when absent."""
    if not pretrained:
        return None
    weights = ResNet50_Weights.IMAGENET1K_V1
    cached = cached_weights_path(weights.url)
    if not cached.is_file():
        raise UserError(
            f"`pretrained` needs torchvision's ImageNet ResNet50 weights at {cached} (nothing is downloaded); "
            "copy the file there or train without `pretrained`"
        )
    return weights


def _build(builder, num_classes: int, image_size: int, pretrained: bool, anchor_sizes: str, detections_per_image: int,
           anchors: dict[str, Any] | None):
    if anchor_sizes not in ("scaled", "torchvision"):
        raise UserError(f"anchor_sizes {anchor_sizes!r}: choose scaled or torchvision")
    stock = builder(weights=None, weights_backbone=_imagenet_weights(pretrained), num_classes=num_classes)
    if anchors is not None:
        generator = anchor_generator(image_size, anchors)
    else:
        generator = stock.anchor_generator if anchor_sizes == "torchvision" else scaled_anchor_generator(image_size)
    # torchvision's backbone and head (v1 or v2), in the RetinaNet that honours ignore regions.
    model = IgnoreAwareRetinaNet(stock.backbone, num_classes, anchor_generator=generator, head=stock.head)
    return configure(model, detections_per_image)


@register("retinanet_resnet50_fpn", role="teacher")
def retinanet_r50(num_classes: int, image_size: int, pretrained: bool = False, anchor_sizes: str = "scaled",
                  detections_per_image: int = 100, anchors: dict[str, Any] | None = None):
    """torchvision RetinaNet v1 (no head norm, L1 box loss).

    ``anchors``: fitted anchors (``models.anchors``: 3 sizes per level P3-P7 as fractions of ``image_size``, and
    ratios h/w), which train-teacher stores; without them ``anchor_sizes`` chooses ``scaled`` (torchvision's
    32-512 px scaled to ``image_size`` / 512, teachers trained before anchors were fitted) or ``torchvision`` (its
    own 32-512 px, for weights trained by torchvision). ``detections_per_image``: the most boxes one image keeps
    after NMS.
    """
    return _build(retinanet_resnet50_fpn, num_classes, image_size, pretrained, anchor_sizes, detections_per_image, anchors)


@register("retinanet_resnet50_fpn_v2", role="teacher")
def retinanet_r50_v2(num_classes: int, image_size: int, pretrained: bool = False, anchor_sizes: str = "scaled",
                     detections_per_image: int = 100, anchors: dict[str, Any] | None = None):
    """torchvision RetinaNet v2 (GroupNorm heads, GIoU box loss, P6 from P5); options as for v1."""
    return _build(retinanet_resnet50_fpn_v2, num_classes, image_size, pretrained, anchor_sizes, detections_per_image,
                  anchors)
