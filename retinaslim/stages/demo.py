"""demo: the whole pipeline at smoke scale on built-in synthetic data.

synth -> train-teacher -> pseudo-label -> filter -> train-student (human only, and human + machine)
-> eval of all three side by side. Sized to finish in a few minutes on 2 CPU cores; its numbers show
that every stage runs and learns, not what the pipeline reaches at full scale (see docs/results.md).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from retinaslim.config import TRAIN_DEFAULTS
from retinaslim.core.progress import Reporter
from retinaslim.stages.evaluate import EvalConfig, EvalResult, evaluate
from retinaslim.stages.filter import FilterConfig, FilterResult, filter_labels
from retinaslim.stages.pseudo_label import PseudoLabelConfig, PseudoLabelResult, pseudo_label
from retinaslim.stages.synth import SynthConfig, synth
from retinaslim.stages.train import TrainConfig, train

# Smoke scale: small images and short schedules so the demo ends in minutes on a laptop CPU.
DEMO_SCALE = {"labeled": 96, "unlabeled": 240, "val": 48, "size": 128,
              "teacher_epochs": 12, "student_epochs": 30, "latency_runs": 10}


@dataclass
class DemoResult:
    out: Path
    pseudo: PseudoLabelResult
    filtered: FilterResult
    evaluation: EvalResult


def demo(out: Path, seed: int = 0, device: str = "auto", reporter: Reporter | None = None) -> DemoResult:
    reporter = reporter or Reporter()
    scale = DEMO_SCALE
    data = synth(SynthConfig(out / "data", scale["labeled"], scale["unlabeled"], scale["val"], scale["size"], seed,
                             overwrite=True), reporter)
    labeled, val = data.files["labeled"], data.files["val"]
    runs = out / "runs"

    def run_training(role: str, name: str, epochs: int, pseudo: Path | None = None) -> Path:
        reporter.log(f"train {name}")
        shutil.rmtree(runs / name, ignore_errors=True)  # the demo regenerates its own runs; training refuses to replace one
        options = {**TRAIN_DEFAULTS[role], "image_size": scale["size"], "epochs": epochs}
        config = TrainConfig(role=role, labeled=labeled, val=val, out=runs / name, pseudo=pseudo,
                             device=device, seed=seed, **options)
        return train(config, reporter).best

    teacher = run_training("teacher", "teacher", scale["teacher_epochs"])
    reporter.log("pseudo-label")
    pseudo = pseudo_label(PseudoLabelConfig(out / "data" / "unlabeled", teacher, runs / "pseudo.json",
                                            device=device), reporter)
    filtered = filter_labels(FilterConfig(pseudo.out, runs / "pseudo.filtered.json"))
    human = run_training("student", "student-human", scale["student_epochs"])
    distilled = run_training("student", "student", scale["student_epochs"], pseudo=filtered.out)
    evaluation = evaluate(EvalConfig([teacher, human, distilled], val, device=device,
                                     latency_runs=scale["latency_runs"], json_out=out / "metrics.json"), reporter)
    return DemoResult(out, pseudo, filtered, evaluation)
