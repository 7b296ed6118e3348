"""Benchmark data distillation: a ResNet50 teacher, a slim student on human labels, and students on
human + machine labels, side by side (AP, latency, FPS, size), with the issue's targets checked.

    python benchmarks/distill.py --out bench/distill --label-sets default   # full size, the defaults only: ~2 h on 2 CPU cores
    python benchmarks/distill.py --out bench/distill_quick --quick    # smoke test: minutes, numbers mean nothing
    python benchmarks/distill.py --out bench/distill_gpu --device cuda --eval-device cpu --jobs 8 ...  # a GPU machine

Every step is a `retinaslim` command run as a subprocess: it is printed before it runs, its output goes
to OUT/logs/<step>.log (each attempt appended below a ==== line with its time and command), and OUT/steps/<step>.json records it with its wall time once it succeeded. A
recorded step is skipped, so an interrupted run continues where it stopped (an interrupted training
resumes from its last.pt, an interrupted pseudo-label from its journal). OUT/setup.json pins the size
knobs: rerunning with other sizes into the same OUT is refused.

Steps on `retinaslim synth` data (L human-labelled, U unlabelled with hidden truth, V validation images,
V test images of another seed, and C extra human-labelled images that only the precision-calibrated
filter variant uses); with --jobs N, up to N independent steps (the two first trainings, the pseudo-label
runs, the filters, the students) run at once:
1. train-teacher (ResNet50 RetinaNet) on the human labels;
2. train-student (slim-s) on the human labels only;
3. pseudo-label the unlabelled images with the default ensemble (scales 0.75/1/1.25 x flip, WBF), and
   with a single pass (scale 1, no flip) for the variant, and with the ensemble run by the human-only
   student itself (self-training: what machine labels are worth when the teacher is no better), and with
   the teacher and that student together (model ensembling);
4. filter the machine labels (scored against the hidden truth): the default (the teacher's, the human-only
   student's and both models' fused ensembles, each class from the one with the highest validation AP, thresholds
   per class chosen on the validation set) and one variant per rule;
5. train-student on human + each set of machine labels (default settings otherwise);
6. eval every checkpoint on the test images in one side-by-side table (+ precision-recall PNGs).
7. the teacher and the default student timed again at 320 px, where the speed target is set.

Outputs: the `synthetic` and `setup` objects merged into --results-json (other sections are kept), a
markdown section (table, targets, exact commands) written between the `<!-- distill:begin -->` and
`<!-- distill:end -->` markers of --markdown, and the targets printed as holding or not.

Real photographs, `--bccd DIR` (../shared/data/bccd, Pascal VOC): `retinaslim convert --from voc --split`
turns the dataset's own train, val and test lists into COCO files; --labeled train-split images (a seeded
draw) keep their labels and the rest become the unlabelled pool (symlinked images; their labels only score
the machine labels). The val split picks each run's best epoch and calibrates the precision filter; the
test split is the table's. Results go under the `bccd` key and between the `<!-- distill-bccd:begin -->`
markers.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import torch

from retinaslim import config
from retinaslim.core.atomic import atomic_path, write_json
from retinaslim.engine.thresholds import Calibration

THRESH = config.FILTER_SCORE_THRESH  # filter's fixed threshold when it has no validation set
SECTIONS = {"synthetic": "distill", "bccd": "distill-bccd"}  # results key -> markdown marker name

# Size presets: `full` is what docs/results.md reports; `quick` proves the script works end to end.
# teacher_epochs / student_epochs None: the command's default schedule (12 / 60 epochs, at least
# config.TEACHER_MIN_ITERATIONS / STUDENT_MIN_ITERATIONS steps).
PRESETS = {
    # 1,000 labelled images: a ResNet50 from scratch needs a labelled set of this order to beat the student
    # (docs/results.md, "With a labelled set the ResNet50 can use"); 20 teacher epochs are 2,500 steps of 8.
    "full": {"size": 128, "labeled": 1000, "unlabeled": 1500, "val": 200, "calib": 100, "teacher_epochs": 20,
             "student_epochs": None, "latency_runs": 50,
             "workers": 2},
    "quick": {"size": 96, "labeled": 16, "unlabeled": 32, "val": 12, "calib": 8, "teacher_epochs": 1,
              "student_epochs": 2, "latency_runs": 3, "workers": 0},
    # BCCD: `labeled` of the 205 train-split images keep their labels, the rest are the unlabelled pool;
    # val, test and calibration images are the dataset's own splits, so those knobs do not apply.
    "bccd": {"size": 256, "labeled": 100, "teacher_epochs": None,
             "student_epochs": None, "latency_runs": 50, "workers": 2},
    "bccd_quick": {"size": 96, "labeled": 8, "teacher_epochs": 1, "student_epochs": 1, "latency_runs": 3, "workers": 0},
}

# Machine-label sets: name -> (pseudo-label run, filter options, what it tests[, train-student options]).
# `default` (filter's defaults in a workspace: the validation set and the human-only student) is the
# student_distilled of the results. The rule variants pin the threshold they were first measured at, 0.5
# (filter's default before these results moved it to 0.2): each adds one rule to it.
LABEL_SETS = {
    "default": (("ensemble", "self", "with_student"), ["--calib", "{val}", "--student", "{student}"],
                f"default: the teacher's, the human-only student's own and both models' fused ensembles "
                f"({len(config.PSEUDO_SCALES)} scales x flip, {config.PSEUDO_FUSION}), each class from the one with the "
                f"highest validation AP, thresholds per class by {config.FILTER_VALIDATION_RULE} on the validation set, "
                "classes the student's single pass finds better left to it"),
    "teacher_or_self": (("ensemble", "self"), ["--calib", "{val}", "--student", "{student}"],
                        "the teacher's or the human-only student's own ensemble per class, as the default but without "
                        "the fused one (the default of session 27)"),
    "teacher_only": ("ensemble", ["--calib", "{val}", "--student", "{student}"],
                     "the teacher's ensemble only, thresholds per class on the validation set, classes the human-only "
                     "student finds better left to it (the default of sessions 19-26)"),
    "no_student": ("ensemble", ["--calib", "{val}"], "the teacher's labels without the human-only student: every class "
                   "whose threshold reaches the target is trained on (filter's default before session 19)"),
    "thresh_0.2": ("ensemble", ["--score-thresh", str(THRESH)], f"fixed {THRESH} (filter's default without a validation set)"),
    "single_pass": ("single", ["--score-thresh", "0.5"], "single pass (no ensembling), fixed 0.5"),
    "no_threshold": ("ensemble", ["--score-thresh", "0"], "every box above pseudo-label's floor (0.05)"),
    "thresh_0.3": ("ensemble", ["--score-thresh", "0.3"], "fixed 0.3"),
    "thresh_0.5": ("ensemble", ["--score-thresh", "0.5"], "fixed 0.5 (filter's default before this benchmark)"),
    "agreement": ("ensemble", ["--score-thresh", "0.5", "--min-agreement", "3"],
                  "fixed 0.5 + found by >= 3 of 6 transforms (here the same boxes as fixed 0.5 alone)"),
    "ambiguous_ignore": ("ensemble", ["--score-thresh", "0.5", "--ambiguous", "ignore"],
                         "fixed 0.5 + boxes scored 0.2-0.5 as ignore regions"),
    "drop_empty": ("ensemble", ["--score-thresh", "0.5", "--drop-empty"],
                   "fixed 0.5, images left without boxes dropped (not used as background)"),
    "auto_instances": ("ensemble", ["--auto-thresh", "instances", "--labeled", "{labeled}"],
                       "Data Distillation threshold (as many boxes per image as human labels)"),
    "auto_precision": ("ensemble", ["--auto-thresh", "precision", "--calib", "{calib}"],
                       "threshold reaching precision 0.95 on the calibration images"),
    "self_training": ("self", ["--calib", "{val}", "--student", "{student}"],
                      "self-training: the human-only student's own default ensemble labels the pool (no teacher), "
                      "thresholds per class on the validation set, classes its single pass finds better left out"),
    "score_weighted": ("ensemble", ["--calib", "{val}", "--student", "{student}"],
                       "the default labels, each machine box's loss scaled by its score", ["--pseudo-box-weight", "score"]),
    "default_ignore": ("ensemble", ["--calib", "{val}", "--student", "{student}", "--ambiguous", "ignore"],
                       "the default, with the boxes scored from 0.2 (--ambiguous-low) up to each class's threshold as ignore "
                       "regions (filter --ambiguous ignore)"),
    "with_student": ("with_student", ["--calib", "{val}", "--student", "{student}"],
                     "the teacher and the human-only student label together (both ensembled: Data Distillation's model "
                     "ensembling), thresholds per class on the validation set, classes the human-only student finds "
                     "better left to it"),
    "round_2": ("round2", ["--calib", "{val}", "--student", "{student}"], "second round: the teacher and the default "
                "distilled student label together (both ensembled), thresholds per class on the validation set"),
    "self_round_2": ("self2", ["--calib", "{val}", "--student", "{student}"], "self-training, second round: the "
                     "self-trained student's ensemble labels the pool for a new student, filtered as self_training"),
}
BCCD_LABEL_SETS = "default,teacher_only,no_student,thresh_0.2,single_pass,thresh_0.5,auto_precision"  # the sets that decided its reading
# Pseudo-label runs: name -> (labelling models' runs, options). `self` labels with the human-only student,
# `with_student` with it and the teacher; `round2` with the teacher and the student distilled on the default
# labels, so it waits for that student; `self2` with the self-trained student, so it waits for that one.
PSEUDO_RUNS = {"ensemble": (["teacher"], []), "single": (["teacher"], ["--scales", "1", "--no-hflip"]),
               "self": (["student_human"], []), "with_student": (["teacher", "student_human"], []),
               "round2": (["teacher", "student_default"], []), "self2": (["student_self_training"], [])}
FIRST_ROUND = {"teacher", "student_human"}  # the runs trained before any machine label exists
SPEED_SIZE = 320  # the longer side in pixels at which the speed target is set (the distillation issue)


def pseudo_runs(label_set: str) -> tuple[str, ...]:
    """The pseudo-label runs (PSEUDO_RUNS) whose outputs a label set filters: one, or several filter chooses
    between per class."""
    runs = LABEL_SETS[label_set][0]
    return (runs,) if isinstance(runs, str) else runs


@dataclass
class Step:
    """One `retinaslim` command; ``resume`` continues it instead when ``resume_from`` exists.

    A step recorded as done is skipped; with ``summary`` (eval) only if it was recorded with the same
    command and no earlier step ran in this invocation, so that it scores the checkpoints as they are.
    """

    name: str
    args: list[str]
    resume: list[str] = field(default_factory=list)
    resume_from: Path | None = None
    summary: bool = False


@dataclass
class Dataset:
    """A prepared comparison: COCO files and the unlabelled image folder (with its hidden truth).

    ``val`` picks each training run's best epoch; ``test`` is what the table reports.
    """

    labeled: Path
    val: Path
    test: Path
    unlabeled: Path
    unlabeled_truth: Path
    calib: Path


def comparison_steps(data: Dataset, out: Path, knobs: dict, label_sets: list[str], device: str, eval_device: str,
                     seed: int) -> list[list[Step]]:
    """Teacher, students and machine labels for one prepared dataset, as `retinaslim` commands, in waves:
    the steps of a wave depend only on earlier waves (trainings, pseudo-labels, filters, students, then the
    same three again for label sets whose labellers include a student distilled in the first, then eval)."""
    runs, labels = out / "runs", out / "labels"
    common = ["--image-size", knobs["size"], "--workers", knobs["workers"], "--device", device, "--seed", seed]
    data_args = ["--labeled", data.labeled, "--val", data.val]

    def training(role: str, name: str, epochs: int | None, extra: list) -> Step:
        run = runs / name
        schedule = [] if epochs is None else ["--epochs", epochs]  # None: the command's default schedule
        return Step(name, [f"train-{role}", *data_args, "--out", run, *schedule, *common, *extra],
                    ["train-" + role, "--resume", run / "last.pt"], run / "last.pt")

    def pseudo(name: str) -> Step:
        labellers, extra = PSEUDO_RUNS[name]
        target = labels / f"{name}.json"
        teachers = [a for run in labellers for a in ("--teacher", runs / run / "best.pt")]
        args = ["pseudo-label", data.unlabeled, *teachers, "--out", target,
                "--workers", knobs["workers"], "--device", device, *extra]
        return Step(f"pseudo_{name}", args, [*args, "--resume"], target.with_name(target.name + ".journal"))

    trainings = [training("teacher", "teacher", knobs["teacher_epochs"], []),
                 training("student", "student_human", knobs["student_epochs"], ["--human-only"])]

    def label_set_steps(name: str) -> tuple[Step, Step]:
        """The filter and the student of one label set."""
        _, options, _, *student_options = LABEL_SETS[name]
        options = [o.format(labeled=data.labeled, calib=data.calib, val=data.val,
                            student=runs / "student_human" / "best.pt") for o in options]
        filtered = labels / f"filtered_{name}.json"
        sources = [labels / f"{run}.json" for run in pseudo_runs(name)]
        return (Step(f"filter_{name}", ["filter", *sources, "--out", filtered, *options,
                                        "--truth", data.unlabeled_truth, "--report", labels / f"filter_{name}.report.json",
                                        "--workers", knobs["workers"], "--device", device]),
                training("student", f"student_{name}", knobs["student_epochs"],
                         ["--pseudo", filtered, *(student_options[0] if student_options else [])]))

    def first_round(run: str) -> bool:
        return set(PSEUDO_RUNS[run][0]) <= FIRST_ROUND

    waves = [trainings]
    runs_needed = {run for name in label_sets for run in pseudo_runs(name)}
    for first in (True, False):  # round 1, then label sets labelled by a distilled student
        pseudos = [n for n in PSEUDO_RUNS if n in runs_needed and first_round(n) == first]
        steps = [label_set_steps(n) for n in label_sets if all(first_round(run) for run in pseudo_runs(n)) == first]
        if steps:
            waves += [[pseudo(n) for n in pseudos], [f for f, _ in steps], [s for _, s in steps]]
    weights = [runs / name / "best.pt" for name in ["teacher", "student_human", *(f"student_{n}" for n in label_sets)]]
    evaluation = Step("eval", ["eval", *(a for w in weights for a in ("--weights", w)), "--data", data.test,
                               "--latency-runs", knobs["latency_runs"], "--json", out / "eval.json", "--plots", out / "plots",
                               "--workers", knobs["workers"], "--device", eval_device], summary=True)
    # The speed target is set at 320 px: the teacher and the default student timed there, on real test images.
    speed = Step("eval_320", ["eval", "--weights", weights[0], "--weights", runs / "student_default" / "best.pt",
                              "--data", data.test, "--image-size", SPEED_SIZE, "--latency-runs", knobs["latency_runs"],
                              "--json", out / "eval_320.json", "--workers", knobs["workers"], "--device", eval_device],
                 summary=True)
    return [*waves, [evaluation], [speed]]


def run_step(step: Step, out: Path, earlier_ran: bool) -> dict:
    """Run ``step`` unless OUT/steps records it as done; returns its record (command, seconds, resumed, ran)."""
    record_path = out / "steps" / f"{step.name}.json"
    command = shlex.join(["retinaslim", *(str(a) for a in step.args)])
    if record_path.is_file():
        record = json.loads(record_path.read_text())
        if not step.summary or (record["command"] == command and not earlier_ran):
            print(f"[done]  {step.name} ({record['seconds']:.0f} s, recorded in {record_path})")
            return record | {"ran": False}
    resumed = step.resume_from is not None and step.resume_from.exists()
    args = [str(a) for a in (step.resume if resumed else step.args)]
    log = out / "logs" / f"{step.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"[run]   {step.name}{' (resuming)' if resumed else ''}: {shlex.join(['retinaslim', *args])}  (log: {log})",
          flush=True)
    started = time.perf_counter()
    with open(log, "a") as f:  # wide rich tables in the log; the child inherits PYTHONPATH and thread settings
        f.write(f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(['retinaslim', *args])}\n")
        f.flush()
        code = subprocess.run([sys.executable, "-m", "retinaslim", *args], stdout=f, stderr=subprocess.STDOUT,
                              env={**os.environ, "COLUMNS": "200"}, check=False).returncode
    seconds = time.perf_counter() - started
    if code != 0:
        print("".join(log.read_text().splitlines(keepends=True)[-20:]), end="")
        raise SystemExit(f"step {step.name} failed (exit {code}); its log: {log}")
    record = {"command": command, "seconds": seconds, "resumed": resumed}
    write_json(record_path, record)
    print(f"        {seconds:.0f} s")
    return record | {"ran": True}


def machine() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def model_row(report: dict, record: dict) -> dict:
    """One checkpoint's eval numbers, with its training time: the run's results.csv ``time`` (all invocations),
    else (a run from before that column) the step's wall time, of the last invocation only when it was resumed."""
    keys = ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large", "ar100", "per_class_ap", "latency_ms",
            "latency_p90_ms", "fps", "throughput", "batch_size", "params", "macs", "size_mb", "image_size", "weights")
    with open(Path(report["weights"]).parent / "results.csv", newline="") as f:
        last = list(csv.DictReader(f))[-1]
    if last.get("time"):
        return {k: report[k] for k in keys} | {"train_seconds": float(last["time"]), "train_resumed": False}
    return {k: report[k] for k in keys} | {"train_seconds": record["seconds"], "train_resumed": record["resumed"]}


