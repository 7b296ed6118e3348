"""export: a checkpoint -> an ONNX graph of its network, checked against PyTorch; optionally an int8 copy.

The graph is the network alone (``models.onnx``: normalised (N, 3, S, S) batch -> head outputs, S the
``padded_size``: ``image_size``, the longer side images are resized to, rounded up to a multiple of 32);
decode + NMS run outside it, in the same ``LeanDetector.decode`` PyTorch uses, with the anchors rebuilt from
the metadata stored in the file.

Parity: after writing, the graph runs in onnxruntime on sample images (``--calibration`` images, else
synthetic scenes) plus a blank image (no detections) and a non-square one (padding), and its detections
are matched to PyTorch's on the same padded batch: every detection must have a partner of the same
class with every box coordinate within ``BOX_TOL_PX`` and the score within ``SCORE_TOL``. A failure
leaves no file behind.

``int8``: onnxruntime static quantisation (``models.onnx.quantize_int8``; calibration on up to
``num_calibration`` images) written beside the fp32 file as ``NAME.int8.onnx``;
reported with AP (on a COCO file) and network latency of PyTorch, ONNX fp32 and ONNX int8.
"""

from __future__ import annotations

import math
import time
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path

import numpy as np
import torch

from retinaslim.core.atomic import atomic_path
from retinaslim.core.tta import Transform
from retinaslim.data.coco import ClassMap, CocoData, load_coco, match_classes, require_image_files
from retinaslim.data.images import ImageError, list_images, read_image
from retinaslim.data.scenes import render_scene
from retinaslim.engine.inference import evaluate_on_coco
from retinaslim.engine.timing import measure, median_ms
from retinaslim.errors import UserError
from retinaslim.models.checkpoint import load_checkpoint
from retinaslim.models.lean import SIZE_DIVISIBLE, LeanDetector
from retinaslim.models.onnx import (
    MAX_OPSET,
    MIN_OPSET,
    OnnxDetector,
    export_metadata,
    export_network,
    quantize_int8,
    write_metadata,
)

BOX_TOL_PX = 1.0
SCORE_TOL = 1e-3
FORMATS = ("onnx",)


@dataclass
class ExportConfig:
    weights: Path
    _: KW_ONLY  # inputs and outputs above may be passed in order, options below by keyword only
    out: Path | None = None  # None: the weights' name with .onnx
    format: str = "onnx"
    image_size: int | None = None  # longer side images are resized to; None: the checkpoint's training size
    opset: int = 17
    dynamic_batch: bool = False
    int8: bool = False
    calibration: Path | None = None  # image folder, image-list file or COCO JSON: parity samples, int8 calibration
    val: Path | None = None  # COCO JSON to report AP on with --int8 (default: --calibration when it is a COCO file)
    num_parity_images: int = 8
    num_calibration: int = 64
    latency_runs: int = 30


@dataclass
class ParityReport:
    """onnxruntime against PyTorch on the same padded batch; differences over matched detections."""

    num_images: int
    num_reference: int  # PyTorch detections, all images
    num_candidate: int  # onnxruntime detections
    num_matched: int
    max_box_diff_px: float
    max_score_diff: float
    num_empty_images: int  # images where PyTorch found nothing

    @property
    def passed(self) -> bool:
        return self.num_matched == self.num_reference == self.num_candidate


@dataclass
class Measurement:
    """One model's AP and AP50 (0..1; None without a COCO file) and latency in ms on the CPU."""

    name: str  # pytorch, onnx fp32, onnx int8
    network_ms: float  # median, batch 1: normalised batch -> head outputs
    end_to_end_ms: float  # median, batch 1: image -> detections
    ap: float | None = None
    ap50: float | None = None


@dataclass
class Int8Report:
    """The int8 model (``out``, MB), its calibration images, the COCO file its AP was measured on (``val``),
    each model's measurements (pytorch, onnx fp32, onnx int8), its agreement with PyTorch, and CPU threads."""

    out: Path
    size_mb: float
    num_calibration_images: int
    val: Path | None
    measurements: list[Measurement]
    agreement: ParityReport  # int8 against PyTorch on the parity images (reported, not required)
    threads: int


