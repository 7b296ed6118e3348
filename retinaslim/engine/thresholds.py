"""filter's automatic score-threshold rules, per class.

- ``instances_thresholds`` (Data Distillation): keep as many machine boxes per unlabelled image as there are
  human boxes per labelled image.
- ``validation_thresholds``: run the teacher with pseudo-label's own transforms and fusion (read from the
  machine labels' ``info``) on human-labelled validation images, score its boxes against the human boxes
  (``ClassScores``) and take per class the threshold of the highest F1 (``core.matching.best_f1_threshold``)
  or the lowest threshold whose precision at IoU 0.5 reaches a target
  (``core.matching.lowest_threshold_for_precision``);
- ``compare_with_student``: the human-only student's single pass on the same images, against those labels.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from retinaslim.core.detections import Detections
from retinaslim.core.matching import average_precision, best_f1_threshold, lowest_threshold_for_precision, match_at
from retinaslim.core.progress import Reporter
from retinaslim.core.tta import Transform
from retinaslim.data.coco import ClassMap, CocoData, image_targets
from retinaslim.data.stream import CocoStream
from retinaslim.engine.inference import ImageResult, chunks, load_teachers, predict_batches, resolve_device, teacher_paths
from retinaslim.errors import UserError
from retinaslim.models.checkpoint import load_checkpoint

KEEP_NONE = 1.0 + 1e-6  # a threshold no score (0..1) reaches
COCO_IOUS = [0.5 + 0.05 * i for i in range(10)]  # the IoU thresholds COCO's AP averages over


VALIDATION_RULES = ("f1", "precision")
# Under the f1 rule, below this best F1 on the validation images a class's machine labels teach more mistakes
# than objects (at least ~3 of 4 kept boxes wrong, or ~3 of 4 objects missed): filter trains on none of them.
# A safety net for a teacher that has not learnt a class, not a tuned value. Under the precision rule a class
# is unreliable when no threshold reaches the target.
RELIABLE_F1 = 0.25


@dataclass
class Calibration:
    """What a validation rule found for one class on the human-labelled images: the threshold, the precision
    and recall (IoU 0.5) at it, whether it found one (if not, the threshold keeps nothing) and whether the
    class's machine labels are worth training on at all (``reliable``: a threshold found, under the f1 rule
    with an F1 of at least RELIABLE_F1)."""

    class_name: str
    threshold: float
    precision: float
    recall: float
    reached: bool
    reliable: bool
    teacher_ap50: float | None = None  # the labellers' AP at IoU 0.5 on the validation images
    student_ap50: float | None = None  # with a student to compare, its own
    teacher_ap: float | None = None  # the same, COCO's AP over IoU 0.5:0.95 (what decides ``below_student``)
    student_ap: float | None = None
    source: str | None = None  # filter: the machine-label file the class's boxes come from
    num_val_boxes: int | None = None  # the class's human boxes on the validation images (0: nothing to check its labels by)

    @property
    def below_student(self) -> bool:
        """The human-only student finds and places this class better than the teacher's labels do (validation
        AP over IoU 0.5:0.95): the machine boxes would teach it less than it already knows. AP50 alone
        saturates: on BCCD's white cells teacher and student both reached 0.994, while the student's boxes were
        the tighter ones (test AP 0.654 against 0.603; docs/results.md, "Session 23")."""
        return self.student_ap is not None and self.teacher_ap is not None and self.student_ap > self.teacher_ap

    @property
    def f1(self) -> float:
        return 2 * self.precision * self.recall / (self.precision + self.recall) if self.precision + self.recall else 0.0


class ClassScores:
    """A labeller's boxes on human-labelled images, per class: their scores (0..1), which are true positives at
    each of COCO's IoU thresholds 0.5, 0.55, ..., 0.95 (``core.matching.match_at``) and how many human boxes there
    are. ``choose`` turns them into a threshold per class (from the hits at IoU 0.5)."""

    def __init__(self, num_classes: int):
        self.scores: dict[int, list[torch.Tensor]] = {k: [] for k in range(num_classes)}
        self.hits: dict[int, list[torch.Tensor]] = {k: [] for k in range(num_classes)}  # (N, 10) bool per image
        self.num_true: Counter[int] = Counter()

    def add(self, dets: Detections, boxes: torch.Tensor, labels: torch.Tensor) -> None:
        """One image: ``dets`` (xyxy pixels, labels in the same numbering) against its human ``boxes`` (M, 4) xyxy, ``labels`` (M,)."""
        self.num_true.update(labels.tolist())
        is_tp = match_at(dets, boxes, labels, COCO_IOUS)
        for k in self.scores:
            self.scores[k].append(dets.scores[dets.labels == k])
            self.hits[k].append(is_tp[dets.labels == k])

    def _class(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Class ``k``'s scores (N,) and hits (N, 10) over every image added."""
        scores = torch.cat(self.scores[k]) if self.scores[k] else torch.zeros(0)
        hits = torch.cat(self.hits[k]) if self.hits[k] else torch.zeros(0, len(COCO_IOUS), dtype=torch.bool)
        return scores, hits

    def ap50(self, k: int) -> float:
        """Class ``k``'s AP at IoU 0.5 (``core.matching.average_precision``)."""
        scores, hits = self._class(k)
        return average_precision(scores, hits[:, 0], self.num_true[k])

    def ap(self, k: int) -> float:
        """Class ``k``'s AP averaged over IoU 0.5:0.95 as COCO averages it (each threshold's AP as ``ap50``'s)."""
        scores, hits = self._class(k)
        return sum(average_precision(scores, hits[:, t], self.num_true[k]) for t in range(len(COCO_IOUS))) / len(COCO_IOUS)

    def choose(self, names: list[str], rule: str, target_precision: float) -> list[Calibration]:
        """Per class (``names`` in label order): ``f1``, the threshold of the best F1; ``precision``, the lowest
        reaching ``target_precision`` (0..1, at IoU 0.5; the commands pass config.FILTER_TARGET_PRECISION unless
        told). A class where the rule finds none gets KEEP_NONE (``reached`` and ``reliable`` False); under ``f1``
        a class whose best F1 is below RELIABLE_F1 is not ``reliable``."""
        if rule not in VALIDATION_RULES:
            raise UserError(f"threshold rule {rule!r}: choose {' or '.join(VALIDATION_RULES)}")
        found = []
        for k, name in enumerate(names):
            scores, hits = self._class(k)
            hits = hits[:, 0]  # IoU 0.5
            chosen = (best_f1_threshold(scores, hits, self.num_true[k]) if rule == "f1"
                      else lowest_threshold_for_precision(scores, hits, self.num_true[k], target_precision))
            if chosen is None:
                found.append(Calibration(name, KEEP_NONE, 0.0, 0.0, False, False, num_val_boxes=self.num_true[k]))
                continue
            c = Calibration(name, *chosen, True, True, num_val_boxes=self.num_true[k])
            c.reliable = rule != "f1" or c.f1 >= RELIABLE_F1
            found.append(c)
        return found


