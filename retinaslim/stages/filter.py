"""filter: turn raw machine labels into the ones the student trains on.

Reads the ``pseudo.json`` that pseudo-label wrote and applies combinable rules, in this order, each
counted per class:

0. with several pseudo-label outputs of the same images (a workspace's: the teacher's and the human-only
   student's own, self-training), each class's boxes come from the one whose labellers score the highest
   validation AP (IoU 0.5:0.95) on the ``calib`` images; the rest of the rules then apply to those boxes;

1. geometry: ``min_size`` (shorter box side, px), ``max_size_frac`` (box area / image area),
   ``aspect_range`` (width / height), boxes outside are removed;
2. ``min_agreement``: boxes found by fewer transforms are removed;
3. score threshold per class: fixed (``score_thresh``: one value or per class name), or automatic:
   ``precision`` (the lowest threshold whose precision at IoU 0.5 reaches a target on human-labelled
   calibration images, the validation set as a rule, running the teacher with pseudo-label's settings; the
   default given such images), ``f1`` (the threshold of the best F1 there) or ``instances`` (Data
   Distillation: as many machine boxes per unlabelled image as there are human boxes per labelled image);
   classes the validation images show to be unreliable give ignore regions, not boxes (with ``student``, a
   human-only student's checkpoint, also the classes on which its validation AP (IoU 0.5:0.95) beats the
   teacher's labels);
4. ``max_per_image``: the best-scoring boxes only;
5. doubtful images, holding a box scored between ``ambiguous_low`` and the threshold: ``keep``,
   ``drop`` the image, or ``ignore`` (those boxes become ``iscrowd`` ignore regions that give no loss);
6. images left without a box: kept as background images, or dropped.

The output's ``info.filter`` records every rule and the threshold used per class. The automatic thresholds
are ``engine.thresholds``', the scores against ``truth`` ``engine.truth``'s and the ``review_out`` file
``engine.review``'s; with ``report`` the result is also written as JSON, last.
"""

from __future__ import annotations

import heapq
import os
from array import array
from collections import Counter
from collections.abc import Iterator
from dataclasses import KW_ONLY, asdict, dataclass, field
from itertools import zip_longest
from pathlib import Path
from typing import Any

import numpy as np
import torch

from retinaslim.config import FILTER_SCORE_THRESH, FILTER_TARGET_PRECISION, FILTER_VALIDATION_RULE
from retinaslim.core.atomic import refuse_overwriting_inputs, write_json
from retinaslim.core.detections import Detections
from retinaslim.core.progress import Reporter
from retinaslim.data.coco import ClassMap, annotation_boxes, load_coco, match_classes, require_image_files
from retinaslim.data.stream import CocoStream, coco_writer, open_stream
from retinaslim.engine.inference import teacher_paths
from retinaslim.engine.review import doubt, write_review
from retinaslim.engine.thresholds import (KEEP_NONE, VALIDATION_RULES, Calibration, compare_with_student, instances_thresholds,
                                         validation_thresholds)
from retinaslim.engine.truth import truth_metrics
from retinaslim.errors import UserError

AUTO_RULES = ("f1", "precision", "instances")
AMBIGUOUS_ACTIONS = ("keep", "drop", "ignore")


@dataclass
class FilterConfig:
    pseudo: Path | list[Path]  # one pseudo-label output, or several of the same images: rule 0
    out: Path
    _: KW_ONLY  # inputs and outputs above may be passed in order, options below by keyword only
    score_thresh: float | dict[str, float] | None = None  # None: see ``threshold_rule``
    auto_thresh: str | None = None  # None: see ``threshold_rule``
    labeled: Path | None = None  # auto "instances"
    calib: Path | None = None  # auto "f1" and "precision": human-labelled images, e.g. the validation set
    calib_images: Path | None = None
    teacher: list[Path] | None = None  # auto "f1"/"precision"; default: the teacher(s) named in pseudo.json
    target_precision: float = FILTER_TARGET_PRECISION
    student: Path | None = None  # auto "f1"/"precision": a human-only student; classes it finds better are unreliable
    min_agreement: int = 1
    min_size: float = 0.0
    max_size_frac: float = 1.0
    aspect_range: tuple[float, float] | None = None
    max_per_image: int | None = None
    ambiguous: str = "keep"
    ambiguous_low: float = 0.2
    keep_empty: bool = True
    truth: Path | None = None
    review_out: Path | None = None
    review_count: int = 100
    report: Path | None = None  # the result as JSON
    device: str = "auto"
    batch_size: int = 8
    workers: int = 2  # image-decoding processes; 0: decode in the main process


