"""``retinaslim convert``: labels between COCO, Pascal VOC, YOLO and Label Studio, with what was skipped and why."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from retinaslim import api, console
from retinaslim.cli.common import app, user_errors


@app.command()
def convert(
    src: Annotated[Path, typer.Argument(help="COCO or Label Studio JSON file, VOC folder (with Annotations/), or YOLO folder (or its data.yaml).")],
    from_format: Annotated[str, typer.Option("--from", help="Format of SRC: coco, voc, yolo or labelstudio.")],
    to_format: Annotated[str, typer.Option("--to", help="Format to write: coco, yolo or labelstudio.")],
    out: Annotated[Path, typer.Option(help="Output: a .json file (coco, labelstudio) or a folder (yolo).")],
    images: Annotated[Path | None, typer.Option(help="Folder the image names of a COCO or Label Studio file resolve against.")] = None,
    split: Annotated[str | None, typer.Option(help="VOC only: convert the images ImageSets/Main/<split>.txt lists (e.g. train, val, test).")] = None,
) -> None:
    """Convert labels between COCO, Pascal VOC, YOLO and Label Studio; report what was skipped and why."""
    with user_errors("src"):
        result = api.convert(src, from_format=from_format, to_format=to_format, out=out, images=images, split=split)
    console.table(f"convert {from_format} -> {to_format}", ["class", "boxes"],
                  [*result.num_boxes.items(), ("all", sum(result.num_boxes.values()))])
    console.info(f"{result.num_images:,} images")
    if result.skipped:
        console.table("skipped", ["what", "reason", "count"], result.skipped_by_reason())
        for item in result.skipped[:10]:
            console.info(f"skipped {item.kind} {item.where}: {item.reason}")
        if len(result.skipped) > 10:
            console.info(f"... and {len(result.skipped) - 10} more")
    if result.num_clipped:
        console.info(f"{result.num_clipped} boxes reached outside their image and were clipped to it")
    if result.num_polygons:
        console.info(f"{result.num_polygons} polygons were read as their enclosing boxes")
    if result.num_sizes_read:
        console.info(f"{result.num_sizes_read} image sizes were not in the labels and were read from the images")
    if result.num_rescaled:
        console.info(f"{result.num_rescaled} images are a resized copy of the size the labels give; "
                     "their boxes were rescaled to the images")
    if result.num_machine_boxes:
        console.info(f"{result.num_machine_boxes} boxes carry a score (machine labels)")
    console.info(f"saved to {result.out}")
