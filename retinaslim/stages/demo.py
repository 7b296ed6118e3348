"""demo: the whole pipeline at smoke scale on built-in synthetic data, with a reading of its own numbers.

synth (one card kind: ID cards in photos, the article's case) -> train-teacher -> train-student on human
labels only -> pseudo-label with each of them and with both fused (as a workspace's pseudo-label does) ->
filter (each class from the labels the validation images score highest, compared with that student, scored
against the unlabelled images' hidden truth) -> train-student on human + machine labels -> eval of all three
side by side. Sized to finish in a few minutes on 2 CPU cores. ``DemoResult.notes`` says what the run's own
numbers show and what they do not; the full-size figures are in docs/results.md.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from retinaslim.config import LABELLERS, TRAIN_DEFAULTS, Workspace
from retinaslim.core.progress import Reporter
from retinaslim.errors import UserError
from retinaslim.stages.evaluate import EvalConfig, EvalResult, evaluate
from retinaslim.stages.filter import FilterConfig, FilterResult, filter_labels
from retinaslim.stages.pseudo_label import PseudoLabelConfig, PseudoLabelResult, pseudo_label
from retinaslim.stages.synth import SynthConfig, synth
from retinaslim.stages.train import TrainConfig, TrainResult, train

# Smoke scale: small images and short schedules so the demo ends in minutes on a laptop CPU.
DEMO_SCALE = {"labeled": 96, "unlabeled": 240, "val": 48, "size": 128,
              "teacher_epochs": 12, "student_epochs": TRAIN_DEFAULTS["student"]["epochs"], "latency_runs": 10}
DEMO_CLASSES = ("id_card",)
# A change of AP smaller than this is not read as a gain or a loss: on sets this small one run's noise is
# several AP points (docs/results.md, its opening note), and the demo scores on 48 images.
DEMO_NOISE_AP = 0.02


@dataclass
class DemoResult:
    out: Path
    pseudo: PseudoLabelResult
    filtered: FilterResult
    evaluation: EvalResult  # reports in the order teacher, human-only student, distilled student
    trainings: dict[str, TrainResult]  # "teacher", "student-human", "student"
    notes: list[str] = field(default_factory=list)  # what the numbers show, one sentence each


DEMO_MARKER = ".retinaslim-demo"  # marks a folder whose data/ and runs/ the demo made (and may replace)


def _notes(evaluation: EvalResult, filtered: FilterResult, trainings: dict[str, TrainResult]) -> list[str]:
    """Plain sentences reading this run's numbers: what they show and what they do not."""
    teacher, human, distilled = (r.ap for r in evaluation.reports)
    teacher_run = trainings["teacher"]
    steps, minutes = teacher_run.history[-1]["step"], teacher_run.history[-1]["time"] / 60
    notes = [f"Every stage ran on {DEMO_SCALE['labeled']} labelled and {DEMO_SCALE['unlabeled']} unlabelled images "
             f"of {DEMO_SCALE['size']} px; these are smoke-scale numbers, not what the pipeline reaches "
             "(docs/results.md has the full-size benchmarks)."]
    if teacher >= 1.5 * human and teacher > 0:
        notes.append(f"The teacher (AP {teacher:.3f}) is clearly better than the student trained on the same human "
                     f"labels (AP {human:.3f}): its machine labels carry knowledge the student lacks.")
    elif teacher > human + DEMO_NOISE_AP:
        notes.append(f"The teacher (AP {teacher:.3f}) is better than the student trained on the same human labels "
                     f"(AP {human:.3f}), though not by much: its machine labels carry a little the student lacks.")
    else:
        notes.append(f"The teacher is NOT better than the student here (AP {teacher:.3f} vs {human:.3f}): a ResNet50 "
                     f"trained from scratch for {steps} steps ({minutes:.1f} min) on {DEMO_SCALE['labeled']} images has "
                     "not converged. From scratch it needs a larger labelled set and thousands of steps (on 1,000 card "
                     "images 2,500 steps brought it level with the student, 0.513 against 0.518, and the two models' "
                     "fused labels then raised the student by 3.9 points: README.md); or start it from trained weights "
                     "(`train-teacher --init`, `import-teacher`). Machine labels pay when their labellers know more "
                     "than the student alone.")
    after = filtered.truth_metrics.get("after")
    if filtered.calibration and not any(c.reliable for c in filtered.calibration):
        why = ("the human-only student found the objects there better than the teacher's boxes did"
               if any(c.below_student for c in filtered.calibration)
               else "found no score at which its boxes reach the target precision"
               if not all(c.reached for c in filtered.calibration) else "found its boxes too unreliable there")
        notes.append(f"The filter ran the labellers on the validation images, {why}, and kept no machine labels, so the "
                     "distilled student learnt from the human labels only rather than from their mistakes.")
    elif after:
        chosen = "; ".join(f"{c.class_name} from {LABELLERS.get(Path(c.source).name, Path(c.source).name)}"
                           for c in filtered.calibration)
        notes.append(f"Machine labels kept by the filter (each class from the labels the validation images score "
                     f"highest: {chosen}; thresholds chosen there): {after['boxes']} boxes, precision "
                     f"{after['precision']:.2f} and recall {after['recall']:.2f} against the unlabelled images' hidden truth.")
    verdict = ("left the student's AP within this scale's noise" if abs(distilled - human) < DEMO_NOISE_AP
               else "raised the student's AP" if distilled > human else "lowered the student's AP")
    notes.append(f"Machine labels {verdict} ({human:.3f} human only -> {distilled:.3f} with machine "
                 f"labels); the student runs {evaluation.reports[0].latency_ms / max(evaluation.reports[2].latency_ms, 1e-9):.0f}x "
                 f"faster than the teacher with {evaluation.reports[0].params / evaluation.reports[2].params:.0f}x fewer parameters.")
    return notes


