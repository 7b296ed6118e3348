"""predict: run a trained model on images or folders -> a COCO file with scored boxes, optional drawings.

The output is a whole COCO file (images, annotations with ``score``, categories), not just a results
list, so ``load_coco``, ``retinaslim show`` and ``retinaslim convert`` read it directly; its
``annotations`` are valid COCO results for pycocotools too. Images that cannot be decoded are listed
under ``skipped`` with the reason.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from retinaslim.config import PSEUDO_FUSION, PSEUDO_SCALES
from retinaslim.core.atomic import write_json
from retinaslim.core.progress import Reporter
from retinaslim.core.tta import Transform, make_transforms
from retinaslim.data.coco import ClassMap, detections_to_annotations
from retinaslim.data.draw import draw_boxes, save_image
from retinaslim.data.images import ImageError, list_images, read_rgb
from retinaslim.engine.inference import ImageResult, chunks, predict_batches, resolve_device
from retinaslim.errors import UserError
from retinaslim.models.checkpoint import load_checkpoint
from retinaslim.models.onnx import OnnxDetector


@dataclass
class PredictConfig:
    weights: Path
    sources: list[Path]  # image files, folders (searched recursively) or text files listing images
    out: Path = Path("preds.json")  # COCO JSON
    _: KW_ONLY  # inputs and outputs above may be passed in order, options below by keyword only
    draw: Path | None = None  # folder for copies of the images with their boxes drawn
    score_thresh: float = 0.3
    tta: bool = False  # pseudo-label's transforms (scales x horizontal flip), fused; boxes gain ``agreement``
    image_size: int | None = None  # None: the model's training size
    batch_size: int = 8
    device: str = "auto"
    workers: int = 2  # image-decoding processes; 0: decode in the main process


@dataclass
class PredictResult:
    """The COCO file written (``out``: boxes xywh in original pixels with scores), images, boxes per class
    name, undecodable images skipped (file, reason), the transforms run (one without ``tta``), the folder
    of drawings (``draw``) and the wall time in seconds."""

    out: Path
    num_images: int
    num_boxes: dict[str, int]  # per class name
    skipped: list[dict[str, str]] = field(default_factory=list)  # file, reason
    transforms: list[str] = field(default_factory=list)
    draw: Path | None = None
    seconds: float = 0.0


def load_detector(weights: Path) -> tuple[nn.Module, ClassMap, int]:
    """The one place a weights file becomes a detector: (model, classes, input size).

    The model takes a list of (3, H, W) images in [0, 1] and returns one dict per image with ``boxes``
    (xyxy in the input's pixels), ``scores`` and ``labels``: the call every retinaslim model answers.
    A ``.pt`` checkpoint gives the RetinaNet; a ``.onnx`` file from ``retinaslim export`` gives an
    ``OnnxDetector`` (onnxruntime runs the network, ``LeanDetector.decode`` the postprocess), with the
    size it was exported for.
    """
    weights = Path(weights)
    if weights.suffix.lower() == ".onnx":
        detector = OnnxDetector(weights)
        metadata = detector.metadata
        return detector, ClassMap.from_categories(metadata["classes"]), metadata["image_size"]
    checkpoint = load_checkpoint(weights)  # any other name: import-teacher's --out may be teacher.pth
    return checkpoint.build(), ClassMap.from_categories(checkpoint.classes), checkpoint.image_size


def gather_images(sources: list[Path]) -> list[Path]:
    """Image files as given, folders searched recursively, text files read as lists; duplicates once."""
    paths: list[Path] = []
    for source in sources:
        paths += list_images(Path(source))
    return list(dict.fromkeys(p.absolute() for p in paths))


def predict(config: PredictConfig, reporter: Reporter | None = None) -> PredictResult:
    started = time.perf_counter()
    if not 0 <= config.score_thresh <= 1:
        raise UserError(f"`score_thresh` {config.score_thresh} must be in [0, 1]")
    if Path(config.out).suffix.lower() != ".json":
        raise UserError(f"`out` {config.out}: expected a .json file name")
    if config.draw is not None and Path(config.draw).exists() and not Path(config.draw).is_dir():
        raise UserError(f"`draw` {config.draw}: a file, expected a folder for the drawn images")
    if not config.sources:
        raise UserError("no images given: pass image files or folders")
    paths = gather_images(config.sources)
    common = Path(os.path.commonpath([p.parent for p in paths])) if paths else Path()
    if config.draw is not None:
        draw = Path(config.draw).resolve()
        if draw == common.resolve():
            raise UserError(f"`draw` {config.draw}: the images' own folder; the drawn copies would replace them "
                            "(choose another folder)")
        searched = next((s for s in config.sources if Path(s).is_dir() and draw.is_relative_to(Path(s).resolve())), None)
        if searched is not None:
            raise UserError(f"`draw` {config.draw}: inside {searched}, which is searched for images: a rerun would "
                            "take the drawn copies as inputs (choose a folder outside it)")
    model, classes, trained_size = load_detector(config.weights)
    image_size = config.image_size or trained_size
    transforms = make_transforms(PSEUDO_SCALES, True, False, False) if config.tta else [Transform()]
    device = resolve_device(config.device)
    model = model.to(device)
    out = Path(config.out)
    base = out.parent.absolute()
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []

    def collect(batch: list[ImageResult]) -> None:
        for result in batch:
            path = paths[result.index]
            if result.error is not None:
                skipped.append({"file": str(path), "reason": result.error.split(": ", 1)[-1]})
                continue
            image_id = result.index + 1
            images.append({"id": image_id, "file_name": os.path.relpath(path, base), "width": result.width,
                           "height": result.height})
            dets = result.detections[result.detections.scores >= config.score_thresh]
            annotations.extend(detections_to_annotations(dets, image_id, classes, result.width, result.height,
                                                          first_id=len(annotations) + 1))
            if config.draw is not None:
                try:
                    picture = read_rgb(path)
                except ImageError as e:  # decoded a moment ago; changed since
                    skipped.append({"file": str(path), "reason": f"drawing: {str(e).split(': ', 1)[-1]}"})
                    continue
                labels = dets.labels.tolist()
                draw_boxes(picture, dets.boxes.tolist(), labels, [classes.names[k] for k in labels], dets.scores.tolist())
                save_image(picture, Path(config.draw) / path.relative_to(common))

    predict_batches(model, paths, chunks(list(range(len(paths))), config.batch_size), image_size, transforms, device,
                    collect, fusion=PSEUDO_FUSION, workers=config.workers, reporter=reporter, task="predict")
    info = {"description": "retinaslim predictions", "weights": str(config.weights), "image_size": image_size,
            "transforms": [t.name for t in transforms], "score_thresh": config.score_thresh}
    write_json(out, {"info": info, "images": images, "annotations": annotations, "categories": classes.categories(),
                     "skipped": skipped})
    per_class = Counter(classes.names[classes.label(a["category_id"])] for a in annotations)
    return PredictResult(out=out, num_images=len(images), num_boxes={n: per_class[n] for n in classes.names},
                         skipped=skipped, transforms=info["transforms"], draw=config.draw,
                         seconds=time.perf_counter() - started)
