"""Shared fixtures: tiny synthetic datasets the tests make themselves, and a CLI runner."""

import json

import pytest
from typer.testing import CliRunner

from retinaslim.cli import app
from retinaslim.config import TRAIN_DEFAULTS
from retinaslim.core.progress import Reporter
from retinaslim.stages.synth import SynthConfig, synth
from retinaslim.stages.train import TrainConfig, train


def run_cli(*args: str):
    """Invoke ``retinaslim ARGS`` in-process; returns click's Result (exit_code, stdout, stderr, exception)."""
    return CliRunner().invoke(app, [str(a) for a in args])


class CreatesFile:
    """Unpickling this runs open(path, "w"): the file appearing proves a loader ran code from a file."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def assert_user_error(result, *fragments: str) -> None:
    """A user mistake: non-zero exit, no traceback, one error line naming what is wrong."""
    assert result.exit_code != 0, result.stdout
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture(scope="session")
def tiny_cards(tmp_path_factory):
    """8 labelled, 6 unlabelled, 4 val images of 96 px, with a workspace file."""
    return synth(SynthConfig(tmp_path_factory.mktemp("cards"), num_labeled=8, num_unlabeled=6, num_val=4, size=96, seed=1))


@pytest.fixture(scope="session")
def one_card_set(tmp_path_factory):
    """8 images of 128 px with one card each: small enough to learn in a few dozen steps."""
    return synth(SynthConfig(tmp_path_factory.mktemp("one_card"), num_labeled=8, num_unlabeled=0, num_val=1,
                             size=128, seed=0, max_cards=1))


@pytest.fixture(scope="session")
def labeller(one_card_set, tmp_path_factory):
    """A quickly trained slim model that finds cards: any retinaslim checkpoint can label images."""
    labeled = one_card_set.files["labeled"]
    options = {**TRAIN_DEFAULTS["student"], "image_size": 128, "batch_size": 8, "epochs": 30, "augment": "none",
               "workers": 0}
    out = tmp_path_factory.mktemp("labeller")
    return train(TrainConfig(role="student", labeled=labeled, val=labeled, out=out, **options)).best


def remap_categories(src, dst, mapping: dict[int, int], names: dict[int, str]):
    """Copy a COCO file with category ids renumbered (``mapping`` old -> new); old ids not mapped are dropped."""
    data = json.loads(src.read_text())
    data["annotations"] = [{**a, "category_id": mapping[a["category_id"]]} for a in data["annotations"]
                           if a["category_id"] in mapping]
    data["categories"] = [{"id": i, "name": n} for i, n in names.items()]
    dst.write_text(json.dumps(data))
    return dst


class LogLines(Reporter):
    """Records every log line; stops the run (as Ctrl-C would) once epoch ``stop`` is written."""

    def __init__(self, stop=None):
        self.lines, self.stop = [], stop

    def log(self, message):
        self.lines.append(message)
        if self.stop is not None and message.startswith(f"epoch {self.stop}/"):
            raise KeyboardInterrupt
