"""The training loop's parts: optimiser, learning-rate schedule and one epoch of optimiser steps.

``train_one_epoch`` is plain PyTorch, readable top to bottom (torchvision's references/detection/engine.py):
forward with AMP on CUDA, loss, backward, gradient clipping, optimiser and scheduler step, EMA update.
The epoch loop around it (validation, checkpoints, history) is the train stage's.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import nn

from retinaslim.core.progress import Reporter
from retinaslim.errors import UserError
from retinaslim.models.ema import ModelEMA

OPTIMIZERS = ("sgd", "adamw")


def make_optimizer(name: str, model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """SGD (momentum 0.9) or AdamW over the trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise UserError(f"unknown optimizer {name!r}; choose {' or '.join(OPTIMIZERS)}")


def warmup_cosine(total_iters: int, warmup_iters: int):
    """Learning-rate factor per iteration: linear warm-up from 0.001, then cosine decay to 0.01."""

    def factor(it: int) -> float:
        if it < warmup_iters:
            return 0.001 + (1 - 0.001) * it / warmup_iters
        progress = (it - warmup_iters) / max(1, total_iters - warmup_iters)
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor


@dataclass
class EpochStats:
    losses: dict[str, float]
    steps: int
    num_skipped: int
    human_images: int
    machine_images: int
    machine_boxes: int
    data_wait_fraction: float  # share of the epoch spent waiting for the data loader


def train_one_epoch(model, ema: ModelEMA, loader, optimizer, scheduler, scaler, device, reporter: Reporter,
                    epoch: int, max_steps: int, saved_epoch: int) -> EpochStats:
    """Up to ``max_steps`` optimiser steps over ``loader``; ``saved_epoch``: the epoch last.pt holds (0: none yet),
    named when the loss diverges."""
    model.train()
    totals: dict[str, float] = {}
    stats = EpochStats({}, 0, 0, 0, 0, 0, 0.0)
    waited = 0.0
    started = time.perf_counter()
    reporter.start("train", min(len(loader), max_steps))
    tick = time.perf_counter()
    for images, targets, skipped in loader:
        waited += time.perf_counter() - tick
        stats.num_skipped += skipped
        if not images:
            reporter.advance("train")
            tick = time.perf_counter()
            continue
        machine = [t for t in targets if t["machine"]]
        stats.machine_images += len(machine)
        stats.machine_boxes += sum(len(t["boxes"]) for t in machine)
        stats.human_images += len(targets) - len(machine)
        images = [im.to(device, non_blocking=True) for im in images]
        targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
        with torch.autocast(device.type, enabled=device.type == "cuda"):
            losses = model(images, targets)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            kept = f"last.pt keeps the end of epoch {saved_epoch}" if saved_epoch else "no checkpoint was saved yet"
            raise UserError(f"training loss became non-finite in epoch {epoch} ({ {k: v.item() for k, v in losses.items()} }); "
                            f"lower `lr`; {kept}")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        ema.update(model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model)
        stats.steps += 1
        for k, v in losses.items():
            totals[k] = totals.get(k, 0.0) + v.item()
        totals["loss"] = totals.get("loss", 0.0) + loss.item()
        # Report machine boxes per batch: when none pass the filter, the machine-label loss is silently zero.
        reporter.advance("train", loss=f"{loss.item():.3f}", lr=f"{scheduler.get_last_lr()[0]:.2e}",
                         machine_boxes=str(sum(len(t["boxes"]) for t in machine)))
        if stats.steps >= max_steps:
            break
        tick = time.perf_counter()
    reporter.finish("train")
    stats.losses = {k: v / max(1, stats.steps) for k, v in totals.items()}
    stats.data_wait_fraction = waited / max(time.perf_counter() - started, 1e-9)
    return stats
