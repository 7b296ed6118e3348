"""The workspace file (retinaslim.yaml): ``init`` writes it, and commands take the inputs they are not given from it,
saying so."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from retinaslim import console
from retinaslim.cli.common import app, user_errors
from retinaslim.config import WORKSPACE_FILE, write_workspace_template
from retinaslim.errors import UserError


def pick(value, option: str, fallback, what: str, in_workspace: str | None = None):
    """``value`` if given, else the workspace's ``fallback`` (announced), else a one-line error.

    ``in_workspace``: for a path a workspace derives rather than names (an output, the newest teacher), what it is
    there, e.g. "runs/pseudo.json": the error and the notice then name it rather than a key of the workspace file."""
    if value is not None:
        return value
    if fallback is not None:
        console.info(f"using {what}: {fallback} (from {WORKSPACE_FILE})" if in_workspace is None
                     else f"using {what}: {fallback} (this workspace's)")
        return fallback
    if in_workspace is not None:
        raise UserError(f"missing {option}: pass {option}, or run in a workspace (a folder with a {WORKSPACE_FILE}; "
                        f"`retinaslim init` writes one), where it is {in_workspace}")
    raise UserError(f"missing {option}: pass {option} or run in a folder with a {WORKSPACE_FILE} that names it "
                    "(`retinaslim init` writes one)")


@app.command()
def init(
    force: Annotated[bool, typer.Option(help="Overwrite an existing retinaslim.yaml.")] = False,
) -> None:
    """Write a retinaslim.yaml workspace file, every key commented, in the current folder."""
    with user_errors():
        path = Path(WORKSPACE_FILE)
        if path.exists() and not force:
            raise UserError(f"{path}: already exists; pass --force to overwrite it")
        write_workspace_template(path)
        console.info(f"wrote {path}: uncomment and edit the keys, then run commands from this folder")
