"""kill -9, full disks and untrusted checkpoints never cost a user their work.

Each command is killed at several points, two of them exact: a process is started through a small
bootstrap that, when told to, stops just before the atomic rename of a chosen output (the file is
written and synced, not yet in place) and waits there to be killed. After every kill each output file
is the old complete version or the new complete one, and ``--resume`` (filter: a plain rerun) ends with
what an uninterrupted run writes.
"""

import csv
import errno
import json
import os
import pickle
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from retinaslim.models.checkpoint import load_checkpoint
from tests.conftest import CreatesFile, assert_user_error, run_cli

# Runs `retinaslim ARGS`; with PAUSE="NAME:N:MARKER" the N-th atomic rename onto a file called NAME
# creates MARKER and sleeps instead, so the test can kill the process at exactly that moment.
BOOTSTRAP = """
import os, runpy, sys, time
if os.environ.get("PAUSE"):
    name, nth, marker = os.environ["PAUSE"].split(":", 2)
    seen, rename = [0], os.replace
    def replace(src, dst):
        if os.path.basename(dst) == name:
            seen[0] += 1
            if seen[0] == int(nth):
                open(marker, "w").close()
                time.sleep(600)
        rename(src, dst)
    os.replace = replace
sys.argv = ["retinaslim", *sys.argv[1:]]
runpy.run_module("retinaslim", run_name="__main__")
"""


