"""Inference over many images, shared by the stages that run a model (train's validation, eval, pseudo-label)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from retinaslim.core.detections import Detections
from retinaslim.core.fusion import fuse
from retinaslim.core.progress import Reporter
from retinaslim.core.tta import Transform
from retinaslim.data.coco import ClassMap, CocoData, coco_metrics, detections_to_annotations
from retinaslim.data.images import ImageListDataset, collate_list
from retinaslim.models.predict import detect


def resolve_device(device: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclass
class ImageResult:
    """One image's fused detections (boxes in its original pixels), or why it was skipped."""

    index: int
    height: int = 0
    width: int = 0
    detections: Detections | None = None
    error: str | None = None


def predict_paths(
    model: nn.Module,
    paths: list[Path],
    image_size: int,
    transforms: list[Transform],
    device: torch.device,
    on_image: Callable[[ImageResult], None],
    fusion: str = "wbf",
    batch_size: int = 8,
    workers: int = 0,
    reporter: Reporter | None = None,
    task: str = "predict",
) -> None:
    """Detect objects in every image of ``paths``, fusing transforms when there are several.

    Calls ``on_image`` once per image, in order, with its detections or its decoding error.
    Images are decoded in ``workers`` DataLoader processes.
    """
    reporter = reporter or Reporter()
    loader = torch.utils.data.DataLoader(
        ImageListDataset(paths), batch_size=batch_size, num_workers=workers, collate_fn=collate_list
    )
    reporter.start(task, len(paths))
    for batch in loader:
        good = [image for _, image, error in batch if error is None]
        per_image = iter(detect(model, good, image_size, transforms, device) if good else [])
        for i, image, error in batch:
            if error is not None:
                on_image(ImageResult(i, error=error))
                continue
            per_transform = next(per_image)
            dets = per_transform[0] if len(transforms) == 1 else fuse(per_transform, fusion)
            on_image(ImageResult(i, image.shape[1], image.shape[2], dets))
        reporter.advance(task, len(batch))
    reporter.finish(task)


def evaluate_on_coco(
    model: nn.Module,
    coco: CocoData,
    classes: ClassMap,
    image_size: int,
    device: torch.device,
    batch_size: int = 8,
    workers: int = 0,
    reporter: Reporter | None = None,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Single-pass predictions on every image of ``coco`` -> (pycocotools metrics, COCO result dicts).

    Result dicts use ``coco``'s own category ids; an undecodable image simply has no predictions.
    """
    results: list[dict[str, Any]] = []

    def collect(result: ImageResult) -> None:
        if result.detections is not None:
            image_id = coco.images[result.index]["id"]
            for ann in detections_to_annotations(result.detections, image_id, classes):
                results.append({k: ann[k] for k in ("image_id", "category_id", "bbox", "score")})

    paths = [coco.image_path(image) for image in coco.images]
    predict_paths(model, paths, image_size, [Transform()], device, collect, batch_size=batch_size,
                  workers=workers, reporter=reporter, task="validate")
    return coco_metrics(coco, results), results
