"""``retinaslim eval``: accuracy, speed and size of checkpoints side by side, and its tables (also the demo's)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from retinaslim import api, console
from retinaslim.cli.common import DeviceOpt, ImagesOpt, WorkersOpt, app, user_errors
from retinaslim.cli.workspace import pick
from retinaslim.config import Workspace


@app.command("eval")
def eval_(
    weights: Annotated[list[Path], typer.Option(metavar="W.pt", help="Checkpoint to evaluate (.pt, or .onnx from retinaslim export: onnxruntime on the CPU); repeat for a side-by-side table.")],
    data: Annotated[Optional[Path], typer.Option(help="COCO JSON with the truth (default: the workspace's val).")] = None,
    images: ImagesOpt = None,
    image_size: Annotated[Optional[int], typer.Option(min=32, help="Longer side in pixels images are resized to (default: each checkpoint's training size).")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass for the AP run and the throughput measurement.")] = 8,
    latency_runs: Annotated[int, typer.Option(min=1, help="Timed forwards at batch 1 (median and p90 reported) and at --batch-size (throughput).")] = 20,
    warmup_runs: Annotated[int, typer.Option(min=0, help="Untimed forwards before each timing.")] = 3,
    predictions_out: Annotated[Optional[Path], typer.Option(help="Write COCO results (image_id, category_id, bbox xywh, score); with several --weights, NAME.1.json, NAME.2.json, ...")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the metrics as a JSON list, one object per checkpoint.")] = None,
    plots: Annotated[Path | None, typer.Option(help="Folder for a precision-recall curve PNG per checkpoint.")] = None,
    device: DeviceOpt = "auto", workers: WorkersOpt = 2,
) -> None:
    """COCO AP (overall, by size, per class), latency, throughput, parameters, MACs and size of one or more checkpoints."""
    with user_errors():
        ws = Workspace.find()
        data = pick(data, "--data", ws and ws.val, "evaluation data")
        with console.RichReporter() as reporter:
            result = api.evaluate(weights, data=data, images=images, image_size=image_size, batch_size=batch_size,
                                  latency_runs=latency_runs, warmup_runs=warmup_runs, predictions_out=predictions_out,
                                  json_out=json_out, plots=plots, device=device, workers=workers, reporter=reporter)
    render_eval(result)


def _short(weights: str) -> str:
    """runs/teacher/best.pt -> teacher, runs/teacher/last.pt -> teacher/last.pt: short names for a narrow table."""
    path = Path(weights)
    if not path.parent.name:
        return path.name
    return path.parent.name if path.name == "best.pt" else f"{path.parent.name}/{path.name}"


def render_eval(result) -> None:
    reports = result.reports
    r0 = reports[0]
    sizes = "/".join(str(s) for s in sorted({r.image_size for r in reports}))
    console.table(f"eval on {r0.device}, {r0.threads} threads, {sizes} px (FPS: batch 1)",
                  ["weights", "AP", "AP50", "FPS", "params M", "size MB"],
                  [(_short(r.weights), r.ap, r.ap50, r.fps, r.params / 1e6, r.size_mb) for r in reports])
    console.table(
        f"speed: ms at batch 1, median and p90 of {result.latency_runs} runs after {result.warmup_runs} warm-up; "
        f"img/s at batch {result.batch_size}",
        ["weights", "ms", "p90 ms", f"img/s b{result.batch_size}", "GMACs"],
        [(_short(r.weights), r.latency_ms, r.latency_p90_ms, r.throughput, r.macs / 1e9) for r in reports],
    )
    console.table(
        "accuracy (pycocotools; AP by object size at IoU 0.50:0.95)",
        ["weights", "AP75", "AP small", "AP medium", "AP large", "AR@100"],
        [(_short(r.weights), r.ap75, r.ap_small, r.ap_medium, r.ap_large, r.ar100)  # None: no truth of that size
         for r in reports],
    )
    # A row per class (as Ultralytics and spaCy print them): any number of classes fits the terminal.
    console.table("AP per class (IoU 0.50:0.95)", ["class", *(_short(r.weights) for r in reports)],
                  [(name, *(r.per_class_ap.get(name) for r in reports))  # None: no truth, or not the model's class
                   for name in dict.fromkeys(name for r in reports for name in r.per_class_ap)])
    for r in reports:
        if r.num_skipped_images:
            console.info(f"{_short(r.weights)}: {r.num_skipped_images} image(s) could not be decoded; "
                         "their objects count as missed")
        if r.predictions:
            console.info(f"predictions of {r.weights} saved to {r.predictions}")
    if result.plots:
        console.info(f"precision-recall curves saved to {', '.join(map(str, result.plots))}")
    if result.json_out:
        console.info(f"metrics saved to {result.json_out}")
