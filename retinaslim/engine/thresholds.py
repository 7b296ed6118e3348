"""filter's two automatic score-threshold rules, per class.

- ``instances_thresholds`` (Data Distillation): keep as many machine boxes per unlabelled image as there are
  human boxes per labelled image.
- ``precision_thresholds``: run the teacher with pseudo-label's own transforms and fusion (read from the
  machine labels' ``info``) on human-labelled calibration images, and take the lowest threshold whose
  precision at IoU 0.5 reaches a target (``core.matching.lowest_threshold_for_precision``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from retinaslim.core.detections import Detections
from retinaslim.core.matching import lowest_threshold_for_precision, match
from retinaslim.core.progress import Reporter
from retinaslim.core.tta import Transform
from retinaslim.data.coco import ClassMap, CocoData, image_targets
from retinaslim.engine.inference import ImageResult, chunks, predict_batches, resolve_device
from retinaslim.errors import UserError
from retinaslim.models.checkpoint import load_checkpoint

KEEP_NONE = 1.0 + 1e-6  # a threshold no score (0..1) reaches


@dataclass
class Calibration:
    """What the precision rule found for one class on the calibration images: the threshold, the precision
    and recall (IoU 0.5) at it, and whether it reached the target (if not, the threshold keeps nothing)."""

    class_name: str
    threshold: float
    precision: float
    recall: float
    reached: bool


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


def precision_thresholds(pseudo: CocoData, classes: ClassMap, calib: CocoData, teacher: Path, target_precision: float,
                         device: str, batch_size: int, workers: int, reporter: Reporter) -> list[Calibration]:
    """Per class of ``classes`` (the machine labels' ``pseudo``), the lowest threshold reaching ``target_precision``
    on ``calib``, labelled by ``teacher`` as pseudo-label labelled ``pseudo``. The teacher's classes are matched
    to ``classes`` by name."""
    checkpoint = load_checkpoint(teacher)
    # The teacher's label k is its k-th class; the machine labels' classes may number the same names otherwise.
    teacher_names = ClassMap.from_categories(checkpoint.classes).names
    unknown = [name for name in teacher_names if name not in classes.names]
    if unknown:
        raise UserError(f"{teacher}: the teacher's class {unknown[0]!r} is not among {pseudo.path}'s classes "
                        f"({', '.join(classes.names)}); calibrate with the teacher that made them (`teacher`)")
    to_label = torch.tensor([classes.names.index(name) for name in teacher_names], dtype=torch.int64)
    try:
        transforms = [Transform.from_name(n) for n in pseudo.info["transforms"]]
        fusion, image_size = pseudo.info["fusion"], int(pseudo.info["image_size"])
    except (KeyError, ValueError, TypeError):
        raise UserError(f"{pseudo.path}: its info lacks pseudo-label's transforms/fusion/image_size; "
                        "the precision rule needs them to run the teacher the same way") from None
    run_on = resolve_device(device)
    model = checkpoint.build().to(run_on)
    paths = [calib.image_path(im) for im in calib.images]
    scores: dict[int, list[torch.Tensor]] = {k: [] for k in range(len(classes))}
    hits: dict[int, list[torch.Tensor]] = {k: [] for k in range(len(classes))}
    num_true: Counter[int] = Counter()

    def collect(batch: list[ImageResult]) -> None:
        for result in batch:
            if result.detections is None:
                continue
            boxes, labels = image_targets(calib, calib.images[result.index], classes)
            num_true.update(labels.tolist())
            dets = result.detections
            dets = Detections(dets.boxes, dets.scores, to_label[dets.labels], dets.extra)
            is_tp = match(dets, boxes, labels)
            for k in range(len(classes)):
                scores[k].append(dets.scores[dets.labels == k])
                hits[k].append(is_tp[dets.labels == k])

    predict_batches(model, paths, chunks(list(range(len(paths))), batch_size), image_size, transforms, run_on,
                    collect, fusion=fusion, workers=workers, reporter=reporter, task="calibrate")
    found = []
    for k, name in enumerate(classes.names):
        chosen = lowest_threshold_for_precision(torch.cat(scores[k]), torch.cat(hits[k]), num_true[k], target_precision)
        found.append(Calibration(name, *chosen, True) if chosen else Calibration(name, KEEP_NONE, 0.0, 0.0, False))
    return found
