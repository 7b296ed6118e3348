"""benchmarks/distill.py's own parts: the default filter's per-class table, and the label sets' commands."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import distill  # noqa: E402


def test_the_threshold_table_says_which_classes_were_left_to_the_student():
    default = {
        "validation": [
            {"class_name": "WBC", "threshold": 0.252, "precision": 0.956, "recall": 1.0, "reached": True,
             "reliable": True, "teacher_ap50": 0.994, "student_ap50": 0.930, "teacher_ap": 0.62,
             "student_ap": 0.55},
            {"class_name": "RBC", "threshold": 0.907, "precision": 0.954, "recall": 0.064, "reached": True,
             "reliable": False, "teacher_ap50": 0.748, "student_ap50": 0.810, "teacher_ap": 0.38,
             "student_ap": 0.51},
            {"class_name": "Platelets", "threshold": 1.000001, "precision": 0.0, "recall": 0.0, "reached": False,
             "reliable": False, "teacher_ap50": 0.01, "student_ap50": 0.0, "teacher_ap": 0.004,
             "student_ap": 0.0},
        ],
        "per_class": {"WBC": {"boxes": 114, "precision": 0.947, "recall": 1.0}, "RBC": {"boxes": 0}},
    }
    default["validation"][0]["source"] = "bench/x/labels/self.json"  # the labels' file, chosen per class
    rows = {line.split(" | ")[0].strip("| "): line for line in distill.calibration_lines(default) if line.startswith("| ")}
    assert rows["WBC"] == "| WBC | self | 0.252 | 0.96 / 1.00 | 0.95 / 1.00 | 114 | 0.620 (0.994) / 0.550 (0.930) |"
    assert rows["RBC"] == "| RBC | - | 0.907 (left to the student) | 0.95 / 0.06 | - | 0 | 0.380 (0.748) / 0.510 (0.810) |"
    assert "(unreliable: keeps none)" in rows["Platelets"] and "left to" not in rows["Platelets"]
    header, rule = [line for line in distill.calibration_lines(default) if line.startswith("| ")][:2]
    assert header.count("|") == rule.count("|") == 8  # seven columns
    default["source_ap"] = {"l/ensemble.json": {"WBC": 0.62, "RBC": 0.38, "Platelets": 0.004},
                            "l/self.json": {"WBC": 0.716, "RBC": 0.549, "Platelets": 0.351}}
    rows = {line.split(" | ")[0].strip("| "): line for line in distill.calibration_lines(default) if line.startswith("| ")}
    assert rows["WBC"].startswith("| WBC | self (ensemble 0.620; self 0.716) | 0.252 |")


def planned_steps(out, label_sets):
    """distill.py's waves of steps for ``label_sets`` on placeholder files under ``out`` (nothing runs)."""
    data = distill.Dataset(labeled=out / "labeled.json", val=out / "val.json", test=out / "test.json",
                           unlabeled=out / "unlabeled", unlabeled_truth=out / "truth.json", calib=out / "calib.json")
    knobs = {"size": 64, "workers": 0, "teacher_epochs": 1, "student_epochs": 1, "latency_runs": 1}
    return distill.comparison_steps(data, out, knobs, label_sets, "cpu", "cpu", 0)


def test_the_default_label_set_compares_with_the_human_only_student(tmp_path):
    waves = planned_steps(tmp_path, ["default", "no_student"])
    filters = {step.name: [str(a) for a in step.args] for wave in waves for step in wave if step.name.startswith("filter_")}
    student = str(tmp_path / "runs" / "student_human" / "best.pt")
    assert filters["filter_default"][filters["filter_default"].index("--student") + 1] == student
    assert "--student" not in filters["filter_no_student"]
    # the default chooses per class between the teacher's ensemble, the human-only student's own (self-training)
    # and both fused (model ensembling), in that order
    sources = [a for a in filters["filter_default"][1:] if a.endswith(".json")][:3]
    assert sources == [str(tmp_path / "labels" / n) for n in ("ensemble.json", "self.json", "with_student.json")]
    assert filters["filter_default"][4] == "--out"
    # the human-only student is trained in a wave before any filter runs
    order = [step.name for wave in waves for step in wave]
    assert order.index("student_human") < order.index("filter_default")