def instances_thresholds(scores_per_class: dict[int, torch.Tensor], human_per_image: dict[int, float],
                         num_unlabeled: int, floor: float) -> dict[int, float]:
    """Data Distillation's rule: per class, the score of the k-th best machine box, where
    k = (human boxes of the class per labelled image) x (unlabelled images). ``floor`` when fewer boxes."""
    thresholds = {}
    for label, scores in scores_per_class.items():
        wanted = round(human_per_image.get(label, 0.0) * num_unlabeled)
        ordered = torch.sort(scores, descending=True).values
        if wanted <= 0:
            thresholds[label] = KEEP_NONE  # no human instances of this class
        elif wanted >= len(ordered):
            thresholds[label] = floor
        else:
            thresholds[label] = float(ordered[wanted - 1])
    return thresholds


def validation_thresholds(pseudo: CocoStream, classes: ClassMap, calib: CocoData, teacher: Path | list[Path], rule: str,
                          target_precision: float, device: str, batch_size: int, workers: int,
                          reporter: Reporter) -> list[Calibration]:
    """Per class of ``classes`` (the machine labels' ``pseudo``), the threshold ``rule`` (``ClassScores.choose``)
    picks on the human-labelled ``calib`` images, labelled by ``teacher`` (one checkpoint, or the several
    pseudo-label fused) as pseudo-label labelled ``pseudo``, with the labels' AP and AP50 there. The teacher's
    classes are matched to ``classes`` by name."""
    teachers = teacher_paths(teacher)
    transforms, fusion, image_sizes = _labelling(pseudo)
    if len(image_sizes) != len(teachers):
        raise UserError(f"{pseudo.path}: made by {len(image_sizes)} teacher(s), {len(teachers)} given; calibrate with "
                        "the teachers that made it")
    checkpoints, _ = load_teachers(teachers, None)
    run_on = resolve_device(device)
    found = _labeller_scores([c.build().to(run_on) for c in checkpoints], image_sizes, transforms, fusion,
                             _label_map(checkpoints[0].classes, teachers[0], classes, pseudo.path), calib, classes,
                             run_on, batch_size, workers, reporter, "calibrate",
                             floor=float(pseudo.info.get("score_floor", 0.0)))
    calibration = found.choose(classes.names, rule, target_precision)
    for k, c in enumerate(calibration):
        c.teacher_ap50, c.teacher_ap = found.ap50(k), found.ap(k)
    return calibration