@dataclass
class ExportResult:
    """The .onnx file (``out``), its opset, fixed input size (height, width in px: ``padded_size`` each), batch
    axis and size in MB;
    ``parity``: onnxruntime against PyTorch on the same images; ``int8``: the int8 model's report, if asked."""

    out: Path
    opset: int
    input_size: tuple[int, int]
    dynamic_batch: bool
    size_mb: float
    parity: ParityReport
    int8: Int8Report | None = None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def match_detections(reference: list[dict[str, torch.Tensor]], candidate: list[dict[str, torch.Tensor]]) -> ParityReport:
    """Pair each reference detection (highest score first) with the unpaired candidate of the same image and
    class whose box is closest (largest coordinate difference), if within ``BOX_TOL_PX`` and ``SCORE_TOL``."""
    matched = 0
    box_diff = score_diff = 0.0
    for ref, cand in zip(reference, candidate):
        free = torch.ones(len(cand["scores"]), dtype=torch.bool)
        for box, score, label in zip(ref["boxes"], ref["scores"], ref["labels"]):
            diffs = (cand["boxes"] - box).abs().amax(dim=1)  # (M,) worst coordinate per candidate
            diffs[~free | (cand["labels"] != label)] = math.inf
            if not len(diffs) or not math.isfinite(best := float(diffs.min())):
                continue
            j = int(diffs.argmin())
            gap = abs(float(cand["scores"][j] - score))
            if best <= BOX_TOL_PX and gap <= SCORE_TOL:
                free[j] = False
                matched += 1
                box_diff, score_diff = max(box_diff, best), max(score_diff, gap)
    return ParityReport(num_images=len(reference), num_reference=sum(len(r["scores"]) for r in reference),
                        num_candidate=sum(len(c["scores"]) for c in candidate), num_matched=matched,
                        max_box_diff_px=box_diff, max_score_diff=score_diff,
                        num_empty_images=sum(len(r["scores"]) == 0 for r in reference))


def _source_images(source: Path) -> tuple[list[Path], CocoData | None]:
    """Image paths of a folder, image-list file or COCO JSON (and the COCO data when it is one)."""
    source = Path(source)
    if source.suffix.lower() == ".json":
        coco = load_coco(source, require_annotations=False)
        if not coco.images:
            raise UserError(f"{source}: no images")
        return [coco.image_path(image) for image in coco.images], coco
    return list_images(source), None


