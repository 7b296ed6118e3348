"""The ``retinaslim`` command: typer commands that parse options, call one API function and render its result.

Each command calls the function of ``retinaslim.api`` named after it (the same one Python users call), so
both resolve the same configuration; what the CLI adds is the workspace file (inputs taken from
retinaslim.yaml, announced), the rendering, and errors as one line that names the flags as typed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer

from retinaslim import api, console
from retinaslim.config import (FILTER_SCORE_THRESH, IMPORT_IMAGE_SIZE, PSEUDO_FUSION, PSEUDO_SCALES,
                               PSEUDO_SCORE_FLOOR, TRAIN_DEFAULTS, WORKSPACE_FILE, WORKSPACE_TEMPLATE, Workspace)
from retinaslim.errors import UserError

app = typer.Typer(
    help="Data distillation for object detection: a RetinaNet teacher labels unlabelled images, "
    "a slim student learns from human + machine labels.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help wraps to the terminal; rich's panels cut long words at 80 columns
)

DeviceOpt = Annotated[str, typer.Option(help="auto (cuda if available, else cpu), cpu, cuda or cuda:N.")]
WorkersOpt = Annotated[int, typer.Option(min=0, help="DataLoader worker processes that decode images (0: in the main process).")]
SeedOpt = Annotated[int, typer.Option(help="Random seed.")]
ImagesOpt = Annotated[Optional[Path], typer.Option(help="Folder the COCO files' image names resolve against (default: each JSON file's own folder).")]


# API keywords whose flag is not the keyword with dashes.
FLAGS = {"json_out": "--json", "from_format": "--from", "to_format": "--to", "max_images": "--max"}


def _flag(name: str, arguments: tuple[str, ...] = ()) -> str:
    """How the user typed an API keyword: SOURCE for a command's argument, else its --flag."""
    return name.upper() if name in arguments else FLAGS.get(name, "--" + name.replace("_", "-"))


@contextmanager
def _user_errors(*arguments: str) -> Iterator[None]:
    """A user's mistake ends in one red line and exit code 1, never a traceback.

    The message's `keywords` become the flags typed; ``arguments``: the command's positional arguments.
    """
    try:
        yield
    except UserError as e:
        console.error(str(e.renamed(lambda name: _flag(name, arguments))))
        raise typer.Exit(1) from None
    except OSError as e:  # the machine's problem, not the code's: a full disk, a permission, a vanished file
        console.error(f"{e.filename}: {e.strerror or e}" if e.filename else f"{e.strerror or e}")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        console.error("interrupted")
        raise typer.Exit(130) from None


def _workspace() -> Workspace | None:
    return Workspace.find()


def _pick(value, option: str, fallback, what: str):
    """``value`` if given, else the workspace's ``fallback`` (announced), else a one-line error."""
    if value is not None:
        return value
    if fallback is not None:
        console.info(f"using {what}: {fallback} (from {WORKSPACE_FILE})")
        return fallback
    raise UserError(f"missing {option}: pass {option} or run in a folder with a {WORKSPACE_FILE} that names it "
                    "(`retinaslim init` writes one)")


@app.command()
def init(
    force: Annotated[bool, typer.Option(help="Overwrite an existing retinaslim.yaml.")] = False,
) -> None:
    """Write a retinaslim.yaml workspace file, every key commented, in the current folder."""
    with _user_errors():
        path = Path(WORKSPACE_FILE)
        if path.exists() and not force:
            raise UserError(f"{path}: already exists; pass --force to overwrite it")
        path.write_text(WORKSPACE_TEMPLATE)
        console.info(f"wrote {path}: uncomment and edit the keys, then run commands from this folder")


@app.command()
def synth(
    out: Annotated[Path, typer.Argument(help="Folder to write the dataset to.")],
    labeled: Annotated[int, typer.Option(help="Number of human-labelled training images.")] = 100,
    unlabeled: Annotated[int, typer.Option(help="Number of unlabelled images (their truth goes to unlabeled.truth.json).")] = 900,
    val: Annotated[int, typer.Option(help="Number of validation images.")] = 100,
    size: Annotated[int, typer.Option(help="Image side in pixels (images are square).")] = 320,
    classes: Annotated[str, typer.Option(help="Card kinds to draw, comma-separated: id_card, bank_card, passport.")] = "id_card,bank_card,passport",
    distractors: Annotated[bool, typer.Option(help="Also draw paper, screens and books (card-like objects that are not cards).")] = True,
    seed: SeedOpt = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace a dataset already in OUT.")] = False,
) -> None:
    """Make synthetic ID-card photographs with COCO labels (and a workspace file) in OUT."""
    with _user_errors("out"), console.RichReporter() as reporter:
        result = api.synth(out, labeled=labeled, unlabeled=unlabeled, val=val, size=size, classes=classes,
                           distractors=distractors, seed=seed, overwrite=overwrite, reporter=reporter)
    console.table("synth", ["split", "images", "boxes", "file"],
                  [(s, result.num_images[s], result.num_boxes[s], result.files[s]) for s in result.num_images])
    console.info(f"saved to {result.out}; `cd {result.out}` to use its {WORKSPACE_FILE}")


