"""Inference over many images, shared by the stages that run a model: train's validation, eval, pseudo-label,
filter's calibration, predict and export's int8 check.

Images are decoded in DataLoader workers, run batch by batch through ``models.lean`` and every test-time
transform, mapped back to original-image pixels and fused (``core.fusion``) when there are several transforms.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models.detection import RetinaNet

from retinaslim.core.detections import Detections
from retinaslim.core.fusion import fuse_many
from retinaslim.core.progress import Reporter
from retinaslim.core.tta import Transform
from retinaslim.data.coco import ClassMap, CocoData, CocoEvaluation, CocoEvaluator, detections_to_annotations
from retinaslim.data.images import ImageListDataset, collate_list
from retinaslim.data.stream import results_writer
from retinaslim.models.checkpoint import Checkpoint, load_checkpoint
from retinaslim.models.lean import LeanDetector
from retinaslim.models.predict import detect
from retinaslim.errors import UserError


def resolve_device(device: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cpu``, ``cuda`` or ``cuda:N`` as given.

    Raises ``UserError`` for another name, or for cuda on a machine without a usable CUDA GPU.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise UserError(f"`device` {device!r}: choose auto, cpu, cuda or cuda:N")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"`device` {device}: no CUDA GPU is usable on this machine; use auto or cpu")
    if device.startswith("cuda:") and int(device[5:]) >= torch.cuda.device_count():
        raise UserError(f"`device` {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return torch.device(device)


@dataclass
class ImageResult:
    """One image's fused detections (boxes in its original pixels), or why it was skipped."""

    index: int
    height: int = 0
    width: int = 0
    detections: Detections | None = None
    error: str | None = None


@dataclass
class Timings:
    """Seconds spent waiting for decoded images, in the model's forwards, and fusing transforms."""

    data: float = 0.0
    forward: float = 0.0
    fusion: float = 0.0


def chunks(indices: list[int], size: int) -> list[list[int]]:
    return [indices[i:i + size] for i in range(0, len(indices), size)]


def predict_batches(
    model: nn.Module,
    paths: list[Path],
    batches: list[list[int]],
    image_size: int,
    transforms: list[Transform],
    device: torch.device,
    on_batch: Callable[[list[ImageResult]], None],
    fusion: str = "wbf",
    workers: int = 0,
    reporter: Reporter | None = None,
    task: str = "predict",
    ensemble: Sequence[tuple[nn.Module, int]] = (),
) -> Timings:
    """Detect objects in the images ``paths[i]`` for each batch of indices, fusing transforms when there are several.

    Calls ``on_batch`` once per batch, in order, with each image's detections or decoding error. A
    batch's detections depend only on its own images, so re-running a batch reproduces it exactly.
    Images are decoded in ``workers`` DataLoader processes. ``model``: a RetinaNet, run through its lean
    path; any other detector (a ``LeanDetector`` already, e.g. an ONNX session's, or another torchvision
    detector such as benchmarks/peers.py trains, in eval mode) is called as it is, without gradients: a list
    of (3, H, W) images in [0, 1] -> a dict per image with ``boxes`` (xyxy pixels of that image), ``scores``
    and 0-based ``labels``.

    ``ensemble``: further models, each with the longer side in pixels it sees at scale 1, run with the same
    transforms; every model's every transform goes into one fusion per image (Data Distillation's model
    ensembling), so a box's ``agreement`` counts (model, transform) pairs.
    """
    reporter = reporter or Reporter()
    timings = Timings()
    members = [((LeanDetector(m) if isinstance(m, RetinaNet) else m).to(device), size)
               for m, size in [(model, image_size), *ensemble]]
    loader = torch.utils.data.DataLoader(ImageListDataset(paths), batch_sampler=batches, num_workers=workers,
                                         collate_fn=collate_list)
    reporter.start(task, sum(len(b) for b in batches))
    waited = time.perf_counter()
    for batch in loader:
        started = time.perf_counter()
        timings.data += started - waited
        good = [image for _, image, error in batch if error is None]
        per_image = [sum(lists, []) for lists in zip(*(detect(detector, good, size, transforms, device)
                                                       for detector, size in members))] if good else []
        fused_at = time.perf_counter()
        timings.forward += fused_at - started
        fused = iter([p[0] for p in per_image] if len(transforms) * len(members) == 1 else fuse_many(per_image, fusion))
        timings.fusion += time.perf_counter() - fused_at
        on_batch([ImageResult(i, error=error) if error is not None else
                  ImageResult(i, image.shape[1], image.shape[2], next(fused)) for i, image, error in batch])
        reporter.advance(task, len(batch))
        waited = time.perf_counter()
    reporter.finish(task)
    return timings


EVAL_CHUNK_IMAGES = 1000  # images scored per pycocotools evaluate call: memory stays flat in the number of images


