"""``retinaslim filter``: the machine labels worth training on, and its tables (thresholds, rules, scores, truth)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from retinaslim import api, console
from retinaslim.cli.common import DeviceOpt, WorkersOpt, app, user_errors
from retinaslim.cli.workspace import pick
from retinaslim.config import FILTER_SCORE_THRESH, FILTER_TARGET_PRECISION, FILTER_VALIDATION_RULE, WORKSPACE_FILE, Workspace
from retinaslim.engine.thresholds import KEEP_NONE, VALIDATION_RULES
from retinaslim.errors import UserError


@app.command("filter")
def filter_(
    pseudo: Annotated[Optional[list[Path]], typer.Argument(help="Raw machine labels from pseudo-label; several of the same images (e.g. the teacher's and the human-only student's own) are chosen between per class by validation AP (default: runs/pseudo.json, and runs/pseudo-student.json and runs/pseudo-joint.json where they exist).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Filtered COCO JSON (default: runs/pseudo.filtered.json).")] = None,
    score_thresh: Annotated[Optional[str], typer.Option(help=f"Keep boxes scoring at least this: one value, or per class, e.g. id_card=0.6,passport=0.7 (default: chosen per class on the validation set, see --auto-thresh; {FILTER_SCORE_THRESH} without one).")] = None,
    auto_thresh: Annotated[Optional[str], typer.Option(help=f"Choose the threshold per class: precision (the lowest threshold reaching --target-precision on the --calib images), f1 (the best F1 on them) or instances (as many machine boxes per image as human boxes per labelled image; needs --labeled). Default with --calib images (or the workspace's val): {FILTER_VALIDATION_RULE}.")] = None,
    labeled: Annotated[Optional[Path], typer.Option(help="Human-labelled COCO file, for --auto-thresh instances (default: the workspace's).")] = None,
    calib: Annotated[Optional[Path], typer.Option(help="Human-labelled COCO file the teacher is run on to choose thresholds, for --auto-thresh f1 and precision (default: the workspace's validation set).")] = None,
    calib_images: Annotated[Optional[Path], typer.Option(help="Folder the --calib file names resolve against.")] = None,
    teacher: Annotated[Optional[list[Path]], typer.Option(help="Teacher for --auto-thresh f1 and precision, repeated for machine labels made by several (default: the ones pseudo.json names).")] = None,
    target_precision: Annotated[Optional[float], typer.Option(help=f"Precision at IoU 0.5 that --auto-thresh precision aims for on the validation images. Default: {FILTER_TARGET_PRECISION}.")] = None,
    student: Annotated[Optional[Path], typer.Option(help="A student trained on the human labels only (train-student --human-only): classes on which its validation AP (IoU 0.5:0.95) beats the teacher's labels' keep no machine box, and a student trained on the output takes no loss for them in the machine images, with --auto-thresh f1 or precision (default: the workspace's newest runs/student-human).")] = None,
    min_agreement: Annotated[int, typer.Option(min=1, help="Keep boxes found by at least this many transforms.")] = 1,
    min_size: Annotated[float, typer.Option(min=0.0, help="Drop boxes whose shorter side is below this many pixels.")] = 0.0,
    max_size_frac: Annotated[float, typer.Option(help="Drop boxes covering more than this fraction of the image area.")] = 1.0,
    aspect_range: Annotated[Optional[str], typer.Option(help="LO,HI: keep boxes whose width/height lies in this range.")] = None,
    max_per_image: Annotated[Optional[int], typer.Option(min=1, help="Keep at most this many boxes per image, best first.")] = None,
    ambiguous: Annotated[str, typer.Option(help="Images with a box scored between --ambiguous-low and the threshold: keep, drop (the image), or ignore (those boxes give no loss).")] = "keep",
    ambiguous_low: Annotated[float, typer.Option(help="Lower bound of the doubtful score band.")] = 0.2,
    keep_empty: Annotated[bool, typer.Option("--keep-empty/--drop-empty", help="Keep images left without boxes as background images.")] = True,
    truth: Annotated[Optional[Path], typer.Option(help="True labels of the unlabelled images (e.g. unlabeled.truth.json): report precision, recall and AP before and after.")] = None,
    review_out: Annotated[Optional[Path], typer.Option(help="Write the most doubtful images with their machine boxes as Label Studio import JSON (and NAME.coco.json).")] = None,
    review_count: Annotated[int, typer.Option(min=1, help="How many images --review-out lists.")] = 100,
    report: Annotated[Optional[Path], typer.Option(help="Save the report as JSON.")] = None,
    device: DeviceOpt = "auto", workers: WorkersOpt = 2,
) -> None:
    """Keep the machine labels worth training on: thresholds, agreement, geometry, doubtful images."""
    with user_errors("pseudo"):
        if target_precision is not None and (score_thresh is not None or auto_thresh in ("f1", "instances")):
            other = "--score-thresh" if score_thresh is not None else f"--auto-thresh {auto_thresh}"
            raise UserError(f"--target-precision {target_precision:g} is the precision rule's target: it has no effect "
                            f"with {other}")
        ws = Workspace.find()
        if auto_thresh == "instances":
            labeled = pick(labeled, "--labeled", ws and ws.labeled, "human labels")
        on_validation = auto_thresh in VALIDATION_RULES or (auto_thresh is None and score_thresh is None)
        if on_validation and calib is None and ws:
            calib = ws.val
            if calib is not None:
                console.info(f"thresholds chosen on the workspace's validation set: {calib}")
        others = [p for p in (ws.pseudo_student, ws.pseudo_joint) if p.is_file()] if ws and not pseudo else []
        if others:
            if on_validation and calib is not None and not teacher:
                pseudo = [ws.pseudo, *others]
                console.info(f"using machine labels: {', '.join(map(str, pseudo))}, each class from the one the "
                             f"validation set scores highest (from {WORKSPACE_FILE})")
            else:
                why = ("--score-thresh fixes the thresholds" if score_thresh is not None
                       else f"--auto-thresh {auto_thresh} does not use it" if not on_validation
                       else "there is none (--calib, or the workspace's val)" if calib is None
                       else "--teacher runs one model on it, for one label file")
                console.info(f"{' and '.join(map(str, others))} (labels with the human-only student) not used: choosing "
                             f"between label files needs the validation set's scores, and {why}")
        if not pseudo and ws and not ws.pseudo.is_file():
            raise UserError(f"{ws.pseudo}: no machine labels yet; run `retinaslim pseudo-label` in this workspace first")
        pseudo = pseudo or [pick(None, "PSEUDO", ws and ws.pseudo, "machine labels", "runs/pseudo.json")]
        out = pick(out, "--out", ws and ws.filtered, "output", "runs/pseudo.filtered.json")
        if ws:
            ws.refuse_overwriting_labels([("--out", out), ("--report", report), ("--review-out", review_out)])
        if auto_thresh is None and score_thresh is None and calib is None:
            if target_precision is not None:
                raise UserError(f"--target-precision {target_precision:g} is the precision rule's target, chosen on the "
                                "validation set: give one with --calib (or run in a workspace with a val set)")
            console.info(f"no validation set (--calib, or the workspace's val): the fixed threshold {FILTER_SCORE_THRESH} "
                         "for every class; with one, each class's threshold is chosen on it")
        elif on_validation and student is None and ws:
            student = ws.newest_weights("student-human")
            console.info(f"classes the human-only student {student} finds better than the machine labels are left to it" if student
                         else "no human-only student in the workspace (train-student --human-only -> runs/student-human): "
                              "every class whose threshold reaches the target is trained on")
        with console.RichReporter() as reporter:
            result = api.filter(
                pseudo, out=out, score_thresh=score_thresh, auto_thresh=auto_thresh, labeled=labeled, calib=calib,
                calib_images=calib_images, teacher=teacher, student=student,
                target_precision=FILTER_TARGET_PRECISION if target_precision is None else target_precision,
                min_agreement=min_agreement, min_size=min_size, max_size_frac=max_size_frac, aspect_range=aspect_range,
                max_per_image=max_per_image, ambiguous=ambiguous, ambiguous_low=ambiguous_low, keep_empty=keep_empty,
                truth=truth, review_out=review_out, review_count=review_count, report=report, device=device,
                workers=workers, reporter=reporter)
    _render(result, student)
    if report is not None:
        console.info(f"report saved to {report}")
    if result.review_out:
        console.info(f"{result.num_review} doubtful images for review saved to {result.review_out}")
    console.info(f"saved to {result.out}")


def _file(c) -> str:
    """The name of the machine-label file a class's boxes come from ("-" if not recorded)."""
    return Path(c.source).name if c.source else "-"


