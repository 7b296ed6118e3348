"""``retinaslim import-teacher``: a RetinaNet trained with torchvision becomes a teacher checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from retinaslim import api, console
from retinaslim.cli.common import app, user_errors
from retinaslim.config import IMPORT_IMAGE_SIZE


@app.command("import-teacher")
def import_teacher(
    weights: Annotated[Path, typer.Argument(help="A RetinaNet trained with torchvision: its state dict (bare, {'model': ...} or {'state_dict': ...}, 'module.' prefixes allowed).")],
    arch: Annotated[str, typer.Option(help="retinanet_resnet50_fpn or retinanet_resnet50_fpn_v2: the torchvision builder it was made with.")],
    classes: Annotated[str, typer.Option(help="Class names, one per output of its class head, in output order, comma-separated: output k (0-based) becomes category id k+1.")],
    out: Annotated[Path, typer.Option(help="The retinaslim checkpoint to write, e.g. teacher.pt.")],
    image_size: Annotated[int, typer.Option(min=32, help="Longer side in pixels images are resized to by default (torchvision's own transform makes the shorter side 800, the longer at most 1333).")] = IMPORT_IMAGE_SIZE,
) -> None:
    """Wrap a RetinaNet trained elsewhere with torchvision into a teacher checkpoint (its own anchors and postprocess; no training)."""
    with user_errors("weights"):
        result = api.import_teacher(weights, arch=arch, classes=classes, out=out, image_size=image_size)
    console.table(f"import-teacher: {result.arch}", ["label", "category id", "class"],
                  [(k, c["id"], c["name"]) for k, c in enumerate(result.classes)])
    console.info(f"{result.num_tensors} tensors; torchvision's anchors and postprocess; images resized to "
                 f"{result.image_size} px (longer side) unless a command's --image-size says otherwise")
    console.info(f"saved to {result.out}")