def check_targets(result: dict) -> list[dict]:
    """The distillation issue's targets, each with the numbers it rests on and whether it holds."""
    teacher, human, distilled = result["teacher"], result["student_human"], result["student_distilled"]
    gain = 100 * (distilled["ap"] - human["ap"])
    gap = 100 * (teacher["ap"] - distilled["ap"])
    device = result["setup"].get("eval_device", result["setup"]["device"])
    at_size = f"{teacher['latency_ms'] / distilled['latency_ms']:.1f}x at {result['setup']['size']} px"
    speed = result.get("speed_320")
    speedup = speed["teacher_ms"] / speed["student_ms"] if speed else None
    timed = (f"{speedup:.2f}x faster at {SPEED_SIZE} px ({speed['teacher_ms']:.1f} vs {speed['student_ms']:.1f} ms), "
             if speed else f"not timed at {SPEED_SIZE} px, ")
    targets = [
        {"target": "distilled student AP >= human-only student AP + 3 points",
         "measured": f"{distilled['ap']:.3f} vs {human['ap']:.3f}: {gain:+.1f} points", "holds": gain >= 3},
        {"target": f"distilled student AP >= teacher AP - 2 points, at >= 25x the teacher's CPU speed at {SPEED_SIZE} px",
         "measured": f"{distilled['ap']:.3f} vs teacher {teacher['ap']:.3f} ({-gap:+.1f} points), {timed}"
                     f"{at_size} (batch-1 median latency on {device}, trained weights, test images)",
         "holds": gap <= 2 and speedup is not None and speedup >= 25 and device == "cpu"},
        {"target": "the defaults leave the student no more than 0.5 point below human-only",
         "measured": f"{gain:+.1f} points", "holds": gain >= -0.5},
    ]
    single = result["variants"].get("single_pass")
    if single is None:
        targets.append({"target": "default ensemble + filter beats single pass + fixed 0.5",
                        "measured": "not measured (single_pass not among --label-sets)", "holds": None})
    else:
        labels = result["machine_labels"]
        targets.append({
            "target": "default ensemble + filter beats single pass + fixed 0.5 as a source of machine labels",
            "measured": f"student AP {distilled['ap']:.3f} vs {single['ap']:.3f}; machine labels vs truth AP "
                        f"{labels['default']['ap']:.3f} vs {labels['single_pass']['ap']:.3f}",
            "holds": distilled["ap"] > single["ap"]})
    return targets


