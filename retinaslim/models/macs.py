"""Count multiply-accumulates (MACs) of a detector's network, per module.

A MAC is one multiply-add: a convolution costs output elements x (input channels / groups) x kernel
area, a linear layer batch x in x out. Element-wise work (norms, activations, additions, resizes) is
not counted, as ptflops' aten backend and torchvision's "GFLOPS" metadata (really GMACs) do not either.
The network is what runs between the normalised, padded image batch and the raw head outputs:
backbone (with FPN) and head; anchors, box decoding and NMS have no MACs.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn


def network_forward(model: nn.Module, batch: torch.Tensor) -> dict[str, torch.Tensor]:
    """The RetinaNet's network alone: (N, 3, H, W) normalised batch -> head outputs."""
    features = model.backbone(batch)
    return model.head(list(features.values()))


@torch.no_grad()
def count_macs(model: nn.Module, image_size: int, run: Callable[[], object] | None = None) -> OrderedDict[str, int]:
    """MACs per leaf module (conv/linear) for one image_size x image_size image, in execution order.

    ``run``: what to call instead of the network on a zero image, e.g. a whole torchvision detector on an
    image (benchmarks/peers.py: a Faster R-CNN's second stage runs after the network)."""
    counts: OrderedDict[str, int] = OrderedDict()
    handles = []

    def hook(name: str):
        def record(module: nn.Module, inputs, output) -> None:
            if isinstance(module, nn.Conv2d):
                kernel = module.kernel_size[0] * module.kernel_size[1]
                macs = output.numel() * (module.in_channels // module.groups) * kernel
            else:  # nn.Linear
                macs = output.numel() * module.in_features
            counts[name] = counts.get(name, 0) + macs
        return record

    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            handles.append(module.register_forward_hook(hook(name)))
    try:
        model.eval()
        if run is None:
            network_forward(model, torch.zeros(1, 3, image_size, image_size))
        else:
            run()
    finally:
        for handle in handles:
            handle.remove()
    return counts


def group_by_prefix(counts: dict[str, int], depth: int) -> OrderedDict[str, int]:
    """Sum per-module counts into their ancestors ``depth`` levels down ('backbone.stages.0', ...)."""
    grouped: OrderedDict[str, int] = OrderedDict()
    for name, macs in counts.items():
        key = ".".join(name.split(".")[:depth])
        grouped[key] = grouped.get(key, 0) + macs
    return grouped
