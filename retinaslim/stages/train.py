"""train-teacher / train-student: one plain training loop for both.

Per epoch: train on human (+ machine) labels, measure val AP with pycocotools, write ``last.pt`` and,
when AP improved, ``best.pt``, append a row to ``results.csv``. The resolved configuration is saved
as ``config.yaml`` in the run folder before training starts.
"""

from __future__ import annotations

import csv
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from retinaslim.config import WARMUP_ITERS, save_run_config
from retinaslim.core.atomic import atomic_path
from retinaslim.core.progress import Reporter
from retinaslim.data.coco import check_same_classes, load_coco
from retinaslim.data.dataset import DetectionDataset, collate_skip
from retinaslim.errors import UserError
from retinaslim.models.checkpoint import Checkpoint, save_checkpoint
from retinaslim.models.registry import build_model
from retinaslim.stages.inference import evaluate_on_coco, resolve_device


@dataclass
class TrainConfig:
    role: str  # "teacher" or "student"
    labeled: Path
    val: Path
    out: Path
    arch: str
    image_size: int
    batch_size: int
    epochs: int
    optimizer: str
    lr: float
    weight_decay: float
    augment: str
    pseudo: Path | None = None
    images: Path | None = None
    arch_options: dict[str, Any] = field(default_factory=dict)
    pretrained: bool = False
    device: str = "auto"
    workers: int = 0
    seed: int = 0


@dataclass
class TrainResult:
    out: Path
    best: Path
    best_epoch: int
    best_metrics: dict[str, float]
    history: list[dict[str, float]]
    num_images: dict[str, int]
    num_skipped_images: int
    seconds: float


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    raise UserError(f"unknown optimizer {config.optimizer!r}; choose sgd or adamw")


def warmup_cosine(total_iters: int, warmup_iters: int):
    """Learning-rate factor per iteration: linear warm-up from 0.001, then cosine decay to 0.01."""

    def factor(it: int) -> float:
        if it < warmup_iters:
            return 0.001 + (1 - 0.001) * it / warmup_iters
        progress = (it - warmup_iters) / max(1, total_iters - warmup_iters)
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def train_one_epoch(model, loader, optimizer, scheduler, device, reporter: Reporter, epoch: int) -> tuple[dict[str, float], int]:
    """One pass over ``loader`` -> (mean losses, number of undecodable images skipped)."""
    model.train()
    totals: dict[str, float] = {}
    num_steps = num_skipped = 0
    reporter.start("train", len(loader))
    for images, targets, skipped in loader:
        num_skipped += skipped
        if not images:
            reporter.advance("train")
            continue
        images = [im.to(device) for im in images]
        targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
        losses = model(images, targets)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise UserError(f"training loss became non-finite in epoch {epoch} ({ {k: float(v) for k, v in losses.items()} }); "
                            "lower --lr; the last good checkpoint is kept")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        scheduler.step()
        num_steps += 1
        for k, v in losses.items():
            totals[k] = totals.get(k, 0.0) + v.item()
        totals["loss"] = totals.get("loss", 0.0) + loss.item()
        reporter.advance("train", loss=f"{loss.item():.3f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
    reporter.finish("train")
    return {k: v / max(1, num_steps) for k, v in totals.items()}, num_skipped


def train(config: TrainConfig, reporter: Reporter | None = None) -> TrainResult:
    """Train a model per ``config``; returns where the best checkpoint is and its metrics."""
    reporter = reporter or Reporter()
    started = time.perf_counter()
    _seed_everything(config.seed)
    device = resolve_device(config.device)
    if config.image_size < 32:
        raise UserError(f"--image-size {config.image_size} is too small; use at least 32 px")

    labeled = load_coco(config.labeled, config.images)
    val = load_coco(config.val, config.images)
    check_same_classes(labeled, val)
    classes = labeled.classes
    datasets = [DetectionDataset(labeled, classes, config.image_size, config.augment)]
    num_images = {"labeled": len(labeled.images)}
    if config.pseudo is not None:
        pseudo = load_coco(config.pseudo)
        check_same_classes(labeled, pseudo)
        datasets.append(DetectionDataset(pseudo, classes, config.image_size, config.augment))
        num_images["pseudo"] = len(pseudo.images)
    if not labeled.images:
        raise UserError(f"{labeled.path}: no images to train on")

    generator = torch.Generator().manual_seed(config.seed)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.ConcatDataset(datasets), batch_size=config.batch_size, shuffle=True,
        num_workers=config.workers, collate_fn=collate_skip, generator=generator,
        persistent_workers=config.workers > 0,
    )
    init_options = {"pretrained": True} if config.pretrained else {}
    model = build_model(config.arch, len(classes), config.image_size, **config.arch_options, **init_options)
    model.to(device)
    optimizer = _make_optimizer(config, model)
    total_iters = config.epochs * len(loader)
    warmup = min(WARMUP_ITERS, total_iters // 5)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total_iters, warmup))

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    save_run_config(out / "config.yaml", asdict(config))
    history: list[dict[str, float]] = []
    best_ap, best_epoch, best_metrics, num_skipped = -1.0, 0, {}, 0
    for epoch in range(1, config.epochs + 1):
        losses, skipped = train_one_epoch(model, loader, optimizer, scheduler, device, reporter, epoch)
        num_skipped += skipped
        metrics, _ = evaluate_on_coco(model, val, classes, config.image_size, device, config.batch_size,
                                      config.workers, reporter)
        row = {"epoch": epoch, **losses, **metrics, "lr": scheduler.get_last_lr()[0]}
        history.append(row)
        checkpoint = Checkpoint(
            arch=config.arch, arch_options=dict(config.arch_options), classes=classes.categories(),
            image_size=config.image_size, train_args={k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
            epoch=epoch, metrics=metrics, model={k: v.detach().cpu() for k, v in model.state_dict().items()},
        )
        save_checkpoint(out / "last.pt", checkpoint)
        improved = metrics["ap"] > best_ap
        if improved:
            best_ap, best_epoch, best_metrics = metrics["ap"], epoch, metrics
            save_checkpoint(out / "best.pt", checkpoint)
        _write_history(out / "results.csv", history)
        reporter.log(f"epoch {epoch}/{config.epochs}  loss {losses.get('loss', float('nan')):.3f}  "
                     f"val AP {metrics['ap']:.3f}  AP50 {metrics['ap50']:.3f}" + ("  (best)" if improved else ""))
    return TrainResult(out, out / "best.pt", best_epoch, best_metrics, history, num_images, num_skipped,
                       time.perf_counter() - started)


def _write_history(path: Path, history: list[dict[str, float]]) -> None:
    keys = list(dict.fromkeys(k for row in history for k in row))
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)
