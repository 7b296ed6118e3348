"""``retinaslim synth``: synthetic ID-card photographs with COCO labels and a workspace file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from retinaslim import api, console
from retinaslim.cli.common import SeedOpt, app, user_errors
from retinaslim.config import WORKSPACE_FILE


@app.command()
def synth(
    out: Annotated[Path, typer.Argument(help="Folder to write the dataset to.")],
    labeled: Annotated[int, typer.Option(help="Number of human-labelled training images.")] = 100,
    unlabeled: Annotated[int, typer.Option(help="Number of unlabelled images (their truth goes to unlabeled.truth.json).")] = 900,
    val: Annotated[int, typer.Option(help="Number of validation images.")] = 100,
    size: Annotated[int, typer.Option(help="Image side in pixels (images are square).")] = 320,
    classes: Annotated[str, typer.Option(help="Card kinds to draw, comma-separated: id_card, bank_card, passport.")] = "id_card,bank_card,passport",
    distractors: Annotated[bool, typer.Option(help="Also draw paper, screens and books (card-like objects that are not cards).")] = True,
    seed: SeedOpt = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace a dataset already in OUT.")] = False,
    workers: Annotated[int, typer.Option(help="Processes drawing images (0: this one); the same seed gives the same bytes.")] = 0,
) -> None:
    """Make synthetic ID-card photographs with COCO labels (and a workspace file) in OUT."""
    with user_errors("out"), console.RichReporter() as reporter:
        result = api.synth(out, labeled=labeled, unlabeled=unlabeled, val=val, size=size, classes=classes,
                           distractors=distractors, seed=seed, overwrite=overwrite, workers=workers, reporter=reporter)
    console.table("synth", ["split", "images", "boxes", "file"],
                  [(s, result.num_images[s], result.num_boxes[s], result.files[s]) for s in result.num_images])
    console.info(f"saved to {result.out}; `cd {result.out}` to use its {WORKSPACE_FILE}")
