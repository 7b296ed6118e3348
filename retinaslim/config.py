"""Defaults in one place, and the workspace file (``retinaslim.yaml``) commands take their inputs from.

A workspace names the labelled, validation and unlabelled data, the classes and the runs folder.
Paths in it are relative to the file's own folder. Commands look for it in the current folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from retinaslim.core.atomic import atomic_path, refuse_overwriting_inputs
from retinaslim.errors import UserError

WORKSPACE_FILE = "retinaslim.yaml"

# Training defaults per role; every run saves its resolved values in config.yaml. The teacher's
# optimiser and head were compared by held-out AP (benchmarks/teacher.py, docs/results.md "The teacher's
# recipe" and "The teacher's anchors"): after 150 steps from scratch, v1 + AdamW 3e-4 (test AP 0.025) beat
# AdamW 1e-3 (0.016) and v2 + SGD 0.01, torchvision's recipe (0.007). With 1,000 labelled images and 2,500
# steps the default teacher reaches test AP 0.458 against 0.306 for the student on the same labels.
# The teacher keeps "iou" and "light": with the student's "tal" + "mosaic" it gained on BCCD at 60 epochs (val AP
# 0.421 vs 0.384) but lost on the cards at 20 (0.518 vs 0.527; docs/results.md, "Session 22").
TRAIN_DEFAULTS: dict[str, dict[str, Any]] = {
    "teacher": {"arch": "retinanet_resnet50_fpn", "image_size": 320, "batch_size": 8, "epochs": 12,
                "optimizer": "adamw", "lr": 3e-4, "weight_decay": 1e-4, "augment": "light", "assign": "iou"},
    # lr 1e-2, measured again under the present recipe (docs/results.md, "Session 25"): validation AP 0.505 /
    # 0.531 on BCCD / the cards against 0.490 / 0.501 at 2e-2 and 0.440 / 0.508 at 3e-3.
    # Mosaic with 60 epochs, by held-out AP on both sets (docs/results.md, "mosaic"): validation AP 0.465 vs
    # 0.314 for `light` at the former 30 epochs (0.360 at 60) on the cards; 0.431 vs 0.313 for `light` at 60
    # epochs on BCCD (0.413 at 120). At 30 epochs mosaic lost on the cards (0.245): it needs the longer run.
    # Task-aligned assignment, by held-out AP on both sets (docs/results.md, "Session 20: which anchors train on
    # each box"): validation AP 0.507 vs 0.430 for RetinaNet's IoU thresholds on the cards, 0.473 vs 0.378 on
    # BCCD (ATSS: 0.246 on the cards). Its loss over the batch's summed quality and no small-box fallback
    # (docs/results.md, "Session 24"): 0.531 / 0.504 on the cards / BCCD against 0.466 / 0.488 before.
    "student": {"arch": "slim-s", "image_size": 320, "batch_size": 16, "epochs": 60,
                "optimizer": "adamw", "lr": 1e-2, "weight_decay": 1e-4, "augment": "mosaic", "assign": "tal"},
}
WARMUP_ITERS = 100  # linear learning-rate warm-up (shortened for runs with fewer iterations)
# The student's default schedule is its epochs, but at least this many optimiser steps: an epoch is a pass over
# the human-labelled images, so 60 of them are 240 steps for 50 images and the student is still climbing
# (docs/results.md, "Session 34: a floor on the student's steps"); 2,000 beat 1,000 on validation on both BCCD
# splits, human-only and distilled ("Session 35: the floor at 2,000 steps"). --epochs or --iterations set it exactly.
STUDENT_MIN_ITERATIONS = 2000
# The teacher's likewise: its 12 epochs are 84 steps of 8 on 50 labelled images. On BCCD 50 / 155 (256 px, validation
# AP): 300 steps 0.205, 420 (60 epochs) 0.270, 1,000 steps 0.323 (docs/results.md, "Session 36"); 1,000
# labelled cards reach 1,500 in 12 epochs anyway. A ResNet50 step costs about 20x the student's: on 2 CPU cores
# 1,000 steps at 256 px took 50 minutes.
TEACHER_MIN_ITERATIONS = 1000
# last.pt (everything --resume needs; a teacher's is about 0.5 GB) is written with each validation (the results.csv rows)
# and otherwise at least this often. Written after every epoch, a 280-step teacher run on 50 images (40 epochs of 7
# steps, 64 px, this CPU) took 276 s against 210 s (docs/results.md, "Session 36: the teacher on a lent GPU, and
# last.pt"); where steps are faster (a GPU) the write weighs more. A kill loses at most about this much work and an
# epoch.
CHECKPOINT_INTERVAL_S = 600
# `--augment mosaic` trains its last epochs on whole images, as Ultralytics' close_mosaic (default 10) does:
# the model ends on the images it will see. On the cards the student's validation AP rose 3.3 points in the
# first closed epoch (docs/results.md, "mosaic").
CLOSE_MOSAIC_EPOCHS = 10

# Multi-transform labelling follows Data Distillation: several scales x horizontal flip; WBF fuses best
# (see ../shared/PITFALLS.md: 0.531 AP vs 0.499 for NMS over the same six transforms).
PSEUDO_SCALES = (0.75, 1.0, 1.25)
PSEUDO_FUSION = "wbf"
PSEUDO_SCORE_FLOOR = 0.05

# import-teacher: the longer side imported torchvision RetinaNets see by default. torchvision's own transform
# makes the shorter side 800 px (the longer at most 1333), so for square images this is its input size.
IMPORT_IMAGE_SIZE = 800

# Who made each of a workspace's label files (Workspace.labellings), as the demo's reading names them.
LABELLERS = {"pseudo.json": "the teacher's ensemble", "pseudo-student.json": "the human-only student's own ensemble",
             "pseudo-joint.json": "the teacher and the human-only student fused"}

FILTER_SCORE_THRESH = 0.2  # measured: docs/results.md, "The data-distillation benchmark"
FILTER_VALIDATION_RULE = "precision"  # with a validation set and no threshold given: measured, docs/filter.md
FILTER_TARGET_PRECISION = 0.95  # the precision rule's target on the validation images: measured, docs/filter.md

WORKSPACE_TEMPLATE = """\
# retinaslim workspace: commands run in this folder take their inputs from here.
# Paths are relative to this file's folder.