def compare_with_student(calibration: list[Calibration], student: Path, pseudo: CocoStream, classes: ClassMap,
                         calib: CocoData, device: str, batch_size: int, workers: int, reporter: Reporter) -> None:
    """Run ``student``, trained on the human labels only, once per ``calib`` image (no transforms; fused as
    ``pseudo``'s labels were) and set each class's ``student_ap50`` and ``student_ap``. A class whose validation
    AP (IoU 0.5:0.95) is higher for the student than for the labels is no longer ``reliable``: those boxes would
    teach the student less than it already knows there (``Calibration.below_student``)."""
    _, fusion, _ = _labelling(pseudo)
    other = load_checkpoint(student)
    run_on = resolve_device(device)
    mine = _labeller_scores([other.build().to(run_on)], [other.image_size], [Transform()], fusion,
                            _label_map(other.classes, student, classes, pseudo.path), calib, classes,
                            run_on, batch_size, workers, reporter, "student")
    for k, c in enumerate(calibration):
        c.student_ap50, c.student_ap = mine.ap50(k), mine.ap(k)
        c.reliable = c.reliable and not c.below_student


def _labelling(pseudo: CocoStream) -> tuple[list[Transform], str, list[int]]:
    """How pseudo-label made ``pseudo``: its transforms, fusion and each teacher's image size (from its info)."""
    try:
        transforms = [Transform.from_name(n) for n in pseudo.info["transforms"]]
        fusion, sizes = pseudo.info["fusion"], pseudo.info["image_size"]
        return transforms, fusion, [int(size) for size in (sizes if isinstance(sizes, list) else [sizes])]
    except (KeyError, ValueError, TypeError):
        raise UserError(f"{pseudo.path}: its info lacks pseudo-label's transforms/fusion/image_size; "
                        "choosing thresholds on validation images needs them to run the teacher the same way") from None


def _label_map(categories: list[dict], model_path: Path, classes: ClassMap, pseudo_path: Path) -> torch.Tensor:
    """A model's label k (its k-th class) -> the label of the same class name in ``classes``."""
    names = ClassMap.from_categories(categories).names
    unknown = [name for name in names if name not in classes.names]
    if unknown:
        raise UserError(f"{model_path}: its class {unknown[0]!r} is not among {pseudo_path}'s classes "
                        f"({', '.join(classes.names)}); calibrate with the models that made them")
    return torch.tensor([classes.names.index(name) for name in names], dtype=torch.int64)


def _labeller_scores(models: list, image_sizes: list[int], transforms: list[Transform], fusion: str,
                     to_label: torch.Tensor, calib: CocoData, classes: ClassMap, run_on: torch.device,
                     batch_size: int, workers: int, reporter: Reporter, task: str, floor: float = 0.0) -> ClassScores:
    """``models`` (fused as pseudo-label fuses them) run on every ``calib`` image, scored against its human boxes.
    Fused boxes scoring below ``floor`` (0..1: the machine-label file's ``score_floor``, which pseudo-label cut its
    boxes at) are dropped, so that the thresholds, precision, recall and AP describe boxes the file can hold. An
    image that cannot be decoded counts its human boxes as missed, and is reported."""
    paths = [calib.image_path(im) for im in calib.images]
    found = ClassScores(len(classes))
    undecodable = 0

    def collect(batch: list[ImageResult]) -> None:
        nonlocal undecodable
        for result in batch:
            boxes, labels = image_targets(calib, calib.images[result.index], classes)
            if result.detections is None:
                undecodable += 1
                found.add(Detections.empty(), boxes, labels)
                continue
            dets = result.detections[result.detections.scores >= floor]
            found.add(Detections(dets.boxes, dets.scores, to_label[dets.labels], dets.extra), boxes, labels)

    predict_batches(models[0], paths, chunks(list(range(len(paths))), batch_size), image_sizes[0], transforms, run_on,
                    collect, fusion=fusion, workers=workers, reporter=reporter, task=task,
                    ensemble=list(zip(models[1:], image_sizes[1:])))
    if undecodable:
        reporter.log(f"warning: {calib.path}: {undecodable} image(s) could not be decoded; their objects count as missed")
    return found
