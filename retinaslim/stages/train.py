"""train-teacher / train-student: one plain training loop for both.

Human labels (``labeled``) and optionally machine labels (``pseudo``) are mixed with a fixed share of
machine images in every batch; machine images' losses can be scaled down; ignore regions and empty
(background) images from the filter stage are honoured. Per epoch: train, measure val AP of the EMA
weights with pycocotools, write ``last.pt`` (with everything ``--resume`` needs) and, when AP improved,
``best.pt``; append a row to ``results.csv`` and redraw ``results.png``. The resolved configuration is
saved as ``config.yaml`` first. Under torchrun, each process trains on its share of the batches (DDP);
only rank 0 validates and writes.
"""

from __future__ import annotations

import csv
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from retinaslim.config import TRAIN_DEFAULTS, WARMUP_ITERS, save_run_config
from retinaslim.core.atomic import atomic_path
from retinaslim.core.progress import Reporter
from retinaslim.data.coco import ClassMap, CocoData, load_coco, match_classes, require_image_files, trained_classes
from retinaslim.data.dataset import DetectionDataset, MixedBatchSampler, MixedDataset, collate_skip
from retinaslim.engine.inference import evaluate_on_coco, resolve_device
from retinaslim.errors import UserError
from retinaslim.models.anchors import DEFAULT_ANCHORS, fit_anchors, shape_iou
from retinaslim.models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from retinaslim.models.ema import ModelEMA
from retinaslim.models.registry import build_model, takes_option
from retinaslim.models.teacher import coco_weights_path
from retinaslim.models.weights import CLASS_LOGITS, load_matching, read_weights, summarise_names

PATH_FIELDS = ("labeled", "val", "out", "pseudo", "images")


@dataclass(kw_only=True)
class TrainConfig:
    """What a training run does; saved as the run's config.yaml and in its checkpoints.

    Fields left None take the role's default from ``TRAIN_DEFAULTS`` (retinaslim/config.py), so
    ``TrainConfig(role=..., labeled=..., val=..., out=...)`` is the configuration the command resolves.
    """

    role: str  # "teacher" or "student"
    labeled: Path
    val: Path
    out: Path
    arch: str | None = None  # None, here to augment: the role's default in TRAIN_DEFAULTS
    image_size: int | None = None  # images are resized so that their longer side is this many pixels
    batch_size: int | None = None
    epochs: int | None = None
    optimizer: str | None = None  # sgd or adamw
    lr: float | None = None  # peak learning rate, after linear warm-up; cosine decay
    weight_decay: float | None = None
    augment: str | None = None  # none, light or strong
    pseudo: Path | None = None
    pseudo_ratio: float = 0.4  # share of machine-labelled images in every batch (Data Distillation: ~6:4)
    pseudo_weight: float = 1.0  # scales the loss of machine-labelled images
    images: Path | None = None
    arch_options: dict[str, Any] = field(default_factory=dict)
    pretrained: bool = False
    init: str | None = None  # starting weights: a weights file, or "coco" (torchvision's COCO weights for arch, cached)
    fit_anchors: bool = True  # slim students: fit anchor sizes and ratios to the human-labelled boxes (`--anchors fit`)
    keep_empty_classes: bool = False  # train categories with no boxes in ``labeled`` too (see ``trained_classes``)
    iterations: int | None = None  # total optimiser steps; replaces epochs when set
    ema_decay: float = 0.9998
    device: str = "auto"
    workers: int = 2  # image-decoding processes; 0: decode in the main process
    seed: int = 0

    def __post_init__(self) -> None:
        if self.role not in TRAIN_DEFAULTS:
            raise UserError(f"`role` {self.role!r}: choose {' or '.join(TRAIN_DEFAULTS)}")
        for name, value in TRAIN_DEFAULTS[self.role].items():
            if getattr(self, name) is None:
                setattr(self, name, value)

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint, path: Path) -> TrainConfig:
        """The configuration a checkpoint was trained with (for --resume)."""
        args = {f.name: checkpoint.train_args[f.name] for f in fields(cls) if f.name in checkpoint.train_args}
        try:
            return cls(**{k: Path(v) if k in PATH_FIELDS and v is not None else v for k, v in args.items()})
        except TypeError as e:
            raise UserError(f"{path}: its training arguments are incomplete ({e}); it cannot be resumed") from None


