"""Named model builders: ``build_model("slim-s", num_classes=3, image_size=320)``.

A builder takes ``num_classes``, ``image_size`` and its own keyword options, and returns a torchvision
``RetinaNet`` whose internal transform does not resize (callers feed images already sized; see
``retinaslim.core.tta``). Checkpoints store the name and options so the same model can be rebuilt.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from torch import nn

from retinaslim.errors import UserError

Builder = Callable[..., nn.Module]
_BUILDERS: dict[str, Builder] = {}
_ROLES: dict[str, str] = {}


def register(name: str, role: str) -> Callable[[Builder], Builder]:
    """Register a builder under ``name``; ``role`` is ``teacher`` or ``student``."""

    def wrap(builder: Builder) -> Builder:
        _BUILDERS[name] = builder
        _ROLES[name] = role
        return builder

    return wrap


def list_archs(role: str | None = None) -> list[str]:
    return sorted(name for name in _BUILDERS if role is None or _ROLES[name] == role)


def build_model(arch: str, num_classes: int, image_size: int, **options) -> nn.Module:
    if arch not in _BUILDERS:
        raise UserError(f"unknown architecture {arch!r}; choose one of {', '.join(list_archs())}")
    return _BUILDERS[arch](num_classes=num_classes, image_size=image_size, **options)


def takes_option(arch: str, option: str) -> bool:
    """Whether the builder ``arch`` has the keyword option ``option`` (e.g. a student's ``anchors``)."""
    return arch in _BUILDERS and option in inspect.signature(_BUILDERS[arch]).parameters
