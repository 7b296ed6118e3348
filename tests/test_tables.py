"""Result tables stay readable on an 80-column terminal: no name or number cut short."""

import io
import re

import pytest
from rich.console import Console

from retinaslim import console
from retinaslim.cli.evaluate import render_eval
from retinaslim.stages.evaluate import EvalResult, ModelReport

CLASSES = ["id_card", "bank_card", "passport", "residence_permit_back"]
WEIGHTS = ["runs/teacher/best.pt", "runs/student-human/best.pt", "runs/student/best.pt", "runs/student/last.pt"]
SHORT = ["teacher", "student-human", "student", "student/last.pt"]


@pytest.fixture
def screen(monkeypatch):
    """The console as an 80-column terminal; returns what was drawn."""
    out = io.StringIO()
    monkeypatch.setattr(console, "console", Console(file=out, width=80, color_system=None))
    return out


def _report(k: int, weights: str) -> ModelReport:
    per_class = {name: round(0.101 * (k + 1) + 0.011 * c, 3) for c, name in enumerate(CLASSES)}
    per_class["passport"] = None  # no truth of that class
    return ModelReport(weights=weights, arch="slim-s", ap=0.4 + k / 100, ap50=0.7, ap75=0.35 + k / 100, ap_small=None,
                       ap_medium=0.3, ap_large=0.5, ar100=0.6, per_class_ap=per_class, per_class_ap50=per_class,
                       per_class_ap75=per_class, latency_ms=8.6 + k,
                       latency_p90_ms=9.9, fps=116.3, throughput=210.4, batch_size=8, params=130_000,
                       macs=90_000_000, size_mb=0.55, image_size=320, device="cpu", threads=2, predictions=None,
                       pr_plot=None)


def _rows(text: str, first: str) -> list[list[str]]:
    """The cells of every table row whose first cell is ``first``."""
    return [[cell.strip() for cell in re.split("[│┃]", line.strip().strip("│┃"))] for line in text.splitlines()
            if re.match(rf"[│┃]\s*{re.escape(first)}\s*[│┃]", line)]


def _row(text: str, first: str) -> list[str]:
    rows = _rows(text, first)
    assert len(rows) == 1, (first, rows)
    return rows[0]


def test_eval_tables_fit_80_columns_with_every_name_and_value(screen):
    reports = [_report(k, w) for k, w in enumerate(WEIGHTS)]
    render_eval(EvalResult(reports, latency_runs=20, warmup_runs=3, batch_size=8, json_out=None))
    text = screen.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "…" not in text
    for name in SHORT:  # a checkpoint's name whole, in its own cell: a row in each of the three tables
        assert len(_rows(text, name)) == 3, name
    assert ["weights", "AP75", "AP small", "AP medium", "AP large", "AR@100"] in _rows(text, "weights")
    assert ["student-human", "0.360", "-", "0.300", "0.500", "0.600"] in _rows(text, "student-human")  # - : no small objects
    assert _row(text, "class") == ["class", *SHORT]
    for name in CLASSES:  # a row per class: the class's AP for each checkpoint, in order
        expected = ["-" if r.per_class_ap[name] is None else f"{r.per_class_ap[name]:.3f}" for r in reports]
        assert _row(text, name) == [name, *expected]


def test_a_wide_table_is_transposed_and_nothing_is_cut(screen):
    columns = ["images", "skipped", "boxes", "boxes/image", "images/s", "decode wait s", "forward s", "fusion s"]
    console.table("pseudo-label: 6 transforms", columns, [(1800, 3, 4321, 2.4, 31.5, 0.25, 50.5, 3.25)])
    text = screen.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80 and "…" not in text
    assert _row(text, "decode wait s") == ["decode wait s", "0.250"] and _row(text, "images") == ["images", "1,800"]

    screen.truncate(0)
    narrow = [("slim-s", 0.13, 0.09)]  # fits: drawn as it is
    console.table("profile", ["arch", "params M", "GMACs"], narrow)
    assert _row(screen.getvalue(), "slim-s") == ["slim-s", "0.130", "0.090"]


def test_filter_suggests_self_training_for_the_classes_its_student_finds_better(screen):
    from pathlib import Path

    from retinaslim.cli.filter import _render
    from retinaslim.engine.thresholds import Calibration
    from retinaslim.stages.filter import FilterResult

    def calibration(name, teacher_ap, student_ap):
        return Calibration(name, 0.5, 0.95, 0.8, True, student_ap <= teacher_ap, teacher_ap50=0.9, student_ap50=0.9,
                           teacher_ap=teacher_ap, student_ap=student_ap, source="runs/pseudo.json")

    names = ["WBC", "RBC", "Platelets"]
    result = FilterResult(out=Path("f.json"), thresholds=dict.fromkeys(names, 0.5), num_images_in=4, num_images_out=4,
                          num_boxes_in=dict.fromkeys(names, 3), num_boxes_kept=dict.fromkeys(names, 1),
                          num_ignore_regions=0, num_empty_images=0, rules=[], histogram=[],
                          calibration=[calibration("WBC", 0.7, 0.6), calibration("RBC", 0.4, 0.5),
                                       calibration("Platelets", 0.1, 0.3)])
    _render(result, Path("runs/student-human/best.pt"))
    text = " ".join(screen.getvalue().split())  # the warning wraps at 80 columns
    assert "self-training may label RBC, Platelets better than this teacher" in text
    assert "pseudo-label IMAGES --teacher runs/student-human/best.pt --out STUDENT.json" in text
    assert "RBC: the human-only student finds and places it better than the labels of pseudo.json" in text
    assert _row(screen.getvalue(), "labels from") == ["labels from", *["pseudo.json"] * 3]  # the labels' file per class
    screen.seek(0)
    screen.truncate()
    _render(result, None)  # without the student's checkpoint there is no command to name
    result.labelled_by_student = True
    _render(result, Path("runs/student-human/best.pt"))  # the labels are already the student's own
    assert "self-training" not in screen.getvalue()
    # several files of labels: each one's validation AP per class, the choice filter made
    result.source_ap = {"runs/pseudo.json": {"WBC": 0.7, "RBC": 0.4, "Platelets": 0.1},
                        "runs/pseudo-student.json": {"WBC": 0.65, "RBC": 0.55, "Platelets": 0.35}}
    _render(result, Path("runs/student-human/best.pt"))
    assert _row(screen.getvalue(), "pseudo-student.json") == ["pseudo-student.json", "0.650", "0.550", "0.350"]
    assert _row(screen.getvalue(), "pseudo.json") == ["pseudo.json", "0.700", "0.400", "0.100"]