def _train(role: str, labeled, val, out, resume, options: dict) -> None:
    with _user_errors():
        if resume is None:
            ws = _workspace()
            labeled = _pick(labeled, "--labeled", ws and ws.labeled, "labelled data")
            val = _pick(val, "--val", ws and ws.val, "validation data")
            if out is None:
                out = (ws.run_dir(role) if ws else Workspace(Path.cwd()).run_dir(role))
            if options.get("pseudo") is not None:
                console.info(f"training on human labels {labeled} + machine labels {options['pseudo']} "
                             f"({options['pseudo_ratio']:.0%} of each batch, loss weight {options['pseudo_weight']:g})")
        run = api.train_teacher if role == "teacher" else api.train_student
        given = {k: v for k, v in options.items() if v is not None}  # None: the role's default
        with console.RichReporter() as reporter:
            result = run(labeled=labeled, val=val, out=out, resume=resume, reporter=reporter, **given)
    if int(os.environ.get("RANK", 0)) != 0:
        return  # under torchrun, rank 0 reports
    m = result.best_metrics
    console.table(f"train-{role}: best epoch {result.best_epoch}", ["weights", "AP", "AP50", "AP75", "minutes"],
                  [(result.best, m.get("ap", 0.0), m.get("ap50", 0.0), m.get("ap75", 0.0), result.seconds / 60)])
    if result.num_skipped_images:
        console.info(f"skipped {result.num_skipped_images} undecodable image(s) during training")
    console.info(f"saved to {result.out} (best.pt, last.pt, results.csv, results.png, config.yaml)")


LabeledOpt = Annotated[Optional[Path], typer.Option(help="Human-labelled COCO JSON (default: the workspace's).")]
ValOpt = Annotated[Optional[Path], typer.Option(help="Validation COCO JSON (default: the workspace's).")]
OutRunOpt = Annotated[Optional[Path], typer.Option(help="Run folder (default: a new runs/<role>[-N] folder).")]
SizeOpt = Annotated[Optional[int], typer.Option(min=32, help="Input size: images are resized so their longer side is this many pixels.")]
BatchOpt = Annotated[Optional[int], typer.Option(min=1, help="Images per batch.")]
EpochsOpt = Annotated[Optional[int], typer.Option(min=1, help="Passes over the (human-labelled) training images.")]
ItersOpt = Annotated[Optional[int], typer.Option(min=1, help="Total optimiser steps; replaces --epochs when given.")]
ResumeOpt = Annotated[Optional[Path], typer.Option(help="Continue the run whose last.pt this is (its own settings are used; other options are ignored).")]
OptimOpt = Annotated[Optional[str], typer.Option(help="sgd or adamw.")]
LrOpt = Annotated[Optional[float], typer.Option(min=0.0, help="Peak learning rate (after linear warm-up; cosine decay).")]
WdOpt = Annotated[Optional[float], typer.Option(min=0.0, help="Weight decay.")]
KeepEmptyOpt = Annotated[bool, typer.Option(help="Train categories that have no boxes in the labelled set too (by default they are left out, e.g. the supercategory Roboflow lists as category 0).")]
AugOpt = Annotated[Optional[str], typer.Option(help="Augmentation preset: none; light (flip, brightness/contrast, hue); strong (+ scale, shift, rotation, perspective, blur, JPEG).")]


def _teacher_help() -> str:
    t = TRAIN_DEFAULTS["teacher"]
    return (f"Train the teacher, torchvision's ResNet50 RetinaNet, on human labels. Defaults: {t['arch']}, "
            f"{t['image_size']} px, batch {t['batch_size']}, {t['epochs']} epochs, {t['optimizer']} lr {t['lr']}.")


def _student_help() -> str:
    s = TRAIN_DEFAULTS["student"]
    return (f"Train the slim student on human labels (+ machine labels with --pseudo). Defaults: {s['arch']}, "
            f"{s['image_size']} px, batch {s['batch_size']}, {s['epochs']} epochs, {s['optimizer']} lr {s['lr']}.")


@app.command("train-teacher", help=_teacher_help())
def train_teacher(
    labeled: LabeledOpt = None, val: ValOpt = None, images: ImagesOpt = None, out: OutRunOpt = None,
    arch: Annotated[Optional[str], typer.Option(help="retinanet_resnet50_fpn or retinanet_resnet50_fpn_v2.")] = None,
    pretrained: Annotated[bool, typer.Option(help="Start from torchvision's ImageNet ResNet50 weights in the local torch cache (never downloaded).")] = False,
    init: Annotated[Optional[str], typer.Option(help="Start from these weights: a torchvision-format state dict (bare, {'model': ...} or {'state_dict': ...}, 'module.' prefixes allowed) of a RetinaNet or a ResNet50 classifier, or a retinaslim checkpoint; 'coco': torchvision's COCO weights for --arch from the local torch cache. Tensors that do not fit keep their initialisation, and the log names them.")] = None,
    image_size: SizeOpt = None, batch_size: BatchOpt = None, epochs: EpochsOpt = None, iterations: ItersOpt = None,
    optimizer: OptimOpt = None, lr: LrOpt = None, weight_decay: WdOpt = None, augment: AugOpt = None,
    keep_empty_classes: KeepEmptyOpt = False,
    resume: ResumeOpt = None, device: DeviceOpt = "auto", workers: WorkersOpt = 2, seed: SeedOpt = 0,
) -> None:
    _train("teacher", labeled, val, out, resume, dict(
        images=images, arch=arch, pretrained=pretrained, init=init, image_size=image_size, batch_size=batch_size,
        epochs=epochs, iterations=iterations, optimizer=optimizer, lr=lr, weight_decay=weight_decay, augment=augment,
        keep_empty_classes=keep_empty_classes, device=device, workers=workers, seed=seed))


