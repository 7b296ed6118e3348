"""eval: accuracy (pycocotools AP), speed (latency, throughput) and size of one or more checkpoints, side by side.

Accuracy: one single-pass prediction per image at the checkpoint's input size, scored by pycocotools
(AP, AP50, AP75, AP small/medium/large, AR@100, AP per class, precision-recall curves).
Speed: end-to-end forwards (resized image tensors in, final detections out: normalise, network, decode,
NMS), ``latency_runs`` of one image (median and 90th percentile) and ``latency_runs`` of ``batch_size``
images (throughput = images / median batch time) per model, on ``device`` with the process's torch thread
count. After every model's accuracy run, the timed calls of all models are interleaved in rounds
(``warmup_runs`` untimed calls per model and round), so that models compared side by side share the
machine's slow and fast spells.
Size: parameters, MACs of the network for a square ``image_size`` input (``models.macs``), file bytes.
A ``.onnx`` file from ``retinaslim export`` is evaluated the same way through onnxruntime on the CPU (the
graph's fixed input size bounds ``image_size``), so an exported model's AP and speed sit beside the
checkpoint's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import KW_ONLY, asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from retinaslim.core.atomic import atomic_path, refuse_overwriting_inputs, write_json
from retinaslim.core.progress import Reporter
from retinaslim.core.tta import Transform
from retinaslim.data.coco import ClassMap, CocoEvaluation, CocoEvaluator, has_boxes, load_coco, match_classes, require_image_files
from retinaslim.data.images import ImageError, read_image
from retinaslim.engine.inference import evaluate_on_coco, resolve_device
from retinaslim.engine.timing import measure, median_ms, p90_ms
from retinaslim.errors import UserError
from retinaslim.models.checkpoint import load_checkpoint
from retinaslim.models.lean import LeanDetector
from retinaslim.models.macs import count_macs
from retinaslim.models.onnx import OnnxDetector
from retinaslim.models.registry import build_model


@dataclass
class EvalConfig:
    weights: list[Path]
    data: Path
    _: KW_ONLY  # inputs and outputs above may be passed in order, options below by keyword only
    images: Path | None = None
    image_size: int | None = None  # None: each checkpoint's training size
    device: str = "auto"
    batch_size: int = 8  # AP run, and the throughput measurement
    workers: int = 2  # image-decoding processes; 0: decode in the main process
    latency_runs: int = 20
    warmup_runs: int = 3
    predictions_out: Path | None = None
    json_out: Path | None = None
    plots_dir: Path | None = None


@dataclass
class ModelReport:
    """One checkpoint's scores on the evaluation data: COCO AP, AP50, AP75, AP by object size and AR@100 (all
    0..1, from pycocotools; None where the data has no objects of that size or class), latency in ms at batch
    1 (median, p90; images resized so the longer side is ``image_size`` px), FPS, throughput in images/s at
    ``batch_size``, parameters, MACs, checkpoint size in MB (10^6 bytes), and the files written."""

    weights: str
    arch: str
    ap: float
    ap50: float
    ap75: float
    ap_small: float | None  # None: the data has no objects of that size
    ap_medium: float | None
    ap_large: float | None
    ar100: float
    per_class_ap: dict[str, float | None]  # class name -> AP (None: no truth of that class)
    per_class_ap50: dict[str, float | None]  # class name -> AP at IoU 0.50
    per_class_ap75: dict[str, float | None]  # class name -> AP at IoU 0.75 (with AP50: detection vs placement)
    latency_ms: float  # median, batch 1
    latency_p90_ms: float
    fps: float  # 1000 / median batch-1 latency
    throughput: float  # images/s at batch_size
    batch_size: int
    params: int
    macs: int
    size_mb: float  # checkpoint file, 10^6 bytes
    image_size: int
    device: str
    threads: int
    predictions: str | None
    pr_plot: str | None
    num_skipped_images: int = 0  # undecodable images: no predictions, their objects count as missed


@dataclass
class EvalResult:
    """One ``ModelReport`` per checkpoint, in the order given, and how the speed was measured."""

    reports: list[ModelReport]
    latency_runs: int
    warmup_runs: int
    batch_size: int
    json_out: Path | None
    plots: list[Path] = field(default_factory=list)


def _numbered(base: Path, index: int, count: int) -> Path:
    return base if count == 1 else base.with_name(f"{base.stem}.{index + 1}{base.suffix}")


def _batch(images: list[torch.Tensor], image_size: int, device: torch.device) -> list[torch.Tensor]:
    """Original (3, H, W) images in [0, 1], resized as the detector expects (longer side ``image_size``)."""
    return [Transform().apply(image, image_size).to(device) for image in images]


def _sample_images(data, count: int) -> list[torch.Tensor]:
    """The first ``count`` decodable images of ``data`` (repeated when it has fewer)."""
    found = []
    for image in data.images:
        try:
            found.append(read_image(data.image_path(image)))
        except ImageError:
            continue
        if len(found) == count:
            break
    if not found:
        raise UserError(f"{data.path}: none of its images could be read from {data.image_root}")
    return [found[i % len(found)] for i in range(count)]


def plot_precision_recall(path: Path, evaluation: CocoEvaluation, title: str) -> None:
    """Precision against recall per class at IoU 0.50, and over all classes at IoU 0.50 and 0.75, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recall = evaluation.recall_thresholds
    at = {round(float(t), 2): i for i, t in enumerate(evaluation.iou_thresholds)}
    figure, axes = plt.subplots(figsize=(5.5, 4.5))
    for k, (name, ap) in enumerate(evaluation.per_class_ap.items()):
        if ap is not None:  # a class without truth has no curve
            curve = evaluation.precision[at[0.5], :, k]
            axes.plot(recall, curve, lw=1, label=f"{name} (AP50 {curve.mean():.3f})")
    for iou, style in ((0.5, "-"), (0.75, "--")):
        per_class = evaluation.precision[at[iou]]  # (R, K)
        defined = per_class[:, (per_class > -1).all(axis=0)]
        if defined.shape[1]:
            axes.plot(recall, defined.mean(axis=1), "k" + style, lw=2,
                      label=f"all classes, IoU {iou:.2f} (AP{round(100 * iou)} {defined.mean():.3f})")
    axes.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
    axes.legend(fontsize=8, loc="lower left")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=90)
    plt.close(figure)


