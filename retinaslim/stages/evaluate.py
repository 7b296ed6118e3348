"""eval: accuracy (pycocotools AP), speed (latency, FPS) and size of one or more checkpoints, side by side."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from retinaslim.core.atomic import refuse_overwriting_inputs, write_json
from retinaslim.core.progress import Reporter
from retinaslim.core.tta import Transform
from retinaslim.data.coco import ClassMap, load_coco, require_image_files
from retinaslim.data.images import ImageError, read_image
from retinaslim.errors import UserError
from retinaslim.models.checkpoint import load_checkpoint
from retinaslim.stages.inference import evaluate_on_coco, median_ms, resolve_device


@dataclass
class EvalConfig:
    weights: list[Path]
    data: Path
    images: Path | None = None
    image_size: int | None = None  # None: each checkpoint's training size
    device: str = "auto"
    batch_size: int = 8
    workers: int = 0
    latency_runs: int = 20
    warmup_runs: int = 3
    predictions_out: Path | None = None
    json_out: Path | None = None


@dataclass
class ModelReport:
    weights: str
    arch: str
    ap: float
    ap50: float
    ap75: float
    ap_small: float
    ap_medium: float
    ap_large: float
    ar100: float
    latency_ms: float
    fps: float
    params: int
    size_mb: float
    image_size: int
    device: str
    threads: int
    predictions: str | None
    num_skipped_images: int = 0  # undecodable images: no predictions, their objects count as missed


@dataclass
class EvalResult:
    reports: list[ModelReport]
    latency_runs: int
    json_out: Path | None


def _predictions_path(base: Path, index: int, count: int) -> Path:
    return base if count == 1 else base.with_name(f"{base.stem}.{index + 1}{base.suffix}")


@torch.no_grad()
def measure_latency(model, image: torch.Tensor, image_size: int, device: torch.device, runs: int, warmup: int) -> float:
    """Median milliseconds of one end-to-end forward (normalise, network, decode, NMS) at batch 1."""
    batch = [Transform().apply(image, image_size).to(device)]
    model.eval()
    return median_ms(lambda: model(batch), runs, warmup, device)


def evaluate(config: EvalConfig, reporter: Reporter | None = None) -> EvalResult:
    if not config.weights:
        raise UserError("no checkpoint to evaluate; pass --weights W.pt")
    if config.latency_runs < 1:
        raise UserError(f"--latency-runs {config.latency_runs} must be at least 1")
    prediction_files = [_predictions_path(Path(config.predictions_out), i, len(config.weights))
                        for i in range(len(config.weights))] if config.predictions_out is not None else []
    refuse_overwriting_inputs([("--json", config.json_out)] + [("--predictions-out", p) for p in prediction_files],
                              [("--data", config.data)] + [("--weights", w) for w in config.weights])
    data = load_coco(config.data, config.images)
    if not data.images:
        raise UserError(f"{data.path}: no images to evaluate on")
    require_image_files(data)
    device = resolve_device(config.device)
    sample = None
    for image in data.images:  # the first decodable image times the model
        try:
            sample = read_image(data.image_path(image))
            break
        except ImageError:
            continue
    if sample is None:
        raise UserError(f"{data.path}: none of its images could be read from {data.image_root}")

    reports = []
    for index, weights in enumerate(config.weights):
        checkpoint = load_checkpoint(weights)
        classes = ClassMap.from_categories(checkpoint.classes)
        if classes != data.classes:
            raise UserError(f"{weights}: the model's classes {classes.categories()} differ from "
                            f"{data.path}'s {data.classes.categories()}")
        model = checkpoint.build().to(device)
        image_size = config.image_size or checkpoint.image_size
        metrics, results, skipped = evaluate_on_coco(model, data, classes, image_size, device, config.batch_size,
                                                     config.workers, reporter)
        predictions = None
        if prediction_files:
            path = prediction_files[index]
            write_json(path, results)
            predictions = str(path)
        latency = measure_latency(model, sample, image_size, device, config.latency_runs, config.warmup_runs)
        reports.append(ModelReport(
            weights=str(weights), arch=checkpoint.arch, **metrics, latency_ms=latency, fps=1000.0 / latency,
            params=sum(p.numel() for p in model.parameters()), size_mb=Path(weights).stat().st_size / 1e6,
            image_size=image_size, device=str(device), threads=torch.get_num_threads(), predictions=predictions,
            num_skipped_images=len(skipped),
        ))
    if config.json_out is not None:
        write_json(Path(config.json_out), [asdict(r) for r in reports])
    return EvalResult(reports, config.latency_runs, config.json_out)
