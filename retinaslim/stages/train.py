"""train-teacher / train-student: one plain training loop for both.

Human labels (``labeled``) and optionally machine labels (``pseudo``) are mixed with a fixed share of
machine images in every batch; machine images' losses can be scaled down; ignore regions and empty
(background) images from the filter stage are honoured. Per epoch: train (``engine.loop.train_one_epoch``),
measure val AP of the EMA weights with pycocotools (every k-th epoch and each of the last 10 when a schedule in
steps makes more epochs than ``epochs``), write ``last.pt`` when it validated and otherwise at least every
``config.CHECKPOINT_INTERVAL_S`` (with everything ``resume`` needs, random state included: ``engine.rng``) and,
when AP improved, ``best.pt``; on a validated epoch append a row to
``results.csv`` and redraw ``results.png`` (``engine.history``). The resolved configuration is saved as ``config.yaml``
first. Under torchrun each process trains on its share of the batches (DDP, ``engine.ddp``); only rank 0
validates and writes. Anchors (students' and the teacher's) are fitted to the human boxes first (``models.anchors``).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from retinaslim.config import (CHECKPOINT_INTERVAL_S, CLOSE_MOSAIC_EPOCHS, STUDENT_MIN_ITERATIONS, TEACHER_MIN_ITERATIONS,
                               TRAIN_DEFAULTS, WARMUP_ITERS, save_run_config)
from retinaslim.core.progress import Reporter
from retinaslim.data.coco import (ClassMap, has_boxes, load_coco, match_classes, relative_boxes, require_image_files, require_scores,
                                  machine_class_mask, trained_classes)
from retinaslim.data.dataset import DetectionDataset, MixedBatchSampler, MixedDataset, collate_skip
from retinaslim.engine.ddp import Distributed
from retinaslim.engine.history import plot_history, write_history
from retinaslim.engine.inference import evaluate_on_coco, resolve_device
from retinaslim.engine.loop import make_optimizer, train_one_epoch, warmup_cosine
from retinaslim.engine.rng import rng_state, seed_everything, set_rng_state
from retinaslim.errors import UserError, not_a_file
from retinaslim.models.anchors import class_coverage, fitted_or_default, retinanet_fit
from retinaslim.models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from retinaslim.models.common import ASSIGNERS
from retinaslim.models.ema import ModelEMA
from retinaslim.models.registry import build_model, list_archs, takes_option
from retinaslim.models.teacher import coco_weights_path
from retinaslim.models.weights import CLASS_LOGITS, WeightsFile, load_matching, read_weights, summarise_names

PATH_FIELDS = ("labeled", "val", "out", "pseudo", "images")
PSEUDO_BOX_WEIGHTS = ("none", "score")


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
    augment: str | None = None  # none, light, strong or mosaic
    assign: str | None = None  # which anchors train on each box: iou or tal (models.common.ASSIGNERS)
    pseudo: Path | None = None
    pseudo_ratio: float = 0.4  # share of machine-labelled images in every batch (Data Distillation: ~6:4)
    pseudo_weight: float = 1.0  # scales the loss of machine-labelled images
    pseudo_box_weight: str = "none"  # none: every machine box counts fully; score: its loss terms scale with its score
    images: Path | None = None
    arch_options: dict[str, Any] = field(default_factory=dict)
    pretrained: bool = False
    init: str | None = None  # starting weights: a weights file, or "coco" (torchvision's COCO weights for arch, cached)
    fit_anchors: bool = True  # fit anchor sizes and ratios to the human-labelled boxes (`--anchors fit`)
    keep_empty_classes: bool = False  # train categories with no boxes in ``labeled`` too (see ``trained_classes``)
    iterations: int | None = None  # total optimiser steps; replaces epochs when set
    # the default schedule's floor on optimiser steps (STUDENT_ or TEACHER_MIN_ITERATIONS); 0 when epochs or iterations
    # are given
    min_iterations: int | None = None
    ema_decay: float = 0.9998
    device: str = "auto"
    workers: int = 2  # image-decoding processes; 0: decode in the main process
    seed: int = 0

    def __post_init__(self) -> None:
        if self.role not in TRAIN_DEFAULTS:
            raise UserError(f"`role` {self.role!r}: choose {' or '.join(TRAIN_DEFAULTS)}")
        if self.min_iterations is None:
            given = self.epochs is not None or self.iterations is not None
            floor = STUDENT_MIN_ITERATIONS if self.role == "student" else TEACHER_MIN_ITERATIONS
            self.min_iterations = 0 if given else floor
        for name, value in TRAIN_DEFAULTS[self.role].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        for name in ("batch_size", "epochs", "image_size", "iterations"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < (32 if name == "image_size" else 1)):
                raise UserError(f"`{name}` {value!r}: must be a whole number of at least {32 if name == 'image_size' else 1}")
        if not (type(self.min_iterations) is int and self.min_iterations >= 0):
            raise UserError(f"`min_iterations` {self.min_iterations!r}: must be a whole number of at least 0")
        if not self.lr >= 0:
            raise UserError(f"`lr` {self.lr!r}: must be 0 or more")
        if self.assign not in ASSIGNERS:
            raise UserError(f"`assign` {self.assign!r}: choose {' or '.join(ASSIGNERS)}")
        if self.pseudo_box_weight not in PSEUDO_BOX_WEIGHTS:
            raise UserError(f"`pseudo_box_weight` {self.pseudo_box_weight!r}: choose {' or '.join(PSEUDO_BOX_WEIGHTS)}")
        if "norm" in self.arch_options and self.arch in list_archs() and not takes_option(self.arch, "norm"):
            raise UserError(f"`norm` {self.arch_options['norm']}: {self.arch} has no choice of normalisation layer; "
                            "the slim students have (gn or bn)")

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint, path: Path) -> TrainConfig:
        """The configuration a checkpoint was trained with (for --resume)."""
        args = {f.name: checkpoint.train_args[f.name] for f in fields(cls) if f.name in checkpoint.train_args}
        args.setdefault("assign", "iou")  # runs from before --assign trained with RetinaNet's IoU thresholds
        try:
            return cls(**{k: Path(v) if k in PATH_FIELDS and v is not None else v for k, v in args.items()})
        except TypeError as e:
            raise UserError(f"{path}: its training arguments are incomplete ({e}); it cannot be resumed") from None


@dataclass
class TrainResult:
    """A finished (or resumed and finished) training run.

    ``best``: best.pt, the EMA weights of the epoch with the highest validation AP (``best_epoch``,
    ``best_metrics``: ap, ap50, ap75, ap_small, ap_medium, ap_large, ar100, all 0..1). ``history``: one row
    per validated epoch (epoch, step, losses, the same metrics, lr, human and machine images, machine boxes,
    data_wait, time: training seconds so far), as in results.csv. ``num_images``: human
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


