"""``retinaslim predict``: a trained model on images -> COCO JSON, optional drawings."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from retinaslim import api, console
from retinaslim.cli.common import DeviceOpt, WorkersOpt, app, user_errors
from retinaslim.config import Workspace


@app.command()
def predict(
    images: Annotated[list[Path], typer.Argument(metavar="IMAGES", help="Image files, folders (searched recursively) or text files listing images.")],
    weights: Annotated[Path, typer.Option(help="A retinaslim checkpoint (.pt), or an ONNX model from retinaslim export (.onnx).")],
    out: Annotated[Path, typer.Option(help="Output COCO JSON: images, scored boxes, categories.")] = Path("preds.json"),
    draw: Annotated[Path | None, typer.Option(help="Folder for copies of the images with their boxes, class names and scores drawn.")] = None,
    score_thresh: Annotated[float, typer.Option(help="Keep boxes scoring at least this (0.05 for an AP evaluation).")] = 0.3,
    tta: Annotated[bool, typer.Option(help="Ensemble pseudo-label's transforms (3 scales x flip, fused by WBF); boxes gain an agreement count.")] = False,
    image_size: Annotated[int | None, typer.Option(min=32, help="Longer side in pixels images are resized to (default: the model's training size).")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass.")] = 8,
    device: DeviceOpt = "auto", workers: WorkersOpt = 2,
) -> None:
    """Detect objects in images with a trained model: COCO JSON out, optional drawings."""
    with user_errors("images"):
        ws = Workspace.find()
        if ws:
            ws.refuse_overwriting_labels([("--out", out)])
    with user_errors("images"), console.RichReporter() as reporter:
        result = api.predict(images, weights=weights, out=out, draw=draw, score_thresh=score_thresh, tta=tta,
                             image_size=image_size, batch_size=batch_size, device=device, workers=workers,
                             reporter=reporter)
    console.table("predict", ["class", "boxes"], [*result.num_boxes.items(), ("all", sum(result.num_boxes.values()))])
    console.info(f"{result.num_images:,} images, {len(result.transforms)} transform(s), "
                 f"{result.num_images / max(result.seconds, 1e-9):.1f} images/s")
    for item in result.skipped:
        console.info(f"skipped {item['file']}: {item['reason']}")
    if result.draw is not None:
        console.info(f"drawings saved to {result.draw}")
    console.info(f"saved to {result.out}")
