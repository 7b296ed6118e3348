"""profile: parameters, MACs (total and per module), checkpoint size and latency of a model.

Latency is measured twice at batch 1 on a square image whose side (its longer side, as everywhere) is
``image_size``, through the lean inference path every command uses (``models.lean``), its network traced as
eval's is: the network alone (backbone, FPN, head on a normalised tensor) and end to end (normalise, pad,
network, cached anchors, decode, NMS), each the median of ``runs`` timed runs after ``warmup`` runs (``engine.timing``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from retinaslim.core.atomic import refuse_overwriting_inputs, write_json
from retinaslim.engine.inference import resolve_device
from retinaslim.engine.timing import measure, median_ms
from retinaslim.errors import UserError
from retinaslim.models.checkpoint import load_checkpoint
from retinaslim.models.lean import LeanDetector
from retinaslim.models.macs import count_macs, group_by_prefix
from retinaslim.models.registry import build_model


@dataclass(kw_only=True)
class ProfileConfig:
    arch: str | None = None
    weights: Path | None = None
    image_size: int | None = None  # longer side in px (the test image is square); None: the checkpoint's, else 320
    num_classes: int = 1  # with --arch; a checkpoint has its own
    runs: int = 50
    warmup: int = 5
    depth: int = 3  # module-tree depth of the per-module table
    device: str = "cpu"
    json_out: Path | None = None


@dataclass
class ModuleCost:
    """A module's parameters, MACs per image and share (0..1) of the model's MACs."""

    name: str
    params: int
    macs: int
    share: float  # of the total MACs


@dataclass
class ProfileResult:
    """Parameters, MACs (multiply-accumulates) per image, checkpoint size in MB (None for an untrained
    ``arch``), latency in ms (median of ``runs`` at batch 1: ``network_latency_ms`` from a normalised tensor
    to head outputs, ``latency_ms`` from image to detections), ``image_size`` (the input's longer side in px;
    the test image is square) and per-module costs (``modules``)."""

    arch: str
    params: int
    macs: int
    size_mb: float | None
    latency_ms: float
    network_latency_ms: float
    image_size: int
    threads: int
    device: str
    runs: int
    modules: list[ModuleCost] = field(default_factory=list)


def profile(config: ProfileConfig) -> ProfileResult:
    if (config.arch is None) == (config.weights is None):
        raise UserError("pass exactly one of `arch` NAME or `weights` W.pt")
    if config.runs < 1 or (config.image_size is not None and config.image_size < 32):
        raise UserError("`runs` must be at least 1 and `image_size` at least 32")
    refuse_overwriting_inputs([("`json_out`", config.json_out)], [("`weights`", config.weights)])
    if config.weights is not None:
        checkpoint = load_checkpoint(config.weights)
        model, arch, size_mb = checkpoint.build(), checkpoint.arch, config.weights.stat().st_size / 1e6
        image_size = config.image_size or checkpoint.image_size
    else:
        image_size = config.image_size or 320
        model, arch, size_mb = build_model(config.arch, config.num_classes, image_size).eval(), config.arch, None
    per_module = count_macs(model, image_size)
    total = sum(per_module.values())
    params = dict(model.named_parameters())
    modules = [
        ModuleCost(name, sum(p.numel() for n, p in params.items() if n.startswith(name + ".")), macs, macs / max(total, 1))
        for name, macs in group_by_prefix(per_module, config.depth).items()
    ]
    device = resolve_device(config.device)
    detector = LeanDetector(model, traced=True).to(device)
    image = torch.rand(3, image_size, image_size, device=device)
    with torch.no_grad():
        batch = detector.batch([image])  # normalised and padded, as the network sees it
        detector([image])  # builds the trace (about 0.5 s) outside the timed samples, even with warmup 0
    times = measure({"network": lambda: detector.raw(batch), "end-to-end": lambda: detector([image])},
                    config.runs, config.warmup, rounds=1)
    network, end_to_end = median_ms(times["network"]), median_ms(times["end-to-end"])
    result = ProfileResult(arch, sum(p.numel() for p in model.parameters()), total, size_mb, end_to_end, network,
                           image_size, torch.get_num_threads(), str(device), config.runs, modules)
    if config.json_out is not None:
        write_json(config.json_out, asdict(result))
    return result
