"""``retinaslim export``: a checkpoint -> ONNX, checked against PyTorch, optionally int8."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from retinaslim import api, console
from retinaslim.cli.common import app, user_errors


@app.command()
def export(
    weights: Annotated[Path, typer.Option(help="A retinaslim checkpoint (.pt).")],
    format_: Annotated[str, typer.Option("--format", help="Output format: onnx.")] = "onnx",
    out: Annotated[Path | None, typer.Option(help="Output .onnx file (default: the weights' name with .onnx).")] = None,
    image_size: Annotated[int | None, typer.Option(min=32, help="Longer side in pixels images are resized to (default: the training size); the graph's fixed S x S input is this rounded up to a multiple of 32.")] = None,
    opset: Annotated[int, typer.Option(help="ONNX opset, 13 to 20.")] = 17,
    dynamic_batch: Annotated[bool, typer.Option(help="Make the batch axis dynamic (default: batch 1).")] = False,
    int8: Annotated[bool, typer.Option(help="Also write NAME.int8.onnx by static quantisation, with AP and latency before and after.")] = False,
    calibration: Annotated[Path | None, typer.Option(help="Image folder, image-list file or COCO JSON: parity samples (default: synthetic scenes) and int8 calibration.")] = None,
    val: Annotated[Path | None, typer.Option(help="COCO JSON for int8's AP (default: --calibration when it is a COCO file with boxes).")] = None,
) -> None:
    """Export a model to ONNX (network only; decode + NMS outside), check it against PyTorch, optionally int8."""
    from retinaslim.stages.export import BOX_TOL_PX, SCORE_TOL

    with user_errors():
        result = api.export(weights, format=format_, out=out, image_size=image_size, opset=opset,
                            dynamic_batch=dynamic_batch, int8=int8, calibration=calibration, val=val)
    p = result.parity
    console.info(f"parity OK (onnxruntime vs PyTorch, {p.num_images} images, {p.num_empty_images} without detections): "
                 f"{p.num_matched} of {p.num_reference} detections matched, max box difference {p.max_box_diff_px:.2g} px "
                 f"(limit {BOX_TOL_PX:g}), max score difference {p.max_score_diff:.2g} (limit {SCORE_TOL:g})")
    if result.int8 is not None:
        q = result.int8
        console.table(f"int8 ({q.num_calibration_images} calibration images; AP on {q.val or 'no COCO file: pass --val'}; "
                      f"CPU, {q.threads} threads, batch 1, ms = medians)",
                      ["model", "AP", "AP50", "network ms", "end-to-end ms"],
                      [(m.name, m.ap, m.ap50, m.network_ms, m.end_to_end_ms)
                       for m in q.measurements])
        a = q.agreement
        console.info(f"int8 vs PyTorch on the parity images: {a.num_matched} of {a.num_reference} detections within "
                     f"{BOX_TOL_PX:g} px and {SCORE_TOL:g} score ({a.num_candidate} found)")
        for note in result.notes:
            console.info(f"note: {note}")
        console.info(f"int8 model saved to {q.out} ({q.size_mb:.2f} MB)")
    console.info(f"{result.input_size[0]} x {result.input_size[1]} input, "
                 f"{'dynamic' if result.dynamic_batch else 'batch 1'}, opset {result.opset}, {result.size_mb:.2f} MB; "
                 f"saved to {result.out}")