def predict_on_coco(
    model: nn.Module,
    coco: CocoData,
    classes: ClassMap,
    image_size: int,
    device: torch.device,
    on_chunk: Callable[[list[int], list[dict[str, Any]]], None],
    batch_size: int = 8,
    workers: int = 0,
    reporter: Reporter | None = None,
) -> list[str]:
    """Single-pass predictions on every image of ``coco``, handed over in chunks of whole batches, each of at
    least ``EVAL_CHUNK_IMAGES`` images but the last.

    Calls ``on_chunk(image_ids, results)`` in the images' order, every image once; results are COCO result
    dicts: ``image_id``, ``category_id`` in ``coco``'s own ids, ``bbox`` xywh in original pixels and
    ``score`` 0..1. An undecodable image has no predictions (its objects count as missed); -> the decoding
    errors, one per such image.
    """
    skipped: list[str] = []
    image_ids: list[int] = []
    results: list[dict[str, Any]] = []

    def collect(batch: list[ImageResult]) -> None:
        nonlocal image_ids, results
        for result in batch:
            image_id = coco.images[result.index]["id"]
            image_ids.append(image_id)
            if result.error is not None:
                skipped.append(result.error)
            else:
                for ann in detections_to_annotations(result.detections, image_id, classes, result.width, result.height):
                    results.append({k: ann[k] for k in ("image_id", "category_id", "bbox", "score")})
        if len(image_ids) >= EVAL_CHUNK_IMAGES:
            on_chunk(image_ids, results)
            image_ids, results = [], []

    paths = [coco.image_path(image) for image in coco.images]
    predict_batches(model, paths, chunks(list(range(len(paths))), batch_size), image_size, [Transform()], device,
                    collect, workers=workers, reporter=reporter, task="validate")
    if image_ids:
        on_chunk(image_ids, results)
    return skipped


def evaluate_on_coco(
    model: nn.Module,
    coco: CocoData,
    classes: ClassMap,
    image_size: int,
    device: torch.device,
    batch_size: int = 8,
    workers: int = 0,
    reporter: Reporter | None = None,
    predictions_out: Path | None = None,
    evaluator: CocoEvaluator | None = None,
    written_ids: dict[int, int] | None = None,
) -> tuple[CocoEvaluation, list[str]]:
    """Single-pass predictions on every image of ``coco`` scored by pycocotools -> (evaluation, decoding errors).

    Scored a chunk of images at a time (``data.coco.CocoEvaluator``), and the predictions written to
    ``predictions_out`` (a COCO results file) as they come, so that memory does not grow with the images.
    ``evaluator``: the truth already indexed (``CocoEvaluator(coco)``, nothing added), for a caller that has
    let go of ``coco``'s annotations; default: built here from ``coco``. ``written_ids``: category id as scored ->
    as written to ``predictions_out`` (the dataset file's own ids, where ``match_classes`` gave the truth the
    model's).
    """
    evaluator = evaluator if evaluator is not None else CocoEvaluator(coco)
    with results_writer(predictions_out) if predictions_out is not None else contextlib.nullcontext() as write:
        def on_chunk(image_ids: list[int], results: list[dict[str, Any]]) -> None:
            evaluator.add(image_ids, results)
            if write is not None:
                write([{**r, "category_id": written_ids.get(r["category_id"], r["category_id"])} for r in results]
                      if written_ids else results)

        skipped = predict_on_coco(model, coco, classes, image_size, device, on_chunk, batch_size, workers, reporter)
    return evaluator.evaluation(), skipped


def teacher_paths(teacher: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """One teacher or several, as a list of paths (as ``PseudoLabelConfig.teacher``, the API and pseudo.json's
    ``info.teacher`` give them)."""
    return [Path(teacher)] if isinstance(teacher, (str, os.PathLike)) else [Path(t) for t in teacher]


def load_teachers(teachers: list[Path], image_size: int | None) -> tuple[list[Checkpoint], list[int]]:
    """The checkpoints and the longer side each sees at scale 1 (``image_size``, else its training size).
    Raises UserError when none is given or when two detect other classes (names, in order)."""
    if not teachers:
        raise UserError("`teacher`: give at least one teacher checkpoint")
    checkpoints = [load_checkpoint(t) for t in teachers]
    first = ClassMap.from_categories(checkpoints[0].classes).names
    for path, checkpoint in zip(teachers[1:], checkpoints[1:]):
        names = ClassMap.from_categories(checkpoint.classes).names
        if names != first:
            raise UserError(f"{path}: its classes ({', '.join(names)}) differ from {teachers[0]}'s ({', '.join(first)}); "
                            "teachers fused together must detect the same classes")
    return checkpoints, [image_size or c.image_size for c in checkpoints]