@dataclass
class TrainResult:
    """A finished (or resumed and finished) training run.

    ``best``: best.pt, the EMA weights of the epoch with the highest validation AP (``best_epoch``,
    ``best_metrics``: ap, ap50, ap75, ap_small, ap_medium, ap_large, ar100, all 0..1). ``history``: one row
    per epoch (epoch, step, losses, the same metrics, lr, seconds), as in results.csv. ``num_images``: human
    ("labeled") and machine ("pseudo") training images. ``seconds``: wall time of this invocation.
    """

    out: Path
    best: Path
    best_epoch: int
    best_metrics: dict[str, float]
    history: list[dict[str, float]]
    num_images: dict[str, int]
    num_skipped_images: int
    seconds: float
    resumed_from_epoch: int = 0


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": [kind, keys.tolist(), pos, has_gauss, gauss]}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))


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
                    epoch: int, max_steps: int) -> EpochStats:
    """Up to ``max_steps`` optimiser steps over ``loader``."""
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
            raise UserError(f"training loss became non-finite in epoch {epoch} ({ {k: float(v) for k, v in losses.items()} }); "
                            "lower `lr`; the last good checkpoint is kept")
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


class _Distributed:
    """torchrun's RANK/WORLD_SIZE, with the process group set up when there are several processes."""

    def __init__(self, device: torch.device):
        self.rank, self.world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        self.device = device
        if self.world_size > 1:
            import torch.distributed as dist

            if device.type == "cuda":
                self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
                torch.cuda.set_device(self.device)
            if not dist.is_initialized():
                dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()

    def wrap(self, model: nn.Module) -> nn.Module:
        if self.world_size == 1:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def _box_shapes(coco: CocoData) -> torch.Tensor:
    """(M, 2) widths and heights of the non-crowd boxes as fractions of their image's longer side (the resized side)."""
    shapes = [(a["bbox"][2] / side, a["bbox"][3] / side)
              for image in coco.images for side in [max(image["width"], image["height"])]
              for a in coco.annotations_per_image[image["id"]] if not a.get("iscrowd") and a["bbox"][2] > 0 and a["bbox"][3] > 0]
    return torch.tensor(shapes, dtype=torch.float64).reshape(-1, 2)


def _fitted_anchors(labeled: CocoData, reporter: Reporter) -> dict[str, Any]:
    """Anchors fitted to the human boxes, kept only when they match the boxes better than the defaults."""
    shapes = _box_shapes(labeled)
    if len(shapes) < 20:
        reporter.log(f"anchors: default ({len(shapes)} boxes are too few to fit)")
        return DEFAULT_ANCHORS
    fitted = fit_anchors(shapes)
    fitted_iou, default_iou = shape_iou(shapes, fitted).mean().item(), shape_iou(shapes, DEFAULT_ANCHORS).mean().item()
    if fitted_iou <= default_iou:
        reporter.log(f"anchors: default (mean best IoU with {len(shapes)} boxes {default_iou:.3f}, fitted {fitted_iou:.3f})")
        return DEFAULT_ANCHORS
    reporter.log(f"anchors fitted to {len(shapes)} boxes: mean best IoU {fitted_iou:.3f} (default {default_iou:.3f}); "
                 f"sizes {fitted['scales']} of the input side, ratios {fitted['ratios']}")
    return fitted


def initialise(model: nn.Module, init: str, arch: str, categories: list[dict[str, Any]], reporter: Reporter) -> None:
    """Load the starting weights ``init`` names into ``model`` (in place) and log what was not loaded.

    ``init``: a weights file (``models.weights``) or ``coco`` (torchvision's COCO weights for ``arch`` from the local
    torch cache). Tensors whose shapes do not fit, and the class head of a retinaslim checkpoint trained on other
    ``categories``, keep the model's initialisation. Raises ``UserError`` when the file is missing, carries code
    or has no tensor that fits.
    """
    weights = read_weights(coco_weights_path(arch) if init == "coco" else Path(init))
    other_classes = weights.classes is not None and weights.classes != categories
    report = load_matching(model, weights, arch, reinitialise=(CLASS_LOGITS,) if other_classes else ())
    reporter.log(f"init: {report.num_loaded} tensors from {weights.path}")
    if report.reinitialised:
        reporter.log(f"init: re-initialised, as they do not fit: {summarise_names(report.reinitialised)}")
    if report.unused or report.missing:
        reporter.log(f"init: not in the model, unused: {summarise_names(report.unused) or 'none'}; "
                     f"not in the file, left at their initialisation: {summarise_names(report.missing) or 'none'}")