@app.command("import-teacher")
def import_teacher(
    weights: Annotated[Path, typer.Argument(help="A RetinaNet trained with torchvision: its state dict (bare, {'model': ...} or {'state_dict': ...}, 'module.' prefixes allowed).")],
    arch: Annotated[str, typer.Option(help="retinanet_resnet50_fpn or retinanet_resnet50_fpn_v2: the torchvision builder it was made with.")],
    classes: Annotated[str, typer.Option(help="Class names, one per output of its class head, in output order, comma-separated: output k (0-based) becomes category id k+1.")],
    out: Annotated[Path, typer.Option(help="The retinaslim checkpoint to write, e.g. teacher.pt.")],
    image_size: Annotated[int, typer.Option(min=32, help="Longer side in pixels images are resized to by default (torchvision's own transform makes the shorter side 800, the longer at most 1333).")] = IMPORT_IMAGE_SIZE,
) -> None:
    """Wrap a RetinaNet trained elsewhere with torchvision into a teacher checkpoint (its own anchors and postprocess; no training)."""
    with _user_errors("weights"):
        result = api.import_teacher(weights, arch=arch, classes=classes, out=out, image_size=image_size)
    console.table(f"import-teacher: {result.arch}", ["label", "category id", "class"],
                  [(k, c["id"], c["name"]) for k, c in enumerate(result.classes)])
    console.info(f"{result.num_tensors} tensors; torchvision's anchors and postprocess; images resized to "
                 f"{result.image_size} px (longer side) unless a command's --image-size says otherwise")
    console.info(f"saved to {result.out}")


@app.command("train-student", help=_student_help())
def train_student(
    labeled: LabeledOpt = None, val: ValOpt = None,
    pseudo: Annotated[Optional[Path], typer.Option(help="Filtered machine labels (COCO JSON from `retinaslim filter`); default: the workspace's runs/pseudo.filtered.json if present, else human labels only.")] = None,
    human_only: Annotated[bool, typer.Option(help="Ignore the workspace's machine labels and train on human labels only.")] = False,
    pseudo_ratio: Annotated[float, typer.Option(help="Share of machine-labelled images in every batch (Data Distillation used about 0.4).")] = 0.4,
    pseudo_weight: Annotated[float, typer.Option(min=0.0, help="Scales the loss of machine-labelled images.")] = 1.0,
    images: ImagesOpt = None, out: OutRunOpt = None,
    arch: Annotated[Optional[str], typer.Option(help="Student architecture: slim-s or slim-m (or a baseline: retinanet_resnet18_fpn, retinanet_mobilenet_v2_fpn, retinanet_shufflenet_v2_fpn).")] = None,
    norm: Annotated[Optional[str], typer.Option(help="gn (GroupNorm, default) or bn (BatchNorm).")] = None,
    anchors: Annotated[str, typer.Option(help="fit: anchor sizes and aspect ratios by k-means on the human-labelled boxes (kept when they match the boxes better than the defaults; slim students only, baselines keep torchvision's); default: the built-in card anchors.")] = "fit",
    image_size: SizeOpt = None, batch_size: BatchOpt = None, epochs: EpochsOpt = None, iterations: ItersOpt = None,
    optimizer: OptimOpt = None, lr: LrOpt = None, weight_decay: WdOpt = None, augment: AugOpt = None,
    keep_empty_classes: KeepEmptyOpt = False,
    resume: ResumeOpt = None, device: DeviceOpt = "auto", workers: WorkersOpt = 2, seed: SeedOpt = 0,
) -> None:
    with _user_errors():
        ws = _workspace()
        if pseudo is None and not human_only and resume is None and ws is not None and ws.filtered.is_file():
            pseudo = _pick(None, "--pseudo", ws.filtered, "machine labels")
    _train("student", labeled, val, out, resume, dict(
        pseudo=pseudo, pseudo_ratio=pseudo_ratio, pseudo_weight=pseudo_weight, images=images, arch=arch, norm=norm,
        anchors=anchors, image_size=image_size, batch_size=batch_size, epochs=epochs, iterations=iterations,
        optimizer=optimizer, lr=lr, weight_decay=weight_decay, augment=augment, keep_empty_classes=keep_empty_classes,
        device=device, workers=workers, seed=seed))


