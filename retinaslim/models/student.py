"""The student: a slim RetinaNet designed by the rules in SEED-NOTES.md.

- Backbone after ThunderNet's SNet: a dilated 3x3 stem (dilation 2: the receptive field of a 5x5 at a
  3x3's cost), a depthwise-separable conv, then ShuffleNetV2 units with 5x5 depthwise convs, far
  shallower than ResNet18. 1x1 convs keep equal input and output channels (ShuffleNetV2 guideline G1).
- A slim FPN on C3-C5 only (strides 8, 16, 32) whose output convs are depthwise 3x3.
- Shared heads of 1x1 convs only (the article's heads), 6 anchors per location, anchor sizes and
  aspect ratios fitted to the training boxes (``models.anchors``) and stored with the weights.
- GroupNorm or BatchNorm (``norm``); BatchNorm folds into the convs at inference (``models.lean``).

The pieces are public so that ``benchmarks/ablation.py`` can rebuild the design one rule at a time.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import nn
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.ops import FeaturePyramidNetwork

from retinaslim.errors import UserError
from retinaslim.models.anchors import DEFAULT_ANCHORS, anchor_generator
from retinaslim.models.common import IgnoreAwareRetinaNet, configure
from retinaslim.models.registry import register


def norm_layer(kind: str, channels: int) -> nn.Module:
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "gn":
        return nn.GroupNorm(8 if channels % 8 == 0 else 1, channels)
    raise UserError(f"`norm` {kind!r}: choose gn or bn")


def conv(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, dilation: int = 1, norm: str = "gn", relu: bool = True) -> nn.Sequential:
    padding = dilation * (kernel - 1) // 2
    layers = [nn.Conv2d(cin, cout, kernel, stride, padding, dilation=dilation, groups=groups, bias=False), norm_layer(norm, cout)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _channel_shuffle(x: torch.Tensor, groups: int = 2) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)  # (N, C, H, W)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit with a 5x5 depthwise conv (SNet). Stride 2 halves the map and changes channels."""

    def __init__(self, cin: int, cout: int, stride: int, norm: str):
        super().__init__()
        self.stride = stride
        branch = cout // 2
        if stride == 2:
            self.shortcut = nn.Sequential(conv(cin, cin, 5, 2, groups=cin, norm=norm, relu=False), conv(cin, branch, 1, norm=norm))
            main_in = cin
        else:
            self.shortcut = None
            main_in = branch
        self.main = nn.Sequential(
            conv(main_in, branch, 1, norm=norm),
            conv(branch, branch, 5, stride, groups=branch, norm=norm, relu=False),
            conv(branch, branch, 1, norm=norm),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shortcut is None:
            keep, x = x.chunk(2, dim=1)
            out = torch.cat([keep, self.main(x)], dim=1)
        else:
            out = torch.cat([self.shortcut(x), self.main(x)], dim=1)
        return _channel_shuffle(out)


def dilated_stem(channels: int, norm: str) -> nn.Sequential:
    """Stride 4: a dilated 3x3 conv (stride 2) then a depthwise-separable conv (stride 2)."""
    return nn.Sequential(
        conv(3, channels, 3, stride=2, dilation=2, norm=norm),
        conv(channels, channels, 3, stride=2, groups=channels, norm=norm, relu=False),
        conv(channels, channels, 1, norm=norm),
    )


def snet_stages(cin: int, widths: tuple[int, ...], repeats: tuple[int, ...], norm: str) -> nn.ModuleList:
    """One stride-2 ShuffleNetV2 stage per width: C3, C4, C5 from a stride-4 input."""
    stages = []
    for width, repeat in zip(widths, repeats, strict=True):
        stages.append(nn.Sequential(ShuffleUnit(cin, width, 2, norm), *(ShuffleUnit(width, width, 1, norm) for _ in range(repeat - 1))))
        cin = width
    return nn.ModuleList(stages)


def slim_fpn(in_channels: list[int], channels: int) -> FeaturePyramidNetwork:
    """torchvision's FPN (1x1 laterals, top-down sums) with depthwise 3x3 output convs.

    The stock dense 3x3 output convs were 52% of slim-s's MACs; a depthwise one keeps the smoothing of
    the upsampled sum for 1/channels of the cost.
    """
    fpn = FeaturePyramidNetwork(in_channels, channels)
    for i in range(len(fpn.layer_blocks)):
        # Wrapped like torchvision's blocks: its loader renames un-nested "layer_blocks.i.weight" keys.
        fpn.layer_blocks[i] = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, groups=channels))
    return fpn


