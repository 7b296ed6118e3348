"""filter's review export: the images a person should look at first, with the machine boxes as pre-annotations.

An image's doubt is how close its boxes' scores are to their class thresholds; the most doubtful images go
to a Label Studio import file, and the same images to a COCO file beside it (``NAME.coco.json``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from retinaslim.core.atomic import write_json
from retinaslim.core.detections import Detections
from retinaslim.data.coco import ClassMap, detections_to_annotations
from retinaslim.data.stream import CocoStream
from retinaslim.data.formats import labelstudio


def doubt(scores: torch.Tensor, thresholds: torch.Tensor) -> float:
    """How much an image needs a person: each box's closeness to its class threshold (1 at it), summed.
    scores, thresholds: (N,) per box, 0..1."""
    spread = torch.maximum(thresholds, 1 - thresholds).clamp(min=1e-6)
    return float((1 - (scores - thresholds).abs() / spread).clamp(min=0).sum())


def write_review(path: Path, ranked: list[tuple[float, dict[str, Any], Detections]], pseudo: CocoStream,
                 classes: ClassMap) -> int:
    """The ``ranked`` (doubt, image, machine boxes) images, most doubtful first: Label Studio import JSON at
    ``path`` and COCO at ``NAME.coco.json``; returns the number of images written."""
    tasks, images, annotations = [], [], []
    for rank, (image_doubt, image, dets) in enumerate(ranked, start=1):
        image_path = (pseudo.image_root / image["file_name"]).resolve()
        boxes, scores, labels = dets.boxes.tolist(), dets.scores.tolist(), dets.labels.tolist()
        annotations += detections_to_annotations(Detections(dets.boxes, dets.scores, dets.labels), image["id"], classes,
                                                 image["width"], image["height"], first_id=len(annotations) + 1)
        review_task = labelstudio.task(str(image_path), image["width"], image["height"], boxes,
                                       [classes.names[k] for k in labels], scores, model_version="retinaslim-teacher",
                                       categories=pseudo.categories)
        review_task["predictions"][0]["score"] = round(image_doubt, 4)
        tasks.append({**review_task, "meta": {"rank": rank, "doubt": round(image_doubt, 4)}})
        images.append({**image, "file_name": os.path.relpath(image_path, Path(path).parent.resolve())})
    write_json(Path(path), tasks)
    write_json(Path(path).with_suffix(".coco.json"), {"info": {"description": "retinaslim review: most doubtful images first"},
                                                      "images": images, "annotations": annotations, "categories": pseudo.categories})
    return len(tasks)