@dataclass
class RuleCount:
    """What one filter rule removed: boxes per class name and whole images."""

    rule: str
    boxes_removed: dict[str, int]  # per class name
    images_removed: int = 0


@dataclass
class FilterResult:
    """What ``filter`` kept, per class name: the ``thresholds`` used (0..1), boxes in and kept, and per
    rule (in order) the boxes and images it removed; ``histogram``: boxes in and kept per score bin (lo, hi).
    ``calibration``: per class, what the precision rule reached (for the file chosen, with several);
    ``source_ap``: each input file's labels' validation AP (IoU 0.5:0.95, 0..1) per class; ``truth_metrics``: with truth, precision,
    recall (IoU 0.5), AP and AP50 "before" and "after" filtering, overall and per class. ``review_out``:
    the Label Studio file of the ``num_review`` most doubtful images, if asked for.
    """

    out: Path
    thresholds: dict[str, float]
    num_images_in: int
    num_images_out: int
    num_boxes_in: dict[str, int]
    num_boxes_kept: dict[str, int]
    num_ignore_regions: int
    num_empty_images: int
    rules: list[RuleCount]
    histogram: list[dict[str, Any]]  # score bins: lo, hi, boxes in, boxes kept
    calibration: list[Calibration] = field(default_factory=list)
    truth_metrics: dict[str, dict[str, Any]] = field(default_factory=dict)  # "before" / "after"
    review_out: Path | None = None
    num_review: int = 0
    source_ap: dict[str, dict[str, float]] = field(default_factory=dict)  # validation AP per input file, per class
    labelled_by_student: bool = False  # the compared ``student`` made (some of) these labels itself (self-training)
    threshold_rule: str = "fixed"  # how the thresholds were chosen: fixed, instances, precision or f1
    target_precision: float | None = None  # the precision rule's target on the validation images (0..1)


def parse_class_thresholds(text: str) -> float | dict[str, float]:
    """'0.5' -> 0.5; 'id_card=0.6,passport=0.7' -> {class name: value} (classes not named keep the default)."""
    try:
        if "=" not in text:
            return float(text)
        pairs = dict(item.split("=", 1) for item in text.split(","))
        return {name.strip(): float(v) for name, v in pairs.items()}
    except ValueError:
        raise UserError(f"`score_thresh` {text!r}: expected a number or NAME=VALUE pairs, e.g. id_card=0.6,passport=0.7") from None


def _sources(config: FilterConfig) -> list[Path]:
    return [Path(p) for p in config.pseudo] if isinstance(config.pseudo, (list, tuple)) else [Path(config.pseudo)]


