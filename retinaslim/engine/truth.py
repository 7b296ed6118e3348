"""Machine labels scored against the true labels of the same images (``filter --truth``): AP with pycocotools,
and precision/recall at IoU 0.5, overall and per class."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from retinaslim.core.detections import Detections
from retinaslim.core.matching import match
from retinaslim.data.coco import (ClassMap, annotation_boxes, coco_metrics, image_targets, load_coco, match_classes,
                                  rescale_image)
from retinaslim.data.images import same_shape
from retinaslim.errors import UserError


def truth_metrics(truth_path: Path, classes: ClassMap, source: Path, coco_images: list[dict[str, Any]], root: Path,
                  annotations: list[dict[str, Any]]) -> dict[str, Any]:
    """AP, and precision/recall at IoU 0.5, of ``annotations`` (on ``coco_images`` under ``root``, category ids of
    ``classes``, those of the file ``source``) against a truth file; the same precision/recall per class under
    ``per_class`` (None where a class has no boxes or no truth). The truth's classes are matched to ``classes`` by
    name (``match_classes``; the ids renumbered, if any, under ``renumbered``). Truth images declaring another
    size than the machine labels' (the decoded images') are rescaled to it when they are the same shape (counted
    in ``images_rescaled``), refused when not."""
    truth = load_coco(truth_path)
    renumbered = match_classes(classes, source, truth)
    by_path = {os.path.normpath(truth.image_path(im).resolve()): im for im in truth.images}
    results = []
    counts = torch.zeros(3, len(classes), dtype=torch.int64)  # true positives, boxes, truth boxes per class
    per_image: dict[int, list[dict[str, Any]]] = {}
    for a in annotations:
        per_image.setdefault(a["image_id"], []).append(a)
    matched = num_rescaled = 0
    for image in coco_images:
        truth_image = by_path.get(os.path.normpath((root / image["file_name"]).resolve()))
        if truth_image is None:
            continue
        matched += 1
        sizes = (truth_image["width"], truth_image["height"]), (image["width"], image["height"])
        if sizes[0] != sizes[1]:  # the machine labels' sizes are the decoded images'
            if not same_shape(*sizes):
                raise UserError(f"{truth_path}: image {truth_image['id']} ({truth_image['file_name']}) declares "
                                f"{sizes[0][0]} x {sizes[0][1]}, but the image is {sizes[1][0]} x {sizes[1][1]} as "
                                "pseudo-label decoded it; fix its width, height and boxes in the file")
            rescale_image(truth, truth_image, *sizes[1])
            num_rescaled += 1
        anns = [a for a in per_image.get(image["id"], []) if not a.get("iscrowd", 0)]
        results += [{**a, "image_id": truth_image["id"]} for a in anns]
        boxes, labels = image_targets(truth, truth_image, classes)
        det_labels = torch.tensor([classes.label(a["category_id"]) for a in anns], dtype=torch.int64)
        dets = Detections(annotation_boxes(anns), torch.tensor([a["score"] for a in anns]), det_labels)
        is_tp = match(dets, boxes, labels)
        counts[0] += torch.bincount(det_labels[is_tp], minlength=len(classes))
        counts[1] += torch.bincount(det_labels, minlength=len(classes))
        counts[2] += torch.bincount(labels, minlength=len(classes))
    if matched == 0:
        raise UserError(f"{truth_path}: none of its images are in the machine labels (matched by file path)")
    metrics = coco_metrics(truth, results)
    tp, kept, true = counts.sum(1).tolist()
    per_class = {name: {"boxes": n, "precision": t / n if n else None, "recall": t / m if m else None}
                 for name, (t, n, m) in zip(classes.names, counts.T.tolist())}
    return {"ap": metrics["ap"], "ap50": metrics["ap50"], "precision": tp / max(1, kept), "recall": tp / max(1, true),
            "boxes": kept, "per_class": per_class, "images_rescaled": num_rescaled, "renumbered": renumbered}
