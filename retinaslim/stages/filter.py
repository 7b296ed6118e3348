"""filter: turn raw machine labels into the ones the student trains on.

Reads the ``pseudo.json`` that pseudo-label wrote and keeps boxes whose score reaches the threshold.
Images left with no box stay in the file as background images (they teach the student what is not a
card). The output's ``info`` records the rule and threshold used.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from retinaslim.config import FILTER_SCORE_THRESH
from retinaslim.core.atomic import write_json
from retinaslim.data.coco import load_coco
from retinaslim.errors import UserError


@dataclass
class FilterConfig:
    pseudo: Path
    out: Path
    score_thresh: float = FILTER_SCORE_THRESH


@dataclass
class FilterResult:
    out: Path
    num_images: int
    num_boxes_in: int
    num_boxes_kept: int
    num_empty_images: int


def filter_labels(config: FilterConfig) -> FilterResult:
    if not 0 <= config.score_thresh <= 1:
        raise UserError(f"--score-thresh {config.score_thresh} must be in [0, 1]")
    if Path(config.out).resolve() == Path(config.pseudo).resolve():
        raise UserError(f"{config.out}: the output would overwrite the input; choose another --out")
    coco = load_coco(config.pseudo)
    missing_scores = [a["id"] for anns in coco.annotations_per_image.values() for a in anns if "score" not in a]
    if missing_scores:
        raise UserError(f"{coco.path}: annotation {missing_scores[0]} has no 'score'; filter reads pseudo-label output")

    out = Path(config.out)
    # File names resolve against each JSON file's own folder: rebase them when the folder changes.
    rebase = os.path.relpath(coco.path.parent.resolve(), out.parent.resolve())
    images, annotations, num_empty = [], [], 0
    for image in coco.images:
        kept = [a for a in coco.annotations_per_image[image["id"]] if a["score"] >= config.score_thresh]
        num_empty += not kept
        images.append({**image, "file_name": os.path.normpath(os.path.join(rebase, image["file_name"]))})
        annotations.extend(kept)
    info = {**coco.info, "filter": {"source": str(coco.path), "score_thresh": config.score_thresh}}
    write_json(out, {"info": info, "images": images, "annotations": annotations, "categories": coco.categories})
    return FilterResult(out, len(images), coco.num_annotations, len(annotations), num_empty)