@app.command("pseudo-label")
def pseudo_label(
    source: Annotated[Optional[Path], typer.Argument(help="Folder of unlabelled images (searched recursively) or a text file of image paths; default: the workspace's.")] = None,
    teacher: Annotated[Optional[Path], typer.Option(help="Teacher checkpoint (default: the newest runs/teacher*/best.pt).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Output COCO JSON (default: runs/pseudo.json).")] = None,
    scales: Annotated[str, typer.Option(help="Comma-separated sizes: factors of the input size (e.g. 0.75,1,1.25) or, above 16, absolute shorter sides in pixels (e.g. 400,600,800).")] = ",".join(f"{s:g}" for s in PSEUDO_SCALES),
    hflip: Annotated[bool, typer.Option(help="Also run each size horizontally flipped.")] = True,
    vflip: Annotated[bool, typer.Option(help="Also run each size vertically flipped.")] = False,
    rot90: Annotated[bool, typer.Option(help="Also run each size rotated by 90 and 270 degrees (cards photographed sideways).")] = False,
    fusion: Annotated[str, typer.Option(help="How transforms are fused: wbf (weighted boxes fusion), nms, or vote (NMS + box voting).")] = PSEUDO_FUSION,
    score_floor: Annotated[float, typer.Option(help="Keep fused boxes scoring at least this (filter later).")] = PSEUDO_SCORE_FLOOR,
    image_size: Annotated[Optional[int], typer.Option(min=32, help="Input size for scale 1.0 (default: the teacher's training size).")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass (also the unit of the resume journal).")] = 8,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run from its journal (OUT.journal) instead of refusing to start.")] = False,
    shard: Annotated[Optional[str], typer.Option(help="I/N: label only shard I of N (0-based), for schedulers without torchrun; the last shard to finish writes OUT.")] = None,
    device: DeviceOpt = "auto", workers: WorkersOpt = 2,
) -> None:
    """Label unlabelled images with the teacher, ensembling several transforms per image.

    Under `torchrun --nproc-per-node N -m retinaslim pseudo-label ...` each process takes a shard and
    rank 0 writes the output.
    """
    with _user_errors("source"):
        ws = _workspace()
        source = _pick(source, "SOURCE", ws and ws.unlabeled, "unlabelled images")
        teacher = _pick(teacher, "--teacher", ws and ws.newest_weights("teacher"), "teacher")
        out = _pick(out, "--out", ws and ws.pseudo, "output")
        with console.RichReporter() as reporter:
            result = api.pseudo_label(source, teacher=teacher, out=out, scales=scales, hflip=hflip, vflip=vflip,
                                      rot90=rot90, fusion=fusion, score_floor=score_floor, image_size=image_size,
                                      batch_size=batch_size, resume=resume, shard=shard, device=device,
                                      workers=workers, reporter=reporter)
    t = result.timings
    if result.num_images_resumed:
        console.info(f"resumed: {result.num_images_resumed} images were already labelled")
    if not result.merged:
        console.info(f"shard {result.shard[0]}/{result.shard[1]} done ({result.num_images_this_run} images, "
                     f"{result.seconds:.1f} s); the output is written when every shard has finished")
        return
    console.table(f"pseudo-label: {len(result.transforms)} transforms ({', '.join(result.transforms)})",
                  ["images", "skipped", "boxes", "boxes/image", "images/s", "decode wait s", "forward s", "fusion s"],
                  [(result.num_images, len(result.skipped), result.num_boxes, result.num_boxes / max(1, result.num_images),
                    result.num_images_this_run / max(result.seconds, 1e-9), t.data, t.forward, t.fusion)])
    for item in result.skipped:
        console.info(f"skipped {item['file']}: {item['reason']}")
    console.info(f"saved to {result.out}")


