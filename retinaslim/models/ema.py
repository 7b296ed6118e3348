"""Exponential moving average of a model's weights, the copy used for validation and best.pt."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


class ModelEMA:
    """ema = d * ema + (1 - d) * model after each optimiser step, d = decay * (1 - exp(-updates / ramp)).

    The ramp lets early, fast-changing weights through. Float buffers (BatchNorm statistics) are averaged
    like weights, integer ones copied.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9998, ramp: float = 2000.0):
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay, self.ramp, self.updates = decay, ramp, 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.decay * (1 - math.exp(-self.updates / self.ramp))
        for ema_value, value in zip(self.module.state_dict().values(), model.state_dict().values()):
            if ema_value.dtype.is_floating_point:  # weights and BatchNorm statistics
                ema_value.mul_(d).add_(value.detach(), alpha=1 - d)
            else:
                ema_value.copy_(value)

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = state["updates"]
