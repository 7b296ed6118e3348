"""What every command shares: the typer app, the options several commands take, and errors as one line.

A library error names its config field in backticks (`score_thresh`); ``user_errors`` shows it as the user
typed it (--score-thresh, or PSEUDO for a command's argument) and exits 1 without a traceback.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer

from retinaslim import console
from retinaslim.errors import UserError

app = typer.Typer(
    help="Data distillation for object detection: a RetinaNet teacher labels unlabelled images, "
    "a slim student learns from human + machine labels.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help wraps to the terminal; rich's panels cut long words at 80 columns
)

DeviceOpt = Annotated[str, typer.Option(help="auto (cuda if available, else cpu), cpu, cuda or cuda:N.")]
WorkersOpt = Annotated[int, typer.Option(min=0, help="DataLoader worker processes that decode images (0: in the main process).")]
SeedOpt = Annotated[int, typer.Option(help="Random seed.")]
ImagesOpt = Annotated[Optional[Path], typer.Option(help="Folder the COCO files' image names resolve against (default: each JSON file's own folder).")]


# API keywords whose flag is not the keyword with dashes.
FLAGS = {"json_out": "--json", "from_format": "--from", "to_format": "--to", "max_images": "--max"}


def flag(name: str, arguments: tuple[str, ...] = ()) -> str:
    """How the user typed an API keyword: SOURCE for a command's argument, else its --flag."""
    return name.upper() if name in arguments else FLAGS.get(name, "--" + name.replace("_", "-"))


class Terminated(KeyboardInterrupt):
    """SIGTERM (a job scheduler's stop or time limit, ``kill``), raised where Ctrl-C raises KeyboardInterrupt, so
    that the work stops the same way and the same line says how to continue it."""


def _terminate(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM (to the process and its group) must not cut the line
    raise Terminated


@contextmanager
def user_errors(*arguments: str, resume_hint: Callable[[], str | None] | None = None) -> Iterator[None]:
    """A user's mistake ends in one red line and exit code 1, never a traceback.

    The message's `keywords` become the flags typed; ``arguments``: the command's positional arguments.
    ``resume_hint``: on Ctrl-C (exit 130) or SIGTERM (exit 143; handled only inside such a block, in the main
    thread), how to continue the interrupted work (called then, so it sees the paths the command resolved), or
    None when there is nothing to continue.
    """
    handles_term = (resume_hint is not None and threading.current_thread() is threading.main_thread()
                    and signal.getsignal(signal.SIGTERM) is not signal.SIG_IGN)  # ignored by the caller: left so
    previous = signal.signal(signal.SIGTERM, _terminate) if handles_term else None
    try:
        yield
    except UserError as e:
        console.error(str(e.renamed(lambda name: flag(name, arguments))))
        raise typer.Exit(1) from None
    except OSError as e:  # the machine's problem, not the code's: a full disk, a permission, a vanished file
        console.error(f"{e.filename}: {e.strerror or e}" if e.filename else f"{e.strerror or e}")
        raise typer.Exit(1) from None
    except (MemoryError, RuntimeError) as e:  # e.g. a mistyped --image-size 300000
        # torch reports a failed allocation as a RuntimeError (CPU) or its subclass OutOfMemoryError (CUDA)
        if not (isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError" or "can't allocate memory" in str(e)):
            raise
        said = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        console.error(f"out of memory ({said}): the inputs need more memory than this machine has; try a smaller "
                      "--image-size or --batch-size where the command takes them")
        raise typer.Exit(1) from None
    except KeyboardInterrupt as e:
        terminated = isinstance(e, Terminated)
        from retinaslim.engine import ddp  # loads torch: not at the top, where --help would load it too

        if ddp.is_main_process():  # under torchrun rank 0 speaks for all
            hint = resume_hint() if resume_hint is not None else None
            console.error(("terminated (SIGTERM)" if terminated else "interrupted") + (f"; {hint}" if hint else ""))
        raise typer.Exit(143 if terminated else 130) from None
    finally:
        if handles_term:
            signal.signal(signal.SIGTERM, previous)
