"""Every command through the CLI on tiny synthetic data, with and without a workspace file."""

import csv
import json
import os
import re
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch
import typer.core
import typer.main

from retinaslim.cli import app
from retinaslim.models.anchors import DEFAULT_ANCHORS
from retinaslim.models.checkpoint import load_checkpoint
from tests.conftest import assert_user_error, remap_categories, run_cli


def test_help_lists_every_command_and_option(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    commands = typer.main.get_command(app).commands
    assert len(commands) >= 14 and {"synth", "train-teacher", "eval", "predict", "export", "demo"} <= set(commands)
    listing = run_cli("--help")
    assert listing.exit_code == 0
    for name, command in commands.items():
        assert f" {name} " in listing.stdout, name
        result = run_cli(name, "--help")
        assert result.exit_code == 0, (name, result.stdout + result.stderr)
        assert command.help.split()[0] in result.stdout, name  # its own description, not another command's
        for param in command.params:
            shown = param.opts if isinstance(param, typer.core.TyperOption) else [param.name]
            assert all(flag in result.stdout for flag in shown), (name, shown)
        lines = result.stdout.splitlines()
        assert max(map(len, lines)) <= 80 and "…" not in result.stdout, name  # wrapped to the terminal, never cut


def test_synth_same_seed_same_bytes(tmp_path):
    for name in ("a", "b"):
        assert run_cli("synth", tmp_path / name, "--labeled", 2, "--unlabeled", 2, "--val", 1, "--size", 64, "--seed", 5).exit_code == 0
    for rel in ["labeled.json", "val.json", "unlabeled.truth.json", "unlabeled/unlabeled_000001.jpg", "labeled/labeled_000000.jpg"]:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    data = json.loads((tmp_path / "a" / "labeled.json").read_text())
    assert [c["name"] for c in data["categories"]] == ["id_card", "bank_card", "passport"]
    assert not (tmp_path / "a" / "unlabeled.json").exists()  # unlabelled images ship without labels
    assert_user_error(run_cli("synth", tmp_path / "a", "--labeled", 2), "already holds")


def test_pipeline_with_workspace_short_commands(tiny_cards, monkeypatch):
    """The users' short commands work as typed inside a workspace made by synth."""
    monkeypatch.chdir(tiny_cards.out)
    fast = ["--image-size", 96, "--batch-size", 4, "--epochs", 1, "--workers", 0]

    result = run_cli("train-teacher", *fast)
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "using labelled data" in result.stdout
    teacher = load_checkpoint(tiny_cards.out / "runs/teacher/best.pt")
    assert teacher.arch == "retinanet_resnet50_fpn" and teacher.image_size == 96 and teacher.epoch == 1
    assert [c["name"] for c in teacher.classes] == ["id_card", "bank_card", "passport"]
    assert (tiny_cards.out / "runs/teacher/config.yaml").is_file()

    result = run_cli("pseudo-label", "./unlabeled", "--score-floor", 0.0, "--workers", 0)
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "no human-only student in the workspace yet" in " ".join(result.stdout.split())
    # found in runs/, not named by retinaslim.yaml: said so
    assert re.search(r"using teacher: \S*runs/teacher/best\.pt \(this workspace's\)", " ".join(result.stdout.split()))
    pseudo = json.loads((tiny_cards.out / "runs/pseudo.json").read_text())
    assert len(pseudo["images"]) == 6 and pseudo["skipped"] == []
    assert len(pseudo["info"]["transforms"]) == 6 and pseudo["info"]["fusion"] == "wbf"
    assert (tiny_cards.out / "runs" / pseudo["images"][0]["file_name"]).resolve().is_file()
    for ann in pseudo["annotations"]:
        assert 0 <= ann["score"] <= 1 and 1 <= ann["agreement"] <= 6

    # The bar: a student on the human labels only, in its own folder; filter's default rule compares the teacher with it.
    result = run_cli("train-student", *fast)
    assert result.exit_code == 0, result.stdout + result.stderr
    human = tiny_cards.out / "runs/student-human/best.pt"
    assert load_checkpoint(human).train_args["pseudo"] is None and not (tiny_cards.out / "runs/student").exists()
    result = run_cli("filter", "--out", "runs/auto.json", "--workers", 0)
    assert result.exit_code == 0, result.stdout + result.stderr
    assert f"human-only student {human} finds better" in " ".join(result.stdout.split())
    compared = json.loads((tiny_cards.out / "runs/auto.json").read_text())["info"]["filter"]
    assert compared["threshold_rule"] == "precision" and compared["student"] == str(human)
    assert compared["source"].endswith("runs/pseudo.json")  # the student had not labelled: the teacher's only
    # With the human-only student trained, pseudo-label labels with it too (self-training) and filter chooses per class
    result = run_cli("pseudo-label", "--score-floor", 0.0, "--workers", 0)
    assert result.exit_code == 0, result.stdout + result.stderr
    own = json.loads((tiny_cards.out / "runs/pseudo-student.json").read_text())
    assert own["info"]["teacher"] == str(human) and len(own["images"]) == 6
    teacher = json.loads((tiny_cards.out / "runs/pseudo.json").read_text())["info"]["teacher"]
    joint = json.loads((tiny_cards.out / "runs/pseudo-joint.json").read_text())
    assert joint["info"]["teacher"] == [teacher, str(human)] and len(joint["images"]) == 6
    assert len(joint["info"]["image_size"]) == 2  # both models' transforms fused (tests/stages count the agreement)
    files = ["pseudo.json", "pseudo-student.json", "pseudo-joint.json"]
    result = run_cli("filter", "--out", "runs/both.json", "--workers", 0)
    assert result.exit_code == 0, result.stdout + result.stderr
    both = json.loads((tiny_cards.out / "runs/both.json").read_text())["info"]["filter"]
    assert [s.rsplit("/", 1)[-1] for s in both["source"]] == files
    assert set(both["labels_from"]) == {"id_card", "bank_card", "passport"} and set(both["labels_from"].values()) <= set(both["source"])
    # resuming the three passes after they finished labels nothing again
    made = [(tiny_cards.out / f"runs/{n}").stat().st_mtime_ns for n in files]
    result = run_cli("pseudo-label", "--score-floor", 0.0, "--workers", 0, "--resume")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert [(tiny_cards.out / f"runs/{n}").stat().st_mtime_ns for n in files] == made
    assert result.stdout.count("resumed: 6 images were already labelled") == 3
    said = " ".join(result.stdout.split())
    assert said.count("left as it was") == 3 and "saved to" not in said
    assert "images/s" not in said  # nothing was labelled, so nothing was timed
    # the teacher alone into the workspace's file: the student's labels of the earlier run are named as stale
    result = run_cli("pseudo-label", "--teacher", teacher, "--score-floor", 0.0, "--workers", 0, "--resume")
    assert result.exit_code == 0, result.stdout + result.stderr
    said = " ".join((result.stdout + result.stderr).split())
    assert all(f"{n} is from an earlier run" in said for n in files[1:]) and "resumed: 6 images" in said

    result = run_cli("filter", "--auto-thresh", "instances", "--out", "runs/instances.json", "--workers", 0)
    assert result.exit_code == 0, result.stdout + result.stderr
    assert ("pseudo-joint.json (labels with the human-only student) not used: choosing between label files needs "
            "the validation set's scores, and --auto-thresh instances does not use it") in " ".join(result.stdout.split())
    result = run_cli("filter", "--score-thresh", 0.0)
    assert result.exit_code == 0, result.stdout + result.stderr
    assert ("pseudo-joint.json (labels with the human-only student) not used: choosing between label files needs "
            "the validation set's scores, and --score-thresh fixes the thresholds") in " ".join(result.stdout.split())
    filtered = json.loads((tiny_cards.out / "runs/pseudo.filtered.json").read_text())
    assert filtered["info"]["filter"]["thresholds"] == dict.fromkeys(["id_card", "bank_card", "passport"], 0.0)
    assert filtered["info"]["filter"]["student"] is None  # a fixed threshold compares nothing
    assert len(filtered["images"]) == 6

    result = run_cli("train-student", *fast)
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "machine labels" in result.stdout  # the workspace's filtered labels are picked up and announced
    student = load_checkpoint(tiny_cards.out / "runs/student/best.pt")
    assert student.train_args["pseudo"].endswith("pseudo.filtered.json")

    result = run_cli("eval", "--weights", "runs/student/best.pt", "--weights", "runs/teacher/best.pt",
                     "--latency-runs", 2, "--workers", 0, "--json", "metrics.json")
    assert result.exit_code == 0, result.stdout + result.stderr
    rows = json.loads((tiny_cards.out / "metrics.json").read_text())
    assert [r["arch"] for r in rows] == ["slim-s", "retinanet_resnet50_fpn"]
    for r in rows:
        assert {"ap", "ap50", "ap75", "latency_ms", "fps", "params", "size_mb", "image_size", "device", "threads"} <= set(r)
        assert r["latency_ms"] > 0 and r["fps"] == pytest.approx(1000 / r["latency_ms"]) and r["threads"] == torch.get_num_threads()
    assert rows[0]["params"] < rows[1]["params"] / 50

    # A second teacher run never overwrites the first.
    assert run_cli("train-teacher", *fast).exit_code == 0
    assert (tiny_cards.out / "runs/teacher-2/best.pt").is_file()


def test_category_ids_survive_training_prediction_and_eval(one_card_set, tmp_path):
    """A dataset whose category ids are 3 and 17 keeps those ids in every output."""
    names = {3: "id_card", 17: "bank_card"}
    src = one_card_set.files["labeled"]
    labeled = remap_categories(src, src.parent / "ids_3_17.json", {1: 3, 2: 17, 3: 17}, names)
    result = run_cli("train-student", "--labeled", labeled, "--val", labeled, "--out", tmp_path / "run",
                     "--image-size", 128, "--batch-size", 8, "--epochs", 30, "--lr", 0.01, "--augment", "none", "--workers", 0)
    assert result.exit_code == 0, result.stdout + result.stderr
    checkpoint = load_checkpoint(tmp_path / "run/best.pt")
    assert checkpoint.classes == [{"id": 3, "name": "id_card"}, {"id": 17, "name": "bank_card"}]

    result = run_cli("eval", "--weights", tmp_path / "run/best.pt", "--data", labeled, "--latency-runs", 1,
                     "--workers", 0, "--predictions-out", tmp_path / "preds.json", "--json", tmp_path / "m.json")
    assert result.exit_code == 0, result.stdout + result.stderr
    predictions = json.loads((tmp_path / "preds.json").read_text())
    assert predictions and {p["category_id"] for p in predictions} <= {3, 17}
    assert {p["category_id"] for p in predictions if p["score"] > 0.3} == {
        a["category_id"] for a in json.loads(labeled.read_text())["annotations"]}
    assert json.loads((tmp_path / "m.json").read_text())[0]["ap50"] >= 0.5

    result = run_cli("pseudo-label", one_card_set.out / "labeled", "--teacher", tmp_path / "run/best.pt",
                     "--out", tmp_path / "pseudo.json", "--workers", 0)
    assert result.exit_code == 0, result.stdout + result.stderr
    pseudo = json.loads((tmp_path / "pseudo.json").read_text())
    assert pseudo["categories"] == checkpoint.classes and {a["category_id"] for a in pseudo["annotations"]} <= {3, 17}


def test_bad_input_gives_one_line_errors(tiny_cards, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no workspace here
    labeled = tiny_cards.files["labeled"]
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{oops")
    unknown = tmp_path / "unknown.json"
    data = json.loads(labeled.read_text())
    data["annotations"][0]["category_id"] = 42
    unknown.write_text(json.dumps(data))
    (tmp_path / "empty").mkdir()

    assert_user_error(run_cli("train-student", "--labeled", tmp_path / "missing.json", "--val", labeled),
                      "missing.json", "not found")
    assert_user_error(run_cli("train-student", "--labeled", bad_json, "--val", labeled), "bad.json", "not valid JSON")
    assert_user_error(run_cli("train-student", "--labeled", unknown, "--val", labeled), "unknown.json", "category id 42")
    assert_user_error(run_cli("train-teacher"), "--labeled", "retinaslim.yaml")
    assert_user_error(run_cli("filter"), "missing PSEUDO")  # the argument first, then --out
    # a path a workspace derives (not a key of retinaslim.yaml) says what it is there
    assert_user_error(run_cli("filter", labeled), "missing --out: pass --out, or run in a workspace",
                      "where it is runs/pseudo.filtered.json")
    assert_user_error(run_cli("pseudo-label", tiny_cards.out / "unlabeled", "--out", "p.json"),
                      "missing --teacher", "where it is the newest runs/teacher*/best.pt")
    assert_user_error(run_cli("pseudo-label", tmp_path / "empty", "--teacher", tmp_path / "t.pt", "--out", "p.json"),
                      "empty", "no images found")
    assert_user_error(run_cli("pseudo-label", tiny_cards.out / "unlabeled", "--teacher", tmp_path / "t.pt", "--out", "p.json"),
                      "t.pt", "not found")
    # a folder where a file belongs is named as one, not "not found" (it exists)
    assert_user_error(run_cli("pseudo-label", tiny_cards.out / "unlabeled", "--teacher", tmp_path / "empty", "--out", "p.json"),
                      "empty: a folder, expected a checkpoint")
    assert_user_error(run_cli("filter", labeled, "--out", "f.json", "--calib", tmp_path / "empty"),
                      "empty: a folder, expected a COCO JSON file")
    assert_user_error(run_cli("train-student", "--labeled", tmp_path / "empty", "--val", labeled),
                      "empty: a folder, expected a COCO JSON file")
    assert_user_error(run_cli("filter", bad_json, "--out", "f.json"), "bad.json")
    assert_user_error(run_cli("filter", labeled, "--out", "f.json", "--score-thresh", 1.5), "--score-thresh")
    assert_user_error(run_cli("filter", labeled, "--out", labeled), "overwrite the input")
    assert_user_error(run_cli("eval", "--weights", bad_json, "--data", labeled), "bad.json")
    assert not (tmp_path / "f.json").exists() and not (tmp_path / "p.json").exists()


def test_init_writes_commented_workspace(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_cli("init").exit_code == 0
    text = (tmp_path / "retinaslim.yaml").read_text()
    for key in ["labeled", "val", "unlabeled", "classes", "runs"]:
        assert f"# {key}:" in text
    assert_user_error(run_cli("init"), "already exists")


@pytest.mark.parametrize("text, fragment", [("labeled: 5", "'labeled' must be a path, got 5"),
                                            ("runs: {a: 1}", "'runs' must be a path"),
                                            ("classes: id_card", "'classes' must be a list of class names")])
def test_a_workspace_value_of_the_wrong_kind_is_one_line(text, fragment, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "retinaslim.yaml").write_text(text + "\n")
    assert_user_error(run_cli("train-student"), "retinaslim.yaml", fragment)


def test_a_folder_named_as_the_workspace_file_is_not_taken_for_no_workspace(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "retinaslim.yaml").mkdir()
    assert_user_error(run_cli("train-student"), "retinaslim.yaml: a folder, expected the workspace file")


def test_workspace_steps_out_of_order_name_the_step_to_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_cli("init").exit_code == 0
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs/pseudo-student.json").write_text("{}")  # the student's labels alone: still no teacher's file
    assert_user_error(run_cli("filter"), "runs/pseudo.json", "no machine labels yet", "retinaslim pseudo-label")
    assert_user_error(run_cli("pseudo-label", tmp_path), "no teacher in this workspace yet", "retinaslim train-teacher")
    assert not (tmp_path / "runs/pseudo.filtered.json").exists()


def test_demo_runs_every_stage(tmp_path, monkeypatch):
    from retinaslim.stages import demo

    from retinaslim.config import TRAIN_DEFAULTS
    from retinaslim.engine import thresholds
    from retinaslim.stages import filter as filter_stage

    # Enough boxes to fit anchors (>= 20). A ResNet50 finds nothing in a few steps; a quick slim teacher, and a filter
    # that trusts any teacher finding a card on the validation images (best F1 instead of precision 0.95, no F1
    # floor), let machine boxes reach the student: the flow this test checks (the filter's tests check that an
    # unreliable teacher's boxes are not trained on, the demo's real run is in docs/results.md).
    tiny = {"labeled": 24, "unlabeled": 6, "val": 6, "size": 64, "teacher_epochs": 8, "student_epochs": 1, "latency_runs": 1}
    monkeypatch.setattr(demo, "DEMO_SCALE", tiny)
    monkeypatch.setitem(TRAIN_DEFAULTS, "teacher", {**TRAIN_DEFAULTS["student"], "batch_size": 8})
    monkeypatch.setattr(thresholds, "RELIABLE_F1", 0.0)
    monkeypatch.setattr(filter_stage, "FILTER_VALIDATION_RULE", "f1")
    result = run_cli("demo", "--out", tmp_path / "demo")
    assert result.exit_code == 0, result.stdout + result.stderr
    rows = json.loads((tmp_path / "demo/metrics.json").read_text())
    assert [r["weights"].split("/")[-2] for r in rows] == ["teacher", "student-human", "student"]
    assert "teacher" in result.stdout and "student-human" in result.stdout
    assert "smoke-scale numbers" in result.stdout and "hidden truth" in result.stdout  # the demo reads its numbers
    # The filter compared the teacher with the human-only student, and the distilled student really trained on
    # machine boxes, and both students with fitted anchors.
    filtered = json.loads((tmp_path / "demo/runs/pseudo.filtered.json").read_text())
    assert filtered["info"]["filter"]["student"] == str(tmp_path / "demo/runs/student-human/best.pt")
    # as in a workspace: the teacher's, the human-only student's own and both fused, each class from one of them
    assert filtered["info"]["filter"]["source"] == [str(tmp_path / f"demo/runs/{n}") for n in
                                                     ("pseudo.json", "pseudo-student.json", "pseudo-joint.json")]
    assert filtered["info"]["filter"]["labels_from"]["id_card"] in filtered["info"]["filter"]["source"]
    kept = filtered["annotations"]
    assert kept, "the filter let no machine box through: the demo would not distil anything"
    history = list(csv.DictReader(open(tmp_path / "demo/runs/student/results.csv")))
    assert sum(int(float(row["machine_boxes"])) for row in history) > 0
    assert all(float(row["machine_boxes"]) == 0 for row in csv.DictReader(open(tmp_path / "demo/runs/student-human/results.csv")))
    for name in ("student", "student-human"):
        anchors = load_checkpoint(tmp_path / f"demo/runs/{name}/best.pt").arch_options["anchors"]
        assert anchors != DEFAULT_ANCHORS


def test_demo_copies_the_human_only_student_when_the_filter_keeps_nothing(tmp_path, monkeypatch):
    """A teacher of one epoch is unreliable on the validation images: the filter keeps no machine labels, and the
    distilled student, which would train on the same labels with the same seed, is the human-only run copied."""
    from retinaslim.config import TRAIN_DEFAULTS
    from retinaslim.stages import demo

    tiny = {"labeled": 24, "unlabeled": 6, "val": 6, "size": 64, "teacher_epochs": 1, "student_epochs": 1, "latency_runs": 1}
    monkeypatch.setattr(demo, "DEMO_SCALE", tiny)
    monkeypatch.setitem(TRAIN_DEFAULTS, "teacher", {**TRAIN_DEFAULTS["student"], "batch_size": 8})
    result = run_cli("demo", "--out", tmp_path / "demo")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "filter kept 0" in result.stdout and "not trained again" in result.stdout
    assert "train student\n" not in result.stdout  # only the teacher and the human-only student trained
    runs = tmp_path / "demo/runs"
    assert (runs / "student/best.pt").read_bytes() == (runs / "student-human/best.pt").read_bytes()
    rows = json.loads((tmp_path / "demo/metrics.json").read_text())
    assert [r["weights"].split("/")[-2] for r in rows] == ["teacher", "student-human", "student"]
    assert rows[1]["ap"] == rows[2]["ap"]
    # the demo replaces its own runs only: a workspace's runs/ is refused before any work
    (tmp_path / "work" / "runs" / "teacher").mkdir(parents=True)
    assert_user_error(run_cli("demo", "--out", tmp_path / "work"), "holds runs/ that the demo did not make")
    assert (tmp_path / "work" / "runs" / "teacher").is_dir() and not (tmp_path / "work" / "data").exists()


def test_profile_json(tmp_path, labeller):
    result = run_cli("profile", "--weights", labeller, "--image-size", 128, "--runs", 3, "--per-layer", "--depth", 2,
                     "--json", tmp_path / "p.json")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "backbone.fpn" in result.stdout
    data = json.loads((tmp_path / "p.json").read_text())
    for key in ("arch", "params", "macs", "size_mb", "latency_ms", "network_latency_ms", "image_size", "threads", "device"):
        assert key in data
    assert data["arch"] == "slim-s" and 0 < data["network_latency_ms"] and data["size_mb"] < 2.5
    assert sum(m["macs"] for m in data["modules"]) == data["macs"]
    assert_user_error(run_cli("profile"), "--arch", "--weights")


def test_train_teacher_init_coco_needs_the_cached_file(tiny_cards, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    data = tiny_cards.files
    result = run_cli("train-teacher", "--labeled", data["labeled"], "--val", data["val"], "--init", "coco",
                     "--arch", "retinanet_resnet50_fpn_v2", "--out", tmp_path / "run", "--workers", 0)
    assert_user_error(result, "--init coco", str(tmp_path / "hub" / "checkpoints" / "retinanet_resnet50_fpn_v2_coco-5905b1c5.pth"),
                      "nothing is downloaded")
    assert "anchors" not in result.stdout  # refused before the data are read and the anchors fitted
    assert_user_error(run_cli("train-teacher", "--labeled", data["labeled"], "--val", data["val"], "--init",
                              tmp_path / "none.pth", "--out", tmp_path / "run", "--workers", 0), "none.pth", "not found")
    assert not (tmp_path / "run").exists()  # refused before the run folder is made


def test_the_demo_reads_a_change_within_its_noise_as_no_change():
    from types import SimpleNamespace

    from retinaslim.stages.demo import _notes

    def notes(human, distilled):
        reports = [SimpleNamespace(ap=ap, latency_ms=ms, params=p)
                   for ap, ms, p in [(0.012, 40.0, 32e6), (human, 2.0, 1.25e5), (distilled, 2.0, 1.25e5)]]
        filtered = SimpleNamespace(calibration=[], truth_metrics={})
        trainings = {"teacher": SimpleNamespace(history=[{"step": 144, "time": 300.0}])}
        return " ".join(_notes(SimpleNamespace(reports=reports), filtered, trainings))

    assert "left the student's AP within this scale's noise (0.172 human only -> 0.178" in notes(0.172, 0.178)
    assert "raised the student's AP (0.172 human only -> 0.200" in notes(0.172, 0.200)
    assert "lowered the student's AP (0.172 human only -> 0.140" in notes(0.172, 0.140)
    assert "20x faster than the teacher" in notes(0.172, 0.178)


def test_ctrl_c_says_how_to_resume(tiny_cards, tmp_path, monkeypatch):
    """Ctrl-C ends in one line, exit 130, naming the file to resume from, or saying there is none yet; SIGTERM too, exit 143."""
    from retinaslim import api

    def stopped(write):
        def run(*args, **kwargs):
            write(kwargs)
            raise KeyboardInterrupt
        return run

    files = ["--labeled", tiny_cards.files["labeled"], "--val", tiny_cards.files["val"]]
    for saved in (False, True):
        out = tmp_path / f"student-{saved}"
        monkeypatch.setattr(api, "train_student", stopped(
            lambda kw: (Path(kw["out"]).mkdir(), (Path(kw["out"]) / "last.pt").write_bytes(b"")) if saved else None))
        result = run_cli("train-student", *files, "--out", out, "--human-only")
        assert result.exit_code == 130 and "Traceback" not in result.stdout + result.stderr
        said = [line for line in result.stderr.splitlines() if line.strip()]
        expected = (f"continue with `retinaslim train-student --resume {out / 'last.pt'}`" if saved
                    else f"no checkpoint was saved yet, so there is no {out / 'last.pt'} to resume from")
        assert said == [f"error: interrupted; {expected}"], said

    target = tmp_path / "pseudo.json"
    for journal, expected in (("", f"no batch had finished ({target}.journal holds none): the same command starts over"),
                              ('{"header": {}}\n{"batch": 0, "records": []}\n',
                               f"{target}.journal keeps the finished batches: run the same command with --resume to continue")):
        monkeypatch.setattr(api, "pseudo_label", stopped(lambda kw, j=journal: Path(f"{kw['out']}.journal").write_text(j)))
        result = run_cli("pseudo-label", tiny_cards.out / "unlabeled", "--teacher", tmp_path / "t.pt", "--out", target)
        assert result.exit_code == 130
        assert [line for line in result.stderr.splitlines() if line.strip()] == [f"error: interrupted; {expected}"]

    # SIGTERM (a scheduler's stop, `kill`) ends the same way, exit 143, and the handler is put back afterwards
    def terminated(write):
        def run(*args, **kwargs):
            write(kwargs)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises here
            raise AssertionError("SIGTERM was not handled")
        return run

    def unhandled(signum, frame):  # in place of the default action, which would end pytest itself
        raise AssertionError("the command left SIGTERM to the handler it found")

    term = tmp_path / "term"
    monkeypatch.setattr(api, "train_student", terminated(lambda kw: (term.mkdir(exist_ok=True), (term / "last.pt").write_bytes(b""))))
    monkeypatch.setattr(api, "pseudo_label", terminated(
        lambda kw: Path(f"{kw['out']}.journal").write_text('{"header": {}}\n{"batch": 0, "records": []}\n')))
    before = signal.signal(signal.SIGTERM, unhandled)
    try:
        for args, expected in (
                (["train-student", *files, "--out", term, "--human-only"],
                 f"continue with `retinaslim train-student --resume {term / 'last.pt'}`"),
                (["train-student", "--resume", term / "last.pt", "--device", "cpu"],  # the machine's option kept
                 f"continue with `retinaslim train-student --resume {term / 'last.pt'} --device cpu`"),
                (["pseudo-label", tiny_cards.out / "unlabeled", "--teacher", tmp_path / "t.pt", "--out", target],
                 f"{target}.journal keeps the finished batches: run the same command with --resume to continue")):
            result = run_cli(*args)
            assert result.exit_code == 143 and signal.getsignal(signal.SIGTERM) is unhandled
            assert [line for line in result.stderr.splitlines() if line.strip()] == [f"error: terminated (SIGTERM); {expected}"]
    finally:
        signal.signal(signal.SIGTERM, before)

def test_outputs_never_replace_the_workspace_human_labels(tiny_cards, labeller, tmp_path, monkeypatch):
    """pseudo-label, predict and filter refuse an --out that is the workspace's labeled/val/truth file, before any work."""
    workspace = tmp_path / "ws"
    shutil.copytree(tiny_cards.out, workspace)  # a copy: a broken guard must not destroy the shared fixture
    monkeypatch.chdir(workspace)
    before = {name: (workspace / name).read_bytes() for name in ("labeled.json", "val.json")}
    assert_user_error(run_cli("pseudo-label", "--teacher", str(labeller), "--out", "labeled.json", "--workers", 0),
                      "--out labeled.json", "the input retinaslim.yaml's labeled:")
    assert_user_error(run_cli("predict", "unlabeled", "--weights", str(labeller), "--out", "val.json", "--workers", 0),
                      "--out val.json", "the input retinaslim.yaml's val:")
    pseudo = tmp_path / "pseudo.json"
    assert run_cli("pseudo-label", "--teacher", str(labeller), "--out", str(pseudo), "--workers", 0).exit_code == 0
    assert_user_error(run_cli("filter", str(pseudo), "--score-thresh", 0.3, "--out", "labeled.json"),
                      "--out labeled.json", "the input retinaslim.yaml's labeled:")
    assert {name: (workspace / name).read_bytes() for name in before} == before