@app.command("filter")
def filter_(
    pseudo: Annotated[Optional[Path], typer.Argument(help="Raw machine labels from pseudo-label (default: runs/pseudo.json).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Filtered COCO JSON (default: runs/pseudo.filtered.json).")] = None,
    score_thresh: Annotated[Optional[str], typer.Option(help=f"Keep boxes scoring at least this: one value, or per class, e.g. id_card=0.6,passport=0.7 (default {FILTER_SCORE_THRESH} unless --auto-thresh).")] = None,
    auto_thresh: Annotated[Optional[str], typer.Option(help="Choose the threshold per class: instances (as many machine boxes per image as human boxes per labelled image; needs --labeled) or precision (lowest threshold reaching --target-precision on --calib images).")] = None,
    labeled: Annotated[Optional[Path], typer.Option(help="Human-labelled COCO file, for --auto-thresh instances (default: the workspace's).")] = None,
    calib: Annotated[Optional[Path], typer.Option(help="Human-labelled COCO file to calibrate on, for --auto-thresh precision.")] = None,
    calib_images: Annotated[Optional[Path], typer.Option(help="Folder the --calib file names resolve against.")] = None,
    teacher: Annotated[Optional[Path], typer.Option(help="Teacher for --auto-thresh precision (default: the one pseudo.json names).")] = None,
    target_precision: Annotated[float, typer.Option(help="Precision at IoU 0.5 that --auto-thresh precision aims for.")] = 0.95,
    min_agreement: Annotated[int, typer.Option(min=1, help="Keep boxes found by at least this many transforms.")] = 1,
    min_size: Annotated[float, typer.Option(min=0.0, help="Drop boxes whose shorter side is below this many pixels.")] = 0.0,
    max_size_frac: Annotated[float, typer.Option(help="Drop boxes covering more than this fraction of the image area.")] = 1.0,
    aspect_range: Annotated[Optional[str], typer.Option(help="LO,HI: keep boxes whose width/height lies in this range.")] = None,
    max_per_image: Annotated[Optional[int], typer.Option(min=1, help="Keep at most this many boxes per image, best first.")] = None,
    ambiguous: Annotated[str, typer.Option(help="Images with a box scored between --ambiguous-low and the threshold: keep, drop (the image), or ignore (those boxes give no loss).")] = "keep",
    ambiguous_low: Annotated[float, typer.Option(help="Lower bound of the doubtful score band.")] = 0.2,
    keep_empty: Annotated[bool, typer.Option("--keep-empty/--drop-empty", help="Keep images left without boxes as background images.")] = True,
    truth: Annotated[Optional[Path], typer.Option(help="True labels of the unlabelled images (e.g. unlabeled.truth.json): report precision, recall and AP before and after.")] = None,
    review_out: Annotated[Optional[Path], typer.Option(help="Write the most doubtful images with their machine boxes as Label Studio import JSON (and NAME.coco.json).")] = None,
    review_count: Annotated[int, typer.Option(min=1, help="How many images --review-out lists.")] = 100,
    report: Annotated[Optional[Path], typer.Option(help="Save the report as JSON.")] = None,
    device: DeviceOpt = "auto", workers: WorkersOpt = 2,
) -> None:
    """Keep the machine labels worth training on: thresholds, agreement, geometry, doubtful images."""
    with _user_errors("pseudo"):
        ws = _workspace()
        pseudo = _pick(pseudo, "PSEUDO", ws and ws.pseudo, "machine labels")
        out = _pick(out, "--out", ws and ws.filtered, "output")
        if auto_thresh == "instances":
            labeled = _pick(labeled, "--labeled", ws and ws.labeled, "human labels")
        with console.RichReporter() as reporter:
            result = api.filter(
                pseudo, out=out, score_thresh=score_thresh, auto_thresh=auto_thresh, labeled=labeled, calib=calib,
                calib_images=calib_images, teacher=teacher, target_precision=target_precision,
                min_agreement=min_agreement, min_size=min_size, max_size_frac=max_size_frac, aspect_range=aspect_range,
                max_per_image=max_per_image, ambiguous=ambiguous, ambiguous_low=ambiguous_low, keep_empty=keep_empty,
                truth=truth, review_out=review_out, review_count=review_count, report=report, device=device,
                workers=workers, reporter=reporter)
    _render_filter(result)
    if report is not None:
        console.info(f"report saved to {report}")
    if result.review_out:
        console.info(f"{result.num_review} doubtful images for review saved to {result.review_out}")
    console.info(f"saved to {result.out}")


def _render_filter(result) -> None:
    names = list(result.num_boxes_in)
    calibrated = {c.class_name: c for c in result.calibration}
    console.table("thresholds and boxes per class", ["class", "threshold", "boxes in", "boxes kept"] +
                  (["calib precision", "calib recall"] if calibrated else []),
                  [[n, result.thresholds[n], result.num_boxes_in[n], result.num_boxes_kept[n]] +
                   ([calibrated[n].precision, calibrated[n].recall] if calibrated else []) for n in names])
    for c in result.calibration:
        if not c.reached:
            console.info(f"{c.class_name}: no threshold reaches the target precision; none of its boxes are kept")
    console.table("boxes removed per rule", ["rule", *names, "images removed"],
                  [[r.rule, *(r.boxes_removed[n] for n in names), r.images_removed] for r in result.rules])
    peak = max([h["boxes_in"] for h in result.histogram] + [1])
    console.table("score histogram", ["score", "boxes in", "kept", ""],
                  [(f"{h['lo']:.1f}-{h['hi']:.1f}", h["boxes_in"], h["boxes_kept"], "#" * round(30 * h["boxes_in"] / peak))
                   for h in result.histogram])
    if result.truth_metrics:
        console.table("machine labels vs truth (IoU 0.5 for precision/recall)", ["labels", "boxes", "precision", "recall", "AP", "AP50"],
                      [(k, m["boxes"], m["precision"], m["recall"], m["ap"], m["ap50"]) for k, m in result.truth_metrics.items()])
        before, after = (result.truth_metrics[k]["per_class"] for k in ("before", "after"))
        console.table("per class (precision / recall at IoU 0.5)", ["class", "boxes before", "precision", "recall",
                                                                     "boxes after", "precision", "recall"],
                      [(name, b["boxes"], b["precision"], b["recall"], after[name]["boxes"], after[name]["precision"],
                        after[name]["recall"]) for name, b in before.items()])
        if result.truth_metrics["before"]["images_rescaled"]:
            console.info(f"{result.truth_metrics['before']['images_rescaled']} truth image(s) declare a resized copy of "
                         "the size the images have; their boxes were rescaled to the images")
        if result.truth_metrics["before"].get("renumbered"):
            console.info(result.truth_metrics["before"]["renumbered"])
    console.info(f"images: {result.num_images_in} in, {result.num_images_out} out ({result.num_empty_images} without boxes, "
                 f"{result.num_ignore_regions} ignore regions)")


