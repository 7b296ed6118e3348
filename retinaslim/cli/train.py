"""``retinaslim train-teacher`` and ``train-student``: one training stage, two roles with their own defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from retinaslim import api, console
from retinaslim.cli.common import DeviceOpt, ImagesOpt, SeedOpt, WorkersOpt, app, user_errors
from retinaslim.cli.workspace import pick
from retinaslim.config import STUDENT_MIN_ITERATIONS, TEACHER_MIN_ITERATIONS, TRAIN_DEFAULTS, Workspace


def _resume_hint(role: str, out: Path | None, resume: Path | None, machine: str = "") -> str | None:
    """How to continue a training stopped by Ctrl-C or SIGTERM: from its last.pt (with the ``machine`` options a
    resumed run was given, e.g. " --device cpu"), or why there is none."""
    last = resume if resume is not None else (Path(out) / "last.pt" if out is not None else None)
    if last is None:
        return None
    if Path(last).is_file():
        return f"continue with `retinaslim train-{role} --resume {last}{machine}`"
    return f"no checkpoint was saved yet, so there is no {last} to resume from"


def _given(context: typer.Context) -> list[str]:
    """The options typed on the command line, as --names (a source's enum is compared by name: typer has
    used click's and, since 0.2x, its own copy)."""
    return [f"--{p.name.replace('_', '-')}" for p in context.command.params
            if getattr(context.get_parameter_source(p.name), "name", None) == "COMMANDLINE"]


def _train(context: typer.Context, role: str, labeled, val, out, resume, options: dict) -> None:
    typed = _given(context)
    machine = "".join(f" --{k} {options[k]}" for k in ("device", "workers") if resume is not None and f"--{k}" in typed)
    with user_errors(resume_hint=lambda: _resume_hint(role, out, resume, machine)):
        if resume is not None:
            from retinaslim.engine import ddp  # loads torch: not at the top, where --help would load it too

            ignored = [name for name in typed if name not in ("--resume", "--device", "--workers")]
            if ignored and ddp.is_main_process():
                console.warn(f"--resume continues with the run's own settings: ignored {', '.join(ignored)} "
                             "(only --device and --workers, the machine's, are taken)")
            options.update({k: None for k in ("device", "workers") if f"--{k}" not in typed})  # None: the run's own
        else:
            ws = Workspace.find()
            labeled = pick(labeled, "--labeled", ws and ws.labeled, "labelled data")
            val = pick(val, "--val", ws and ws.val, "validation data")
            if out is None:  # a student on human labels only is the bar the machine labels must beat: runs/student-human
                folder = "student-human" if role == "student" and options.get("pseudo") is None else role
                out = (ws or Workspace(Path.cwd())).run_dir(folder)
        run = api.train_teacher if role == "teacher" else api.train_student
        given = {k: v for k, v in options.items() if v is not None}  # None: the role's default
        with console.RichReporter() as reporter:
            result = run(labeled=labeled, val=val, out=out, resume=resume, reporter=reporter, **given)
    from retinaslim.engine import ddp  # torch is loaded by now; importing it above would load it for --help

    if not ddp.is_main_process():
        return  # under torchrun, rank 0 reports
    m = result.best_metrics
    console.table(f"train-{role}: best epoch {result.best_epoch}", ["weights", "AP", "AP50", "AP75", "minutes"],
                  [(result.best, m.get("ap", 0.0), m.get("ap50", 0.0), m.get("ap75", 0.0), result.seconds / 60)])
    if result.num_skipped_images:
        console.info(f"skipped {result.num_skipped_images} undecodable image(s) during training")
    console.info(f"saved to {result.out} (best.pt, last.pt, results.csv, results.png, config.yaml)")


LabeledOpt = Annotated[Optional[Path], typer.Option(help="Human-labelled COCO JSON (default: the workspace's).")]
ValOpt = Annotated[Optional[Path], typer.Option(help="Validation COCO JSON (default: the workspace's).")]
OutRunOpt = Annotated[Optional[Path], typer.Option(help="Run folder (default: a new runs/<role>[-N] folder; a student on human labels only: runs/student-human[-N]).")]
SizeOpt = Annotated[Optional[int], typer.Option(min=32, help="Input size: images are resized so their longer side is this many pixels.")]
BatchOpt = Annotated[Optional[int], typer.Option(min=1, help="Images per batch.")]
EpochsOpt = Annotated[Optional[int], typer.Option(min=1, help="Passes over the (human-labelled) training images.")]
ItersOpt = Annotated[Optional[int], typer.Option(min=1, help="Total optimiser steps; replaces --epochs when given (validated about as often as --epochs epochs, and in each of the last 10).")]
ResumeOpt = Annotated[Optional[Path], typer.Option(help="Continue the run whose last.pt this is, with its own settings: other options are ignored, except the machine's, --device and --workers.")]
OptimOpt = Annotated[Optional[str], typer.Option(help="sgd or adamw.")]
LrOpt = Annotated[Optional[float], typer.Option(min=0.0, help="Peak learning rate (after linear warm-up; cosine decay).")]
WdOpt = Annotated[Optional[float], typer.Option(min=0.0, help="Weight decay.")]
KeepEmptyOpt = Annotated[bool, typer.Option(help="Train categories that have no boxes in the labelled set too (by default they are left out, e.g. the supercategory Roboflow lists as category 0).")]
AssignOpt = Annotated[Optional[str], typer.Option(help="Which anchors train on each box: iou (RetinaNet's: IoU >= 0.5, and each box's best anchor) or tal (task-aligned: per box, the 10 anchors inside it that the model already scores and places best, trained with a quality focal loss).")]
AugOpt = Annotated[Optional[str], typer.Option(help="Augmentation preset: none; light (flip, brightness/contrast, hue); strong (+ scale, shift, rotation, perspective, blur, JPEG); mosaic (four images tiled at 0.5-1.5x scale, then light; the last 10 epochs whole images).")]


def _teacher_help() -> str:
    t = TRAIN_DEFAULTS["teacher"]
    return (f"Train the teacher, torchvision's ResNet50 RetinaNet, on human labels. Defaults: {t['arch']}, "
            f"{t['image_size']} px, batch {t['batch_size']}, {t['epochs']} epochs but at least {TEACHER_MIN_ITERATIONS:,} steps, {t['optimizer']} lr {t['lr']}, augment {t['augment']}, assign {t['assign']}.")


def _student_help() -> str:
    s = TRAIN_DEFAULTS["student"]
    return (f"Train the slim student on human labels (+ machine labels with --pseudo). Defaults: {s['arch']}, "
            f"{s['image_size']} px, batch {s['batch_size']}, {s['epochs']} epochs but at least {STUDENT_MIN_ITERATIONS:,} steps, {s['optimizer']} lr {s['lr']}, augment {s['augment']}, assign {s['assign']}.")


@app.command("train-teacher", help=_teacher_help())
def train_teacher(
    context: typer.Context, labeled: LabeledOpt = None, val: ValOpt = None, images: ImagesOpt = None, out: OutRunOpt = None,
    arch: Annotated[Optional[str], typer.Option(help="retinanet_resnet50_fpn or retinanet_resnet50_fpn_v2.")] = None,
    pretrained: Annotated[bool, typer.Option(help="Start from torchvision's ImageNet ResNet50 weights in the local torch cache (never downloaded).")] = False,
    init: Annotated[Optional[str], typer.Option(help="Start from these weights: a torchvision-format state dict (bare, {'model': ...} or {'state_dict': ...}, 'module.' prefixes allowed) of a RetinaNet or a ResNet50 classifier, or a retinaslim checkpoint; 'coco': torchvision's COCO weights for --arch from the local torch cache. Tensors that do not fit keep their initialisation, and the log names them.")] = None,
    image_size: SizeOpt = None, batch_size: BatchOpt = None, epochs: EpochsOpt = None, iterations: ItersOpt = None,
    optimizer: OptimOpt = None, lr: LrOpt = None, weight_decay: WdOpt = None, augment: AugOpt = None,
    assign: AssignOpt = None, keep_empty_classes: KeepEmptyOpt = False,
    resume: ResumeOpt = None, device: DeviceOpt = "auto", workers: WorkersOpt = 2, seed: SeedOpt = 0,
) -> None:
    _train(context, "teacher", labeled, val, out, resume, dict(
        images=images, arch=arch, pretrained=pretrained, init=init, image_size=image_size, batch_size=batch_size,
        epochs=epochs, iterations=iterations, optimizer=optimizer, lr=lr, weight_decay=weight_decay, augment=augment,
        assign=assign, keep_empty_classes=keep_empty_classes, device=device, workers=workers, seed=seed))


@app.command("train-student", help=_student_help())
def train_student(
    context: typer.Context, labeled: LabeledOpt = None, val: ValOpt = None,
    pseudo: Annotated[Optional[Path], typer.Option(help="Filtered machine labels (COCO JSON from `retinaslim filter`); default: the workspace's runs/pseudo.filtered.json if present, else human labels only.")] = None,
    human_only: Annotated[bool, typer.Option(help="Ignore the workspace's machine labels and train on human labels only.")] = False,
    pseudo_ratio: Annotated[float, typer.Option(help="Share of machine-labelled images in every batch (Data Distillation used about 0.4).")] = 0.4,
    pseudo_weight: Annotated[float, typer.Option(min=0.0, help="Scales the loss of machine-labelled images.")] = 1.0,
    pseudo_box_weight: Annotated[str, typer.Option(help="none: every machine box counts fully; score: each machine box's loss terms scale with its fused score (0..1).")] = "none",
    images: ImagesOpt = None, out: OutRunOpt = None,
    arch: Annotated[Optional[str], typer.Option(help="Student architecture: slim-s, slim-m or slim-l (or a baseline: retinanet_resnet18_fpn, retinanet_mobilenet_v2_fpn, retinanet_shufflenet_v2_fpn).")] = None,
    norm: Annotated[Optional[str], typer.Option(help="gn (GroupNorm, default) or bn (BatchNorm).")] = None,
    anchors: Annotated[str, typer.Option(help="fit: anchor sizes and aspect ratios by k-means on the human-labelled boxes (kept when they match the boxes better than the defaults; slim students only, baselines keep torchvision's); default: the built-in card anchors.")] = "fit",
    image_size: SizeOpt = None, batch_size: BatchOpt = None, epochs: EpochsOpt = None, iterations: ItersOpt = None,
    optimizer: OptimOpt = None, lr: LrOpt = None, weight_decay: WdOpt = None, augment: AugOpt = None,
    assign: AssignOpt = None, keep_empty_classes: KeepEmptyOpt = False,
    resume: ResumeOpt = None, device: DeviceOpt = "auto", workers: WorkersOpt = 2, seed: SeedOpt = 0,
) -> None:
    with user_errors():
        ws = Workspace.find()
        if pseudo is None and not human_only and resume is None and ws is not None and ws.filtered.is_file():
            pseudo = pick(None, "--pseudo", ws.filtered, "machine labels")
    _train(context, "student", labeled, val, out, resume, dict(
        pseudo=pseudo, pseudo_ratio=pseudo_ratio, pseudo_weight=pseudo_weight, pseudo_box_weight=pseudo_box_weight,
        images=images, arch=arch, norm=norm,
        anchors=anchors, image_size=image_size, batch_size=batch_size, epochs=epochs, iterations=iterations,
        optimizer=optimizer, lr=lr, weight_decay=weight_decay, augment=augment, assign=assign,
        keep_empty_classes=keep_empty_classes, device=device, workers=workers, seed=seed))