def _load(weights: Path) -> tuple[str, nn.Module, LeanDetector, ClassMap, int]:
    """(architecture, network for counting parameters and MACs, inference detector, classes, default input
    size) of a checkpoint (.pt: its weights through the lean path, BatchNorm folded) or of an ONNX
    export (.onnx from ``retinaslim export``: onnxruntime on the CPU, the architecture rebuilt for
    counting; its parameters are the checkpoint's, as the graph holds the same weights)."""
    if weights.suffix.lower() == ".onnx":
        detector = OnnxDetector(weights)
        meta = detector.metadata
        model = build_model(meta["arch"], len(meta["classes"]), meta["train_image_size"], **meta["arch_options"])
        return meta["arch"], model.eval(), detector, ClassMap.from_categories(meta["classes"]), meta["image_size"]
    checkpoint = load_checkpoint(weights)
    model = checkpoint.build()
    return (checkpoint.arch, model, LeanDetector(model), ClassMap.from_categories(checkpoint.classes),
            checkpoint.image_size)


@dataclass
class _Loaded:
    """One checkpoint, loaded and sized, with the truth indexed under its class ids: what ``evaluate`` keeps
    of it between loading every checkpoint and scoring each."""

    weights: Path
    arch: str
    detector: LeanDetector | OnnxDetector
    classes: ClassMap
    image_size: int  # pixels, longer side
    counted: dict[str, int]  # params, macs (at image_size, square)
    evaluator: CocoEvaluator