def _validate(config: FilterConfig) -> None:
    sources = _sources(config)
    if not sources:
        raise UserError("`pseudo`: give at least one pseudo-label output")
    if len(sources) > 1 and threshold_rule(config) not in VALIDATION_RULES:
        raise UserError(f"{len(sources)} pseudo-label outputs: each class's labels are chosen by validation AP, which "
                        "needs the f1 or precision rule (`calib`, and no `score_thresh`)")
    if len(sources) > 1 and config.teacher is not None:
        raise UserError("`teacher` names the labellers of one pseudo-label output; several outputs each name their own")
    review_coco = Path(config.review_out).with_suffix(".coco.json") if config.review_out is not None else None
    teachers = [("`teacher`", t) for t in (teacher_paths(config.teacher) if config.teacher is not None else [])]
    teachers += [("`student`", config.student)] if config.student is not None else []
    refuse_overwriting_inputs(
        [("`out`", config.out), ("`review_out`", config.review_out), ("`review_out`", review_coco)],
        [*(("`pseudo`", p) for p in sources), ("`labeled`", config.labeled), ("`calib`", config.calib),
         ("`truth`", config.truth), *teachers])
    refuse_overwriting_inputs(
        [("`report`", config.report)],
        [*(("`pseudo`", p) for p in sources), ("`out`", config.out), ("`review_out`", config.review_out),
         ("`labeled`", config.labeled), ("`calib`", config.calib), ("`truth`", config.truth), *teachers])
    if config.auto_thresh is not None and config.auto_thresh not in AUTO_RULES:
        raise UserError(f"`auto_thresh` {config.auto_thresh!r}: choose {' or '.join(AUTO_RULES)}")
    if config.auto_thresh and config.score_thresh is not None:
        raise UserError("`score_thresh` and `auto_thresh` both set the threshold; pass one of them")
    if config.auto_thresh == "instances" and config.labeled is None:
        raise UserError("`auto_thresh` instances needs `labeled` (the human-labelled COCO file)")
    if config.auto_thresh in VALIDATION_RULES and config.calib is None:
        raise UserError(f"`auto_thresh` {config.auto_thresh} needs `calib` (human-labelled COCO images, e.g. the validation set)")
    if config.student is not None and threshold_rule(config) not in VALIDATION_RULES:
        raise UserError("`student` is compared with the teacher on the validation images: it needs the f1 or precision "
                        "rule (`calib`, and no `score_thresh`)")
    if config.ambiguous not in AMBIGUOUS_ACTIONS:
        raise UserError(f"`ambiguous` {config.ambiguous!r}: choose {', '.join(AMBIGUOUS_ACTIONS)}")
    for name, count in [("`review_count`", config.review_count), ("`min_agreement`", config.min_agreement),
                        ("`max_per_image`", config.max_per_image)]:
        if count is not None and count < 1:
            raise UserError(f"{name} {count} must be at least 1")
    for name, value in [("`target_precision`", config.target_precision), ("`ambiguous_low`", config.ambiguous_low),
                        ("`max_size_frac`", config.max_size_frac)]:
        if not 0 <= value <= 1:
            raise UserError(f"{name} {value} must be in [0, 1]")
    thresholds = config.score_thresh.values() if isinstance(config.score_thresh, dict) else [config.score_thresh]
    if any(t is not None and not 0 <= t <= 1 for t in thresholds):
        raise UserError(f"`score_thresh` {config.score_thresh} must be in [0, 1]")
    if config.aspect_range is not None and not 0 < config.aspect_range[0] <= config.aspect_range[1]:
        raise UserError(f"`aspect_range` {config.aspect_range}: expected LO,HI with 0 < LO <= HI")


def threshold_rule(config: FilterConfig) -> str | None:
    """The automatic rule a run uses: ``auto_thresh`` if set; else, with human-labelled ``calib`` images (the
    validation set) and no ``score_thresh``, FILTER_VALIDATION_RULE; else None (fixed thresholds)."""
    if config.auto_thresh is None and config.score_thresh is None and config.calib is not None:
        return FILTER_VALIDATION_RULE
    return config.auto_thresh


def _as_detections(anns: list[dict[str, Any]], classes: ClassMap) -> Detections:
    """An image's machine boxes as Detections (xyxy, score, label, agreement; ``index`` into ``anns``)."""
    return Detections(
        annotation_boxes(anns),
        torch.tensor([a["score"] for a in anns], dtype=torch.float32),
        torch.tensor([classes.label(a["category_id"]) for a in anns], dtype=torch.int64),
        {"index": torch.arange(len(anns)), "agreement": torch.tensor([a.get("agreement", 1) for a in anns])},
    )


