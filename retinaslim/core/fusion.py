"""Fuse the detections of several transforms of one image into one box set.

Every method takes a list of ``Detections`` (one per transform, all in original-image pixels) and
returns one ``Detections`` with ``extra["agreement"]``: how many distinct transforms found the box.

- ``wbf``: Weighted Boxes Fusion (Solovyev et al.). Boxes of a class are clustered greedily by IoU with
  the running fused box; a cluster's box is the score-weighted mean of its members and its score the
  mean member score, scaled by min(members, transforms) / transforms, so that a box few transforms
  found scores lower.
- ``nms``: pool all boxes, non-maximum suppression per class.
- ``vote``: Detectron's TTA merge, NMS then box voting: each kept box becomes the score-weighted mean
  of the pooled boxes that overlap it by at least ``vote_iou_thresh``.

Why WBF is written here: torchvision ships NMS (used above) but no WBF, and ensemble-boxes, WBF's reference
implementation, neither says how many transforms found a fused box (the ``agreement`` that filter's
``min_agreement`` and show's disagreement sort read) nor takes pixel boxes (it wants [0, 1] coordinates).
``tests/core/test_fusion.py`` checks this ``wbf`` against ensemble-boxes (a test-only dependency) on 50
random ensembles. Why it is the default, measured (docs/results.md, "pseudo-label"): machine labels of AP
0.173 with WBF against 0.144 with NMS over the same six transforms; it costs about 14 ms per image for
6 x 70 boxes.
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision.ops import batched_nms, box_iou

from retinaslim.core.detections import Detections

FUSION_METHODS = ("wbf", "nms", "vote")


def fuse(
    per_transform: list[Detections],
    method: str = "wbf",
    iou_thresh: float | None = None,
    vote_iou_thresh: float = 0.9,
) -> Detections:
    """Fuse per-transform detections with ``method``; ``iou_thresh`` defaults to 0.55 (wbf) or 0.5 (nms, vote)."""
    if method == "wbf":
        return wbf(per_transform, 0.55 if iou_thresh is None else iou_thresh)
    if method == "nms":
        return nms(per_transform, 0.5 if iou_thresh is None else iou_thresh)
    if method == "vote":
        return vote(per_transform, 0.5 if iou_thresh is None else iou_thresh, vote_iou_thresh)
    raise ValueError(f"unknown fusion method {method!r}; choose one of {', '.join(FUSION_METHODS)}")


def _pool(per_transform: list[Detections]) -> tuple[Detections, torch.Tensor]:
    """All boxes in one set, and (N,) the index of the transform each came from."""
    pooled = Detections.cat([Detections(d.boxes, d.scores, d.labels) for d in per_transform])
    source = torch.cat([torch.full((len(d),), i, dtype=torch.int64) for i, d in enumerate(per_transform)])
    return pooled, source


def _agreement(kept: Detections, pooled: Detections, source: torch.Tensor, iou_thresh: float) -> torch.Tensor:
    """(K,) number of distinct transforms with a same-class box overlapping each kept box by > iou_thresh."""
    if len(kept) == 0:
        return torch.zeros(0, dtype=torch.int64)
    overlaps = (box_iou(kept.boxes, pooled.boxes) > iou_thresh) & (kept.labels[:, None] == pooled.labels[None, :])
    hits = [(overlaps & (source[None, :] == k)).any(dim=1) for k in range(int(source.max()) + 1)]  # (K,) each
    hits = torch.stack(hits, dim=1)  # (K, num_transforms)
    return hits.sum(dim=1)


def nms(per_transform: list[Detections], iou_thresh: float = 0.5) -> Detections:
    pooled, source = _pool(per_transform)
    keep = batched_nms(pooled.boxes, pooled.scores, pooled.labels, iou_thresh)
    kept = pooled[keep]
    kept.extra["agreement"] = _agreement(kept, pooled, source, iou_thresh)
    return kept


def vote(per_transform: list[Detections], iou_thresh: float = 0.5, vote_iou_thresh: float = 0.9) -> Detections:
    pooled, source = _pool(per_transform)
    kept = nms(per_transform, iou_thresh)
    if len(kept):
        voters = (box_iou(kept.boxes, pooled.boxes) >= vote_iou_thresh) & (kept.labels[:, None] == pooled.labels[None, :])
        weights = voters * pooled.scores[None, :]  # (K, N)
        kept.boxes = (weights @ pooled.boxes) / weights.sum(dim=1, keepdim=True)
    return kept


def _iou_one_to_many(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one (4,) xyxy box with (M, 4) xyxy boxes -> (M,)."""
    ix1 = np.maximum(box[0], boxes[:, 0])
    iy1 = np.maximum(box[1], boxes[:, 1])
    ix2 = np.minimum(box[2], boxes[:, 2])
    iy2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-12)


def _wbf_clusters(boxes: np.ndarray, scores: np.ndarray, iou_thresh: float) -> tuple[np.ndarray, list[list[int]]]:
    """Greedy clustering of one class's boxes, best score first -> (K, 4) fused boxes, member indices per cluster.

    A box joins the cluster whose running fused box it overlaps most, if that IoU is above ``iou_thresh``.
    The fused box is kept as running score-weighted sums, so each step costs one vectorised IoU.
    """
    fused = np.empty((len(boxes), 4))
    weight_sum = np.empty(len(boxes))
    weighted_box_sum = np.empty((len(boxes), 4))
    members: list[list[int]] = []
    for i in np.argsort(-scores, kind="stable"):
        k = len(members)
        if k:
            ious = _iou_one_to_many(boxes[i], fused[:k])
            best = int(np.argmax(ious))
            if ious[best] > iou_thresh:
                members[best].append(i)
                weight_sum[best] += scores[i]
                weighted_box_sum[best] += scores[i] * boxes[i]
                fused[best] = weighted_box_sum[best] / weight_sum[best]
                continue
        members.append([i])
        fused[k], weight_sum[k], weighted_box_sum[k] = boxes[i], scores[i], scores[i] * boxes[i]
    return fused[:len(members)], members


def wbf(per_transform: list[Detections], iou_thresh: float = 0.55) -> Detections:
    num_transforms = max(len(per_transform), 1)
    pooled, source = _pool(per_transform)
    boxes, scores, labels, sources = (t.numpy().astype(np.float64) for t in (pooled.boxes, pooled.scores, pooled.labels, source))
    out_boxes, out_scores, out_labels, out_agreement = [], [], [], []
    for label in np.unique(labels):
        in_class = np.flatnonzero(labels == label)
        fused, members = _wbf_clusters(boxes[in_class], scores[in_class], iou_thresh)
        for box, idx in zip(fused, members):
            idx = in_class[idx]
            out_boxes.append(box)
            out_scores.append(scores[idx].mean() * min(len(idx), num_transforms) / num_transforms)
            out_labels.append(label)
            out_agreement.append(len(np.unique(sources[idx])))
    if not out_boxes:
        result = Detections.empty()
        result.extra["agreement"] = torch.zeros(0, dtype=torch.int64)
        return result
    result = Detections(
        torch.tensor(np.stack(out_boxes), dtype=torch.float32),
        torch.tensor(out_scores, dtype=torch.float32),
        torch.tensor(out_labels, dtype=torch.int64),
        {"agreement": torch.tensor(out_agreement, dtype=torch.int64)},
    )
    return result[torch.argsort(result.scores, descending=True)]