class SlimBackbone(nn.Module):
    """stem -> stages (the last three give C3, C4, C5) -> FPN; returns the FPN's levels."""

    def __init__(self, stem: nn.Module, stages: nn.ModuleList, fpn: nn.Module, out_channels: int):
        super().__init__()
        self.stem, self.stages, self.fpn = stem, stages, fpn
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        x = self.stem(x)
        features = OrderedDict()
        for i, stage in enumerate(self.stages):
            x = stage(x)
            features[f"c{i + 3}"] = x
        return self.fpn(features)


def _slim_branch(channels: int, hidden: int, layers: int, norm: str) -> nn.Sequential:
    blocks, cin = [], channels
    for _ in range(layers):
        blocks.append(conv(cin, hidden, 1, norm=norm))
        cin = hidden
    return nn.Sequential(*blocks)


def slim_head(channels: int, num_anchors: int, num_classes: int, hidden: int, layers: int, norm: str) -> RetinaNetHead:
    """torchvision's RetinaNet head (its matching and losses) with every conv made 1x1."""
    head = RetinaNetHead(channels, num_anchors, num_classes)
    cls, reg = head.classification_head, head.regression_head
    cls.conv = _slim_branch(channels, hidden, layers, norm)
    reg.conv = _slim_branch(channels, hidden, layers, norm)
    prior_bias = cls.cls_logits.bias.data[0].item()  # keeps torchvision's focal-loss prior (p = 0.01)
    cls.cls_logits = nn.Conv2d(hidden, num_anchors * num_classes, 1)
    reg.bbox_reg = nn.Conv2d(hidden, num_anchors * 4, 1)
    for layer in (cls.cls_logits, reg.bbox_reg):
        nn.init.normal_(layer.weight, std=0.01)
    nn.init.constant_(cls.cls_logits.bias, prior_bias)
    nn.init.zeros_(reg.bbox_reg.bias)
    return head


def slim_retinanet(num_classes: int, image_size: int, *, stem: int, widths, repeats, fpn_channels: int,
                   head_hidden: int, head_layers: int, norm: str, anchors: dict[str, Any] | None):
    backbone = SlimBackbone(dilated_stem(stem, norm), snet_stages(stem, tuple(widths), tuple(repeats), norm),
                            slim_fpn(list(widths), fpn_channels), fpn_channels)
    generator = anchor_generator(image_size, anchors or DEFAULT_ANCHORS)
    head = slim_head(fpn_channels, generator.num_anchors_per_location()[0], num_classes, head_hidden, head_layers, norm)
    return configure(IgnoreAwareRetinaNet(backbone, num_classes, anchor_generator=generator, head=head))


@register("slim-s", role="student")
def slim_s(num_classes: int, image_size: int, norm: str = "gn", anchors: dict[str, Any] | None = None):
    """~0.13 M parameters (125,434 for 3 classes): stem 16, stages 48/96/192 (2/3/2 units), FPN 64, heads
    2 x 1x1 of 64."""
    return slim_retinanet(num_classes, image_size, stem=16, widths=(48, 96, 192), repeats=(2, 3, 2),
                          fpn_channels=64, head_hidden=64, head_layers=2, norm=norm, anchors=anchors)


@register("slim-m", role="student")
def slim_m(num_classes: int, image_size: int, norm: str = "gn", anchors: dict[str, Any] | None = None):
    """~0.32 M parameters (319,202 for 3 classes), SNet49-like widths: stem 24, stages 64/128/256 (3/6/3
    units), FPN 96, heads 2 x 1x1 of 128."""
    return slim_retinanet(num_classes, image_size, stem=24, widths=(64, 128, 256), repeats=(3, 6, 3),
                          fpn_channels=96, head_hidden=128, head_layers=2, norm=norm, anchors=anchors)


@register("slim-l", role="student")
def slim_l(num_classes: int, image_size: int, norm: str = "gn", anchors: dict[str, Any] | None = None):
    """~1.0 M parameters: ShuffleNetV2 1.0x widths 116/232/464 with its 4/8/4 units, stem 32, FPN 128, heads
    2 x 1x1 of 128 (0.47 GMACs at 320 px): the family's top, for benchmarks/peers.py's frontier."""
    return slim_retinanet(num_classes, image_size, stem=32, widths=(116, 232, 464), repeats=(4, 8, 4),
                          fpn_channels=128, head_hidden=128, head_layers=2, norm=norm, anchors=anchors)