# Human-labelled training images (COCO JSON).
# labeled: labeled.json

# Human-labelled validation images (COCO JSON), for AP during training and for eval.
# val: val.json

# Folder (searched recursively) or text file listing the unlabelled images to pseudo-label.
# unlabeled: unlabeled

# Optional truth for the unlabelled images, to measure machine-label quality.
# unlabeled_truth: unlabeled.truth.json

# Class names, in category-id order (informational; the COCO files are the source of truth).
# classes: [id_card, bank_card, passport]

# Where runs (teacher, student, pseudo labels) are written.
# runs: runs
"""


@dataclass
class Workspace:
    root: Path
    labeled: Path | None = None
    val: Path | None = None
    unlabeled: Path | None = None
    unlabeled_truth: Path | None = None
    classes: list[str] | None = None
    runs: Path = Path("runs")

    def refuse_overwriting_labels(self, outputs: list[tuple[str, Path | None]]) -> None:
        """Raise ``UserError`` if an output path is one of the workspace's human-labelled files (``labeled``,
        ``val``, ``unlabeled_truth``): a command writing machine labels or predictions must not replace them."""
        refuse_overwriting_inputs(outputs, [(f"{WORKSPACE_FILE}'s {key}:", getattr(self, key))
                                            for key in ("labeled", "val", "unlabeled_truth")])

    @classmethod
    def find(cls, folder: Path | None = None) -> Workspace | None:
        """The workspace in ``folder`` (default: the current folder), or None if there is none."""
        path = (folder or Path.cwd()) / WORKSPACE_FILE
        if path.is_dir():
            raise UserError(f"{path}: a folder, expected the workspace file (retinaslim init writes one)")
        if not path.is_file():
            return None
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise UserError(f"{path}: expected keys such as 'labeled', 'val', 'unlabeled', 'runs'")
        unknown = set(data) - {"labeled", "val", "unlabeled", "unlabeled_truth", "classes", "runs"}
        if unknown:
            raise UserError(f"{path}: unknown key '{sorted(unknown)[0]}'")
        for key, value in data.items():
            if key == "classes":
                if value is not None and not (isinstance(value, list) and all(isinstance(c, str) for c in value)):
                    raise UserError(f"{path}: 'classes' must be a list of class names")
            elif value is not None and not isinstance(value, str):
                raise UserError(f"{path}: '{key}' must be a path, got {value!r}")
        root = path.parent
        paths = {k: root / v for k, v in data.items() if k != "classes" and v is not None}
        return cls(root=root, classes=data.get("classes"), **paths)

    @property
    def pseudo(self) -> Path:
        return self.runs / "pseudo.json"

    @property
    def pseudo_student(self) -> Path:
        """The human-only student's own labels of the pool (self-training), which filter weighs against the teacher's."""
        return self.runs / "pseudo-student.json"

    @property
    def pseudo_joint(self) -> Path:
        """The teacher's and the human-only student's transforms fused together (model ensembling)."""
        return self.runs / "pseudo-joint.json"

    def labellings(self, teacher: Path, student: Path) -> list[tuple[list[Path], Path]]:
        """What pseudo-label writes once a human-only student exists, as (models, output), in the order filter
        breaks ties: the teacher's ensemble, the student's own (self-training) and both fused (Data Distillation's
        model ensembling). filter keeps each class from the one whose labels score the highest validation AP."""
        return [([teacher], self.pseudo), ([student], self.pseudo_student), ([teacher, student], self.pseudo_joint)]

    @property
    def filtered(self) -> Path:
        return self.runs / "pseudo.filtered.json"

    def run_dir(self, role: str) -> Path:
        """A fresh run folder: runs/teacher, then runs/teacher-2, ... (an existing run is never overwritten)."""
        candidate, n = self.runs / role, 1
        while candidate.exists() and any(candidate.iterdir()):
            n += 1
            candidate = self.runs / f"{role}-{n}"
        return candidate

    def newest_weights(self, role: str) -> Path | None:
        """The most recent ``runs/<role>*/best.pt``."""
        found = sorted(self.runs.glob(f"{role}*/best.pt"), key=lambda p: p.stat().st_mtime)
        return found[-1] if found else None


def write_workspace(path: Path, values: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text("# retinaslim workspace (see `retinaslim init` for every key)\n" + yaml.safe_dump(values, sort_keys=False))


def write_workspace_template(path: Path) -> None:
    """``WORKSPACE_TEMPLATE`` (every key commented) at ``path``, atomically: a kill leaves an edited file as it was."""
    with atomic_path(path) as tmp:
        tmp.write_text(WORKSPACE_TEMPLATE)


def save_run_config(path: Path, values: dict[str, Any]) -> None:
    """The resolved configuration of a run, so it can be reproduced."""
    plain = {k: str(v) if isinstance(v, Path) else v for k, v in values.items()}
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(plain, sort_keys=False))
