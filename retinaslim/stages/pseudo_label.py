"""pseudo-label: the teacher labels unlabelled images with multi-transform ensembling.

Each image is run through every transform (scales x horizontal flip), predictions are mapped back to
the original image and fused (WBF by default) into one box set with a ``score`` and an ``agreement``
(how many transforms found the box). Every fused box above a low floor is kept, so thresholds can be
chosen later (``retinaslim filter``) without running the teacher again.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retinaslim.config import PSEUDO_FUSION, PSEUDO_SCALES, PSEUDO_SCORE_FLOOR
from retinaslim.core.atomic import write_json
from retinaslim.core.fusion import FUSION_METHODS
from retinaslim.core.progress import Reporter
from retinaslim.core.tta import make_transforms
from retinaslim.data.coco import ClassMap, detections_to_annotations
from retinaslim.data.images import list_images
from retinaslim.errors import UserError
from retinaslim.models.checkpoint import load_checkpoint
from retinaslim.stages.inference import ImageResult, predict_paths, resolve_device


@dataclass
class PseudoLabelConfig:
    source: Path  # folder of images (recursive) or a text file of paths
    teacher: Path
    out: Path
    scales: tuple[float, ...] = PSEUDO_SCALES
    hflip: bool = True
    fusion: str = PSEUDO_FUSION
    score_floor: float = PSEUDO_SCORE_FLOOR
    image_size: int | None = None  # None: the teacher's training size
    batch_size: int = 8
    device: str = "auto"
    workers: int = 0


@dataclass
class PseudoLabelResult:
    out: Path
    num_images: int
    num_boxes: int
    skipped: list[dict[str, str]]
    transforms: list[str]
    seconds: float


def pseudo_label(config: PseudoLabelConfig, reporter: Reporter | None = None) -> PseudoLabelResult:
    started = time.perf_counter()
    if config.fusion not in FUSION_METHODS:
        raise UserError(f"--fusion {config.fusion!r} is unknown; choose one of {', '.join(FUSION_METHODS)}")
    if not 0 <= config.score_floor <= 1:
        raise UserError(f"--score-floor {config.score_floor} must be in [0, 1]")
    if not config.scales or any(s <= 0 for s in config.scales):
        raise UserError(f"--scales {config.scales} must be positive numbers, e.g. 0.75,1.0,1.25")
    paths = list_images(config.source)
    checkpoint = load_checkpoint(config.teacher)
    model = checkpoint.build()
    device = resolve_device(config.device)
    model.to(device)
    image_size = config.image_size or checkpoint.image_size
    transforms = make_transforms(tuple(config.scales), config.hflip)
    classes = ClassMap.from_categories(checkpoint.classes)
    out = Path(config.out)
    out_dir = out.parent.resolve()

    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []

    def collect(result: ImageResult) -> None:
        path = paths[result.index]
        if result.error is not None:
            skipped.append({"file": str(path), "reason": result.error.split(": ", 1)[-1]})
            return
        image_id = len(images) + 1
        # COCO file names resolve against the JSON file's own folder.
        images.append({"id": image_id, "file_name": os.path.relpath(path.resolve(), out_dir),
                       "width": result.width, "height": result.height})
        dets = result.detections[result.detections.scores >= config.score_floor]
        annotations.extend(detections_to_annotations(dets, image_id, classes, first_id=len(annotations) + 1))

    predict_paths(model, paths, image_size, transforms, device, collect, fusion=config.fusion,
                  batch_size=config.batch_size, workers=config.workers, reporter=reporter, task="pseudo-label")
    info = {
        "description": "retinaslim pseudo-labels (raw teacher output, fused)",
        "teacher": str(config.teacher), "image_size": image_size,
        "transforms": [t.name for t in transforms], "fusion": config.fusion, "score_floor": config.score_floor,
    }
    write_json(out, {"info": info, "images": images, "annotations": annotations,
                     "categories": classes.categories(), "skipped": skipped})
    return PseudoLabelResult(out, len(images), len(annotations), skipped, info["transforms"],
                             time.perf_counter() - started)