@app.command("eval")
def eval_(
    weights: Annotated[list[Path], typer.Option(help="Checkpoint to evaluate; repeat for a side-by-side table.")],
    data: Annotated[Optional[Path], typer.Option(help="COCO JSON with the truth (default: the workspace's val).")] = None,
    images: ImagesOpt = None,
    image_size: Annotated[Optional[int], typer.Option(min=32, help="Input size (default: each checkpoint's training size).")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass for the AP run and the throughput measurement.")] = 8,
    latency_runs: Annotated[int, typer.Option(min=1, help="Timed forwards at batch 1 (median and p90 reported) and at --batch-size (throughput).")] = 20,
    warmup_runs: Annotated[int, typer.Option(min=0, help="Untimed forwards before each timing.")] = 3,
    predictions_out: Annotated[Optional[Path], typer.Option(help="Write COCO results (image_id, category_id, bbox xywh, score); with several --weights, NAME.1.json, NAME.2.json, ...")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the metrics as a JSON list, one object per checkpoint.")] = None,
    plots: Annotated[Path | None, typer.Option(help="Folder for a precision-recall curve PNG per checkpoint.")] = None,
    device: DeviceOpt = "auto", workers: WorkersOpt = 2,
) -> None:
    """COCO AP (overall, by size, per class), latency, throughput, parameters, MACs and size of one or more checkpoints."""
    with _user_errors():
        ws = _workspace()
        data = _pick(data, "--data", ws and ws.val, "evaluation data")
        with console.RichReporter() as reporter:
            result = api.evaluate(weights, data=data, images=images, image_size=image_size, batch_size=batch_size,
                                  latency_runs=latency_runs, warmup_runs=warmup_runs, predictions_out=predictions_out,
                                  json_out=json_out, plots=plots, device=device, workers=workers, reporter=reporter)
    _render_eval(result)


def _short(weights: str) -> str:
    """runs/teacher/best.pt -> teacher, runs/teacher/last.pt -> teacher/last.pt: short names for a narrow table."""
    path = Path(weights)
    if not path.parent.name:
        return path.name
    return path.parent.name if path.name == "best.pt" else f"{path.parent.name}/{path.name}"


def _render_eval(result) -> None:
    reports = result.reports
    r0 = reports[0]
    sizes = "/".join(str(s) for s in sorted({r.image_size for r in reports}))
    console.table(f"eval on {r0.device}, {r0.threads} threads, {sizes} px (FPS: batch 1)",
                  ["weights", "AP", "AP50", "FPS", "params M", "size MB"],
                  [(_short(r.weights), r.ap, r.ap50, r.fps, r.params / 1e6, r.size_mb) for r in reports])
    console.table(
        f"speed: ms at batch 1, median and p90 of {result.latency_runs} runs after {result.warmup_runs} warm-up; "
        f"img/s at batch {result.batch_size}",
        ["weights", "ms", "p90 ms", f"img/s b{result.batch_size}", "GMACs"],
        [(_short(r.weights), r.latency_ms, r.latency_p90_ms, r.throughput, r.macs / 1e9) for r in reports],
    )
    console.table(
        "accuracy (pycocotools; AP by object size at IoU 0.50:0.95)",
        ["weights", "AP75", "AP small", "AP medium", "AP large", "AR@100"],
        [(_short(r.weights), r.ap75, r.ap_small, r.ap_medium, r.ap_large, r.ar100)  # None: no truth of that size
         for r in reports],
    )
    # A row per class (as Ultralytics and spaCy print them): any number of classes fits the terminal.
    console.table("AP per class (IoU 0.50:0.95)", ["class", *(_short(r.weights) for r in reports)],
                  [(name, *(r.per_class_ap[name] for r in reports)) for name in r0.per_class_ap])  # None: no truth
    for r in reports:
        if r.num_skipped_images:
            console.info(f"{_short(r.weights)}: {r.num_skipped_images} image(s) could not be decoded; "
                         "their objects count as missed")
        if r.predictions:
            console.info(f"predictions of {r.weights} saved to {r.predictions}")
    if result.plots:
        console.info(f"precision-recall curves saved to {', '.join(map(str, result.plots))}")
    if result.json_out:
        console.info(f"metrics saved to {result.json_out}")


@app.command("profile")
def profile_(
    arch: Annotated[Optional[str], typer.Option(help="A registered architecture (slim-s, slim-m, retinanet_resnet50_fpn, ...), untrained.")] = None,
    weights: Annotated[Optional[Path], typer.Option(help="A checkpoint (its architecture and classes).")] = None,
    image_size: Annotated[int, typer.Option(min=32, help="Square input side in pixels.")] = 320,
    num_classes: Annotated[int, typer.Option(min=1, help="Classes, with --arch.")] = 1,
    runs: Annotated[int, typer.Option(min=1, help="Timed batch-1 runs per latency (after 5 warm-up runs); the median is reported.")] = 50,
    per_layer: Annotated[bool, typer.Option(help="Also print parameters and MACs per module, with each module's share.")] = False,
    depth: Annotated[int, typer.Option(min=1, help="Module-tree depth of the per-layer table.")] = 3,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the profile as JSON.")] = None,
    device: Annotated[str, typer.Option(help="cpu (default), cuda, or auto.")] = "cpu",
) -> None:
    """Parameters, MACs (multiply-accumulates) per module and in total, size, and latency of a model."""
    with _user_errors():
        result = api.profile(arch=arch, weights=weights, image_size=image_size, num_classes=num_classes, runs=runs,
                             depth=depth, json_out=json_out, device=device)
    if per_layer:
        console.table(f"{result.arch}: MACs per module at {result.image_size} x {result.image_size}",
                      ["module", "params", "MMACs", "share %"],
                      [(m.name, m.params, m.macs / 1e6, 100 * m.share) for m in result.modules])
    console.table(
        f"profile on {result.device}, {result.threads} threads, batch 1, {result.image_size} x {result.image_size}; "
        f"ms = median of {result.runs} runs",
        ["arch", "params M", "GMACs", "size MB", "network ms", "end-to-end ms", "FPS"],
        [(result.arch, result.params / 1e6, result.macs / 1e9, result.size_mb,
          result.network_latency_ms, result.latency_ms, 1000 / result.latency_ms)])
    if json_out:
        console.info(f"saved to {json_out}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the demo's data and runs.")] = Path("demo"),
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
) -> None:
    """Run the whole pipeline at smoke scale on synthetic data and print teacher vs students."""
    from retinaslim.stages.demo import demo as run

    with _user_errors(), console.RichReporter() as reporter:
        result = run(out, seed, device, reporter)
    console.info(f"pseudo-label: {result.pseudo.num_images} images, {result.pseudo.num_boxes} boxes; "
                 f"filter kept {sum(result.filtered.num_boxes_kept.values())}")
    _render_eval(result.evaluation)
    for note in result.notes:
        console.info(note)
    console.info(f"saved to {result.out}")