def collect(out: Path, label_sets: list[str], records: dict[str, dict], setup: dict) -> dict:
    reports = {Path(r["weights"]).parent.name: r for r in json.loads((out / "eval.json").read_text())}
    result = {"setup": setup,
              "teacher": model_row(reports["teacher"], records["teacher"]),
              "student_human": model_row(reports["student_human"], records["student_human"]),
              "variants": {}, "machine_labels": {}}
    for name in label_sets:
        result["variants"][name] = model_row(reports[f"student_{name}"], records[f"student_{name}"])
        report = json.loads((out / "labels" / f"filter_{name}.report.json").read_text())
        result["machine_labels"][name] = report["truth_metrics"]["after"] | {
            "thresholds": report["thresholds"], "validation": report.get("calibration", []),
            "source_ap": report.get("source_ap", {})}
    result["student_distilled"] = result["variants"]["default"]
    speed = {Path(r["weights"]).parent.name: r for r in json.loads((out / "eval_320.json").read_text())}
    result["speed_320"] = {"teacher_ms": speed["teacher"]["latency_ms"], "student_ms": speed["student_default"]["latency_ms"],
                           "image_size": SPEED_SIZE}
    result["targets"] = check_targets(result)
    result["commands"] = [records[name]["command"] for name in records]
    result["seconds"] = sum(r["seconds"] for r in records.values())
    return result