def evaluate(config: EvalConfig, reporter: Reporter | None = None) -> EvalResult:
    reporter = reporter or Reporter()
    if not config.weights:
        raise UserError("no checkpoint to evaluate; pass `weights` W.pt")
    if config.latency_runs < 1 or config.warmup_runs < 0 or config.batch_size < 1:
        raise UserError(f"`latency_runs` {config.latency_runs} and `batch_size` {config.batch_size} must be at least 1, "
                        f"`warmup_runs` {config.warmup_runs} at least 0")
    prediction_files = [_numbered(Path(config.predictions_out), i, len(config.weights))
                        for i in range(len(config.weights))] if config.predictions_out is not None else []
    refuse_overwriting_inputs([("`json_out`", config.json_out)] + [("`predictions_out`", p) for p in prediction_files],
                              [("`data`", config.data)] + [("`weights`", w) for w in config.weights])
    data = load_coco(config.data, config.images)
    if not data.images:
        raise UserError(f"{data.path}: no images to evaluate on")
    if not has_boxes(data):
        raise UserError(f"{data.path}: no boxes (crowd regions aside) to score detections against (AP needs labelled images); "
                        "`retinaslim predict` runs a model on unlabelled images, `retinaslim profile` times it")
    note = require_image_files(data)
    if note:
        reporter.log(note)
    device = resolve_device(config.device)
    samples = _sample_images(data, config.batch_size)

    measured, plots = [], []  # per model: its report's fields except speed
    calls: dict[tuple[int, int], Callable[[], object]] = {}  # (model, batch size) -> one timed forward
    models = []
    file_ids = {c["name"]: c["id"] for c in data.categories}  # --predictions-out writes the file's own ids
    for weights in config.weights:
        arch, model, detector, classes, default_size = _load(Path(weights))
        note = match_classes(classes, weights, data)
        if note:
            reporter.log(note)
        image_size = config.image_size or default_size
        counted = {"params": sum(p.numel() for p in model.parameters()), "macs": sum(count_macs(model, image_size).values())}
        # match_classes gave the truth this model's category ids: index it now, as arrays
        models.append(_Loaded(Path(weights), arch, detector, classes, image_size, counted, CocoEvaluator(data)))
    # From here on only the image list is read. Letting go of the truth's dicts (131 MB at 100,000 images)
    # before the DataLoader workers fork keeps them out of the workers too (docs/results.md, issue 17).
    data = replace(data, annotations_per_image={})
    for index, loaded in enumerate(models):
        weights, image_size = loaded.weights, loaded.image_size
        runs_on = torch.device("cpu") if isinstance(loaded.detector, OnnxDetector) else device
        detector = loaded.detector.to(runs_on)
        predictions = prediction_files[index] if prediction_files else None
        written_ids = {i: file_ids[n] for i, n in zip(loaded.classes.category_ids, loaded.classes.names) if n in file_ids}
        evaluation, skipped = evaluate_on_coco(detector, data, loaded.classes, image_size, runs_on, config.batch_size,
                                               config.workers, reporter, predictions, loaded.evaluator, written_ids)
        pr_plot = None
        if config.plots_dir is not None:
            path = Path(config.plots_dir) / f"pr_{index + 1}_{weights.parent.name or 'model'}.png"
            name = f"{weights.parent.name}/{weights.name}"
            plot_precision_recall(path, evaluation, f"{name} on {data.path.name}")
            plots.append(path)
            pr_plot = str(path)
        if weights.suffix.lower() != ".onnx":  # timed with its network traced per input shape (models.lean)
            detector.traced = True
        calls[(index, 1)] = lambda d=detector, b=_batch(samples[:1], image_size, runs_on): d(b)
        calls[(index, config.batch_size)] = lambda d=detector, b=_batch(samples, image_size, runs_on): d(b)
        metrics = evaluation.metrics
        measured.append(dict(
            weights=str(weights), arch=loaded.arch,
            ap=metrics["ap"] or 0.0, ap50=metrics["ap50"] or 0.0, ap75=metrics["ap75"] or 0.0,
            ap_small=metrics["ap_small"], ap_medium=metrics["ap_medium"], ap_large=metrics["ap_large"],
            ar100=metrics["ar100"] or 0.0, per_class_ap=evaluation.per_class_ap,
            per_class_ap50=evaluation.per_class_ap_at(0.5), per_class_ap75=evaluation.per_class_ap_at(0.75),
            batch_size=config.batch_size,
            **loaded.counted, size_mb=weights.stat().st_size / 1e6,
            image_size=image_size, device=str(runs_on), threads=torch.get_num_threads(),
            predictions=str(predictions) if predictions else None,
            pr_plot=pr_plot, num_skipped_images=len(skipped),
        ))
    with torch.inference_mode():  # builds each traced network (about 0.5 s a shape) outside the timed samples,
        for call in calls.values():  # even with --warmup-runs 0
            call()
    timings = measure(calls, config.latency_runs, config.warmup_runs)
    reports = []
    for index, fields in enumerate(measured):
        single, batched = timings[index, 1], timings[index, config.batch_size]
        reports.append(ModelReport(**fields, latency_ms=median_ms(single), latency_p90_ms=p90_ms(single),
                                   fps=1000.0 / median_ms(single), throughput=config.batch_size / batched.median))
    if config.json_out is not None:
        write_json(Path(config.json_out), [asdict(r) for r in reports])
    return EvalResult(reports, config.latency_runs, config.warmup_runs, config.batch_size, config.json_out, plots)