def test_the_bccd_preset_trains_with_the_commands_default_schedules(tmp_path):
    """On BCCD the teacher and the students get train-teacher's and train-student's default schedules (12 / 60
    epochs, at least 1,000 / 2,000 steps): no --epochs, so the table shows what the defaults give."""
    data = distill.Dataset(labeled=tmp_path / "labeled.json", val=tmp_path / "val.json", test=tmp_path / "test.json",
                           unlabeled=tmp_path / "unlabeled", unlabeled_truth=tmp_path / "truth.json",
                           calib=tmp_path / "calib.json")
    waves = distill.comparison_steps(data, tmp_path, distill.PRESETS["bccd"], ["default"], "cpu", "cpu", 0)
    trainings = {step.name: step.args for wave in waves for step in wave if step.args[0].startswith("train-")}
    assert set(trainings) == {"teacher", "student_human", "student_default"}
    assert all("--epochs" not in args and "--iterations" not in args for args in trainings.values())


def test_with_student_labels_with_the_teacher_and_the_human_only_student_in_the_first_round(tmp_path):
    waves = planned_steps(tmp_path, ["default", "with_student"])
    wave_of = {step.name: i for i, wave in enumerate(waves) for step in wave}
    pseudo = next(step for wave in waves for step in wave if step.name == "pseudo_with_student")
    args = [str(a) for a in pseudo.args]
    assert [args[i + 1] for i, a in enumerate(args) if a == "--teacher"] == [
        str(tmp_path / "runs" / "teacher" / "best.pt"), str(tmp_path / "runs" / "student_human" / "best.pt")]
    # it needs no distilled student: it labels alongside the teacher's own ensemble, before any student trains on it
    assert wave_of["pseudo_with_student"] == wave_of["pseudo_ensemble"]
    assert wave_of["filter_with_student"] < wave_of["student_default"]
    filter_args = [str(a) for a in next(s for w in waves for s in w if s.name == "filter_with_student").args]
    assert filter_args[1] == str(tmp_path / "labels" / "with_student.json") and "--student" in filter_args


def test_self_training_labels_with_the_human_only_student_and_its_second_round_waits_for_it(tmp_path):
    waves = planned_steps(tmp_path, ["default", "self_training", "self_round_2"])
    wave_of = {step.name: i for i, wave in enumerate(waves) for step in wave}
    steps = {step.name: [str(a) for a in step.args] for wave in waves for step in wave}

    def labellers(name):
        args = steps[name]
        return [args[i + 1] for i, a in enumerate(args) if a == "--teacher"]

    assert labellers("pseudo_self") == [str(tmp_path / "runs" / "student_human" / "best.pt")]
    assert labellers("pseudo_self2") == [str(tmp_path / "runs" / "student_self_training" / "best.pt")]
    # round 1's self-trained student exists before round 2 labels with it; both filter as the default does
    assert wave_of["student_self_training"] < wave_of["pseudo_self2"] < wave_of["filter_self_round_2"]
    for name in ("filter_self_training", "filter_self_round_2"):
        assert steps[name][steps[name].index("--student") + 1] == str(tmp_path / "runs" / "student_human" / "best.pt")
        assert "--calib" in steps[name] and "--score-thresh" not in steps[name]


def test_the_second_self_training_round_needs_the_first(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["distill.py", "--out", str(tmp_path), "--quick", "--label-sets", "default,self_round_2"])
    with pytest.raises(SystemExit) as stop:
        distill.main()
    assert stop.value.code == 2
    assert "self_round_2 labels with the self_training student" in capsys.readouterr().err
