"""The ``retinaslim`` command: one module per command (train.py holds both training roles), as in ``stages/``.

Each command parses its options, calls the function of ``retinaslim.api`` named after it (the one Python
users call, so both resolve the same configuration) and renders its result with ``retinaslim.console``.
What the CLI adds: the workspace file (``workspace.py``: inputs taken from retinaslim.yaml, announced), the
tables, and errors as one line that names the flags as typed (``common.py``, with the typer app).
"""

from retinaslim.cli import (  # noqa: F401 - importing a command's module registers it; help lists them in this order
    workspace,
    synth,
    train,
    import_teacher,
    pseudo_label,
    filter,
    evaluate,
    profile,
    demo,
    convert,
    predict,
    show,
    export,
)
from retinaslim.cli.common import app

__all__ = ["app"]
