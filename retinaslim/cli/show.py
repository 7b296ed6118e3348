"""``retinaslim show``: a contact sheet or HTML report to audit labels."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from retinaslim import api, console
from retinaslim.cli.common import ImagesOpt, app, user_errors


@app.command()
def show(
    labels: Annotated[Path, typer.Argument(help="A COCO file: human labels, pseudo.json, filtered labels or predictions.")],
    out: Annotated[Path, typer.Option(help="sheet.png (or .jpg): a contact sheet; report.html: a self-contained, sortable report.")],
    images: ImagesOpt = None,
    sort: Annotated[str | None, typer.Option(help="score (lowest machine score first; default when there are machine labels), disagreement (most transforms missing a box first) or file.")] = None,
    max_images: Annotated[int, typer.Option("--max", min=1, help="Show at most this many images (the first in sort order).")] = 48,
    thumb_size: Annotated[int, typer.Option(min=32, help="Thumbnail side in pixels.")] = 256,
    columns: Annotated[int, typer.Option(min=1, help="Thumbnails per row of the contact sheet.")] = 6,
) -> None:
    """Pictures to audit labels in a minute: boxes coloured by class, machine labels dashed with their scores."""
    with user_errors("labels"):
        result = api.show(labels, out=out, images=images, sort=sort, max_images=max_images, thumb_size=thumb_size,
                          columns=columns)
    rows = result.rows[:10]
    console.table(f"show: {len(result.rows)} of {result.num_images:,} images, sorted by {result.sort} (first {len(rows)})",
                  ["#", "image", "human", "machine", "lowest score", "disagreement"],
                  [(k, Path(r.file_name).name, r.num_human, r.num_machine, r.lowest_score,
                    r.disagreement) for k, r in enumerate(rows, start=1)])
    for item in result.skipped:
        console.info(f"skipped {item['file']}: {item['reason']}")
    console.info(f"saved to {result.out}")
