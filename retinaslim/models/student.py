"""The student: a slim RetinaNet designed by the rules in SEED-NOTES.md.

- Backbone after ThunderNet's SNet: a dilated 3x3 stem (dilation 2: the receptive field of a 5x5 at a
  3x3's cost), a depthwise-separable conv, then ShuffleNetV2 units with 5x5 depthwise convs, far
  shallower than ResNet18. 1x1 convs keep equal input and output channels (ShuffleNetV2 guideline G1).
- A slim FPN on C3-C5 only (strides 8, 16, 32).
- Shared heads of 1x1 convs only (the article's heads), 6 anchors per location.
- GroupNorm by default (small training batches), BatchNorm as an option (it folds into convs).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.ops import FeaturePyramidNetwork

from retinaslim.models.common import IgnoreAwareRetinaNet, configure
from retinaslim.models.registry import register


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "gn":
        return nn.GroupNorm(8 if channels % 8 == 0 else 1, channels)
    raise ValueError(f"unknown norm {kind!r}; choose gn or bn")


def _conv(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, dilation: int = 1, norm: str = "gn", relu: bool = True) -> nn.Sequential:
    padding = dilation * (kernel - 1) // 2
    layers = [nn.Conv2d(cin, cout, kernel, stride, padding, dilation=dilation, groups=groups, bias=False), _norm(norm, cout)]
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
            self.shortcut = nn.Sequential(_conv(cin, cin, 5, 2, groups=cin, norm=norm, relu=False), _conv(cin, branch, 1, norm=norm))
            main_in = cin
        else:
            self.shortcut = None
            main_in = branch
        self.main = nn.Sequential(
            _conv(main_in, branch, 1, norm=norm),
            _conv(branch, branch, 5, stride, groups=branch, norm=norm, relu=False),
            _conv(branch, branch, 1, norm=norm),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shortcut is None:
            keep, x = x.chunk(2, dim=1)
            out = torch.cat([keep, self.main(x)], dim=1)
        else:
            out = torch.cat([self.shortcut(x), self.main(x)], dim=1)
        return _channel_shuffle(out)


class SlimBackbone(nn.Module):
    """Stem (/4) and three ShuffleNetV2 stages returning C3, C4, C5 (/8, /16, /32) plus a slim FPN."""

    def __init__(self, stem: int, widths: tuple[int, int, int], repeats: tuple[int, int, int], fpn_channels: int, norm: str):
        super().__init__()
        self.stem = nn.Sequential(
            _conv(3, stem, 3, stride=2, dilation=2, norm=norm),
            _conv(stem, stem, 3, stride=2, groups=stem, norm=norm, relu=False),
            _conv(stem, stem, 1, norm=norm),
        )
        stages, cin = [], stem
        for width, repeat in zip(widths, repeats):
            units = [ShuffleUnit(cin, width, 2, norm)] + [ShuffleUnit(width, width, 1, norm) for _ in range(repeat - 1)]
            stages.append(nn.Sequential(*units))
            cin = width
        self.stages = nn.ModuleList(stages)
        self.fpn = FeaturePyramidNetwork(list(widths), fpn_channels)
        self.out_channels = fpn_channels

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
        blocks.append(_conv(cin, hidden, 1, norm=norm))
        cin = hidden
    return nn.Sequential(*blocks)


def _slim_head(channels: int, num_anchors: int, num_classes: int, hidden: int, layers: int, norm: str) -> RetinaNetHead:
    """torchvision's RetinaNet head (its matching and losses) with every conv made 1x1."""
    head = RetinaNetHead(channels, num_anchors, num_classes)
    cls, reg = head.classification_head, head.regression_head
    cls.conv = _slim_branch(channels, hidden, layers, norm)
    reg.conv = _slim_branch(channels, hidden, layers, norm)
    prior_bias = cls.cls_logits.bias.data[0].item()  # keeps torchvision's focal-loss prior (p = 0.01)
    cls.cls_logits = nn.Conv2d(hidden, num_anchors * num_classes, 1)
    reg.bbox_reg = nn.Conv2d(hidden, num_anchors * 4, 1)
    for conv in (cls.cls_logits, reg.bbox_reg):
        nn.init.normal_(conv.weight, std=0.01)
    nn.init.constant_(cls.cls_logits.bias, prior_bias)
    nn.init.zeros_(reg.bbox_reg.bias)
    return head


def _student_anchors(image_size: int) -> AnchorGenerator:
    # Cards span ~10% to ~70% of the frame: two sizes per level from 10% to ~65% of the input side,
    # and aspect ratios (height / width) around the ID-1 card shape in both orientations.
    sizes = tuple((image_size * f, image_size * f * 1.59) for f in (0.1, 0.2, 0.4))
    return AnchorGenerator(sizes, ((0.63, 1.0, 1.59),) * 3)


def _slim_retinanet(num_classes: int, image_size: int, *, stem: int, widths, repeats, fpn_channels: int, head_hidden: int, head_layers: int, norm: str):
    backbone = SlimBackbone(stem, tuple(widths), tuple(repeats), fpn_channels, norm)
    anchors = _student_anchors(image_size)
    head = _slim_head(fpn_channels, anchors.num_anchors_per_location()[0], num_classes, head_hidden, head_layers, norm)
    return configure(IgnoreAwareRetinaNet(backbone, num_classes, anchor_generator=anchors, head=head))


@register("slim-s", role="student")
def slim_s(num_classes: int, image_size: int, norm: str = "gn"):
    """~0.2 M parameters: stem 16, stages 48/96/192 (2/3/2 units), FPN 64, heads 2 x 1x1 of 64."""
    return _slim_retinanet(num_classes, image_size, stem=16, widths=(48, 96, 192), repeats=(2, 3, 2),
                           fpn_channels=64, head_hidden=64, head_layers=2, norm=norm)


@register("slim-m", role="student")
def slim_m(num_classes: int, image_size: int, norm: str = "gn"):
    """SNet49-like widths: stem 24, stages 60->64/128/256 (3/6/3 units), FPN 96, heads 2 x 1x1 of 128."""
    return _slim_retinanet(num_classes, image_size, stem=24, widths=(64, 128, 256), repeats=(3, 6, 3),
                           fpn_channels=96, head_hidden=128, head_layers=2, norm=norm)
