"""Match detections to ground truth, and the precision/recall they give."""

from __future__ import annotations

import torch
from torchvision.ops import box_iou

from retinaslim.core.detections import Detections


def match(dets: Detections, boxes: torch.Tensor, labels: torch.Tensor, iou_thresh: float = 0.5) -> torch.Tensor:
    """(N,) bool: which detections are true positives at ``iou_thresh`` (``match_at`` with one threshold)."""
    return match_at(dets, boxes, labels, [iou_thresh])[:, 0]


def match_at(dets: Detections, boxes: torch.Tensor, labels: torch.Tensor, iou_thresholds: list[float]) -> torch.Tensor:
    """(N, T) bool: which detections are true positives at each of the T ``iou_thresholds``, each matched on its own.

    Greedy in descending score, as in COCO/VOC evaluation: a detection is a true positive when it
    overlaps a not yet matched same-class truth box by IoU >= the threshold; it takes the best such box.
    boxes: (M, 4) xyxy truth in the same pixels as ``dets.boxes``; labels: (M,).
    """
    is_tp = torch.zeros(len(dets), len(iou_thresholds), dtype=torch.bool)
    if len(dets) == 0 or len(boxes) == 0:
        return is_tp
    ious = box_iou(dets.boxes, boxes)  # (N, M)
    thresholds = torch.tensor(iou_thresholds, dtype=ious.dtype)[:, None]  # (T, 1)
    taken = torch.zeros(len(iou_thresholds), len(boxes), dtype=torch.bool)  # (T, M)
    for i in torch.argsort(dets.scores, descending=True).tolist():
        candidates = (ious[i] >= thresholds) & ~taken & (labels == dets.labels[i])  # (T, M)
        found = candidates.any(dim=1)
        best = torch.argmax(ious[i] * candidates, dim=1)
        taken[found, best[found]] = True
        is_tp[i] = found
    return is_tp


def _cuts(scores: torch.Tensor, is_tp: torch.Tensor, num_true: int) -> tuple[torch.Tensor, ...]:
    """Scores in descending order with the precision and recall of keeping the boxes down to each, and which
    positions are real cuts (only the last of equal scores is: a threshold keeps every box scoring >= it)."""
    order = torch.argsort(scores, descending=True)
    scores, is_tp = scores[order], is_tp[order].float()
    precision = is_tp.cumsum(0) / torch.arange(1, len(scores) + 1)
    recall = is_tp.cumsum(0) / max(1, num_true)
    cut = torch.ones(len(scores), dtype=torch.bool)
    cut[:-1] = scores[:-1] != scores[1:]
    return scores, precision, recall, cut


def lowest_threshold_for_precision(scores: torch.Tensor, is_tp: torch.Tensor, num_true: int,
                                   target: float) -> tuple[float, float, float] | None:
    """The lowest score threshold whose precision (of detections scoring >= it) reaches ``target``.

    scores, is_tp: (N,) for one class over a calibration set; num_true: that class's truth boxes.
    Returns (threshold, precision, recall) at it, or None when no threshold reaches the target.
    """
    scores, precision, recall, cut = _cuts(scores, is_tp, num_true)
    reached = torch.nonzero((precision >= target) & cut).flatten()
    if len(reached) == 0:
        return None
    k = int(reached[-1])
    return float(scores[k]), float(precision[k]), float(recall[k])


def best_f1_threshold(scores: torch.Tensor, is_tp: torch.Tensor, num_true: int) -> tuple[float, float, float] | None:
    """The score threshold with the highest F1 (2PR / (P + R)) of the detections scoring >= it; of equal
    F1, the highest threshold. Weighs a wrong machine box and a missed object alike.

    scores, is_tp: (N,) for one class over a validation set; num_true: that class's truth boxes.
    Returns (threshold, precision, recall) at it, or None when no detection is a true positive.
    """
    if not bool(is_tp.any()):
        return None
    scores, precision, recall, cut = _cuts(scores, is_tp, num_true)
    f1 = torch.where(cut, 2 * precision * recall / (precision + recall).clamp(min=1e-12), torch.tensor(-1.0))
    k = int(torch.nonzero(f1 == f1.max()).flatten()[0])
    return float(scores[k]), float(precision[k]), float(recall[k])


def average_precision(scores: torch.Tensor, is_tp: torch.Tensor, num_true: int) -> float:
    """AP at the IoU ``is_tp`` was matched at (0..1): the area under the precision-recall curve with precision
    made monotone from the right, summed over every recall step (all-point interpolation, Pascal VOC 2010 on).

    scores, is_tp: (N,) for one class over a set of images; num_true: that class's truth boxes (0 gives 0.0).
    """
    if num_true == 0 or len(scores) == 0:
        return 0.0
    order = torch.argsort(scores, descending=True, stable=True)
    hits = is_tp[order].double()
    precision = hits.cumsum(0) / torch.arange(1, len(hits) + 1, dtype=torch.float64)
    envelope = torch.flip(torch.cummax(torch.flip(precision, [0]), 0).values, [0])
    return float((envelope * hits).sum() / num_true)