# --- formats, predictions and pictures (issue 9) ---

@app.command()
def convert(
    src: Annotated[Path, typer.Argument(help="COCO or Label Studio JSON file, VOC folder (with Annotations/), or YOLO folder (or its data.yaml).")],
    from_format: Annotated[str, typer.Option("--from", help="Format of SRC: coco, voc, yolo or labelstudio.")],
    to_format: Annotated[str, typer.Option("--to", help="Format to write: coco, yolo or labelstudio.")],
    out: Annotated[Path, typer.Option(help="Output: a .json file (coco, labelstudio) or a folder (yolo).")],
    images: Annotated[Path | None, typer.Option(help="Folder the image names of a COCO or Label Studio file resolve against.")] = None,
    split: Annotated[str | None, typer.Option(help="VOC only: convert the images ImageSets/Main/<split>.txt lists (e.g. train, val, test).")] = None,
) -> None:
    """Convert labels between COCO, Pascal VOC, YOLO and Label Studio; report what was skipped and why."""
    with _user_errors("src"):
        result = api.convert(src, from_format=from_format, to_format=to_format, out=out, images=images, split=split)
    console.table(f"convert {from_format} -> {to_format}", ["class", "boxes"],
                  [*result.num_boxes.items(), ("all", sum(result.num_boxes.values()))])
    console.info(f"{result.num_images:,} images")
    if result.skipped:
        console.table("skipped", ["what", "reason", "count"], result.skipped_by_reason())
        for item in result.skipped[:10]:
            console.info(f"skipped {item.kind} {item.where}: {item.reason}")
        if len(result.skipped) > 10:
            console.info(f"... and {len(result.skipped) - 10} more")
    if result.num_clipped:
        console.info(f"{result.num_clipped} boxes reached outside their image and were clipped to it")
    if result.num_polygons:
        console.info(f"{result.num_polygons} polygons were read as their enclosing boxes")
    if result.num_sizes_read:
        console.info(f"{result.num_sizes_read} image sizes were not in the labels and were read from the images")
    if result.num_rescaled:
        console.info(f"{result.num_rescaled} images are a resized copy of the size the labels give; "
                     "their boxes were rescaled to the images")
    if result.num_machine_boxes:
        console.info(f"{result.num_machine_boxes} boxes carry a score (machine labels)")
    console.info(f"saved to {result.out}")


