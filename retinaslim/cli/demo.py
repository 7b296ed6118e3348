"""``retinaslim demo``: the whole pipeline at smoke scale, with eval's tables and the run's reading of its numbers."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from retinaslim import console
from retinaslim.cli.common import DeviceOpt, SeedOpt, app, user_errors
from retinaslim.cli.evaluate import render_eval


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the demo's data and runs.")] = Path("demo"),
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
) -> None:
    """Run the whole pipeline at smoke scale on synthetic data and print teacher vs students."""
    from retinaslim.stages.demo import demo as run

    with user_errors(), console.RichReporter() as reporter:
        result = run(out, seed, device, reporter)
    console.info(f"pseudo-label: {result.pseudo.num_images} images, {result.pseudo.num_boxes} boxes; "
                 f"filter kept {sum(result.filtered.num_boxes_kept.values())}")
    render_eval(result.evaluation)
    for note in result.notes:
        console.info(note)
    console.info(f"saved to {result.out}")