def _count(n: int, noun: str) -> str:
    """'1 step', '7 steps', '1,000 epochs'."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def read_init(init: str, arch: str) -> WeightsFile:
    """The starting weights ``init`` names: a weights file (``models.weights``) or ``coco`` (torchvision's COCO
    weights for ``arch`` from the local torch cache). Raises ``UserError`` when the file is missing, not cached,
    carries code or holds no tensors by name."""
    if init == "coco":
        return read_weights(coco_weights_path(arch))
    if not Path(init).is_file():
        raise not_a_file(Path(init), "a weights file")
    return read_weights(Path(init))


def initialise(model: nn.Module, weights: WeightsFile, arch: str, categories: list[dict[str, Any]],
               reporter: Reporter) -> None:
    """Load the starting ``weights`` (``read_init``) into ``model`` (in place) and log what was not loaded.

    Tensors whose shapes do not fit, and the class head of a retinaslim checkpoint trained on other
    ``categories``, keep the model's initialisation. Raises ``UserError`` when no tensor fits.
    """
    other_classes = weights.classes is not None and weights.classes != categories
    report = load_matching(model, weights, arch, reinitialise=(CLASS_LOGITS,) if other_classes else ())
    reporter.log(f"init: {report.num_loaded} tensors from {weights.path}")
    if report.reinitialised:
        reporter.log(f"init: re-initialised, as they do not fit: {summarise_names(report.reinitialised)}")
    if report.unused or report.missing:
        reporter.log(f"init: not in the model, unused: {summarise_names(report.unused) or 'none'}; "
                     f"not in the file, left at their initialisation: {summarise_names(report.missing) or 'none'}")


def train(config: TrainConfig | None, reporter: Reporter | None = None, resume: Path | None = None,
          machine: dict[str, Any] | None = None) -> TrainResult:
    """Train a model per ``config``, or continue the run ``resume`` names with its own settings except ``machine``'s
    (``device`` and/or ``workers``: the machine it continues on may differ; an image's augmentation does not
    depend on the workers); returns the best checkpoint and metrics."""
    started = time.perf_counter()
    previous = load_checkpoint(resume) if resume is not None else None
    if previous is not None:
        if previous.training_state is None:
            raise UserError(f"{resume}: holds no training state; resume from the run's last.pt")
        # the run continues in the folder that holds last.pt, wherever it was first written (a copied run, another
        # working folder): not in the `out` recorded in it, which may be another run's now
        config = replace(TrainConfig.from_checkpoint(previous, resume), out=Path(resume).parent, **(machine or {}))
    distributed = Distributed(resolve_device(config.device))
    device = distributed.device
    reporter = (reporter or Reporter()) if distributed.main else Reporter()
    seed_everything(config.seed)
    if config.init is not None and config.pretrained:
        raise UserError(f"`init` {config.init} and `pretrained` both choose the starting weights; pass one of them")
    # read before the data are read and the anchors fitted; a resumed run's weights are in last.pt
    init_weights = read_init(config.init, config.arch) if config.init is not None and previous is None else None
    if not 0 <= config.pseudo_ratio < 1:
        raise UserError(f"`pseudo_ratio` {config.pseudo_ratio} must be in [0, 1)")
    if config.pseudo is not None and config.pseudo_ratio > 0 and config.batch_size < 2:
        raise UserError(f"`batch_size` {config.batch_size} leaves no room for machine images beside a human one: "
                        "use at least 2 with `pseudo`")
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
    if not has_boxes(labeled):
        raise UserError(f"{labeled.path}: no boxes (crowd regions aside) in its {_count(len(labeled.images), 'image')}, so "
                        "nothing to learn to detect; label some objects first")
    if not has_boxes(val):
        raise UserError(f"{val.path}: no boxes (crowd regions aside) to validate on, so no epoch could be chosen as the "
                        "best; pass labelled validation images")
    if previous is None:
        classes, note = trained_classes(labeled, config.keep_empty_classes)
    else:  # a resumed run keeps the classes it started with
        classes, note = ClassMap.from_categories(previous.classes), None
    # Other files name the classes by name, whatever ids they give them (labelled: the resumed run's own check).
    left_out = [c for c in labeled.categories if c["name"] not in classes.names]
    source = labeled.path if previous is None else resume
    notes = [note, match_classes(classes, source, labeled, left_out) if previous is not None else None,
             require_image_files(labeled), require_image_files(val), match_classes(classes, source, val, left_out)]
    if config.pseudo is None and config.pseudo_box_weight != "none":
        notes.append(f"pseudo_box_weight {config.pseudo_box_weight!r} has no effect: no machine labels to weight")
    datasets = [DetectionDataset(labeled, classes, config.image_size, config.augment, seed=config.seed)]
    num_images = {"labeled": len(labeled.images)}
    if config.pseudo is not None:
        pseudo = load_coco(config.pseudo)
        if pseudo.images:  # said here, where an empty file is known, so that no line contradicts another
            notes.append(f"training on human labels {labeled.path} + machine labels {pseudo.path} "
                         f"({config.pseudo_ratio:.0%} of each batch, loss weight {config.pseudo_weight:g}"
                         + (", each box weighted by its score" if config.pseudo_box_weight == "score" else "") + ")")
        notes += [match_classes(classes, source, pseudo, left_out), require_image_files(pseudo)]
        if config.pseudo_box_weight == "score":
            require_scores(pseudo)
        class_mask, note = machine_class_mask(pseudo, classes)
        notes.append(note if pseudo.images else None)
        datasets.append(DetectionDataset(pseudo, classes, config.image_size, config.augment,
                                         weight=config.pseudo_weight, machine=True,
                                         score_weights=config.pseudo_box_weight == "score", seed=config.seed + 1,
                                         class_mask=class_mask))
        num_images["pseudo"] = len(pseudo.images)
        if not pseudo.images:
            notes.append(f"{pseudo.path} holds no images (the filter kept none): the student trains on the human labels only")
        elif not any(pseudo.annotations_per_image.values()):
            notes.append(f"warning: {pseudo.path} has no machine boxes: its {len(pseudo.images)} images train the student "
                         "toward background only (PITFALLS: a silently zero machine-label loss)")
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
        boxes, category_ids = relative_boxes(labeled)
        config.arch_options["anchors"], note = (retinanet_fit(boxes, config.image_size) if config.arch in list_archs("teacher")
                                                else fitted_or_default(boxes))
        reporter.log(note)
        index = dict(zip(classes.category_ids, range(len(classes))))
        labels = torch.tensor([index.get(c, -1) for c in category_ids.tolist()], dtype=torch.int64)
        reporter.log(class_coverage(boxes, labels, classes.names, config.image_size, config.arch_options["anchors"])[1])
    init_options = {"pretrained": True} if config.pretrained and previous is None else {}
    model = build_model(config.arch, len(classes), config.image_size, **config.arch_options, **init_options)
    model.assigner = config.assign
    if init_weights is not None:
        initialise(model, init_weights, config.arch, classes.categories(), reporter)
    model = model.to(device)
    ema = ModelEMA(model, config.ema_decay)
    optimizer = make_optimizer(config.optimizer, model, config.lr, config.weight_decay)
    total_iters = config.iterations or config.epochs * len(loader)
    asked = total_iters
    total_iters = max(total_iters, config.min_iterations)
    num_epochs = math.ceil(total_iters / len(loader))
    # A schedule in steps (the floor, or `iterations`) can run many short epochs: validated about as often as the
    # epochs asked for (every k-th epoch) and in each of the last (whole-image) epochs
    validate_every = math.ceil(num_epochs / config.epochs)
    validation = (f"validated every {_count(validate_every, 'epoch')} and in each of the last {CLOSE_MOSAIC_EPOCHS}, "
                  f"about as often as --epochs {config.epochs} would be")
    if total_iters > asked:
        reporter.log(f"schedule: {_count(config.epochs, 'epoch')} of {_count(len(loader), 'step')} = {asked:,} steps, below "
                     f"the default schedule's floor: training {total_iters:,} steps ({num_epochs:,} epochs, {validation}); "
                     "--epochs or --iterations set the schedule exactly")
    elif validate_every > 1 and num_epochs > CLOSE_MOSAIC_EPOCHS:
        reporter.log(f"schedule: {total_iters:,} steps = {num_epochs:,} epochs of {_count(len(loader), 'step')}, {validation}")
    if config.augment == "mosaic":
        for dataset in datasets:  # before the loader's workers start, so that they copy it
            dataset.mosaic_until = num_epochs - CLOSE_MOSAIC_EPOCHS
        if num_epochs <= CLOSE_MOSAIC_EPOCHS:
            reporter.log(f"augment mosaic: a run of {num_epochs} epoch{'s' if num_epochs > 1 else ''} sees no mosaics (the last "
                         f"{CLOSE_MOSAIC_EPOCHS} epochs train on whole images); it trains as `light`")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total_iters, min(WARMUP_ITERS, total_iters // 5)))
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda")

    history: list[dict[str, float]] = []
    best_ap, best_epoch, best_metrics, num_skipped, step, start_epoch = -1.0, 0, {}, 0, 0, 1
    earlier_seconds = 0.0  # seconds trained by the invocations before a resume
    if previous is not None:
        state = previous.training_state
        model.load_state_dict(state["raw_model"])
        ema.load_state_dict({"module": previous.model, **state["ema"]})  # an older last.pt's own "module": the same
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state["scaler"] and scaler.is_enabled():  # empty from a CPU run; unused when continuing on the CPU
            scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        history, step, start_epoch = state["history"], state["step"], previous.epoch + 1
        best_ap, best_epoch = state["best_ap"], state["best_epoch"]
        best_metrics = next((h for h in history if h["epoch"] == best_epoch), {})
        earlier_seconds = state.get("seconds", history[-1].get("time", 0.0) if history else 0.0)  # older last.pt: its last row's
        reporter.log(f"resuming {out} after epoch {previous.epoch} (device {config.device}, "
                     f"{_count(config.workers, 'worker')})")
        if distributed.main:  # a kill after last.pt's write may have come before best.pt's or results.csv's
            best = out / "best.pt"
            if best_epoch == previous.epoch and (not best.exists() or load_checkpoint(best).epoch != best_epoch):
                save_checkpoint(best, replace(previous, training_state=None))  # that epoch's weights: last.pt's
            if history:
                write_history(out / "results.csv", history)
                plot_history(out / "results.png", history)
    elif distributed.main:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"`out` {out}: cannot create the run folder ({e.strerror or e})") from None
        save_run_config(out / "config.yaml", asdict(config))
    train_model = distributed.wrap(model)
    last_saved, saved_epoch = time.perf_counter(), previous.epoch if previous else 0

    def trained_seconds() -> float:  # this invocation's and those before its resume
        return earlier_seconds + time.perf_counter() - started

    for epoch in range(start_epoch, num_epochs + 1):
        sampler.set_epoch(epoch)
        stats = train_one_epoch(train_model, ema, loader, optimizer, scheduler, scaler, device, reporter, epoch,
                                total_iters - step, saved_epoch)
        step += stats.steps
        num_skipped += stats.num_skipped
        validated = epoch % validate_every == 0 or epoch > num_epochs - CLOSE_MOSAIC_EPOCHS
        save_last = validated or time.perf_counter() - last_saved >= CHECKPOINT_INTERVAL_S  # decided on every rank
        if distributed.main:
            metrics, improved = {}, False
            if validated:
                evaluation, skipped_val = evaluate_on_coco(ema.module, val, classes, config.image_size, device,
                                                           config.batch_size, config.workers, reporter)
                metrics = evaluation.as_floats()
                if skipped_val and not history:
                    reporter.log(f"validation: {len(skipped_val)} image(s) could not be decoded; their objects count "
                                 f"as missed ({skipped_val[0]})")
                history.append({"epoch": epoch, "step": step, **stats.losses, **metrics, "lr": scheduler.get_last_lr()[0],
                                "human_images": stats.human_images, "machine_images": stats.machine_images,
                                "machine_boxes": stats.machine_boxes, "data_wait": stats.data_wait_fraction,
                                "time": trained_seconds()})
                improved = metrics["ap"] > best_ap
                if improved:
                    best_ap, best_epoch, best_metrics = metrics["ap"], epoch, metrics
            if save_last:  # every validated epoch (so every improved one) is saved: no weights copied between
                checkpoint = Checkpoint(
                    arch=config.arch, arch_options=dict(config.arch_options), classes=classes.categories(),
                    image_size=config.image_size, epoch=epoch, metrics=metrics,  # {}: an epoch not validated
                    train_args={k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
                    model={k: v.detach().cpu() for k, v in ema.module.state_dict().items()},
                )
                # last.pt first, then best.pt: a kill between the two leaves a run that resumes, and the resume (above)
                # writes best.pt again from last.pt; the other way round, a kill at a run's first validation left a
                # best.pt without a last.pt, a folder that could be neither resumed nor started again
                save_checkpoint(out / "last.pt", replace(checkpoint, training_state={  # the EMA weights are the
                    "raw_model": {k: v.detach().cpu() for k, v in model.state_dict().items()},  # model: stored once
                    "ema": {"updates": ema.updates}, "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "rng": rng_state(),
                    "history": history, "step": step, "best_ap": best_ap, "best_epoch": best_epoch,
                    "seconds": trained_seconds(),
                }))
                if improved:
                    save_checkpoint(out / "best.pt", checkpoint)
            loss = f"epoch {epoch}/{num_epochs}  loss {stats.losses.get('loss', float('nan')):.3f}  "
            if validated:
                write_history(out / "results.csv", history)
                plot_history(out / "results.png", history)
                reporter.log(loss + f"val AP {metrics['ap']:.3f}  AP50 {metrics['ap50']:.3f}  "
                             f"machine boxes {stats.machine_boxes}  data wait {100 * stats.data_wait_fraction:.0f}%"
                             + ("  (best)" if improved else ""))
            else:
                reporter.log(loss + f"machine boxes {stats.machine_boxes}  (validated every {validate_every} epochs)")
        if save_last:
            last_saved, saved_epoch = time.perf_counter(), epoch
        distributed.barrier()
    return TrainResult(out, out / "best.pt", best_epoch, best_metrics, history, num_images, num_skipped,
                       time.perf_counter() - started)