def demo(out: Path, seed: int = 0, device: str = "auto", reporter: Reporter | None = None) -> DemoResult:
    """The whole pipeline at smoke scale in ``out`` (data/, runs/, metrics.json), made again on every run. Raises
    ``UserError`` when ``out`` holds a data/ or runs/ folder the demo did not make (it would replace them)."""
    reporter = reporter or Reporter()
    scale = DEMO_SCALE
    out = Path(out)
    marker = out / DEMO_MARKER
    # a demo folder from before the marker: its metrics.json beside synth's hidden truth
    made_here = marker.exists() or (out / "metrics.json").is_file() and (out / "data" / "unlabeled.truth.json").is_file()
    foreign = [name for name in ("data", "runs") if (out / name).exists()] if not made_here else []
    if foreign:
        raise UserError(f"`out` {out}: holds {' and '.join(f'{n}/' for n in foreign)} that the demo did not make, and the "
                        "demo replaces its own; choose another folder")
    out.mkdir(parents=True, exist_ok=True)
    marker.touch()
    data = synth(SynthConfig(out / "data", num_labeled=scale["labeled"], num_unlabeled=scale["unlabeled"],
                             num_val=scale["val"], size=scale["size"], seed=seed, classes=DEMO_CLASSES,
                             overwrite=True), reporter)
    labeled, val = data.files["labeled"], data.files["val"]
    runs = out / "runs"
    trainings: dict[str, TrainResult] = {}

    def run_training(role: str, name: str, epochs: int, pseudo: Path | None = None) -> Path:
        reporter.log(f"train {name}")
        shutil.rmtree(runs / name, ignore_errors=True)  # the demo regenerates its own runs; training refuses to replace one
        options = {**TRAIN_DEFAULTS[role], "image_size": scale["size"], "epochs": epochs}
        config = TrainConfig(role=role, labeled=labeled, val=val, out=runs / name, pseudo=pseudo,
                             device=device, seed=seed, **options)
        trainings[name] = train(config, reporter)
        return trainings[name].best

    teacher = run_training("teacher", "teacher", scale["teacher_epochs"])
    human = run_training("student", "student-human", scale["student_epochs"])
    # As `retinaslim pseudo-label` and `filter` in a workspace: the teacher, the human-only student, and both fused
    # label the images; per class the labels the validation images score highest, thresholds chosen there, and the
    # classes the student's single pass finds better than all of them left to it.
    reporter.log("pseudo-label")
    labelled = [pseudo_label(PseudoLabelConfig(out / "data" / "unlabeled", models, target, device=device), reporter)
                for models, target in Workspace(out, runs=runs).labellings(teacher, human)]
    filtered = filter_labels(FilterConfig([r.out for r in labelled], runs / "pseudo.filtered.json", calib=val,
                                          student=human, device=device, truth=data.files["unlabeled"]), reporter)
    if filtered.num_images_out:
        distilled = run_training("student", "student", scale["student_epochs"], pseudo=filtered.out)
    else:  # the same labels, settings and seed would train the same weights again (the rows matched to 1e-3)
        reporter.log("the filter kept no machine labels: the distilled student is the human-only one (its run copied "
                     "to runs/student, not trained again)")
        shutil.rmtree(runs / "student", ignore_errors=True)
        shutil.copytree(runs / "student-human", runs / "student")
        trainings["student"] = trainings["student-human"]
        distilled = runs / "student" / "best.pt"
    evaluation = evaluate(EvalConfig([teacher, human, distilled], val, device=device,
                                     latency_runs=scale["latency_runs"], json_out=out / "metrics.json"), reporter)
    return DemoResult(out, labelled[0], filtered, evaluation, trainings, _notes(evaluation, filtered, trainings))