def _render(result, student: Path | None) -> None:
    """Draw filter's tables and warnings (``result``: the stage's FilterResult; ``student``: the human-only student
    compared, if any)."""
    aim = f"precision {result.target_precision:g}" if result.threshold_rule == "precision" else "a true positive"
    names = list(result.num_boxes_in)
    calibrated = {c.class_name: c for c in result.calibration}
    compared = any(c.student_ap50 is not None for c in result.calibration)
    console.table("thresholds and boxes per class", ["class", "threshold", "boxes in", "boxes kept"] +
                  (["labels from", "val precision", "val recall"] if calibrated else []) +
                  (["labels' val AP", "student val AP", "labels' val AP50", "student val AP50"] if compared else []),
                  [[n, "keeps none" if result.thresholds[n] >= KEEP_NONE else result.thresholds[n],
                    result.num_boxes_in[n], result.num_boxes_kept[n]] +
                   ([_file(calibrated[n])] if calibrated else []) +
                   ([calibrated[n].precision, calibrated[n].recall] if calibrated and calibrated[n].reached else
                    [None, None] if calibrated else []) +
                   ([calibrated[n].teacher_ap, calibrated[n].student_ap, calibrated[n].teacher_ap50,
                     calibrated[n].student_ap50] if compared else []) for n in names])
    if len(result.source_ap) > 1:
        console.table("validation AP (IoU 0.5:0.95) of each file's labels: each class takes the highest",
                      ["labels", *names], [[Path(f).name, *(aps[n] for n in names)] for f, aps in result.source_ap.items()])
    unreliable = [c for c in result.calibration if not c.reliable]
    # what train-student does with such a class (info.filter.unreliable_classes: data.coco.machine_class_mask)
    left_out = ("none of its machine boxes are kept, and a student trained on this file takes no loss for it "
                "in the machine images: it learns it from the human labels only")
    for c in result.calibration:
        if c.below_student:
            console.warn(f"{c.class_name}: the human-only student finds and places it better than the labels of "
                         f"{_file(c)} on the validation images (AP {c.student_ap:.3f} vs {c.teacher_ap:.3f}, AP50 "
                         f"{c.student_ap50:.3f} vs {c.teacher_ap50:.3f}); {left_out}")
        elif c in unreliable and c.num_val_boxes == 0:
            console.warn(f"{c.class_name}: the validation images hold no box of it, so the labels of {_file(c)} cannot "
                         f"be checked there; {left_out}. Label some validation images with it to train on its labels")
        elif c in unreliable:
            found = (f"its best F1 there is {c.f1:.2f} (precision {c.precision:.2f}, recall {c.recall:.2f} at {c.threshold:.2f})"
                     if c.reached else f"no threshold reaches {aim} there")
            console.warn(f"{c.class_name}: the labels of {_file(c)} are unreliable on the validation images ({found}); "
                         f"{left_out}")
    if result.calibration and len(unreliable) == len(result.calibration):
        unchecked = all(c.num_val_boxes == 0 for c in unreliable)
        mine = (" (the human-only student's own ensemble among them: it learnt from the same human labels, so a "
                "teacher that knows more is the lever)" if result.labelled_by_student and not unchecked else "")
        advice = ("Label some validation images with its classes" if unchecked else
                  "Train the teacher longer or on more labels, or start it from trained weights (train-teacher --init)")
        console.warn(f"the machine labels are {'unchecked' if unchecked else 'unreliable'} on every class: no machine "
                     f"image is kept, so a student trained on this file learns from the human labels only{mine}. {advice}")
    behind = [c.class_name for c in result.calibration if c.below_student]
    if behind and student is not None and not result.labelled_by_student:
        console.warn(f"self-training may label {', '.join(behind)} better than this teacher: label the images with the "
                     f"human-only student's own ensemble too (retinaslim pseudo-label IMAGES --teacher {student} --out "
                     "STUDENT.json; in a workspace pseudo-label does it) and pass both files to filter, which keeps each "
                     "class from the one scoring higher on the validation set. With a teacher behind the student it gave "
                     "+2.1 test AP on BCCD (docs/results.md, \"Real photographs: BCCD\")")
    console.table("boxes removed per rule", ["rule", *names, "images removed"],
                  [[r.rule, *(r.boxes_removed[n] for n in names), r.images_removed] for r in result.rules])
    peak = max([h["boxes_in"] for h in result.histogram] + [1])
    console.table("score histogram", ["score", "boxes in", "kept", ""],
                  [(f"{h['lo']:.1f}-{h['hi']:.1f}", h["boxes_in"], h["boxes_kept"], "#" * round(30 * h["boxes_in"] / peak))
                   for h in result.histogram])
    if result.truth_metrics:
        console.table("machine labels vs truth (IoU 0.5 for precision/recall)", ["labels", "boxes", "precision", "recall", "AP", "AP50"],
                      [(k, m["boxes"], m["precision"], m["recall"], m["ap"], m["ap50"]) for k, m in result.truth_metrics.items()])
        before, after = (result.truth_metrics[k]["per_class"] for k in ("before", "after"))
        console.table("per class (precision / recall at IoU 0.5)", ["class", "boxes before", "precision", "recall",
                                                                     "boxes after", "precision", "recall"],
                      [(name, b["boxes"], b["precision"], b["recall"], after[name]["boxes"], after[name]["precision"],
                        after[name]["recall"]) for name, b in before.items()])
        if result.truth_metrics["before"]["images_rescaled"]:
            console.info(f"{result.truth_metrics['before']['images_rescaled']} truth image(s) declare a resized copy of "
                         "the size the images have; their boxes were rescaled to the images")
        if result.truth_metrics["before"].get("renumbered"):
            console.info(result.truth_metrics["before"]["renumbered"])
    console.info(f"images: {result.num_images_in} in, {result.num_images_out} out ({result.num_empty_images} without boxes, "
                 f"{result.num_ignore_regions} ignore regions)")
    if result.num_images_out and not sum(result.num_boxes_kept.values()):
        console.warn(f"no machine box was kept (of {sum(result.num_boxes_in.values())}): a student trained on this file "
                     "learns only that its images are background; lower --score-thresh or check the teacher")