def _candidate_mask(config: FilterConfig, image: dict[str, Any], dets: Detections) -> tuple[torch.Tensor, torch.Tensor]:
    """Rules 1-2, which decide the candidates the thresholds are chosen among: (geometry keeps, agreement keeps)."""
    w, h = (dets.boxes[:, 2] - dets.boxes[:, 0]), (dets.boxes[:, 3] - dets.boxes[:, 1])
    keep = (torch.minimum(w, h) >= config.min_size) & (w * h <= config.max_size_frac * image["width"] * image["height"])
    if config.aspect_range is not None:
        aspect = w / h.clamp(min=1e-6)
        keep &= (aspect >= config.aspect_range[0]) & (aspect <= config.aspect_range[1])
    return keep, dets.extra["agreement"] >= config.min_agreement


_AGAIN = " (label them again; in a workspace `retinaslim pseudo-label` writes them all)"


def _machine_images(streams: list[CocoStream], classes: ClassMap, owner: list[int] | None = None
                    ) -> Iterator[tuple[dict[str, Any], list[dict[str, Any]], Detections]]:
    """Each image with its machine boxes. One stream: its boxes as they are. Several (pseudo-label outputs of the
    same images, which it writes in the same order): the image as the first names it, with class k's boxes from
    stream ``owner[k]``, numbered anew and given the first's image and category ids (each file numbers its own)."""
    def scored(stream: CocoStream, anns: list[dict[str, Any]]) -> list[dict[str, Any]]:
        unscored = [a["id"] for a in anns if "score" not in a]
        if unscored:
            raise UserError(f"{stream.path}: annotation {unscored[0]} has no 'score'; filter reads pseudo-label output")
        return anns

    if len(streams) == 1:
        for image, anns in streams[0]:
            yield image, scored(streams[0], anns), _as_detections(anns, classes)
        return
    first, next_id = streams[0], 1
    for items in zip_longest(*streams):  # None where a file has run out of images
        if any(item is None for item in items):
            raise UserError(f"{', '.join(str(s.path) for s in streams)}: hold different numbers of images; "
                            f"the pseudo-label outputs must label the same images{_AGAIN}")
        image = items[0][0]
        where = os.path.normpath(first.image_path(image).absolute())
        anns = []
        for s, (stream, (other, found)) in enumerate(zip(streams, items)):
            if s and os.path.normpath(stream.image_path(other).absolute()) != where:
                raise UserError(f"{stream.path}: image {other['file_name']} where {first.path} has "
                                f"{image['file_name']}: the pseudo-label outputs must label the same images{_AGAIN}")
            for a in scored(stream, found):
                label = stream.classes.label(a["category_id"])  # the same names in the same order, ids maybe not
                if owner[label] == s:
                    anns.append({**a, "image_id": image["id"], "category_id": classes.category_ids[label]})
        anns = [{**a, "id": next_id + i} for i, a in enumerate(anns)]
        next_id += len(anns)
        yield image, anns, _as_detections(anns, classes)


def _calibrate(config: FilterConfig, rule: str, streams: list[CocoStream], classes: ClassMap,
               reporter: Reporter) -> tuple[list[Calibration], dict[str, dict[str, float]]]:
    """The f1 or precision rule on ``calib``, per stream run with its labellers (``config.teacher``, else the ones
    pseudo-label recorded); per class, the calibration of the stream with the highest validation AP (the first
    on a tie), its ``source`` naming that stream, compared with ``config.student``'s single pass if given; and every
    stream's validation AP per class name."""
    calib = load_coco(config.calib, config.calib_images)
    for note in (*(match_classes(classes, s.path, calib) for s in streams), require_image_files(calib, "`calib_images`")):
        if note:
            reporter.log(note)
    per_stream = []
    for stream in streams:
        teacher = _labellers(config, stream)
        if not teacher:
            raise UserError(f"{stream.path}: names no teacher; pass `teacher`" if len(streams) == 1 else
                            f"{stream.path}: its info names no labeller: not a pseudo-label output")
        found = validation_thresholds(stream, classes, calib, teacher, rule, config.target_precision, config.device,
                                      config.batch_size, config.workers, reporter)
        for c in found:
            c.source = str(stream.path)
        per_stream.append(found)
    chosen = [max(candidates, key=lambda c: c.teacher_ap) for candidates in zip(*per_stream)]
    if config.student is not None:
        compare_with_student(chosen, config.student, streams[0], classes, calib, config.device, config.batch_size,
                             config.workers, reporter)
    return chosen, {str(s.path): {c.class_name: c.teacher_ap for c in found} for s, found in zip(streams, per_stream)}