def markdown(result: dict, invocation: str) -> str:
    s = result["setup"]
    rows = [("teacher (ResNet50 RetinaNet), human labels", result["teacher"]),
            ("student (slim-s), human labels only", result["student_human"])]
    rows += [(f"student, human + machine labels: {LABEL_SETS[n][2]}", r) for n, r in result["variants"].items()]
    batch = result["teacher"]["batch_size"]
    if s["dataset"] == "bccd":
        title = "### Real photographs: BCCD"
        data = (f"Data: BCCD ({s['source']}) converted with `retinaslim convert --from voc --split`: of the train split's "
                f"{s['labeled'] + s['unlabeled']} images, {s['labeled']} keep their labels (seed {s['seed']}) and {s['unlabeled']} "
                f"are the unlabelled pool (their labels only score the machine labels); the val split ({s['val']} images) picks "
                f"each run's best epoch and calibrates the precision filter; the table is on the test split ({s['test']} images). "
                f"Longer side {s['size']} px.")
    else:
        title = "### Synthetic cards"
        data = (f"Data: `retinaslim synth` seed {s['seed']}, {s['labeled']} human-labelled, {s['unlabeled']} unlabelled, "
                f"{s['val']} validation (+{s['calib']} calibration) images of {s['size']} px; the table is on "
                f"{s['val']} test images of another seed ({s.get('test_seed', 'n/a')}).")
    default_schedule = {role: f"the default schedule ({config.TRAIN_DEFAULTS[role]['epochs']} epochs, at least {floor:,} steps)"
                        for role, floor in (("teacher", config.TEACHER_MIN_ITERATIONS), ("student", config.STUDENT_MIN_ITERATIONS))}
    lines = [
        title, "",
        (f"Command: `{invocation}` ({result['seconds'] / 60:.0f} min of steps, summed over steps run side by side). "
         f"Machine: {s['machine']}, {s['cpu_count']} CPUs{', ' + s['gpu'] if s.get('gpu') else ''}, torch {s['torch']}; "
         f"training on {s['device']}, the table (AP and latency) on {s.get('eval_device', s['device'])}"
         f"{' with ' + str(s['threads']) + ' torch threads' if s.get('eval_device', s['device']) == 'cpu' else ''}. Date: {s['date']}."), "",
        (f"{data} Epochs: teacher {s['teacher_epochs'] or default_schedule['teacher']}, students {s['student_epochs'] or default_schedule['student']}; every other setting is the "
         f"commands' default. Latency: batch 1, median of {s['latency_runs']} runs after 3 warm-up runs; img/s at batch {batch}."), "",
        f"| model | AP | AP50 | AP75 | ms (p50) | ms (p90) | FPS | img/s b{batch} | params | GMACs | MB | train min |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for label, r in rows:
        lines.append(f"| {label} | {r['ap']:.3f} | {r['ap50']:.3f} | {r['ap75']:.3f} | {r['latency_ms']:.1f} | "
                     f"{r['latency_p90_ms']:.1f} | {r['fps']:.1f} | {r['throughput']:.1f} | {r['params']:,} | "
                     f"{r['macs'] / 1e9:.3f} | {r['size_mb']:.2f} | {r['train_seconds'] / 60:.1f}"
                     f"{' (resumed: last part only)' if r['train_resumed'] else ''} |")
    lines += ["", "Machine labels after filtering, against the unlabelled images' hidden truth (precision and recall at IoU 0.5):", "",
              "| labels | boxes | precision | recall | AP | AP50 | per class: boxes, precision / recall |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, m in result["machine_labels"].items():
        lines.append(f"| {LABEL_SETS[name][2]} | {m['boxes']} | {m['precision']:.3f} | {m['recall']:.3f} | "
                     f"{m['ap']:.3f} | {m['ap50']:.3f} | {per_class_cell(m.get('per_class', {}))} |")
    lines += calibration_lines(result["machine_labels"]["default"])
    lines += ["", "Targets:", ""]
    for t in result["targets"]:
        verdict = {True: "holds", False: "does not hold", None: "not measured"}[t["holds"]]
        lines.append(f"- {t['target']}: {t['measured']} — **{verdict}**")
    lines += ["", "The commands it ran:", "", "```bash", *result["commands"], "```"]
    return "\n".join(lines) + "\n"


def calibration_lines(default: dict) -> list[str]:
    """The default filter's per-class thresholds: what it predicted on the validation images against what the
    kept boxes reached on the hidden truth (precision and recall at IoU 0.5)."""
    if not default.get("validation"):
        return []
    achieved = default.get("per_class", {})
    lines = ["", "The default filter's thresholds, chosen per class on the validation images: the chosen labels' "
                 "precision and recall there at that threshold (predicted) against what the kept machine labels reached on "
                 "the unlabelled images' hidden truth (achieved, after every filter rule):", "",
             "| class | labels from (validation AP of each file's) | threshold | validation precision / recall (predicted) | hidden truth precision / recall "
             "(achieved) | boxes kept | validation AP (AP50): these labels / human-only student |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for c in default["validation"]:
        truth = achieved.get(c["class_name"], {})
        found = " (left to the student)" if Calibration(**c).below_student else "" if c["reached"] and c["reliable"] else " (unreliable: keeps none)"
        pair = (f"{truth['precision']:.2f} / {truth['recall']:.2f}"
                if truth.get("precision") is not None and truth.get("recall") is not None else "-")
        versus = (f"{c['teacher_ap']:.3f} ({c['teacher_ap50']:.3f}) / {c['student_ap']:.3f} ({c['student_ap50']:.3f})"
                  if c.get("student_ap") is not None else "-")
        source = Path(c["source"]).stem if c.get("source") else "-"
        if len(default.get("source_ap", {})) > 1:  # several files: each one's validation AP, the choice made
            each = (f"{Path(f).stem} {aps[c['class_name']]:.3f}" for f, aps in default["source_ap"].items())
            source += f" ({'; '.join(each)})"
        lines.append(f"| {c['class_name']} | {source} | {c['threshold']:.3f}{found} | {c['precision']:.2f} / {c['recall']:.2f} | "
                     f"{pair} | {truth.get('boxes', '-')} | {versus} |")
    return lines


def per_class_cell(per_class: dict) -> str:
    """``WBC 197, 0.81 / 0.99; ...`` ("-" for a missing number; the whole cell "-" for one class or an old report)."""
    def num(v):
        return "-" if v is None else f"{v:.2f}"

    if len(per_class) < 2:
        return "-"
    return "; ".join(f"{name} {c['boxes']}, {num(c['precision'])} / {num(c['recall'])}" for name, c in per_class.items())


def write_markdown(path: Path, section: str, marker: str) -> None:
    """Replace the section of ``path`` between ``<!-- marker:begin -->`` and ``<!-- marker:end -->`` (or add one at its end)."""
    text = path.read_text() if path.exists() else ""
    begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
    block = f"{begin}\n{section}{end}"
    if begin in text and end in text:
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = (text.rstrip("\n") + "\n\n" if text else "") + block + "\n"
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def synthetic_data(out: Path, knobs: dict, seed: int) -> tuple[list[Step], Dataset, dict]:
    """`retinaslim synth` steps for the data and the calibration images; the dataset; its sizes for setup."""
    data_dir, calib_dir, test_dir = out / "data", out / "calib", out / "test"
    synth_args = ["--size", knobs["size"], "--overwrite"]
    steps = [
        Step("synth", ["synth", data_dir, "--labeled", knobs["labeled"], "--unlabeled", knobs["unlabeled"],
                       "--val", knobs["val"], "--seed", seed, *synth_args]),
        Step("synth_calib", ["synth", calib_dir, "--labeled", knobs["calib"], "--unlabeled", 0, "--val", 1,
                             "--seed", seed + 1, *synth_args]),
        # the table's images: a third seeded draw that no run trains on or picks its best epoch by
        Step("synth_test", ["synth", test_dir, "--labeled", 1, "--unlabeled", 0, "--val", knobs["val"],
                            "--seed", seed + 2, *synth_args]),
    ]
    data = Dataset(data_dir / "labeled.json", data_dir / "val.json", test_dir / "val.json", data_dir / "unlabeled",
                   data_dir / "unlabeled.truth.json", calib_dir / "labeled.json")
    return steps, data, {"calib_seed": seed + 1, "test_seed": seed + 2}


def bccd_steps(src: Path, out: Path) -> list[Step]:
    """`retinaslim convert` of the dataset's train, val and test lists to COCO files in OUT/data."""
    return [Step(f"convert_{split}", ["convert", src, "--from", "voc", "--split", split, "--to", "coco",
                                      "--out", out / "data" / f"{split}.json"]) for split in ("train", "val", "test")]


def hold_out(out: Path, labeled: int, seed: int) -> tuple[Dataset, dict]:
    """Split the converted train split: ``labeled`` images (a seeded draw) keep their labels, the rest are
    symlinked into OUT/data/unlabeled with their labels in unlabeled.truth.json. Same seed, same files."""
    data_dir = out / "data"
    coco = json.loads((data_dir / "train.json").read_text())
    images = sorted(coco["images"], key=lambda im: im["file_name"])
    if not 0 < labeled < len(images):
        raise SystemExit(f"--labeled {labeled}: the train split has {len(images)} images; keep between 1 and {len(images) - 1}")
    random.Random(seed).shuffle(images)
    parts = {"labeled": images[:labeled], "unlabeled.truth": images[labeled:]}
    for name, part in parts.items():
        ids = {im["id"] for im in part}
        subset = coco | {"images": part, "annotations": [a for a in coco["annotations"] if a["image_id"] in ids]}
        write_json(data_dir / f"{name}.json", subset)
    pool = data_dir / "unlabeled"
    pool.mkdir(exist_ok=True)
    for im in parts["unlabeled.truth"]:
        link = pool / Path(im["file_name"]).name
        if not link.is_symlink():
            link.symlink_to((data_dir / im["file_name"]).resolve())
    data = Dataset(data_dir / "labeled.json", data_dir / "val.json", data_dir / "test.json", pool,
                   data_dir / "unlabeled.truth.json", data_dir / "val.json")
    sizes = {"unlabeled": len(parts["unlabeled.truth"]),
             **{split: len(json.loads((data_dir / f"{split}.json").read_text())["images"]) for split in ("val", "test")}}
    return data, sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench/distill"), help="working folder (resumable)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of the script, minutes")
    parser.add_argument("--bccd", type=Path, metavar="DIR",
                        help="run on this Pascal VOC copy of BCCD (../shared/data/bccd) instead of synthetic cards")
    for knob, value in PRESETS["full"].items():
        parser.add_argument(f"--{knob.replace('_', '-')}", type=int,
                            help=f"default {value} ({PRESETS['quick'][knob]} with --quick; BCCD: {PRESETS['bccd'].get(knob, 'n/a')})")
    parser.add_argument("--label-sets",
                        help=f"machine-label sets to train students on, comma-separated (default: all; BCCD: {BCCD_LABEL_SETS}): "
                             f"{', '.join(LABEL_SETS)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="training, labelling and filtering device")
    parser.add_argument("--eval-device", help="the table's device (AP and latency); default --device. With a GPU for "
                                              "training, `--eval-device cpu` keeps the latency column a CPU measurement")
    parser.add_argument("--jobs", type=int, default=1,
                        help="independent steps run at once (e.g. the students of every label set); 1 on a 2-core CPU, "
                             "more on a GPU machine")
    parser.add_argument("--results-json", type=Path, help="default docs/results.json (OUT/results.json with --quick)")
    parser.add_argument("--markdown", type=Path, help="default docs/results.md (OUT/results.md with --quick)")
    args = parser.parse_args()
    key = "bccd" if args.bccd else "synthetic"
    preset = PRESETS[("bccd" if args.bccd else "full") if not args.quick else ("bccd_quick" if args.bccd else "quick")]
    not_applicable = [k for k in PRESETS["full"] if k not in preset and getattr(args, k) is not None]
    if not_applicable:
        parser.error(f"--{not_applicable[0].replace('_', '-')} does not apply to BCCD (its splits fix those sizes)")
    knobs = {k: preset[k] if getattr(args, k) is None else getattr(args, k) for k in preset}
    label_sets = [n.strip() for n in (args.label_sets or (BCCD_LABEL_SETS if args.bccd else ",".join(LABEL_SETS))).split(",")
                  if n.strip()]
    unknown = [n for n in label_sets if n not in LABEL_SETS]
    if unknown or "default" not in label_sets:
        parser.error(f"--label-sets must include 'default' and name only {', '.join(LABEL_SETS)} (got {args.label_sets})")
    if "self_round_2" in label_sets and "self_training" not in label_sets:
        parser.error("--label-sets: self_round_2 labels with the self_training student; name both")
    if args.bccd and not (args.bccd / "ImageSets" / "Main").is_dir():
        parser.error(f"--bccd {args.bccd}: expected a Pascal VOC folder with ImageSets/Main/{{train,val,test}}.txt")
    results_json = args.results_json or (args.out / "results.json" if args.quick else Path("docs/results.json"))
    markdown_path = args.markdown or (args.out / "results.md" if args.quick else Path("docs/results.md"))

    out = args.out
    pinned = {**knobs, "seed": args.seed, **({"source": str(args.bccd)} if args.bccd else {})}
    pinned.pop("workers")
    pinned.pop("latency_runs")
    setup_path = out / "setup.json"
    if setup_path.is_file() and json.loads(setup_path.read_text()) != pinned:
        raise SystemExit(f"{out} holds a run made with other sizes ({setup_path}); use another --out or delete it")
    out.mkdir(parents=True, exist_ok=True)
    write_json(setup_path, pinned)
    device = args.device
    def resolve(name: str) -> str:
        return ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name

    resolved = resolve(device)
    eval_device = resolve(args.eval_device or resolved)
    gpu = torch.cuda.get_device_name() if "cuda" in (resolved, eval_device) and torch.cuda.is_available() else None
    setup = {"dataset": key, "machine": machine(), "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(), "device": resolved,
             "eval_device": eval_device, "gpu": gpu,
             "torch": torch.__version__, "python": platform.python_version(), "date": date.today().isoformat(),
             "teacher_arch": config.TRAIN_DEFAULTS["teacher"]["arch"], "student_arch": config.TRAIN_DEFAULTS["student"]["arch"],
             **pinned, "latency_runs": knobs["latency_runs"]}
    print(f"distill benchmark ({key}): {setup['machine']}, {setup['threads']} torch threads, device {resolved}; "
          f"{knobs['labeled']} labelled images of {knobs['size']} px; label sets: {', '.join(label_sets)}")

    started = time.perf_counter()
    records: dict[str, dict] = {}

    def run(wave: list[Step]) -> None:
        """The steps of one wave, up to --jobs at a time (each a subprocess); a failure stops the benchmark
        once the wave's other steps have finished."""
        earlier_ran = any(r["ran"] for r in records.values())
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            futures = {step.name: pool.submit(run_step, step, out, earlier_ran) for step in wave}
        for name, future in futures.items():
            records[name] = future.result()

    if args.bccd:
        run(bccd_steps(args.bccd, out))
        data, sizes = hold_out(out, knobs["labeled"], args.seed)
    else:
        steps, data, sizes = synthetic_data(out, knobs, args.seed)
        run(steps)
    setup |= sizes
    for wave in comparison_steps(data, out, knobs, label_sets, device, eval_device, args.seed):
        run(wave)

    result = collect(out, label_sets, records, setup)
    results = json.loads(results_json.read_text()) if results_json.is_file() else {}
    machine_keys = ("machine", "cpu_count", "threads", "device", "eval_device", "gpu", "torch", "python", "date")
    datasets = results.get("setup", {}).get("datasets", {})  # sizes and seeds of each dataset's run
    datasets[key] = {k: v for k, v in setup.items() if k not in machine_keys}
    results["setup"] = {k: setup[k] for k in machine_keys} | {"datasets": datasets}
    results[key] = result
    with atomic_path(results_json) as tmp:
        tmp.write_text(json.dumps(results, indent=1) + "\n")
    invocation = shlex.join(["python", "benchmarks/distill.py", *sys.argv[1:]])
    section = markdown(result, invocation)
    write_markdown(markdown_path, section, SECTIONS[key])

    print()
    print(section.split("The commands it ran:")[0].rstrip())
    print(f"\n{len(records)} steps, {time.perf_counter() - started:.0f} s this invocation "
          f"({result['seconds']:.0f} s of steps in all); results in {results_json}, table in {markdown_path}, "
          f"plots in {out / 'plots'}")


if __name__ == "__main__":
    main()
