"""The Python API: one function per command, named after it, with the command's options as keywords.

    import retinaslim
    data = retinaslim.synth("cards", labeled=100, unlabeled=900)
    teacher = retinaslim.train_teacher(labeled=data.files["labeled"], val=data.files["val"], out="runs/teacher")

Each function builds its stage's ``*Config`` from the arguments, runs the stage and returns the stage's
result object; nothing is printed (pass ``reporter=``, e.g. ``retinaslim.console.RichReporter()``, to
draw progress bars). The CLI calls these same functions, so ``retinaslim train-student --epochs 1 ...``
and ``retinaslim.train_student(epochs=1, ...)`` resolve the same configuration. Keywords are the CLI's
options with underscores (``--score-thresh`` -> ``score_thresh``), except ``--json`` -> ``json_out``,
``--from``/``--to`` -> ``from_format``/``to_format`` and show's ``--max`` -> ``max_images``; a command's
positional argument (SOURCE, PSEUDO, IMAGES...) is the first parameter. Unlike the CLI, nothing is read
from a workspace file (retinaslim.yaml): inputs and outputs are passed explicitly.

Conventions: paths are ``str`` or ``pathlib.Path``; boxes are x1, y1, x2, y2 in the original image's
pixels inside retinaslim, and COCO x, y, width, height in every JSON file it writes; scores are in 0..1;
an ``image_size`` is the side, in pixels, that the longer side of each image is resized to.

Every function raises ``retinaslim.UserError`` for a mistake in its arguments or inputs (a missing or
malformed file, a value out of range), with one sentence that names the argument in backticks
(`score_thresh`), and ``OSError`` for the machine's problems (a full disk, a permission).
Stages are imported when called, so ``import retinaslim`` stays fast.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Union

from retinaslim.config import (FILTER_TARGET_PRECISION, IMPORT_IMAGE_SIZE, PSEUDO_FUSION, PSEUDO_SCORE_FLOOR,
                               TRAIN_DEFAULTS)
from retinaslim.errors import UserError

if TYPE_CHECKING:
    from retinaslim.core.progress import Reporter
    from retinaslim.stages.convert import ConvertResult
    from retinaslim.stages.evaluate import EvalResult
    from retinaslim.stages.export import ExportResult
    from retinaslim.stages.filter import FilterResult
    from retinaslim.stages.import_teacher import ImportTeacherResult
    from retinaslim.stages.predict import PredictResult
    from retinaslim.stages.profile import ProfileResult
    from retinaslim.stages.pseudo_label import PseudoLabelResult
    from retinaslim.stages.show import ShowResult
    from retinaslim.stages.synth import SynthResult
    from retinaslim.stages.train import TrainResult

PathLike = Union[str, os.PathLike]
_TEACHER, _STUDENT = TRAIN_DEFAULTS["teacher"], TRAIN_DEFAULTS["student"]

__all__ = ["convert", "evaluate", "export", "filter", "import_teacher", "predict", "profile", "pseudo_label", "show",
           "synth", "train_student", "train_teacher"]


def _path(value: PathLike | None) -> Path | None:
    return None if value is None else Path(value)


def _paths(value: PathLike | Sequence[PathLike]) -> list[Path]:
    """One path or several."""
    return [Path(value)] if isinstance(value, (str, os.PathLike)) else [Path(v) for v in value]


def _names(value: str | Sequence[str]) -> list[str]:
    """'a,b' or ['a', 'b'] -> ['a', 'b']."""
    return [name.strip() for name in value.split(",")] if isinstance(value, str) else list(value)


def _floats(value: str | Sequence[float], name: str, example: str) -> tuple[float, ...]:
    """'0.75,1,1.25' or (0.75, 1, 1.25) -> (0.75, 1.0, 1.25)."""
    try:
        items = [v for v in value.split(",") if v.strip()] if isinstance(value, str) else list(value)
        return tuple(float(v) for v in items)
    except (TypeError, ValueError):
        raise UserError(f"`{name}` {value!r}: expected numbers, e.g. {example}") from None


def _ints(value: str | Sequence[int], name: str, example: str) -> tuple[int, ...]:
    """'400,600' or (400, 600) -> (400, 600)."""
    numbers = _floats(value, name, example)
    if any(v != int(v) for v in numbers):
        raise UserError(f"`{name}` {value!r}: expected whole numbers, e.g. {example}")
    return tuple(int(v) for v in numbers)


def _shard(value: str | Sequence[int] | None) -> tuple[int, int] | None:
    """'I/N' or (I, N) -> (I, N)."""
    if value is None:
        return None
    try:
        index, count = (int(v) for v in (value.split("/") if isinstance(value, str) else value))
    except (TypeError, ValueError):
        raise UserError(f"`shard` {value!r}: expected I/N, e.g. 0/4 for the first of four shards") from None
    return index, count


@contextmanager
def _keywords(**names: str) -> Iterator[None]:
    """Errors name this function's keywords where its config's fields are named otherwise (field=keyword)."""
    try:
        yield
    except UserError as e:
        raise e.renamed(lambda field: f"`{names.get(field, field)}`") from None


def synth(
    out: PathLike, *, labeled: int = 100, unlabeled: int = 900, val: int = 100, size: int = 320,
    classes: str | Sequence[str] = ("id_card", "bank_card", "passport"), distractors: bool = True, seed: int = 0,
    overwrite: bool = False, workers: int = 0, reporter: Reporter | None = None,
) -> SynthResult:
    """Draw synthetic photographs of ID cards, bank cards and passports with COCO labels, into folder ``out``.

    Writes ``labeled.json`` (+ ``labeled/``), ``val.json`` (+ ``val/``), ``unlabeled/`` (images only),
    ``unlabeled.truth.json`` (the unlabelled images' true boxes, to measure machine labels) and a
    ``retinaslim.yaml`` workspace naming them. The same ``seed`` gives the same bytes.

    Args:
        out: the dataset's folder.
        labeled, unlabeled, val: number of images per split (``labeled`` and ``val`` at least 1).
        size: image side in pixels; images are square, at least 32.
        classes: card kinds to draw, a subset of id_card, bank_card, passport (names or one comma-separated string).
        distractors: also draw paper, screens and books (card-like objects that are not cards).
        seed: every image is drawn from (split, index, seed).
        overwrite: replace a dataset already in ``out`` (else that is an error).
        workers: processes drawing images (0: this one); the bytes do not depend on it.
        reporter: receives progress; None: silent.

    Returns:
        ``SynthResult``: the folder, images and boxes per split, and the files written (``files["labeled"]``...).

    Raises:
        UserError: ``out`` already holds a dataset (without ``overwrite``), a count or size out of range, an
            unknown or repeated class.
    """
    from retinaslim.stages.synth import SynthConfig
    from retinaslim.stages.synth import synth as run

    with _keywords(num_labeled="labeled", num_unlabeled="unlabeled", num_val="val"):
        return run(SynthConfig(out=Path(out), num_labeled=labeled, num_unlabeled=unlabeled, num_val=val, size=size,
                               seed=seed, classes=tuple(_names(classes)), distractors=distractors, overwrite=overwrite,
                               workers=workers),
                   reporter)


def _train(role: str, labeled: PathLike | None, val: PathLike | None, out: PathLike | None,
           resume: PathLike | None, reporter: Reporter | None, anchors: str | None = None, norm: str | None = None,
           **options) -> TrainResult:
    from retinaslim.stages.train import TrainConfig, train

    # the machine's settings, where given (None: auto and 2 for a new run, a resumed run's own)
    machine = {k: v for k in ("device", "workers") if (v := options.pop(k)) is not None}
    if resume is not None:
        return train(None, reporter, resume=Path(resume), machine=machine)
    options.update(machine)
    missing = [f"`{name}`" for name, value in (("labeled", labeled), ("val", val), ("out", out)) if value is None]
    if missing:
        raise UserError(f"missing {', '.join(missing)}: pass the labelled and validation COCO files and the run "
                        "folder (or `resume` with a run's last.pt)")
    if anchors not in (None, "fit", "default"):
        raise UserError(f"`anchors` {anchors!r}: choose fit or default")
    extra = {} if anchors is None else {"fit_anchors": anchors == "fit"}
    with _keywords(fit_anchors="anchors"):
        config = TrainConfig(role=role, labeled=Path(labeled), val=Path(val), out=Path(out),
                             pseudo=_path(options.pop("pseudo", None)), images=_path(options.pop("images")),
                             arch_options={"norm": norm} if norm else {}, **extra, **options)
        return train(config, reporter)


def train_teacher(
    *, labeled: PathLike | None = None, val: PathLike | None = None, images: PathLike | None = None,
    out: PathLike | None = None, arch: str = _TEACHER["arch"], pretrained: bool = False, init: str | None = None,
    image_size: int = _TEACHER["image_size"], batch_size: int = _TEACHER["batch_size"],
    epochs: int | None = None, iterations: int | None = None, optimizer: str = _TEACHER["optimizer"],
    lr: float = _TEACHER["lr"], weight_decay: float = _TEACHER["weight_decay"], augment: str = _TEACHER["augment"],
    assign: str = _TEACHER["assign"], keep_empty_classes: bool = False, resume: PathLike | None = None,
    device: str | None = None, workers: int | None = None, seed: int = 0, reporter: Reporter | None = None,
) -> TrainResult:
    """Train the teacher (torchvision's ResNet50 RetinaNet) on human labels; see ``train_student`` for the loop.

    Args:
        labeled, val: human-labelled training and validation COCO JSON files.
        images: folder the files' image names resolve against (None: each file's own folder).
        out: the run folder; it must not hold a run already.
        arch: retinanet_resnet50_fpn or retinanet_resnet50_fpn_v2.
        pretrained: start from torchvision's ImageNet ResNet50 weights in the local torch cache (never downloaded).
        init: start from these weights: a torchvision-format state dict (bare, {'model': ...} or
            {'state_dict': ...}) of a RetinaNet or a ResNet50 classifier, a retinaslim checkpoint, or 'coco' for
            torchvision's COCO weights of ``arch`` in the local torch cache. Tensors that do not fit keep
            their initialisation.
        image_size: images are resized so that their longer side is this many pixels.
        batch_size: images per optimiser step; epochs: passes over the human-labelled images (None: the default
            schedule, ``TRAIN_DEFAULTS["teacher"]["epochs"]`` (12) epochs but at least ``config.TEACHER_MIN_ITERATIONS``
            (1,000) optimiser steps; a number: exactly that many epochs);
            iterations: total optimiser steps, replacing ``epochs`` when given (validated about as often as
                ``epochs`` epochs, every k-th epoch, and in each of the last 10).
        optimizer: sgd or adamw; lr: peak learning rate (linear warm-up, cosine decay); weight_decay.
        augment: none, light (flip, brightness/contrast, hue), strong (+ scale, shift, rotation,
            perspective, blur, JPEG) or mosaic (four images tiled at 0.5-1.5 times their size, then light;
            the last 10 epochs train on whole images).
        assign: which anchors train on each box: iou (RetinaNet's: IoU >= 0.5 with the box, and each box's best
            anchor) or tal (task-aligned assignment, TOOD / YOLOv8: per box, the 10 anchors inside it whose
            predicted score ** 0.5 * IoU ** 6 is highest, trained with a quality focal loss;
            ``models.common.task_aligned_assign``). The student's default is tal, the teacher's iou.
        keep_empty_classes: also train categories that have no boxes in ``labeled`` (by default they are
            left out, e.g. the supercategory Roboflow lists as category 0).
        resume: continue the run whose last.pt this is, with its own settings: the other arguments are ignored,
            except the machine's, ``device`` and ``workers``, where given (it may continue on another machine).
        device: auto (cuda if available, else cpu), cpu, cuda or cuda:N; workers: image-decoding processes
            (0: in this process); None: auto and 2 (a resumed run: its own); seed: the run's random seed.
        reporter: receives progress and notes; None: silent.

    Returns:
        ``TrainResult``: ``best`` (the checkpoint with the best validation AP), ``best_metrics`` (COCO AP,
        AP50, ...: 0..1), ``history`` (one row per validated epoch) and the run folder, which also holds last.pt,
        results.csv, results.png and config.yaml (the resolved configuration).

    Raises:
        UserError: a missing or malformed file, ``labeled`` without boxes, classes that differ between the
            files, an option out of range, ``out`` already holding a run, ``init``/``pretrained`` weights that are
            not cached.
    """
    return _train("teacher", labeled, val, out, resume, reporter, images=images, arch=arch, pretrained=pretrained,
                  init=init, image_size=image_size, batch_size=batch_size, epochs=epochs, iterations=iterations,
                  optimizer=optimizer, lr=lr, weight_decay=weight_decay, augment=augment, assign=assign,
                  keep_empty_classes=keep_empty_classes, device=device, workers=workers, seed=seed)


def train_student(
    *, labeled: PathLike | None = None, val: PathLike | None = None, pseudo: PathLike | None = None,
    pseudo_ratio: float = 0.4, pseudo_weight: float = 1.0, pseudo_box_weight: str = "none",
    images: PathLike | None = None, out: PathLike | None = None,
    arch: str = _STUDENT["arch"], norm: str | None = None, anchors: str = "fit",
    image_size: int = _STUDENT["image_size"], batch_size: int = _STUDENT["batch_size"],
    epochs: int | None = None, iterations: int | None = None, optimizer: str = _STUDENT["optimizer"],
    lr: float = _STUDENT["lr"], weight_decay: float = _STUDENT["weight_decay"], augment: str = _STUDENT["augment"],
    assign: str = _STUDENT["assign"], keep_empty_classes: bool = False, resume: PathLike | None = None,
    device: str | None = None, workers: int | None = None, seed: int = 0, reporter: Reporter | None = None,
) -> TrainResult:
    """Train the slim student on human labels, and on machine labels when ``pseudo`` is given.

    Each batch holds ``pseudo_ratio`` machine-labelled images and human-labelled ones for the rest; an
    epoch is one pass over the human-labelled images. The EMA weights are scored on ``val`` (COCO AP with
    pycocotools) after each epoch, or every k-th epoch and each of the last 10 when the schedule is in steps (the
    default's floor, ``iterations``); last.pt is written then, and otherwise at least every
    ``config.CHECKPOINT_INTERVAL_S`` seconds; best.pt when AP improved.

    Args:
        labeled, val: human-labelled training and validation COCO JSON files.
        pseudo: filtered machine labels (COCO JSON from ``filter``); None: human labels only.
        pseudo_ratio: share of machine-labelled images in every batch, in [0, 1).
        pseudo_weight: scales the loss of machine-labelled images.
        pseudo_box_weight: "none" (every machine box counts fully) or "score" (each machine box's classification
            and regression terms scale with its fused score, 0..1; a box without one raises UserError).
        images: folder the files' image names resolve against (None: each file's own folder).
        out: the run folder; it must not hold a run already.
        arch: slim-s, slim-m or slim-l, or a baseline (retinanet_resnet18_fpn, retinanet_mobilenet_v2_fpn,
            retinanet_shufflenet_v2_fpn); norm: gn (GroupNorm, the slim students' default) or bn.
        anchors: fit (anchor sizes and aspect ratios by k-means on the human-labelled boxes, kept when they
            match the boxes better than the built-in ones; slim students only) or default.
        epochs: None: the default schedule, ``TRAIN_DEFAULTS["student"]["epochs"]`` (60) epochs but at least
            ``config.STUDENT_MIN_ITERATIONS`` (2,000) optimiser steps; a number: exactly that many epochs.
        image_size, batch_size, iterations, optimizer, lr, weight_decay, augment, assign, keep_empty_classes,
            resume, device, workers, seed, reporter: as for ``train_teacher``.

    Returns:
        ``TrainResult``, as for ``train_teacher``.

    Raises:
        UserError: as for ``train_teacher``; also machine labels whose classes differ from the human labels'.
    """
    return _train("student", labeled, val, out, resume, reporter, anchors=anchors, norm=norm, pseudo=pseudo,
                  pseudo_ratio=pseudo_ratio, pseudo_weight=pseudo_weight, pseudo_box_weight=pseudo_box_weight,
                  images=images, arch=arch,
                  image_size=image_size, batch_size=batch_size, epochs=epochs, iterations=iterations,
                  optimizer=optimizer, lr=lr, weight_decay=weight_decay, augment=augment, assign=assign,
                  keep_empty_classes=keep_empty_classes, device=device, workers=workers, seed=seed)


def import_teacher(
    weights: PathLike, *, arch: str, classes: str | Sequence[str], out: PathLike, image_size: int = IMPORT_IMAGE_SIZE,
) -> ImportTeacherResult:
    """Wrap a RetinaNet trained with torchvision into a retinaslim teacher checkpoint (no training).

    The checkpoint predicts as torchvision does: its anchors and postprocess (score 0.05, NMS 0.5, 300
    detections per image).

    Args:
        weights: its state dict (bare, {'model': ...} or {'state_dict': ...}, 'module.' prefixes allowed).
        arch: retinanet_resnet50_fpn or retinanet_resnet50_fpn_v2, the builder it was made with.
        classes: one name per output of its class head, in output order (a list or one comma-separated
            string); output k (0-based) becomes category id k + 1.
        out: the checkpoint to write, e.g. teacher.pt.
        image_size: longer side in pixels images are resized to when a command does not say otherwise.

    Returns:
        ``ImportTeacherResult``: the checkpoint, its classes as COCO categories, the number of tensors copied.

    Raises:
        UserError: the file is missing, carries code, is not ``arch``'s weights, or its class head has
            another number of outputs than ``classes`` names.
    """
    from retinaslim.stages.import_teacher import ImportTeacherConfig
    from retinaslim.stages.import_teacher import import_teacher as run

    return run(ImportTeacherConfig(Path(weights), arch, _names(classes), Path(out), image_size=image_size))


def pseudo_label(
    source: PathLike, *, teacher: PathLike | Sequence[PathLike], out: PathLike, scales: str | Sequence[float] | None = None,
    short_sides: str | Sequence[int] = (), hflip: bool = True, vflip: bool = False, rot90: bool = False, fusion: str = PSEUDO_FUSION,
    score_floor: float = PSEUDO_SCORE_FLOOR, image_size: int | None = None, batch_size: int = 8,
    resume: bool = False, shard: str | tuple[int, int] | None = None, device: str = "auto", workers: int = 2,
    reporter: Reporter | None = None,
) -> PseudoLabelResult:
    """Label unlabelled images with the teacher, ensembling several transforms of each image.

    Every image runs at each size, also flipped/rotated as asked; the detections are mapped back to the
    original image and fused. Several teachers are ensembled: every teacher's every transform goes into
    the one fusion (Data Distillation's model ensembling). Each fused box gets a score (0..1) and
    ``agreement``: how many (teacher, transform) pairs found it. Written as COCO JSON to ``out`` (boxes xywh in original pixels), streamed through a journal
    (``out``.journal) so a killed run can continue with ``resume``.

    Args:
        source: folder of images (searched recursively) or a text file of image paths.
        teacher: a checkpoint (any retinaslim checkpoint can label), or a list of them detecting the same classes
            (a distilled student beside the teacher labels a second round).
        out: the COCO JSON file to write.
        scales: factors of ``image_size`` (e.g. 0.75, 1, 1.25; at most 16), a list or one comma-separated string.
            None: ``config.PSEUDO_SCALES`` (0.75, 1, 1.25), or none when ``short_sides`` are given.
        short_sides: shorter sides in pixels (e.g. 400, 600, 800, as Data Distillation sizes its transforms),
            run after the scales.
        hflip, vflip, rot90: also run each size flipped horizontally, vertically, rotated by 90 and 270 degrees.
        fusion: wbf (weighted boxes fusion), nms, or vote (NMS + box voting).
        score_floor: keep fused boxes scoring at least this (filter later).
        image_size: longer side in pixels at scale 1 (None: each teacher's training size).
        batch_size: images per forward pass, also the unit of the resume journal.
        resume: continue an interrupted run from its journal (else a journal is an error).
        shard: (I, N) or 'I/N': label only shard I of N (0-based); the last shard to finish writes ``out``.
            None: torchrun's RANK and WORLD_SIZE, else the whole set.
        device, workers: as for ``train_teacher``; reporter: receives progress.

    Returns:
        ``PseudoLabelResult``: the file, images and boxes written, skipped images with reasons, the
        transforms' names and where the time went.

    Raises:
        UserError: no images in ``source``, a missing teacher, teachers of different classes, options out of
            range, a journal from a different run, ``out`` equal to an input.
    """
    from retinaslim.stages.pseudo_label import teacher_paths  # engine.inference's, re-exported: api imports stages only
    from retinaslim.stages.pseudo_label import PseudoLabelConfig
    from retinaslim.stages.pseudo_label import pseudo_label as run

    config = PseudoLabelConfig(Path(source), teacher_paths(teacher), Path(out),
                               scales=None if scales is None else _floats(scales, "scales", "0.75,1.0,1.25"),
                               short_sides=_ints(short_sides, "short_sides", "400,600,800"), hflip=hflip, vflip=vflip,
                               rot90=rot90, fusion=fusion, score_floor=score_floor, image_size=image_size,
                               batch_size=batch_size, device=device, workers=workers, resume=resume,
                               shard=_shard(shard))
    return run(config, reporter)


def filter(  # noqa: A001 - the command's name
    pseudo: PathLike | Sequence[PathLike], *, out: PathLike, score_thresh: float | dict[str, float] | str | None = None,
    auto_thresh: str | None = None, labeled: PathLike | None = None, calib: PathLike | None = None,
    calib_images: PathLike | None = None, teacher: PathLike | Sequence[PathLike] | None = None, target_precision: float = FILTER_TARGET_PRECISION,
    student: PathLike | None = None, min_agreement: int = 1, min_size: float = 0.0, max_size_frac: float = 1.0,
    aspect_range: str | tuple[float, float] | None = None, max_per_image: int | None = None, ambiguous: str = "keep",
    ambiguous_low: float = 0.2, keep_empty: bool = True, truth: PathLike | None = None,
    review_out: PathLike | None = None, review_count: int = 100, report: PathLike | None = None,
    device: str = "auto", workers: int = 2, reporter: Reporter | None = None,
) -> FilterResult:
    """Keep the machine labels worth training on: thresholds, agreement, geometry, doubtful images.

    Rules run in order on every image of ``pseudo``; each box removed is counted against its first rule.

    Args:
        pseudo: machine labels from ``pseudo_label`` (COCO JSON with score and agreement per box), or a list of
            several outputs of the same images (e.g. the teacher's and the human-only student's own, self-training):
            each class's boxes then come from the one whose labellers score the highest validation AP (IoU
            0.5:0.95) on ``calib`` (the first on a tie), which needs 'f1' or 'precision'.
        out: the filtered COCO JSON to write (images left without boxes kept as background unless
            ``keep_empty`` is False).
        score_thresh: keep boxes scoring at least this (0..1): one value, or per class {name: value} (or
            'name=value,...'); classes not named keep the fixed default, 0.2.
        auto_thresh: choose the threshold per class: 'precision' (the lowest threshold reaching
            ``target_precision`` at IoU 0.5 on ``calib``, labelled by ``teacher`` with the ensemble that made
            ``pseudo``), 'f1' (the best F1 there) or 'instances' (as many machine boxes per image as human boxes
            per labelled image; needs ``labeled``). None with neither ``score_thresh`` nor ``calib``: 0.2 for
            every class; None with ``calib`` (the validation set): 'precision' (config.FILTER_VALIDATION_RULE).
            A class with no threshold found on ``calib`` (or, under 'f1', a best F1 below 0.25) is unreliable:
            its boxes scoring >= ``ambiguous_low`` become ignore regions; all classes unreliable: no image kept.
        labeled: human-labelled COCO file, for auto_thresh='instances'.
        calib, calib_images: human-labelled COCO file to choose thresholds on (the validation set) and the
            folder its names resolve against.
        teacher: checkpoint for 'f1' and 'precision', or the list of them that made ``pseudo`` (None: the ones
            ``pseudo`` names).
        target_precision: precision (0..1) that auto_thresh='precision' aims for.
        student: for 'f1' and 'precision', a student checkpoint trained on the human labels only; it is run
            once per ``calib`` image and each class's AP (IoU 0.5:0.95) there compared with the teacher's labels':
            a class the student finds better is unreliable, as above. ``retinaslim filter`` in a workspace
            passes the newest runs/student-human*/best.pt (docs/filter.md: +3.2 AP on BCCD).
        min_agreement: keep boxes found by at least this many transforms.
        min_size: drop boxes whose shorter side is below this many pixels (original image).
        max_size_frac: drop boxes covering more than this fraction (0..1) of the image area.
        aspect_range: (lo, hi) or 'lo,hi': keep boxes whose width / height lies in it.
        max_per_image: keep at most this many boxes per image, best first.
        ambiguous: images with a box scored between ``ambiguous_low`` and the threshold: keep, drop (the
            image), or ignore (those boxes become ignore regions that give no loss).
        ambiguous_low: lower bound of that doubtful band (0..1).
        keep_empty: keep images left without boxes, as background images.
        truth: true labels of the unlabelled images: precision, recall and AP before and after.
        review_out: write the most doubtful ``review_count`` images with their machine boxes as Label Studio
            import JSON (and NAME.coco.json).
        report: also write the result as JSON here.
        device, workers: for 'f1' and 'precision', as for ``train_teacher``; reporter: receives progress.

    Returns:
        ``FilterResult``: thresholds per class, boxes in and kept per class, boxes removed per rule, a score
        histogram, and (with ``truth``) precision/recall before and after.

    Raises:
        UserError: a malformed file, an unknown class or option value, a value out of range, an output
            that would overwrite an input, several ``pseudo`` files of other images or classes.
    """
    from retinaslim.stages.pseudo_label import teacher_paths  # engine.inference's, re-exported: api imports stages only
    from retinaslim.stages.filter import FilterConfig, filter_labels, parse_class_thresholds

    if isinstance(score_thresh, str):
        score_thresh = parse_class_thresholds(score_thresh) if score_thresh.strip() else None
    if aspect_range is not None:
        aspect_range = _floats(aspect_range, "aspect_range", "0.3,3")
        if len(aspect_range) != 2:
            raise UserError(f"`aspect_range` {aspect_range}: expected LO,HI, e.g. 0.3,3")
    sources = [Path(p) for p in (pseudo if isinstance(pseudo, (list, tuple)) else [pseudo])]
    config = FilterConfig(  # one file as a path, as the config's own default is
        sources[0] if len(sources) == 1 else sources, Path(out), score_thresh=score_thresh, auto_thresh=auto_thresh,
        labeled=_path(labeled),
        calib=_path(calib), calib_images=_path(calib_images),
        teacher=None if teacher is None else teacher_paths(teacher), target_precision=target_precision,
        student=_path(student),
        min_agreement=min_agreement, min_size=min_size, max_size_frac=max_size_frac, aspect_range=aspect_range,
        max_per_image=max_per_image, ambiguous=ambiguous, ambiguous_low=ambiguous_low, keep_empty=keep_empty,
        truth=_path(truth), review_out=_path(review_out), review_count=review_count, report=_path(report), device=device,
        workers=workers)
    return filter_labels(config, reporter)


def evaluate(
    weights: PathLike | Sequence[PathLike], *, data: PathLike, images: PathLike | None = None,
    image_size: int | None = None, batch_size: int = 8, latency_runs: int = 20, warmup_runs: int = 3,
    predictions_out: PathLike | None = None, json_out: PathLike | None = None, plots: PathLike | None = None,
    device: str = "auto", workers: int = 2, reporter: Reporter | None = None,
) -> EvalResult:
    """COCO AP (overall, by size, per class), latency, throughput, parameters, MACs and size of checkpoints.

    Args:
        weights: one checkpoint or several (compared side by side): .pt files, or .onnx files from ``export``
            (run by onnxruntime on the CPU).
        data: COCO JSON with the truth; images: folder its names resolve against (None: its own folder).
        image_size: longer side in pixels (None: each checkpoint's training size).
        batch_size: images per forward pass for the AP run and the throughput measurement.
        latency_runs: timed forwards at batch 1 (median and p90) and at ``batch_size`` (throughput);
            warmup_runs: untimed forwards before each timing.
        predictions_out: write COCO results (image_id, category_id, bbox xywh in original pixels, score);
            with several checkpoints NAME.1.json, NAME.2.json, ...
        json_out: write the reports as a JSON list, one object per checkpoint.
        plots: folder for a precision-recall curve PNG per checkpoint.
        device, workers: as for ``train_teacher``; reporter: receives progress.

    Returns:
        ``EvalResult`` with one ``ModelReport`` per checkpoint, in order.

    Raises:
        UserError: a missing or malformed file, ``data`` without boxes, a checkpoint whose classes differ from
            ``data``'s, an option out of range, an output that would overwrite an input.
    """
    from retinaslim.stages.evaluate import EvalConfig
    from retinaslim.stages.evaluate import evaluate as run

    config = EvalConfig(_paths(weights), Path(data), images=_path(images), image_size=image_size, device=device,
                        batch_size=batch_size, workers=workers, latency_runs=latency_runs, warmup_runs=warmup_runs,
                        predictions_out=_path(predictions_out), json_out=_path(json_out), plots_dir=_path(plots))
    with _keywords(plots_dir="plots"):
        return run(config, reporter)


def predict(
    images: PathLike | Sequence[PathLike], *, weights: PathLike, out: PathLike = "preds.json",
    draw: PathLike | None = None, score_thresh: float = 0.3, tta: bool = False, image_size: int | None = None,
    batch_size: int = 8, device: str = "auto", workers: int = 2, reporter: Reporter | None = None,
) -> PredictResult:
    """Detect objects in images with a trained model; write them as COCO JSON (and drawn, if asked).

    Args:
        images: image files, folders (searched recursively) or text files listing images; one or several.
        weights: a retinaslim checkpoint (.pt) or an ONNX model from ``export`` (.onnx).
        out: COCO JSON to write: images, boxes (xywh in original pixels) with scores, categories.
        draw: folder for copies of the images with their boxes, class names and scores drawn.
        score_thresh: keep boxes scoring at least this (0..1; 0.05 for an AP evaluation).
        tta: ensemble pseudo-label's transforms (3 scales x horizontal flip, fused by WBF); each box then
            carries ``agreement``, the number of transforms that found it.
        image_size: longer side in pixels (None: the model's training size).
        batch_size, device, workers: as for ``evaluate``; reporter: receives progress.

    Returns:
        ``PredictResult``: the file, images and boxes per class written, undecodable images skipped with reasons.

    Raises:
        UserError: no images found, an unknown weights format, ``score_thresh`` outside 0..1, ``out`` not .json.
    """
    from retinaslim.stages.predict import PredictConfig
    from retinaslim.stages.predict import predict as run

    config = PredictConfig(Path(weights), _paths(images), Path(out), draw=_path(draw), score_thresh=score_thresh,
                           tta=tta, image_size=image_size, batch_size=batch_size, device=device, workers=workers)
    with _keywords(sources="images"):
        return run(config, reporter)


def export(
    weights: PathLike, *, format: str = "onnx", out: PathLike | None = None,  # noqa: A002 - the command's --format
    image_size: int | None = None, opset: int = 17, dynamic_batch: bool = False, int8: bool = False,
    calibration: PathLike | None = None, val: PathLike | None = None,
) -> ExportResult:
    """Export a checkpoint's network to ONNX (decode + NMS stay outside), checked against PyTorch.

    Args:
        weights: a retinaslim checkpoint (.pt).
        format: onnx.
        out: the .onnx file (None: the weights' name with .onnx).
        image_size: longer side in pixels images are resized to (None: the training size); the graph takes
            S x S images, S (``padded_size``) this rounded up to a multiple of 32.
        opset: ONNX opset, 13 to 20; dynamic_batch: a dynamic batch axis (else batch 1).
        int8: also write NAME.int8.onnx by static quantisation, with AP and latency before and after.
        calibration: image folder, image-list file or COCO JSON: parity samples (None: synthetic scenes)
            and int8 calibration images.
        val: COCO JSON on which int8's AP is measured (None: ``calibration`` when it is a COCO file with boxes).

    Returns:
        ``ExportResult``: the file, input size, parity with PyTorch (boxes within ``BOX_TOL_PX`` pixels,
        scores within ``SCORE_TOL``) and, with ``int8``, the int8 model's report.

    Raises:
        UserError: options out of range, ``int8`` without ``calibration``, parity failing (nothing is written).
    """
    from retinaslim.stages.export import ExportConfig
    from retinaslim.stages.export import export as run

    return run(ExportConfig(Path(weights), out=_path(out), format=format, image_size=image_size, opset=opset,
                            dynamic_batch=dynamic_batch, int8=int8, calibration=_path(calibration), val=_path(val)))


def convert(
    src: PathLike, *, from_format: str, to_format: str, out: PathLike, images: PathLike | None = None,
    split: str | None = None,
) -> ConvertResult:
    """Convert labels between COCO, Pascal VOC, YOLO and Label Studio; report what was skipped and why.

    Boxes reaching outside their image are clipped to it; degenerate boxes, unreadable images and lines
    are skipped with their reasons.

    Args:
        src: a COCO or Label Studio JSON file, a VOC folder (with Annotations/), or a YOLO folder (or its data.yaml).
        from_format: coco, voc, yolo or labelstudio (the CLI's ``--from``).
        to_format: coco, yolo or labelstudio (the CLI's ``--to``).
        out: a .json file (coco, labelstudio) or a folder (yolo).
        images: folder the image names of a COCO or Label Studio file resolve against.
        split: VOC only: convert the images ImageSets/Main/<split>.txt lists.

    Returns:
        ``ConvertResult``: the output, images and boxes per class written, boxes clipped, items skipped.

    Raises:
        UserError: an unknown format, an unreadable source, ``out`` that would overwrite the source.
    """
    from retinaslim.stages.convert import ConvertConfig
    from retinaslim.stages.convert import convert as run

    return run(ConvertConfig(Path(src), from_format, to_format, Path(out), images=_path(images), split=split))


def profile(
    *, arch: str | None = None, weights: PathLike | None = None, image_size: int | None = None, num_classes: int = 1,
    runs: int = 50, depth: int = 3, json_out: PathLike | None = None, device: str = "cpu",
) -> ProfileResult:
    """Parameters, MACs (multiply-accumulates) per module and in total, size and latency of a model.

    Args:
        arch: a registered architecture, untrained (with ``num_classes`` classes); or
        weights: a checkpoint. Pass exactly one.
        image_size: longer side in pixels of the input, as everywhere; the test image is square, so its side.
            None: the checkpoint's training size with ``weights``, 320 with ``arch``.
        runs: timed batch-1 runs per latency (after 5 warm-up runs); the median is reported.
        depth: module-tree depth of the per-module costs.
        json_out: also write the result as JSON.
        device: cpu, cuda or auto.

    Returns:
        ``ProfileResult``: parameters, MACs, size in MB (checkpoints only), network and end-to-end latency
        in ms (median, batch 1), and per-module costs.

    Raises:
        UserError: both or neither of ``arch`` and ``weights``, an unknown architecture, options out of range.
    """
    from retinaslim.stages.profile import ProfileConfig
    from retinaslim.stages.profile import profile as run

    return run(ProfileConfig(arch=arch, weights=_path(weights), image_size=image_size, num_classes=num_classes,
                             runs=runs, depth=depth, device=device, json_out=_path(json_out)))


def show(
    labels: PathLike, *, out: PathLike, images: PathLike | None = None, sort: str | None = None, max_images: int = 48,
    thumb_size: int = 256, columns: int = 6,
) -> ShowResult:
    """Pictures to audit labels: a contact sheet (.png, .jpg) or a sortable HTML report (.html), worst first.

    Args:
        labels: any COCO file: human labels, pseudo.json, filtered labels or predictions.
        out: sheet.png (or .jpg) or report.html.
        images: folder the file's image names resolve against (None: its own folder).
        sort: score (lowest machine score first; the default when there are machine labels),
            disagreement (most transforms missing a box first) or file.
        max_images: show at most this many images (the first in sort order); thumb_size: thumbnail side
            in pixels; columns: thumbnails per row of the contact sheet.

    Returns:
        ``ShowResult``: the file, the sort used and one row per image shown, in order.

    Raises:
        UserError: an unknown ``out`` suffix or sort, a sort the file has no data for, no readable image.
    """
    from retinaslim.stages.show import ShowConfig
    from retinaslim.stages.show import show as run

    return run(ShowConfig(Path(labels), Path(out), images=_path(images), sort=sort, max_images=max_images,
                          thumb_size=thumb_size, columns=columns))