def train(config: TrainConfig, reporter: Reporter | None = None, resume: Path | None = None) -> TrainResult:
    """Train a model per ``config`` (or continue the run ``resume`` names); returns the best checkpoint and metrics."""
    started = time.perf_counter()
    previous = load_checkpoint(resume) if resume is not None else None
    if previous is not None:
        if previous.training_state is None:
            raise UserError(f"{resume}: holds no training state; resume from the run's last.pt")
        config = TrainConfig.from_checkpoint(previous, resume)
    distributed = _Distributed(resolve_device(config.device))
    device = distributed.device
    reporter = (reporter or Reporter()) if distributed.main else Reporter()
    _seed_everything(config.seed)
    if config.image_size < 32:
        raise UserError(f"`image_size` {config.image_size} is too small; use at least 32 px")
    if config.init is not None and config.pretrained:
        raise UserError(f"`init` {config.init} and `pretrained` both choose the starting weights; pass one of them")
    if not 0 <= config.pseudo_ratio < 1:
        raise UserError(f"`pseudo_ratio` {config.pseudo_ratio} must be in [0, 1)")
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"`out` {out}: is a file; the run folder must be a folder")
    if previous is None and (out / "last.pt").exists():
        raise UserError(f"`out` {out}: already holds a run; continue it with `resume` {out / 'last.pt'}, "
                        "or choose another `out` (a new run would replace its checkpoints)")
    if previous is None and (out / "best.pt").exists():
        raise UserError(f"`out` {out}: already holds a run's best.pt; choose another `out`, or delete the folder "
                        "to start over (a new run would replace it)")

    labeled = load_coco(config.labeled, config.images)
    val = load_coco(config.val, config.images)
    if not labeled.images:
        raise UserError(f"{labeled.path}: no images to train on")
    if previous is None:
        classes, note = trained_classes(labeled, config.keep_empty_classes)
    else:  # a resumed run keeps the classes it started with
        classes, note = ClassMap.from_categories(previous.classes), None
    if not len(classes):
        raise UserError(f"{labeled.path}: no categories, so no classes to train; list them under 'categories'")
    # Other files name the classes by name, whatever ids they give them (labelled: the resumed run's own check).
    left_out = [c for c in labeled.categories if c["name"] not in classes.names]
    source = labeled.path if previous is None else resume
    notes = [note, match_classes(classes, source, labeled, left_out) if previous is not None else None,
             require_image_files(labeled), require_image_files(val), match_classes(classes, source, val, left_out)]
    datasets = [DetectionDataset(labeled, classes, config.image_size, config.augment, seed=config.seed)]
    num_images = {"labeled": len(labeled.images)}
    if config.pseudo is not None:
        pseudo = load_coco(config.pseudo)
        notes += [match_classes(classes, source, pseudo, left_out), require_image_files(pseudo)]
        datasets.append(DetectionDataset(pseudo, classes, config.image_size, config.augment,
                                         weight=config.pseudo_weight, machine=True, seed=config.seed + 1))
        num_images["pseudo"] = len(pseudo.images)
    for note in filter(None, notes):
        reporter.log(note)
    portrait = [[image["height"] > image["width"] for image in d.coco.images] for d in datasets]
    sampler = MixedBatchSampler(len(labeled.images), num_images.get("pseudo", 0), config.batch_size,
                                config.pseudo_ratio, config.seed, distributed.rank, distributed.world_size,
                                portrait[0], portrait[1] if len(portrait) > 1 else None)
    loader = torch.utils.data.DataLoader(
        MixedDataset(datasets), batch_sampler=sampler, num_workers=config.workers, collate_fn=collate_skip,
        persistent_workers=config.workers > 0, pin_memory=device.type == "cuda",
    )
    if config.fit_anchors and previous is None and takes_option(config.arch, "anchors") and "anchors" not in config.arch_options:
        config.arch_options["anchors"] = _fitted_anchors(labeled, reporter)
    init_options = {"pretrained": True} if config.pretrained and previous is None else {}
    model = build_model(config.arch, len(classes), config.image_size, **config.arch_options, **init_options)
    if config.init is not None and previous is None:  # a resumed run's weights are in last.pt
        initialise(model, config.init, config.arch, classes.categories(), reporter)
    model = model.to(device)
    ema = ModelEMA(model, config.ema_decay)
    optimizer = _make_optimizer(config, model)
    total_iters = config.iterations or config.epochs * len(loader)
    num_epochs = math.ceil(total_iters / len(loader))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total_iters, min(WARMUP_ITERS, total_iters // 5)))
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda")

    history: list[dict[str, float]] = []
    best_ap, best_epoch, best_metrics, num_skipped, step, start_epoch = -1.0, 0, {}, 0, 0, 1
    if previous is not None:
        state = previous.training_state
        model.load_state_dict(state["raw_model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        history, step, start_epoch = state["history"], state["step"], previous.epoch + 1
        best_ap, best_epoch = state["best_ap"], state["best_epoch"]
        best_metrics = next((h for h in history if h["epoch"] == best_epoch), {})
        reporter.log(f"resuming {out} after epoch {previous.epoch}")
    elif distributed.main:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"`out` {out}: cannot create the run folder ({e.strerror or e})") from None
        save_run_config(out / "config.yaml", asdict(config))
    earlier_seconds = history[-1].get("time", 0.0) if history else 0.0  # seconds of the invocations before a resume
    train_model = distributed.wrap(model)
    for epoch in range(start_epoch, num_epochs + 1):
        sampler.set_epoch(epoch)
        stats = train_one_epoch(train_model, ema, loader, optimizer, scheduler, scaler, device, reporter, epoch,
                                total_iters - step)
        step += stats.steps
        num_skipped += stats.num_skipped
        if distributed.main:
            metrics, _, skipped_val = evaluate_on_coco(ema.module, val, classes, config.image_size, device,
                                                       config.batch_size, config.workers, reporter)
            if skipped_val and epoch == start_epoch:
                reporter.log(f"validation: {len(skipped_val)} image(s) could not be decoded; their objects count as "
                             f"missed ({skipped_val[0]})")
            row = {"epoch": epoch, "step": step, **stats.losses, **metrics, "lr": scheduler.get_last_lr()[0],
                   "human_images": stats.human_images, "machine_images": stats.machine_images,
                   "machine_boxes": stats.machine_boxes, "data_wait": stats.data_wait_fraction,
                   "time": earlier_seconds + time.perf_counter() - started}
            history.append(row)
            improved = metrics["ap"] > best_ap
            if improved:
                best_ap, best_epoch, best_metrics = metrics["ap"], epoch, metrics
            checkpoint = Checkpoint(
                arch=config.arch, arch_options=dict(config.arch_options), classes=classes.categories(),
                image_size=config.image_size, epoch=epoch, metrics=metrics,
                train_args={k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
                model={k: v.detach().cpu() for k, v in ema.module.state_dict().items()},
            )
            if improved:
                save_checkpoint(out / "best.pt", checkpoint)
            checkpoint.training_state = {
                "raw_model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "ema": ema.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "rng": _rng_state(), "history": history, "step": step,
                "best_ap": best_ap, "best_epoch": best_epoch,
            }
            save_checkpoint(out / "last.pt", checkpoint)
            _write_history(out / "results.csv", history)
            _plot_history(out / "results.png", history)
            reporter.log(f"epoch {epoch}/{num_epochs}  loss {stats.losses.get('loss', float('nan')):.3f}  "
                         f"val AP {metrics['ap']:.3f}  AP50 {metrics['ap50']:.3f}  "
                         f"machine boxes {stats.machine_boxes}  data wait {100 * stats.data_wait_fraction:.0f}%"
                         + ("  (best)" if improved else ""))
        distributed.barrier()
    return TrainResult(out, out / "best.pt", best_epoch, best_metrics, history, num_images, num_skipped,
                       time.perf_counter() - started, resumed_from_epoch=previous.epoch if previous else 0)


def _write_history(path: Path, history: list[dict[str, float]]) -> None:
    keys = list(dict.fromkeys(k for row in history for k in row))
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)


def _plot_history(path: Path, history: list[dict[str, float]]) -> None:
    """Loss and validation AP per epoch, as a PNG beside results.csv."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for key in ("loss", "classification", "bbox_regression"):
        left.plot(epochs, [row.get(key, float("nan")) for row in history], marker=".", label=key)
    left.set(xlabel="epoch", title="training loss")
    left.legend()
    for key in ("ap", "ap50", "ap75"):
        right.plot(epochs, [row[key] for row in history], marker=".", label=key.upper())
    right.set(xlabel="epoch", title="validation (EMA weights)", ylim=(0, 1))
    right.legend()
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=90)
    plt.close(figure)
