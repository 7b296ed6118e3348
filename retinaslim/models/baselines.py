"""Baselines the student is measured against: torchvision RetinaNet with a light backbone swapped in.

This is the "just swap the backbone" approach the article rejects: each keeps RetinaNet's 256-channel
FPN (P3-P7) and its stock heads (4 x 3x3 convs per branch, 9 anchors), so only the backbone is light.
All train from scratch (BatchNorm, not torchvision's frozen BatchNorm for pretrained weights).
"""

from __future__ import annotations

from torch import nn
from torchvision.models import mobilenet_v2, shufflenet_v2_x1_0
from torchvision.models.detection.backbone_utils import BackboneWithFPN, resnet_fpn_backbone
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from retinaslim.models.common import IgnoreAwareRetinaNet, configure, scaled_anchor_generator
from retinaslim.models.registry import register

FPN_CHANNELS = 256


def _retinanet(backbone: nn.Module, num_classes: int, image_size: int):
    anchors = scaled_anchor_generator(image_size)
    head = RetinaNetHead(backbone.out_channels, anchors.num_anchors_per_location()[0], num_classes)
    return configure(IgnoreAwareRetinaNet(backbone, num_classes, anchor_generator=anchors, head=head))


def _with_fpn(body: nn.Module, return_layers: dict[str, str], in_channels: list[int]) -> BackboneWithFPN:
    return BackboneWithFPN(body, return_layers, in_channels, FPN_CHANNELS, extra_blocks=LastLevelP6P7(FPN_CHANNELS, FPN_CHANNELS))


@register("retinanet_resnet18_fpn", role="baseline")
def retinanet_resnet18(num_classes: int, image_size: int):
    """torchvision RetinaNet v1 with a ResNet18 backbone (C3-C5 -> FPN P3-P7)."""
    backbone = resnet_fpn_backbone(backbone_name="resnet18", weights=None, norm_layer=nn.BatchNorm2d, trainable_layers=5,
                                   returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(FPN_CHANNELS, FPN_CHANNELS))
    return _retinanet(backbone, num_classes, image_size)


@register("retinanet_mobilenet_v2_fpn", role="baseline")
def retinanet_mobilenet_v2(num_classes: int, image_size: int):
    """RetinaNet with torchvision's MobileNetV2 (strides 8/16/32: features 6, 13, 18)."""
    body = mobilenet_v2(weights=None).features
    return _retinanet(_with_fpn(body, {"6": "c3", "13": "c4", "18": "c5"}, [32, 96, 1280]), num_classes, image_size)


@register("retinanet_shufflenet_v2_fpn", role="baseline")
def retinanet_shufflenet_v2(num_classes: int, image_size: int):
    """RetinaNet with torchvision's ShuffleNetV2 x1.0 (stages 2, 3, 4 at strides 8/16/32)."""
    body = shufflenet_v2_x1_0(weights=None)
    return _retinanet(_with_fpn(body, {"stage2": "c3", "stage3": "c4", "stage4": "c5"}, [116, 232, 464]), num_classes, image_size)
