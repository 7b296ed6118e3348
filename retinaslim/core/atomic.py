"""Atomic file writes: a reader (or a crash) sees the old complete file or the new complete one."""

from __future__ import annotations

import glob
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from retinaslim.errors import UserError


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename.

    Any OS error (unwritable folder, full disk) becomes a ``UserError`` naming ``path``; the previous
    ``path`` is then untouched. Temporary files that killed writers left beside ``path`` go once it is written.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise UserError(f"{path}: cannot write to {path.parent} ({e.strerror or e})") from None
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; outputs get the permissions a plain open() gives
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise UserError(f"{path}: writing failed ({e.strerror or e}); any previous version is left as it was") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        stale.unlink(missing_ok=True)


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1, allow_nan=False))


def refuse_overwriting_inputs(outputs: list[tuple[str, Path | None]], inputs: list[tuple[str, Path | None]]) -> None:
    """Raise if an output file is a folder, an input file or another output: a run must not destroy its own
    data, nor find out after its work that it cannot write the result.

    ``outputs``, ``inputs``: (option, path) pairs; None paths are not given and are ignored.
    """
    taken = {Path(p).resolve(): f"the input {option} {p}" for option, p in inputs if p is not None}
    for option, path in outputs:
        if path is None:
            continue
        if Path(path).is_dir():
            raise UserError(f"{option} {path}: a folder, expected a file name for the output")
        clash = taken.get(Path(path).resolve())
        if clash is not None:
            raise UserError(f"{option} {path}: the output would overwrite {clash}; choose another {option}")
        taken[Path(path).resolve()] = f"the output {option} {path}"
