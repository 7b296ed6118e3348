"""Weights trained elsewhere: a torchvision-format state dict, read safely and matched to a model by name and shape.

Accepted files, all read with ``torch.load(weights_only=True)`` (a file that carries code is refused):

- a bare state dict, ``{'model': state}`` or ``{'state_dict': state}`` (torchvision's references and most
  training scripts), with or without the ``module.`` prefix DistributedDataParallel adds to every key;
- a retinaslim checkpoint (its ``model`` weights; its classes are kept to check the class head);
- a torchvision ResNet50 ImageNet classifier: ``conv1.*``, ``bn1.*``, ``layer1.*`` ... ``layer4.*`` are the
  detector's ``backbone.body.*``; its ``fc.*`` has no place in a detector and is reported unused.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from retinaslim.errors import UserError
from retinaslim.models.checkpoint import FORMAT, read_weights_file

# The class head's output layer: its shape depends on the number of classes, its meaning on their order.
CLASS_LOGITS = "head.classification_head.cls_logits."
SAVE_STATE_DICT_HINT = ("; if you trust it, load it in Python and save only the weights: "
                        "torch.save(checkpoint['model'], 'weights.pth')")


@dataclass
class WeightsFile:
    """The tensors of a weights file, named as a retinaslim/torchvision RetinaNet's state dict names them."""

    path: Path
    state: dict[str, torch.Tensor]
    classes: list[dict[str, Any]] | None = None  # a retinaslim checkpoint's classes, in label order


@dataclass
class LoadReport:
    """What ``load_matching`` did: tensors loaded, and every file or model tensor it did not pair."""

    num_loaded: int
    reinitialised: list[str] = field(default_factory=list)  # in both, left at the model's initialisation (shape or classes differ)
    unused: list[str] = field(default_factory=list)  # in the file only
    missing: list[str] = field(default_factory=list)  # in the model only: left at its initialisation


def _is_resnet_classifier(state: dict[str, torch.Tensor]) -> bool:
    return "fc.weight" in state and "layer4.0.conv1.weight" in state and not any(k.startswith("backbone.") for k in state)


def read_weights(path: Path) -> WeightsFile:
    """Read the weights in ``path`` (see the module docstring for the accepted layouts).

    Raises ``UserError`` naming the file: missing, carrying code, unreadable, or not tensors by name.
    """
    path = Path(path)
    payload = read_weights_file(path, hint=SAVE_STATE_DICT_HINT)
    classes = payload.get("classes") if isinstance(payload, dict) and payload.get("format") == FORMAT else None
    state = payload
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not (isinstance(state, dict) and state and
            all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())):
        raise UserError(f"{path}: not a state dict (expected tensors by name, bare or under a 'model' or "
                        "'state_dict' key)")
    if all(k.startswith("module.") for k in state):  # saved from DistributedDataParallel
        state = {k.removeprefix("module."): v for k, v in state.items()}
    if _is_resnet_classifier(state):
        state = {k if k.startswith("fc.") else f"backbone.body.{k}": v for k, v in state.items()}
    return WeightsFile(path, state, classes)


def load_matching(model: nn.Module, weights: WeightsFile, arch: str, reinitialise: tuple[str, ...] = ()) -> LoadReport:
    """Copy into ``model`` every tensor of ``weights`` whose name and shape it has; report the rest.

    Tensors whose names start with a prefix in ``reinitialise`` are not copied. BatchNorm's
    ``num_batches_tracked`` counters are not weights and are neither copied nor reported. Raises
    ``UserError`` naming the file when no tensor fits (``arch`` names the model in that message).
    """
    own = model.state_dict()
    fitting: dict[str, torch.Tensor] = {}
    report = LoadReport(0)
    for name, tensor in weights.state.items():
        if name.endswith("num_batches_tracked"):
            continue
        if name not in own:
            report.unused.append(name)
        elif name.startswith(reinitialise):
            report.reinitialised.append(f"{name} (classes differ)")
        elif tensor.shape != own[name].shape:
            report.reinitialised.append(f"{name} (file {_shape(tensor)}, model {_shape(own[name])})")
        else:
            fitting[name] = tensor
    if not fitting:
        raise UserError(f"{weights.path}: none of its {len(weights.state)} tensors fit {arch} by name and shape "
                        f"(its first keys: {', '.join(list(weights.state)[:3])}); are these weights for {arch}?")
    model.load_state_dict(fitting, strict=False)
    report.num_loaded = len(fitting)
    report.missing = [k for k in own if k not in weights.state and not k.endswith("num_batches_tracked")]
    return report


def _shape(tensor: torch.Tensor) -> str:
    return "x".join(map(str, tensor.shape))


def summarise_names(names: list[str], limit: int = 8) -> str:
    """Up to ``limit`` names in full; more as their two-level prefixes with counts ('backbone.fpn.* (16)')."""
    if len(names) <= limit:
        return ", ".join(names)
    groups = Counter(".".join(name.split(".")[:2]) for name in names)
    return ", ".join(f"{prefix}.* ({count})" for prefix, count in groups.items())