def start(args, pause=None):
    """``retinaslim ARGS`` in a subprocess; ``pause=(file name, n, marker path)``."""
    env = {**os.environ, "PAUSE": ":".join(map(str, pause)) if pause else ""}
    return subprocess.Popen([sys.executable, "-c", BOOTSTRAP, *map(str, args)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def kill_when(process, ready):
    """SIGKILL ``process`` as soon as ``ready()``; it must still be running then."""
    while not ready():
        if process.poll() is not None:
            pytest.fail(f"finished before it could be killed: {process.stderr.read().decode()[-2000:]}")
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL


def snapshot(folder):
    """{name: bytes} of every file in ``folder`` except temporary files that killed writers leave."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and not p.name.endswith(".tmp")}


def temporary_files(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# --------------------------------------------------------------------------------------------- filter

def test_filter_killed_while_writing_leaves_old_or_new_files(tiny_cards, tmp_path):
    pseudo = tiny_cards.out / "unlabeled.truth.json"
    data = json.loads(pseudo.read_text())
    for a in data["annotations"]:
        a["score"] = round(0.3 + 0.1 * (a["id"] % 7), 2)
    pseudo = tmp_path / "pseudo.json"
    pseudo.write_text(json.dumps(data))
    out, review = tmp_path / "out", tmp_path / "out" / "review.json"

    def run(thresh):
        result = run_cli("filter", pseudo, "--out", out / "filtered.json", "--score-thresh", thresh,
                         "--review-out", review, "--ambiguous-low", 0.1, "--report", out / "report.json")
        assert result.exit_code == 0, result.stderr
        return snapshot(out)

    new = run(0.6)
    old = run(0.4)
    assert set(old) == {"filtered.json", "review.json", "review.coco.json", "report.json"} and old != new
    args = ["filter", pseudo, "--out", out / "filtered.json", "--score-thresh", 0.6, "--review-out", review,
            "--ambiguous-low", 0.1, "--report", out / "report.json"]
    marker = tmp_path / "paused"
    for name in ("filtered.json", "review.coco.json"):  # before the first output is in place; between two of them
        marker.unlink(missing_ok=True)
        kill_when(start(args, pause=(name, 1, marker)), marker.exists)
        now = snapshot(out)
        assert set(now) == set(old) and all(now[f] in (old[f], new[f]) for f in now)
        assert now["filtered.json"] == (old if name == "filtered.json" else new)["filtered.json"]
        assert now["review.coco.json"] == old["review.coco.json"]
        assert temporary_files(out)  # the killed writer's complete but unrenamed file
        assert run(0.6) == new and not temporary_files(out)  # a rerun writes the new versions, litter is gone
        run(0.4)


# ----------------------------------------------------------------------------------------- pseudo-label

def test_pseudo_label_killed_at_each_point_resumes_to_the_same_output(tiny_cards, labeller, tmp_path):
    images = tiny_cards.out / "unlabeled"  # 6 images, batches of 1: header + 6 journal lines
    common = [images, "--teacher", labeller, "--scales", "1", "--workers", 0, "--batch-size", 1, "--score-floor", 0.0]
    assert run_cli("pseudo-label", *common, "--out", tmp_path / "new.json").exit_code == 0
    assert run_cli("pseudo-label", *common[:-1], 0.5, "--out", tmp_path / "old.json").exit_code == 0
    new, old = (tmp_path / "new.json").read_bytes(), (tmp_path / "old.json").read_bytes()
    assert new != old
    out = tmp_path / "p.json"
    journal = tmp_path / "p.json.journal"
    marker = tmp_path / "paused"

    def journal_lines():
        return journal.read_bytes().count(b"\n") if journal.exists() else 0

    kill_points = {
        "after the journal header": lambda: journal_lines() >= 1,
        "after 3 of 6 batches": lambda: journal_lines() >= 4,
        "output written, not yet renamed": marker.exists,
    }
    for point, ready in kill_points.items():
        out.write_bytes(old)  # a previous run's complete output
        marker.unlink(missing_ok=True)
        process = start(["pseudo-label", *common, "--out", out], pause=("p.json", 1, marker))
        kill_when(process, ready)
        assert out.read_bytes() == old, point
        assert journal.exists(), point
        result = run_cli("pseudo-label", *common, "--out", out, "--resume")
        assert result.exit_code == 0, result.stdout + result.stderr
        assert out.read_bytes() == new, point
        assert not journal.exists() and not temporary_files(tmp_path), point


# ------------------------------------------------------------------------------------------- training

def rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def check_run_folder(folder):
    """Every file of a run folder is complete (checkpoints load, the CSV parses, the config is YAML); last.pt's epoch."""
    assert yaml.safe_load((folder / "config.yaml").read_text())["out"] == str(folder)
    last = load_checkpoint(folder / "last.pt")
    assert load_checkpoint(folder / "best.pt").epoch <= last.epoch  # best.pt is written just after last.pt
    epochs = [int(r["epoch"]) for r in rows(folder / "results.csv")]
    assert epochs == list(range(1, len(epochs) + 1)) and last.epoch - 1 <= len(epochs) <= last.epoch
    if (folder / "results.png").exists():  # drawn last: a kill can come before its first version
        assert (folder / "results.png").read_bytes()[:4] == b"\x89PNG"
    return last.epoch


def assert_same_run(whole, resumed):
    """A resumed run ends where an uninterrupted one does: same epochs, losses, AP and weights."""
    a, b = rows(whole / "results.csv"), rows(resumed / "results.csv")
    assert [r["epoch"] for r in a] == [r["epoch"] for r in b]
    for x, y in zip(a, b, strict=True):
        assert abs(float(x["loss"]) - float(y["loss"])) < 1e-4 and abs(float(x["ap"]) - float(y["ap"])) < 1e-3
    w, r = load_checkpoint(whole / "last.pt"), load_checkpoint(resumed / "last.pt")
    assert w.epoch == r.epoch and w.training_state["ema"] == r.training_state["ema"]  # the EMA's update count
    for k in w.model:
        assert torch.allclose(w.model[k].float(), r.model[k].float(), atol=1e-4), k


def test_train_student_killed_three_times_resumes_to_the_same_run(tiny_cards, tmp_path):
    data = tiny_cards.files
    common = ["--labeled", data["labeled"], "--val", data["val"], "--image-size", 32, "--batch-size", 4,
              "--epochs", 3, "--workers", 0, "--augment", "light", "--pseudo", tiny_cards.out / "unlabeled.truth.json"]
    whole, run = tmp_path / "whole", tmp_path / "run"
    assert run_cli("train-student", *common, "--out", whole).exit_code == 0
    marker = tmp_path / "paused"
    # 1: as soon as epoch 1 is saved; 2 (resumed after epoch 1): epoch 2's last.pt written, not renamed;
    # 3 (resumed after epoch 1 again): epoch 2's results.csv written, not renamed (its checkpoints are in place;
    # the resume's own first write of results.csv, the history last.pt keeps, comes before it).
    kill_when(start(["train-student", *common, "--out", run]), lambda: (run / "results.csv").exists())
    assert check_run_folder(run) == 1
    for name, nth, epoch in [("last.pt", 1, 1), ("results.csv", 2, 2)]:
        marker.unlink(missing_ok=True)
        kill_when(start(["train-student", "--resume", run / "last.pt"], pause=(name, nth, marker)), marker.exists)
        assert check_run_folder(run) == epoch
        assert temporary_files(run)
    result = run_cli("train-student", "--resume", run / "last.pt")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert_same_run(whole, run)
    assert not temporary_files(run)


def test_train_teacher_killed_before_a_checkpoint_rename_resumes_to_the_same_run(tmp_path):
    from retinaslim.stages.synth import SynthConfig, synth

    data = synth(SynthConfig(tmp_path / "data", num_labeled=2, num_unlabeled=0, num_val=1, size=48, seed=2)).files
    common = ["--labeled", data["labeled"], "--val", data["val"], "--image-size", 32, "--batch-size", 2,
              "--epochs", 2, "--workers", 0, "--augment", "light"]
    whole, run, marker = tmp_path / "whole", tmp_path / "run", tmp_path / "paused"
    assert run_cli("train-teacher", *common, "--out", whole).exit_code == 0
    kill_when(start(["train-teacher", *common, "--out", run], pause=("last.pt", 2, marker)), marker.exists)
    assert check_run_folder(run) == 1 and temporary_files(run)
    assert_user_error(run_cli("train-teacher", *common, "--out", run), "already holds a run", "--resume")
    # started with no decoding workers, continued with two on the CPU (the machine's options are taken)
    result = run_cli("train-teacher", "--resume", run / "last.pt", "--epochs", 9, "--workers", 2, "--device", "cpu")
    assert result.exit_code == 0, result.stdout + result.stderr
    said = " ".join((result.stdout + result.stderr).split())
    assert ("warning: --resume continues with the run's own settings: ignored --epochs (only --device and --workers, "
            "the machine's, are taken)") in said
    assert f"resuming {run} after epoch 1 (device cpu, 2 workers)" in said
    assert_same_run(whole, run)  # 2 epochs, as the run was started, and the same augmentation with workers
    assert {k: load_checkpoint(run / "last.pt").train_args[k] for k in ("device", "workers")} == {"device": "cpu", "workers": 2}
    assert yaml.safe_load((run / "config.yaml").read_text())["workers"] == 0  # the run as it was started
    assert not temporary_files(run)


# ------------------------------------------------------------------------------------------ full disk

@pytest.fixture
def full_disk(monkeypatch):
    """Every fsync fails with ENOSPC, as on a full disk (data reaches the disk at fsync at the latest)."""
    def fsync(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return lambda: monkeypatch.setattr(os, "fsync", fsync)


def test_full_disk_leaves_every_old_file_intact(tiny_cards, labeller, tmp_path, full_disk, monkeypatch):
    data = tiny_cards.files
    monkeypatch.chdir(tmp_path)
    pseudo_args = ["pseudo-label", tiny_cards.out / "unlabeled", "--teacher", labeller, "--out", "p.json",
                   "--scales", "1", "--no-hflip", "--workers", 0]
    commands = {
        "pseudo-label": pseudo_args,
        "filter": ["filter", "p.json", "--out", "f.json", "--score-thresh", 0.3],
        "eval": ["eval", "--weights", labeller, "--data", data["val"], "--latency-runs", 1, "--workers", 0,
                 "--json", "m.json", "--predictions-out", "preds.json"],
        "profile": ["profile", "--weights", labeller, "--runs", 1, "--json", "prof.json"],
        "train-student": ["train-student", "--labeled", data["labeled"], "--val", data["val"], "--out", "run",
                          "--image-size", 32, "--batch-size", 4, "--epochs", 1, "--workers", 0],
    }
    for command, args in commands.items():
        if command != "train-student":  # a new run: no earlier version to keep, only its inputs
            result = run_cli(*args)
            assert result.exit_code == 0, result.stdout + result.stderr
    old = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    full_disk()
    messages = {"pseudo-label": "p.json.journal: writing the journal failed", "filter": "f.json: writing failed",
                "eval": "preds.json: writing failed", "profile": "prof.json: writing failed",
                "train-student": "config.yaml: writing failed"}
    for command, args in commands.items():
        assert_user_error(run_cli(*args), messages[command], "No space left on device")
    for path, content in old.items():
        assert path.read_bytes() == content, path
    assert not [p for p in tmp_path.rglob("*.tmp")]
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)  # space again: the interrupted labelling resumes from its journal
    result = run_cli(*pseudo_args, "--resume")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert (tmp_path / "p.json").read_bytes() == old[tmp_path / "p.json"]


# ------------------------------------------------------------------------------------ untrusted files

def test_code_carrying_checkpoint_is_refused_by_every_command_that_loads_weights(tiny_cards, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evil, marker = tmp_path / "evil.pt", tmp_path / "pwned"
    torch.save({"format": "retinaslim-checkpoint/1", "model": CreatesFile(str(marker))}, evil)
    with open(evil, "rb") as f:  # the payload really is there: an unrestricted load would run it
        assert b"pwned" in f.read()
    data = tiny_cards.files
    pseudo = tmp_path / "pseudo.json"
    truth = json.loads((tiny_cards.out / "unlabeled.truth.json").read_text())
    truth["info"] = {"teacher": str(evil), "transforms": ["scale1"], "fusion": "wbf", "image_size": 96}
    for a in truth["annotations"]:
        a["score"] = 0.9
    pseudo.write_text(json.dumps(truth))
    commands = {
        "train-teacher --resume": ["train-teacher", "--resume", evil],
        "train-student --resume": ["train-student", "--resume", evil],
        "train-teacher --init": ["train-teacher", "--labeled", data["labeled"], "--val", data["val"], "--init", evil,
                                 "--out", "run", "--workers", 0],
        "import-teacher": ["import-teacher", evil, "--arch", "retinanet_resnet50_fpn", "--classes", "a", "--out", "t.pt"],
        "pseudo-label --teacher": ["pseudo-label", tiny_cards.out / "unlabeled", "--teacher", evil, "--out", "p.json"],
        "filter (calibration teacher)": ["filter", pseudo, "--out", "f.json", "--auto-thresh", "precision",
                                         "--calib", data["val"]],
        "filter --teacher": ["filter", pseudo, "--out", "f.json", "--auto-thresh", "precision", "--calib", data["val"],
                             "--teacher", evil],
        "eval --weights": ["eval", "--weights", evil, "--data", data["val"]],
        "profile --weights": ["profile", "--weights", evil],
        "predict --weights": ["predict", tiny_cards.out / "unlabeled", "--weights", evil, "--out", "preds.json"],
        "export --weights": ["export", "--weights", evil, "--out", "m.onnx"],
    }
    for command, args in commands.items():
        assert_user_error(run_cli(*args), str(evil), "refused to load")
        assert not marker.exists(), command
    assert not any((tmp_path / name).exists() for name in ("p.json", "f.json", "preds.json", "m.onnx", "run", "t.pt"))
    with pytest.raises(pickle.UnpicklingError):
        torch.load(evil, weights_only=True)
