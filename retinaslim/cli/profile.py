"""``retinaslim profile``: parameters, MACs per module, size and latency of a model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from retinaslim import api, console
from retinaslim.cli.common import app, user_errors


@app.command("profile")
def profile_(
    arch: Annotated[Optional[str], typer.Option(help="A registered architecture (slim-s, slim-m, retinanet_resnet50_fpn, ...), untrained.")] = None,
    weights: Annotated[Optional[Path], typer.Option(help="A checkpoint (its architecture and classes).")] = None,
    image_size: Annotated[Optional[int], typer.Option(min=32, help="Longer side in pixels of the input, as everywhere; the test image is square, S x S. Default: the checkpoint's training size; 320 with --arch.")] = None,
    num_classes: Annotated[int, typer.Option(min=1, help="Classes, with --arch.")] = 1,
    runs: Annotated[int, typer.Option(min=1, help="Timed batch-1 runs per latency (after 5 warm-up runs); the median is reported.")] = 50,
    per_layer: Annotated[bool, typer.Option(help="Also print parameters and MACs per module, with each module's share.")] = False,
    depth: Annotated[int, typer.Option(min=1, help="Module-tree depth of the per-layer table.")] = 3,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the profile as JSON.")] = None,
    device: Annotated[str, typer.Option(help="cpu (default), cuda, or auto.")] = "cpu",
) -> None:
    """Parameters, MACs (multiply-accumulates) per module and in total, size, and latency of a model."""
    with user_errors():
        result = api.profile(arch=arch, weights=weights, image_size=image_size, num_classes=num_classes, runs=runs,
                             depth=depth, json_out=json_out, device=device)
    if per_layer:
        console.table(f"{result.arch}: MACs per module at {result.image_size} x {result.image_size}",
                      ["module", "params", "MMACs", "share %"],
                      [(m.name, m.params, m.macs / 1e6, 100 * m.share) for m in result.modules])
    console.table(
        f"profile on {result.device}, {result.threads} threads, batch 1, {result.image_size} x {result.image_size}; "
        f"ms = median of {result.runs} runs",
        ["arch", "params M", "GMACs", "size MB", "network ms", "end-to-end ms", "FPS"],
        [(result.arch, result.params / 1e6, result.macs / 1e9, result.size_mb,
          result.network_latency_ms, result.latency_ms, 1000 / result.latency_ms)])
    if json_out:
        console.info(f"saved to {json_out}")
