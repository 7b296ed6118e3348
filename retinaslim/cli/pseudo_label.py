"""``retinaslim pseudo-label``: the teacher labels unlabelled images, ensembling transforms."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from retinaslim import api, console
from retinaslim.cli.common import DeviceOpt, WorkersOpt, app, user_errors
from retinaslim.cli.workspace import pick
from retinaslim.config import PSEUDO_FUSION, PSEUDO_SCALES, PSEUDO_SCORE_FLOOR, Workspace
from retinaslim.errors import UserError


@app.command("pseudo-label")
def pseudo_label(
    source: Annotated[Optional[Path], typer.Argument(help="Folder of unlabelled images (searched recursively) or a text file of image paths; default: the workspace's.")] = None,
    teacher: Annotated[Optional[list[Path]], typer.Option(help="Teacher checkpoint (default: the newest runs/teacher*/best.pt); repeat it to fuse several models' transforms together (e.g. the teacher and the distilled student, for a second round).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Output COCO JSON (default: runs/pseudo.json).")] = None,
    scales: Annotated[Optional[str], typer.Option(help=f"Comma-separated factors of --image-size, the longer side (default {','.join(f'{s:g}' for s in PSEUDO_SCALES)}; none when --short-sides are given).")] = None,
    short_sides: Annotated[str, typer.Option(help="Comma-separated shorter sides in pixels, as Data Distillation sizes its transforms (e.g. 400,600,800); run after the --scales.")] = "",
    hflip: Annotated[bool, typer.Option(help="Also run each size horizontally flipped.")] = True,
    vflip: Annotated[bool, typer.Option(help="Also run each size vertically flipped.")] = False,
    rot90: Annotated[bool, typer.Option(help="Also run each size rotated by 90 and 270 degrees (cards photographed sideways).")] = False,
    fusion: Annotated[str, typer.Option(help="How transforms are fused: wbf (weighted boxes fusion), nms, or vote (NMS + box voting).")] = PSEUDO_FUSION,
    score_floor: Annotated[float, typer.Option(help="Keep fused boxes scoring at least this (filter later).")] = PSEUDO_SCORE_FLOOR,
    image_size: Annotated[Optional[int], typer.Option(min=32, help="Longer side in pixels at scale 1 (default: the teacher's training size).")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass (also the unit of the resume journal).")] = 8,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run from its journal (OUT.journal; a shard's OUT.shardI-of-N.journal) instead of refusing to start.")] = False,
    shard: Annotated[Optional[str], typer.Option(help="I/N: label only shard I of N (0-based), for schedulers without torchrun; the last shard to finish writes OUT.")] = None,
    device: DeviceOpt = "auto", workers: WorkersOpt = 2,
) -> None:
    """Label unlabelled images with the teacher, ensembling several transforms per image.

    Under `torchrun --nproc-per-node N -m retinaslim pseudo-label ...` each process takes a shard and
    rank 0 writes the output.
    """
    target = None  # the output being written when Ctrl-C comes
    with user_errors("source", resume_hint=lambda: _resume_hint(target)):
        ws = Workspace.find()
        source = pick(source, "SOURCE", ws and ws.unlabeled, "unlabelled images")
        models = teacher
        if not models:
            newest = ws and ws.newest_weights("teacher")
            if ws and newest is None:
                raise UserError(f"no teacher in this workspace yet ({ws.runs}/teacher*/best.pt): run `retinaslim "
                                "train-teacher` first, or pass --teacher")
            models = [pick(None, "--teacher", newest, "teacher", "the newest runs/teacher*/best.pt")]
        jobs = [(models, pick(out, "--out", ws and ws.pseudo, "output", "runs/pseudo.json"))]
        if ws and teacher is None and out is None:  # the workspace's flow: the student labels too (self-training)
            student = ws.newest_weights("student-human")
            if student is not None:
                jobs = ws.labellings(models[0], student)
                console.info(f"the human-only student {student} labels the images too, alone into {ws.pseudo_student} "
                             f"and fused with the teacher into {ws.pseudo_joint}: filter keeps each class from whichever "
                             "labels score highest on the validation set")
            else:
                console.info("no human-only student in the workspace yet (train-student --human-only): only the teacher "
                             "labels; with one, pseudo-label also labels with it, alone (self-training) and fused with the "
                             "teacher, for filter to choose from")
        elif ws and jobs[0][1] == ws.pseudo:
            for stale in (p for p in (ws.pseudo_student, ws.pseudo_joint) if p.is_file()):
                console.warn(f"{stale} is from an earlier run and filter still weighs it against these labels; run "
                             "pseudo-label without --teacher and --out to relabel with the teacher and the human-only "
                             "student, or delete it")
        if ws:
            ws.refuse_overwriting_labels([("--out", path) for _, path in jobs])
        for models, target in jobs:
            with console.RichReporter() as reporter:
                result = api.pseudo_label(source, teacher=models, out=target, scales=scales, short_sides=short_sides,
                                          hflip=hflip, vflip=vflip, rot90=rot90, fusion=fusion, score_floor=score_floor,
                                          image_size=image_size, batch_size=batch_size, resume=resume, shard=shard,
                                          device=device, workers=workers, reporter=reporter)
            if result.merged and not result.num_images and result.skipped:
                first = result.skipped[0]
                raise UserError(f"{source}: none of its {len(result.skipped)} images could be read (first: "
                                f"{first['file']}: {first['reason']}); {target} lists each with its reason")
            _render(result, models)


def _resume_hint(target: Path | None) -> str | None:
    """How to continue a labelling stopped by Ctrl-C: its journal keeps the finished batches."""
    journals = sorted(Path(target).parent.glob(f"{Path(target).name}*.journal")) if target is not None else []
    if not journals:
        return None
    from retinaslim.stages.pseudo_label import holds_a_batch  # loads torch: not at the top, for --help's sake

    if not any(holds_a_batch(j) for j in journals):
        return f"no batch had finished ({journals[0]} holds none): the same command starts over"
    return f"{journals[0]} keeps the finished batches: run the same command with --resume to continue"


def _render(result, models: list[Path]) -> None:
    t = result.timings
    if result.num_images_resumed:
        console.info(f"resumed: {result.num_images_resumed} images were already labelled")
    if not result.merged:
        console.info(f"shard {result.shard[0]}/{result.shard[1]} done ({result.num_images_this_run} images, "
                     f"{result.seconds:.1f} s); the output is written when every shard has finished")
        return
    labellers = f"{len(models)} teachers x " if len(models) > 1 else f"{models[0]}, "
    counts = [result.num_images, len(result.skipped), result.num_boxes, result.num_boxes / max(1, result.num_images)]
    speed = [result.num_images_this_run / max(result.seconds, 1e-9), t.data, t.forward, t.fusion]
    console.table(f"pseudo-label: {labellers}{len(result.transforms)} transforms ({', '.join(result.transforms)})",
                  ["images", "skipped", "boxes", "boxes/image"] +
                  ([] if result.unchanged else ["images/s", "decode wait s", "forward s", "fusion s"]),
                  [counts + ([] if result.unchanged else speed)])  # nothing was run to time when it was complete
    for item in result.skipped:
        console.info(f"skipped {item['file']}: {item['reason']}")
    console.info(f"{result.out} left as it was" if result.unchanged else f"saved to {result.out}")