@app.command()
def predict(
    images: Annotated[list[Path], typer.Argument(help="Image files, folders (searched recursively) or text files listing images.")],
    weights: Annotated[Path, typer.Option(help="A retinaslim checkpoint (.pt), or an ONNX model from retinaslim export (.onnx).")],
    out: Annotated[Path, typer.Option(help="Output COCO JSON: images, scored boxes, categories.")] = Path("preds.json"),
    draw: Annotated[Path | None, typer.Option(help="Folder for copies of the images with their boxes, class names and scores drawn.")] = None,
    score_thresh: Annotated[float, typer.Option(help="Keep boxes scoring at least this (0.05 for an AP evaluation).")] = 0.3,
    tta: Annotated[bool, typer.Option(help="Ensemble pseudo-label's transforms (3 scales x flip, fused by WBF); boxes gain an agreement count.")] = False,
    image_size: Annotated[int | None, typer.Option(min=32, help="Input size (default: the model's training size).")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass.")] = 8,
    device: DeviceOpt = "auto", workers: WorkersOpt = 2,
) -> None:
    """Detect objects in images with a trained model: COCO JSON out, optional drawings."""
    with _user_errors("images"), console.RichReporter() as reporter:
        result = api.predict(images, weights=weights, out=out, draw=draw, score_thresh=score_thresh, tta=tta,
                             image_size=image_size, batch_size=batch_size, device=device, workers=workers,
                             reporter=reporter)
    console.table("predict", ["class", "boxes"], [*result.num_boxes.items(), ("all", sum(result.num_boxes.values()))])
    console.info(f"{result.num_images:,} images, {len(result.transforms)} transform(s), "
                 f"{result.num_images / max(result.seconds, 1e-9):.1f} images/s")
    for item in result.skipped:
        console.info(f"skipped {item['file']}: {item['reason']}")
    if result.draw is not None:
        console.info(f"drawings saved to {result.draw}")
    console.info(f"saved to {result.out}")


@app.command()
def show(
    labels: Annotated[Path, typer.Argument(help="A COCO file: human labels, pseudo.json, filtered labels or predictions.")],
    out: Annotated[Path, typer.Option(help="sheet.png (or .jpg): a contact sheet; report.html: a self-contained, sortable report.")],
    images: ImagesOpt = None,
    sort: Annotated[str | None, typer.Option(help="score (lowest machine score first; default when there are machine labels), disagreement (most transforms missing a box first) or file.")] = None,
    max_images: Annotated[int, typer.Option("--max", min=1, help="Show at most this many images (the first in sort order).")] = 48,
    thumb_size: Annotated[int, typer.Option(min=32, help="Thumbnail side in pixels.")] = 256,
    columns: Annotated[int, typer.Option(min=1, help="Thumbnails per row of the contact sheet.")] = 6,
) -> None:
    """Pictures to audit labels in a minute: boxes coloured by class, machine labels dashed with their scores."""
    with _user_errors("labels"):
        result = api.show(labels, out=out, images=images, sort=sort, max_images=max_images, thumb_size=thumb_size,
                          columns=columns)
    rows = result.rows[:10]
    console.table(f"show: {len(result.rows)} of {result.num_images:,} images, sorted by {result.sort} (first {len(rows)})",
                  ["#", "image", "human", "machine", "lowest score", "disagreement"],
                  [(k, Path(r.file_name).name, r.num_human, r.num_machine, r.lowest_score,
                    r.disagreement) for k, r in enumerate(rows, start=1)])
    for item in result.skipped:
        console.info(f"skipped {item['file']}: {item['reason']}")
    console.info(f"saved to {result.out}")


@app.command()
def export(
    weights: Annotated[Path, typer.Option(help="A retinaslim checkpoint (.pt).")],
    format_: Annotated[str, typer.Option("--format", help="Output format: onnx.")] = "onnx",
    out: Annotated[Path | None, typer.Option(help="Output .onnx file (default: the weights' name with .onnx).")] = None,
    image_size: Annotated[int | None, typer.Option(min=32, help="Fixed input size: the graph takes S x S, S this rounded up to a multiple of 32 (default: the training size).")] = None,
    opset: Annotated[int, typer.Option(help="ONNX opset, 13 to 20.")] = 17,
    dynamic_batch: Annotated[bool, typer.Option(help="Make the batch axis dynamic (default: batch 1).")] = False,
    int8: Annotated[bool, typer.Option(help="Also write NAME.int8.onnx by static quantisation, with AP and latency before and after.")] = False,
    calibration: Annotated[Path | None, typer.Option(help="Image folder, image-list file or COCO JSON: parity samples (default: synthetic scenes) and int8 calibration.")] = None,
    val: Annotated[Path | None, typer.Option(help="COCO JSON for int8's AP (default: --calibration when it is a COCO file with boxes).")] = None,
) -> None:
    """Export a model to ONNX (network only; decode + NMS outside), check it against PyTorch, optionally int8."""
    from retinaslim.stages.export import BOX_TOL_PX, SCORE_TOL

    with _user_errors():
        result = api.export(weights, format=format_, out=out, image_size=image_size, opset=opset,
                            dynamic_batch=dynamic_batch, int8=int8, calibration=calibration, val=val)
    p = result.parity
    console.info(f"parity OK (onnxruntime vs PyTorch, {p.num_images} images, {p.num_empty_images} without detections): "
                 f"{p.num_matched} of {p.num_reference} detections matched, max box difference {p.max_box_diff_px:.2g} px "
                 f"(limit {BOX_TOL_PX:g}), max score difference {p.max_score_diff:.2g} (limit {SCORE_TOL:g})")
    if result.int8 is not None:
        q = result.int8
        console.table(f"int8 ({q.num_calibration_images} calibration images; AP on {q.val or 'no COCO file: pass --val'}; "
                      f"CPU, {q.threads} threads, batch 1, ms = medians)",
                      ["model", "AP", "AP50", "network ms", "end-to-end ms"],
                      [(m.name, m.ap, m.ap50, m.network_ms, m.end_to_end_ms)
                       for m in q.measurements])
        a = q.agreement
        console.info(f"int8 vs PyTorch on the parity images: {a.num_matched} of {a.num_reference} detections within "
                     f"{BOX_TOL_PX:g} px and {SCORE_TOL:g} score ({a.num_candidate} found)")
        for note in result.notes:
            console.info(f"note: {note}")
        console.info(f"int8 model saved to {q.out} ({q.size_mb:.2f} MB)")
    console.info(f"{result.input_size[0]} x {result.input_size[1]} input, "
                 f"{'dynamic' if result.dynamic_batch else 'batch 1'}, opset {result.opset}, {result.size_mb:.2f} MB; "
                 f"saved to {result.out}")