def _read_spread(paths: list[Path], count: int, image_size: int) -> list[torch.Tensor]:
    """Up to ``count`` decodable images spread evenly over ``paths``, resized as predict resizes them."""
    picked = paths[::max(1, len(paths) // count)][:count]
    images = []
    for path in picked:
        try:
            images.append(Transform().apply(read_image(path), image_size))
        except ImageError:
            continue
    if not images:
        raise UserError(f"none of the {len(picked)} images tried could be decoded (first: {picked[0]})")
    return images


def parity_images(sampled: list[torch.Tensor], image_size: int, count: int) -> list[torch.Tensor]:
    """``sampled`` (or synthetic scenes when empty), a blank image and a 4:3 image: the no-detection and padding cases."""
    if not sampled:
        rng = np.random.default_rng(0)
        scenes = [np.asarray(render_scene(rng, image_size).image, dtype=np.float32) / 255 for _ in range(count)]
        sampled = [torch.from_numpy(s).permute(2, 0, 1).contiguous() for s in scenes]
    wide = Transform().apply(sampled[0][:, : sampled[0].shape[1] * 3 // 4], image_size)
    return [*sampled, torch.full((3, image_size, image_size), 0.5), wide]


def _check(config: ExportConfig) -> Path:
    if config.format not in FORMATS:
        raise UserError(f"`format` {config.format!r}: only {', '.join(FORMATS)} is supported")
    if not MIN_OPSET <= config.opset <= MAX_OPSET:
        raise UserError(f"`opset` {config.opset}: supported opsets are {MIN_OPSET} to {MAX_OPSET} "
                        f"({MIN_OPSET}: per-channel int8; {MAX_OPSET}: the newest torch's exporter writes)")
    out = Path(config.out) if config.out is not None else Path(config.weights).with_suffix(".onnx")
    if out.suffix.lower() != ".onnx":
        raise UserError(f"`out` {out}: expected a .onnx file name")
    if config.image_size is not None and config.image_size < SIZE_DIVISIBLE:
        raise UserError(f"`image_size` {config.image_size}: must be at least {SIZE_DIVISIBLE}")
    for name in ("num_parity_images", "num_calibration"):
        if getattr(config, name) < 1:
            raise UserError(f"`{name}` {getattr(config, name)} must be at least 1")
    if config.int8 and config.calibration is None:
        raise UserError("`int8` needs calibration images: pass `calibration` FOLDER (or an image list or COCO JSON)")
    if config.val is not None and not config.int8:
        raise UserError("`val` sets where int8's AP is measured: use it with `int8`")
    if config.val is not None and Path(config.val).suffix.lower() != ".json":
        raise UserError(f"`val` {config.val}: expected a COCO JSON file")
    return out


def export(config: ExportConfig) -> ExportResult:
    started = time.perf_counter()
    out = _check(config)
    checkpoint = load_checkpoint(config.weights)
    image_size = config.image_size or checkpoint.image_size
    padded_size = math.ceil(image_size / SIZE_DIVISIBLE) * SIZE_DIVISIBLE  # the graph's fixed square input
    model = checkpoint.build()
    reference = LeanDetector(model, input_size=(padded_size, padded_size))
    paths, coco = _source_images(config.calibration) if config.calibration is not None else ([], None)
    truth, val_notes = _val_data(config, coco, checkpoint.classes) if config.int8 else (None, [])
    sampled = _read_spread(paths, config.num_parity_images, image_size) if paths else []
    samples = parity_images(sampled, image_size, config.num_parity_images)
    metadata = export_metadata(checkpoint.arch, checkpoint.arch_options, checkpoint.classes, checkpoint.image_size,
                               image_size, reference, int8=False, source=str(config.weights))
    with torch.inference_mode():
        expected = reference(samples)
    try:
        with atomic_path(out) as tmp:
            export_network(reference, tmp, config.opset, config.dynamic_batch)
            write_metadata(tmp, metadata)
            detector = OnnxDetector(tmp)
            parity = match_detections(expected, detector(samples))
            if not parity.passed:
                raise UserError(
                    f"parity check failed: onnxruntime matches {parity.num_matched} of PyTorch's {parity.num_reference} "
                    f"detections ({parity.num_candidate} found) within {BOX_TOL_PX:g} px and {SCORE_TOL:g} score on "
                    f"{parity.num_images} images; {out} not written (try another `opset`)")
    except OSError as e:
        raise UserError(f"`out` {out}: cannot write ({e.strerror or e})") from None
    result = ExportResult(out=out, opset=config.opset, input_size=(padded_size, padded_size),
                          dynamic_batch=config.dynamic_batch,
                          size_mb=out.stat().st_size / 1e6, parity=parity, notes=val_notes)
    if config.int8:
        result.int8 = quantize(config, out, metadata, reference, samples, expected, paths, truth, image_size)
        measurements = {m.name: m for m in result.int8.measurements}
        fp32, int8 = measurements["onnx fp32"], measurements["onnx int8"]
        if int8.network_ms >= fp32.network_ms:
            result.notes.append(f"int8 is not faster than fp32 here ({int8.network_ms:.1f} vs {fp32.network_ms:.1f} ms network)")
        if int8.ap is not None and fp32.ap is not None and int8.ap < fp32.ap - 0.01:
            result.notes.append(f"int8 loses {fp32.ap - int8.ap:.3f} AP")
    result.seconds = time.perf_counter() - started
    return result


def _val_data(config: ExportConfig, coco: CocoData | None, categories: list[dict]) -> tuple[CocoData | None, list[str]]:
    """The COCO file int8's AP is measured on (``--val``, else a ``--calibration`` COCO file with boxes), its classes
    matched to the model's by name and its images checked, and the notes that says."""
    truth = load_coco(config.val) if config.val is not None else (coco if coco is not None and coco.num_annotations else None)
    if truth is None:
        return None, []
    notes = [match_classes(ClassMap.from_categories(categories), config.weights, truth), require_image_files(truth, "`val`")]
    return truth, [note for note in notes if note]


def quantize(config: ExportConfig, fp32_path: Path, metadata: dict, reference: LeanDetector, samples: list[torch.Tensor],
             expected: list[dict[str, torch.Tensor]], paths: list[Path], truth: CocoData | None, image_size: int) -> Int8Report:
    """Static int8 quantisation of ``fp32_path`` (``models.onnx.quantize_int8``) -> ``NAME.int8.onnx``, with AP
    and latency before and after."""
    out = fp32_path.with_name(f"{fp32_path.stem}.int8.onnx")
    calibration = _read_spread(paths, config.num_calibration, image_size)
    with atomic_path(out) as tmp:
        quantize_int8(fp32_path, tmp, [reference.batch([image]).contiguous().numpy() for image in calibration])
        write_metadata(tmp, metadata | {"int8": True})
    fp32, int8 = OnnxDetector(fp32_path), OnnxDetector(out)
    with torch.inference_mode():
        agreement = match_detections(expected, int8(samples))
    detectors = {"pytorch": reference, "onnx fp32": fp32, "onnx int8": int8}
    image = samples[0]
    batch = reference.batch([image])
    times = measure({f"{name} {kind}": (lambda d=d: d.raw(batch)) if kind == "network" else (lambda d=d: d([image]))
                     for name, d in detectors.items() for kind in ("network", "end-to-end")}, config.latency_runs, 2)
    timings = {name: median_ms(m) for name, m in times.items()}
    metrics: dict[str, dict[str, float]] = {}
    if truth is not None:
        for name, detector in detectors.items():
            evaluation, _ = evaluate_on_coco(detector, truth, ClassMap.from_categories(metadata["classes"]),
                                             image_size, torch.device("cpu"))
            metrics[name] = evaluation.as_floats()
    measurements = [Measurement(name, timings[f"{name} network"], timings[f"{name} end-to-end"],
                                metrics.get(name, {}).get("ap"), metrics.get(name, {}).get("ap50")) for name in detectors]
    return Int8Report(out=out, size_mb=out.stat().st_size / 1e6, num_calibration_images=len(calibration),
                      val=truth.path if truth is not None else None,
                      measurements=measurements, agreement=agreement, threads=torch.get_num_threads())