def _labellers(config: FilterConfig, pseudo: CocoStream) -> list[Path]:
    """The checkpoints whose labels ``pseudo`` holds: ``config.teacher``, else the ones pseudo-label recorded
    (none if it names none)."""
    named = config.teacher or pseudo.info.get("teacher")
    return teacher_paths(named) if named else []


def _histogram_counts(scores: torch.Tensor) -> torch.Tensor:
    """(10,) boxes per score bin of width 0.1 (the last bin includes 1.0)."""
    return torch.bincount((scores * 10).long().clamp(0, 9), minlength=10)


def filter_labels(config: FilterConfig, reporter: Reporter | None = None) -> FilterResult:
    """Filter ``config.pseudo`` into ``config.out`` (see the module's rules), reading and writing image by image
    (``data.stream``): memory does not grow with the number of images, except with ``truth``, whose scoring
    holds every box."""
    reporter = reporter or Reporter()
    _validate(config)
    streams = [open_stream(p) for p in _sources(config)]
    pseudo = streams[0]  # the image records, folder and info written come from the first
    classes = pseudo.classes
    names = classes.names
    for other in streams[1:]:
        if other.classes.names != names:
            raise UserError(f"{other.path}: its classes ({', '.join(other.classes.names)}) differ from {pseudo.path}'s "
                            f"({', '.join(names)}); label with models of the same classes")
    unknown = sorted(set(config.score_thresh) - set(names)) if isinstance(config.score_thresh, dict) else []
    if unknown:
        raise UserError(f"`score_thresh`: unknown class {unknown[0]!r}; {pseudo.path} has {', '.join(names)}")
    rule = threshold_rule(config)
    score_thresh = config.score_thresh if config.score_thresh is not None or rule else FILTER_SCORE_THRESH
    removed = {rule: Counter() for rule in ("geometry", "agreement", "threshold", "max_per_image", "ambiguous")}

    def apply(rule: str, keep: torch.Tensor, dets: Detections) -> Detections:
        removed[rule].update(names[k] for k in dets.labels[~keep].tolist())
        return dets[keep]

    calibration: list[Calibration] = []
    source_ap: dict[str, dict[str, float]] = {}
    if rule == "instances":
        labeled = load_coco(config.labeled)
        note = match_classes(classes, pseudo.path, labeled)
        if note:
            reporter.log(note)
        human = Counter(classes.label(a["category_id"]) for anns in labeled.annotations_per_image.values()
                        for a in anns if not a.get("iscrowd", 0))
        per_image = {k: n / max(1, len(labeled.images)) for k, n in human.items()}
        # The candidates' scores per class, one pass ahead of the filtering pass: 4 bytes a box (array), not a
        # tensor per image (~0.2 KB each: at 100,000 images that grew the peak by a third).
        per_class = [array("f") for _ in classes.names]
        num_images = 0
        for image, _, dets in _machine_images(streams, classes):
            geometry, agreement = _candidate_mask(config, image, dets)
            candidates = geometry & agreement
            for score, label in zip(dets.scores[candidates].tolist(), dets.labels[candidates].tolist()):
                per_class[label].append(score)
            num_images += 1
        scores_per_class = {k: torch.from_numpy(np.frombuffer(a, dtype=np.float32).copy()) for k, a in enumerate(per_class)}
        del per_class
        floor = float(pseudo.info.get("score_floor", 0.0))
        by_label = instances_thresholds(scores_per_class, per_image, num_images, floor)
    elif rule in VALIDATION_RULES:
        calibration, source_ap = _calibrate(config, rule, streams, classes, reporter)
        by_label = {k: c.threshold for k, c in enumerate(calibration)}
    elif isinstance(score_thresh, dict):
        by_label = {k: score_thresh.get(name, FILTER_SCORE_THRESH) for k, name in enumerate(names)}
    else:
        by_label = dict.fromkeys(range(len(classes)), float(score_thresh))
    # several streams (validation rules only): each class's boxes from the stream its calibration came from
    owner = [[str(s.path) for s in streams].index(c.source) for c in calibration] if len(streams) > 1 else None
    # Classes the teacher does not find reliably on the validation images: none of their boxes are trained on
    # as objects; those scoring >= ambiguous_low become ignore regions, so the student is not taught either way.
    unreliable = torch.tensor([not c.reliable for c in calibration] or [False] * len(classes), dtype=torch.bool)
    for k in torch.nonzero(unreliable).flatten().tolist():
        by_label[k] = KEEP_NONE
    drop_all = bool(calibration) and bool(unreliable.all())  # nothing left to teach: no machine image is trained on
    thresholds = torch.tensor([by_label[k] for k in range(len(classes))])

    rules = {
        "min_size": config.min_size, "max_size_frac": config.max_size_frac,
        "aspect_range": list(config.aspect_range) if config.aspect_range else None,
        "min_agreement": config.min_agreement, "threshold_rule": rule or "fixed",
        "thresholds": {name: float(by_label[k]) for k, name in enumerate(names)},
        "unreliable_classes": [names[k] for k in torch.nonzero(unreliable).flatten().tolist()],
        "target_precision": config.target_precision if rule == "precision" else None,
        "student": None if config.student is None else str(config.student),
        "max_per_image": config.max_per_image, "ambiguous": config.ambiguous, "ambiguous_low": config.ambiguous_low,
        "keep_empty": config.keep_empty, "source": [str(s.path) for s in streams] if len(streams) > 1 else str(pseudo.path),
        "labels_from": {c.class_name: c.source for c in calibration} if owner else None,
    }
    out = Path(config.out)
    # File names resolve against each JSON file's own folder: rebase them when the folder changes.
    rebase = os.path.relpath(pseudo.path.parent.resolve(), out.parent.resolve())
    review: list[tuple[float, int, dict[str, Any], Detections]] = []  # a min-heap of the most doubtful images
    boxes_in, boxes_kept = torch.zeros(len(classes), dtype=torch.int64), torch.zeros(len(classes), dtype=torch.int64)
    bins_in, bins_kept = torch.zeros(10, dtype=torch.int64), torch.zeros(10, dtype=torch.int64)
    truth_images: list[dict[str, Any]] = []  # with truth only: every image and box, for the scoring
    truth_before: list[dict[str, Any]] = []
    truth_after: list[dict[str, Any]] = []
    num_in = num_out = num_ignore = num_empty = num_dropped_ambiguous = num_dropped_empty = num_dropped_unreliable = 0
    with coco_writer(out, {**pseudo.info, "filter": rules}, pseudo.categories) as write:
        for seq, (image, source, all_dets) in enumerate(_machine_images(streams, classes, owner)):
            num_in += 1
            boxes_in += torch.bincount(all_dets.labels, minlength=len(classes))
            bins_in += _histogram_counts(all_dets.scores)
            if config.truth is not None:
                truth_images.append(image)
                truth_before += source
            geometry, agreement = _candidate_mask(config, image, all_dets)
            dets = apply("geometry", geometry, all_dets)
            dets = apply("agreement", agreement[geometry], dets)
            image_thresh = thresholds[dets.labels]
            confident = dets.scores >= image_thresh
            doubtful = (dets.scores >= config.ambiguous_low) & ~confident
            untrusted = doubtful & unreliable[dets.labels]
            if config.review_out is not None and doubtful.any():
                item = (doubt(dets.scores, image_thresh), -seq, image, dets)
                if len(review) < config.review_count:
                    heapq.heappush(review, item)
                else:
                    heapq.heappushpop(review, item)
            kept = apply("threshold", confident, dets)
            if drop_all:
                num_dropped_unreliable += 1
                continue
            if config.max_per_image is not None:
                order = torch.argsort(kept.scores, descending=True)
                keep = torch.zeros(len(kept), dtype=torch.bool)
                keep[order[:config.max_per_image]] = True
                kept = apply("max_per_image", keep, kept)
            ignore = dets[doubtful if config.ambiguous == "ignore" else untrusted]
            if (doubtful & ~untrusted).any() and config.ambiguous == "drop":
                removed["ambiguous"].update(names[k] for k in kept.labels.tolist())
                num_dropped_ambiguous += 1
                continue
            if len(kept) == 0 and len(ignore) == 0:
                num_empty += 1
                if not config.keep_empty:
                    num_dropped_empty += 1
                    continue
            annotations = ([source[i] for i in kept.extra["index"].tolist()]
                           + [{**source[i], "iscrowd": 1} for i in ignore.extra["index"].tolist()])
            real = torch.tensor([not source[i].get("iscrowd", 0) for i in kept.extra["index"].tolist()], dtype=torch.bool)
            boxes_kept += torch.bincount(kept.labels[real], minlength=len(classes))  # the input's own ignore
            bins_kept += _histogram_counts(kept.scores[real])  # regions pass through, uncounted
            num_ignore += len(ignore)
            num_out += 1
            out_image = {**image, "file_name": os.path.normpath(os.path.join(rebase, image["file_name"]))}
            write(out_image, annotations)
            if config.truth is not None:
                truth_after += annotations  # the image's own id: scored below on the input's images

    result = FilterResult(
        out=out, thresholds=rules["thresholds"], num_images_in=num_in, num_images_out=num_out,
        num_boxes_in=dict(zip(names, boxes_in.tolist())), num_boxes_kept=dict(zip(names, boxes_kept.tolist())),
        num_ignore_regions=num_ignore, num_empty_images=num_empty,
        rules=[RuleCount(rule, {n: counts[n] for n in names},
                         {"ambiguous": num_dropped_ambiguous}.get(rule, 0)) for rule, counts in removed.items()]
        + [RuleCount("empty images", dict.fromkeys(names, 0), num_dropped_empty),
           RuleCount("labels unreliable on every class", dict.fromkeys(names, 0), num_dropped_unreliable)],
        histogram=[{"lo": lo / 10, "hi": (lo + 1) / 10, "boxes_in": int(bins_in[lo]), "boxes_kept": int(bins_kept[lo])}
                   for lo in range(10)],
        calibration=calibration, source_ap=source_ap, threshold_rule=rules["threshold_rule"],
        target_precision=rules["target_precision"],
        labelled_by_student=config.student is not None and Path(config.student).resolve() in
        {t.resolve() for s in streams for t in _labellers(config, s)},
    )
    if config.truth is not None:
        result.truth_metrics = {
            "before": truth_metrics(config.truth, classes, pseudo.path, truth_images, pseudo.image_root, truth_before),
            # over every input image, as AP is: a dropped image's objects count as missed
            "after": truth_metrics(config.truth, classes, pseudo.path, truth_images, pseudo.image_root, truth_after),
        }
    if config.review_out is not None:
        ranked = [(d, image, dets) for d, _, image, dets in sorted(review, key=lambda r: (-r[0], -r[1]))]
        result.review_out = config.review_out
        result.num_review = write_review(config.review_out, ranked, pseudo, classes)
    if config.report is not None:  # last: the labels and the review are complete before it
        write_json(Path(config.report), asdict(result) | {
            "out": str(result.out), "review_out": None if result.review_out is None else str(result.review_out)})
    return result
