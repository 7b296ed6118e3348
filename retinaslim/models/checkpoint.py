"""One self-describing checkpoint format for teacher and student.

A checkpoint is a dict of plain types and tensors, loaded with ``torch.load(weights_only=True)`` so a
file from a stranger cannot run code:

    format        "retinaslim-checkpoint/1"
    arch          registered builder name;  arch_options: its keyword options
    classes       [{"id": COCO category id, "name": ...}] in label order
    image_size    input size (longer side, px) the model was trained at
    train_args    the resolved training configuration;  epoch; metrics (val AP etc.)
    model         state dict (the EMA weights when training kept an EMA)
    training_state  last.pt only: what --resume needs (raw weights, optimiser, scheduler, AMP scaler, the EMA's
                    update count, RNG, history, step, best AP and its epoch, seconds trained); the EMA weights
                    are ``model``
"""

from __future__ import annotations

import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from retinaslim.core.atomic import atomic_path
from retinaslim.errors import UserError, not_a_file
from retinaslim.models.registry import build_model

FORMAT = "retinaslim-checkpoint/1"


@dataclass
class Checkpoint:
    arch: str
    arch_options: dict[str, Any]
    classes: list[dict[str, Any]]
    image_size: int
    train_args: dict[str, Any] = field(default_factory=dict)
    epoch: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    model: dict[str, torch.Tensor] = field(default_factory=dict)
    training_state: dict[str, Any] | None = None
    source: Path | None = field(default=None, compare=False)  # the file it was loaded from; not saved

    def build(self) -> nn.Module:
        """The model with these weights, in eval mode, on the CPU."""
        model = build_model(self.arch, len(self.classes), self.image_size, **self.arch_options)
        try:
            model.load_state_dict(self.model)
        except RuntimeError as e:  # e.g. a checkpoint from an older layout of the same architecture
            first_line = str(e).strip().splitlines()[-1].strip()[:200]
            raise UserError(f"{self.source or 'checkpoint'}: the weights do not fit {self.arch} as this version builds it ({first_line}); "
                            "retrain, or use the retinaslim version that wrote them") from None
        return model.eval()


def save_checkpoint(path: Path, checkpoint: Checkpoint) -> None:
    """Write atomically: a kill mid-write leaves the previous file intact."""
    payload = {"format": FORMAT, **{k: v for k, v in checkpoint.__dict__.items() if k != "source"}}
    with atomic_path(Path(path)) as tmp:
        torch.save(payload, tmp)


def read_weights_file(path: Path, hint: str = "") -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU: plain types and tensors, never code.

    Raises ``UserError`` naming the file when it is missing, carries pickled objects other than weights
    (refused before anything in it runs; ``hint`` is appended to that message) or cannot be read.
    """
    path = Path(path)
    if not path.is_file():
        raise not_a_file(path, "a checkpoint")
    with open(path, "rb") as f:
        head = f.read(4)
    if head != b"PK\x03\x04" and head[:1] != b"\x80":  # torch.save writes a zip archive (a pickle before torch 1.6)
        raise UserError(f"{path}: not a PyTorch checkpoint (a file written by torch.save)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f" such as {found.group(1)}" if found else ""
        raise UserError(f"{path}: refused to load: the file holds Python objects{what} besides tensors, and loading them "
                        f"could run code{hint}") from None
    except Exception as e:  # a damaged or foreign file can fail anywhere inside the unpickler
        raise UserError(f"{path}: not a readable checkpoint ({e.__class__.__name__})") from None


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a retinaslim checkpoint; a missing, foreign or code-carrying file raises ``UserError``."""
    path = Path(path)
    payload = read_weights_file(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(f"{path}: not a retinaslim checkpoint (no '{FORMAT}' format tag)")
    fields = {k: payload[k] for k in Checkpoint.__dataclass_fields__ if k in payload and k != "source"}
    try:
        return Checkpoint(**fields, source=path)
    except TypeError as e:
        raise UserError(f"{path}: incomplete retinaslim checkpoint ({e})") from None
