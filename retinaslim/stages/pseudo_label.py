"""pseudo-label: the teacher labels unlabelled images with multi-transform ensembling.

Each image is run through every transform (sizes x flips [x rotations]; a size is a factor of ``image_size``,
the longer side in pixels, from ``scales``, or a shorter side in pixels from ``short_sides``) of every teacher
(several teachers: Data Distillation's model ensembling, or a second round with a distilled student among
them); predictions are mapped back to the original image and fused (WBF by default) into one box set with
a ``score`` and an ``agreement`` (how many (teacher, transform) pairs found the box). Every fused box above a low floor is kept, so thresholds can be
chosen later (``retinaslim filter``) without running the teacher again.

Work is never lost: each finished batch is appended to a journal beside the output (one JSON line per
batch, flushed and fsynced), and ``resume=True`` skips the batches already there (and an output already
finished with the same settings, ``settings_sha256`` in its info, is not made again). Batches are fixed
slices of the image list (a folder's files sorted, a text file's in its order), and a batch's detections depend only on its own images, so a resumed
run writes exactly what an uninterrupted one would. The images can be split into shards (torchrun
ranks, or ``shard=(i, n)`` for other schedulers): shard i takes batches i, i+n, ...; once every shard has
finished, one process merges the journals into the output, written atomically.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import ijson

from retinaslim.config import PSEUDO_FUSION, PSEUDO_SCALES, PSEUDO_SCORE_FLOOR
from retinaslim.core.atomic import atomic_path, refuse_overwriting_inputs
from retinaslim.core.fusion import FUSION_METHODS
from retinaslim.core.progress import Reporter
from retinaslim.core.tta import make_transforms
from retinaslim.data.coco import ClassMap, detections_to_annotations
from retinaslim.data.images import list_images
from retinaslim.data.stream import open_stream
from retinaslim.engine import ddp
from retinaslim.engine.inference import (ImageResult, Timings, chunks, load_teachers, predict_batches, resolve_device,
                                         teacher_paths)
from retinaslim.errors import UserError


MIN_BOX_SIDE = 1.0  # pixels
MAX_SCALE = 16  # a factor of image_size; sizes in pixels are short_sides


@dataclass
class PseudoLabelConfig:
    source: Path  # folder of images (recursive) or a text file of paths
    teacher: list[Path]  # one checkpoint or several, whose transforms are fused together
    out: Path
    _: KW_ONLY  # inputs and outputs above may be passed in order, options below by keyword only
    scales: tuple[float, ...] | None = None  # factors of image_size; None: PSEUDO_SCALES unless short_sides
    short_sides: tuple[int, ...] = ()  # shorter sides in pixels (Data Distillation's 400..1200), after the scales
    hflip: bool = True
    vflip: bool = False
    rot90: bool = False
    fusion: str = PSEUDO_FUSION
    score_floor: float = PSEUDO_SCORE_FLOOR
    image_size: int | None = None  # longer side in pixels at scale 1; None: each teacher's training size
    batch_size: int = 8
    device: str = "auto"
    workers: int = 2  # image-decoding processes; 0: decode in the main process
    resume: bool = False
    shard: tuple[int, int] | None = None  # (index, count); None: torchrun's RANK/WORLD_SIZE, else (0, 1)


@dataclass
class PseudoLabelResult:
    """What a pseudo-label run wrote to ``out`` (COCO JSON; each box with score 0..1 and agreement, the number
    of ``transforms`` that found it, times the teachers: (teacher, transform) pairs). ``merged`` is False when this process labelled one ``shard`` (index,
    count) and others are still running; then only the ``*_this_run`` counts are final. ``skipped``: images
    that could not be decoded, with reasons. ``timings``: seconds waiting for images, in forwards, in fusion.
    """

    out: Path
    merged: bool  # False: this shard finished, others are still running
    shard: tuple[int, int]
    num_images: int = 0
    num_boxes: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)
    transforms: list[str] = field(default_factory=list)
    num_images_this_run: int = 0
    num_images_resumed: int = 0
    timings: Timings = field(default_factory=Timings)
    seconds: float = 0.0
    unchanged: bool = False  # under ``resume``: ``out`` was already complete with these settings, not written again


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _journal_path(out: Path, shard: tuple[int, int]) -> Path:
    suffix = "" if shard[1] == 1 else f".shard{shard[0]}-of-{shard[1]}"
    return out.with_name(f"{out.name}{suffix}.journal")


def _journal_records(f: BinaryIO) -> Iterator[tuple[dict[str, Any], int]]:
    """The journal's records and their lengths in bytes, up to the first line a kill cut short (or any line
    that is not a JSON object)."""
    for line in f:
        try:
            record = json.loads(line) if line.endswith(b"\n") else None
        except ValueError:
            record = None
        if not isinstance(record, dict):
            return
        yield record, len(line)


def _read_journal(path: Path) -> tuple[dict[str, Any] | None, set[int], bool]:
    """(header, finished batch numbers, done flag); a line cut short by a kill (and anything after it) is
    dropped from the file."""
    header, finished, done, end = None, set(), False, 0
    with open(path, "rb") as f:  # line by line: a 100,000-image journal is ~300 MB
        for record, length in _journal_records(f):
            end += length
            if "header" in record:
                header = record["header"]
            elif "batch" in record:
                finished.add(record["batch"])
            elif record.get("done"):
                done = True
    if end < path.stat().st_size:
        with open(path, "r+b") as f:
            f.truncate(end)
    return header, finished, done


def holds_a_batch(path: Path) -> bool:
    """Whether the journal records a finished batch (or its end); reads up to that line, changes nothing."""
    with open(path, "rb") as f:
        return any("batch" in record or record.get("done") for record, _ in _journal_records(f))


@contextmanager
def _journal_errors(journal: Path) -> Iterator[None]:
    """A full disk or lost permission while journalling: one clear line; the batches written so far are kept."""
    try:
        yield
    except OSError as e:
        raise UserError(f"{journal}: writing the journal failed ({e.strerror or e}); the batches already in it "
                        "are kept: fix that, then rerun with `resume`") from None


def _journal_batches(path: Path) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    with open(path) as f:
        for line in f:
            record = json.loads(line)
            if "batch" in record:
                yield record["batch"], record["images"]


def _merged_records(journals: list[Path]) -> Iterator[dict[str, Any]]:
    """Every image record of every shard, in image order (each journal is in batch order)."""
    for _batch, records in heapq.merge(*(_journal_batches(p) for p in journals), key=lambda item: item[0]):
        yield from records


def _write_output(out: Path, journals: list[Path], info: dict[str, Any], categories: list[dict[str, Any]]) -> PseudoLabelResult:
    """Stream the journals into one COCO file (memory stays flat however many images there are)."""
    result = PseudoLabelResult(out, merged=True, shard=(0, 1))
    with atomic_path(out) as tmp, open(tmp, "w") as f:
        f.write('{"info": %s,\n"categories": %s,\n"images": [' % (json.dumps(info), json.dumps(categories)))
        sep = "\n"
        for record in _merged_records(journals):
            if "annotations" in record:
                image = {"id": record["index"] + 1, "file_name": record["file_name"],
                         "width": record["width"], "height": record["height"]}
                f.write(sep + json.dumps(image))
                sep = ",\n"
                result.num_images += 1
        f.write('],\n"annotations": [')
        sep = "\n"
        for record in _merged_records(journals):
            for ann in record.get("annotations", []):
                result.num_boxes += 1
                f.write(sep + json.dumps({"id": result.num_boxes, **ann}))
                sep = ",\n"
        f.write('],\n"skipped": [')
        sep = "\n"
        for record in _merged_records(journals):
            if "reason" in record:
                skipped = {"file": record["file"], "reason": record["reason"]}
                result.skipped.append(skipped)
                f.write(sep + json.dumps(skipped))
                sep = ",\n"
        f.write("]}\n")
    return result


def _resolve_shard(config: PseudoLabelConfig) -> tuple[int, int]:
    if config.shard is not None:
        index, count = config.shard
        if not (count >= 1 and 0 <= index < count):
            raise UserError(f"`shard` {index}/{count}: expected I/N with 0 <= I < N, e.g. 0/4")
        return index, count
    return ddp.rank(), ddp.world_size()


def _scales(config: PseudoLabelConfig) -> tuple[float, ...]:
    if config.scales is not None:
        return tuple(config.scales)
    return () if config.short_sides else PSEUDO_SCALES


def _validate(config: PseudoLabelConfig) -> None:
    if config.fusion not in FUSION_METHODS:
        raise UserError(f"`fusion` {config.fusion!r} is unknown; choose one of {', '.join(FUSION_METHODS)}")
    if not 0 <= config.score_floor <= 1:
        raise UserError(f"`score_floor` {config.score_floor} must be in [0, 1]")
    scales = _scales(config)
    if any(not 0 < s <= MAX_SCALE for s in scales):
        raise UserError(f"`scales` {scales}: factors of `image_size` in (0, {MAX_SCALE}], e.g. 0.75,1.0,1.25; "
                        "for shorter sides in pixels (400,600,800) use `short_sides`")
    if any(s < 1 for s in config.short_sides):
        raise UserError(f"`short_sides` {config.short_sides} must be pixel counts of at least 1, e.g. 400,600,800")
    if not scales and not config.short_sides:
        raise UserError("`scales` and `short_sides` are both empty: give at least one size")
    if config.batch_size < 1:
        raise UserError(f"`batch_size` {config.batch_size} must be at least 1")
    if Path(config.out).suffix.lower() != ".json":
        raise UserError(f"`out` {config.out}: expected a .json file name")
    refuse_overwriting_inputs([("`out`", config.out)], [("`source`", config.source),
                                                        *(("`teacher`", t) for t in teacher_paths(config.teacher))])



def pseudo_label(config: PseudoLabelConfig, reporter: Reporter | None = None) -> PseudoLabelResult:
    started = time.perf_counter()
    reporter = reporter or Reporter()
    _validate(config)
    shard = _resolve_shard(config)
    distributed = config.shard is None and shard[1] > 1  # launched by torchrun
    paths = list_images(config.source)
    teachers = teacher_paths(config.teacher)
    checkpoints, image_sizes = load_teachers(teachers, config.image_size)
    transforms = make_transforms(_scales(config), config.hflip, config.vflip, config.rot90, tuple(config.short_sides))
    classes = ClassMap.from_categories(checkpoints[0].classes)
    out = Path(config.out)
    out_dir = out.parent.resolve()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"`out` {out}: cannot create the folder {out.parent} ({e.strerror or e})") from None
    # One teacher: its path and size; several: lists, in the order given (agreement counts teacher x transform).
    one = len(teachers) == 1
    info = {
        "description": "retinaslim pseudo-labels (raw teacher output, fused)",
        "teacher": str(teachers[0]) if one else [str(t) for t in teachers],
        "image_size": image_sizes[0] if one else image_sizes, "transforms": [t.name for t in transforms],
        "fusion": config.fusion, "score_floor": config.score_floor,
    }
    digests = [_sha256(t) for t in teachers]
    # Everything that decides the output; a journal made with other settings must not be continued.
    header = {**info, "teacher_sha256": digests[0] if one else digests, "batch_size": config.batch_size,
              "num_images": len(paths), "images_sha256": hashlib.sha256("\n".join(map(str, paths)).encode()).hexdigest(),
              "shard": list(shard)}

    # What decides the output, whatever the sharding: a finished output holding it is not made again under `resume`.
    info["settings_sha256"] = hashlib.sha256(json.dumps({k: v for k, v in header.items() if k != "shard"},
                                                        sort_keys=True).encode()).hexdigest()
    journal = _journal_path(out, shard)
    finished: set[int] = set()
    done = False
    journals = [_journal_path(out, (i, shard[1])) for i in range(shard[1])]
    if config.resume and out.is_file() and not any(j.exists() for j in journals):
        complete = _complete_output(out, info["settings_sha256"], shard)
        if complete is not None:
            reporter.log(f"{out}: already complete with these settings; not labelled again")
            complete.seconds = time.perf_counter() - started
            return complete
    if journal.exists():
        if not config.resume and holds_a_batch(journal):
            raise UserError(f"{journal}: an interrupted run's journal is here; pass `resume` to continue it, or delete it")
        old_header, finished, done = _read_journal(journal)
        changed = sorted(k for k in header if old_header is None or old_header.get(k) != header[k])
        if not finished and not done:  # killed before its first batch was written: nothing to continue or lose
            reporter.log(f"{journal}: holds no finished batch; starting over")
        elif changed:
            raise UserError(f"{journal}: made with different settings ({', '.join(changed)}); "
                            "rerun with the original ones, or delete the journal to start over")

    all_batches = chunks(list(range(len(paths))), config.batch_size)
    mine = [k for k in range(shard[0], len(all_batches), shard[1])]
    todo = [k for k in mine if k not in finished]
    timings = Timings()
    num_resumed = sum(len(all_batches[k]) for k in mine if k in finished)
    if not done:
        device = resolve_device(config.device)
        if distributed:
            device = ddp.process_device(device)
        models = [c.build().to(device) for c in checkpoints]
        with _journal_errors(journal), open(journal, "a" if finished else "w") as log:
            if not finished:  # durable before any work: a run killed in its first batch leaves a header to check
                log.write(json.dumps({"header": header}) + "\n")
                log.flush()
                os.fsync(log.fileno())

            def record(result: ImageResult) -> dict[str, Any]:
                path = paths[result.index]
                if result.error is not None:
                    return {"index": result.index, "file": str(path), "reason": result.error.split(": ", 1)[-1]}
                dets = result.detections
                # Slivers under a pixel (boxes clipped at the border) are no labels: training drops them.
                sides = dets.boxes[:, 2:] - dets.boxes[:, :2]
                dets = dets[(dets.scores >= config.score_floor) & (sides >= MIN_BOX_SIDE).all(dim=1)]
                annotations = [{k: v for k, v in a.items() if k != "id"}
                               for a in detections_to_annotations(dets, result.index + 1, classes, result.width, result.height)]
                # COCO file names resolve against the JSON file's own folder.
                return {"index": result.index, "file_name": os.path.relpath(path.resolve(), out_dir),
                        "width": result.width, "height": result.height, "annotations": annotations}

            batch_numbers = iter(todo)

            def commit(results: list[ImageResult]) -> None:
                line = {"batch": next(batch_numbers), "images": [record(r) for r in results]}
                log.write(json.dumps(line) + "\n")
                log.flush()
                os.fsync(log.fileno())

            timings = predict_batches(models[0], paths, [all_batches[k] for k in todo], image_sizes[0], transforms, device,
                                      commit, fusion=config.fusion, workers=config.workers, reporter=reporter,
                                      task=f"pseudo-label {shard[0] + 1}/{shard[1]}" if shard[1] > 1 else "pseudo-label",
                                      ensemble=list(zip(models[1:], image_sizes[1:])))
            log.write(json.dumps({"done": True}) + "\n")

    partial = PseudoLabelResult(out, merged=False, shard=shard, transforms=info["transforms"],
                                num_images_this_run=sum(len(all_batches[k]) for k in todo),
                                num_images_resumed=num_resumed, timings=timings)
    if distributed:
        ddp.barrier()
        if shard[0] != 0:
            partial.seconds = time.perf_counter() - started
            return partial
    elif shard[1] > 1 and not _claim_merge(out, journals, reporter):
        partial.seconds = time.perf_counter() - started
        return partial  # the last shard to finish writes the output

    try:
        result = _write_output(out, journals, info, classes.categories())
    except BaseException:  # a merge that failed or was stopped (a full disk, Ctrl-C): the next --resume merges
        _merge_lock(out).unlink(missing_ok=True)
        raise
    for j in journals:
        j.unlink()
    _merge_lock(out).unlink(missing_ok=True)  # after the journals: a shard finishing now finds them gone
    result.shard, result.transforms, result.timings = shard, info["transforms"], timings
    result.num_images_this_run, result.num_images_resumed = partial.num_images_this_run, num_resumed
    result.seconds = time.perf_counter() - started
    return result


def _complete_output(out: Path, settings: str, shard: tuple[int, int]) -> PseudoLabelResult | None:
    """``out`` as a finished result if pseudo-label wrote it with the same settings (``settings_sha256`` in its
    info: the teachers' bytes, the images, the transforms...), else None. Counts its images, boxes and skipped
    files in one streamed pass."""
    stream = open_stream(out)
    if stream.info.get("settings_sha256") != settings:
        return None
    result = PseudoLabelResult(out, merged=True, shard=shard, transforms=list(stream.info.get("transforms", [])))
    for _, annotations in stream:
        result.num_images += 1
        result.num_boxes += len(annotations)
    with open(out, "rb") as f:
        result.skipped = list(ijson.items(f, "skipped.item"))
    result.num_images_resumed, result.unchanged = result.num_images, True
    return result


def _merge_lock(out: Path) -> Path:
    return out.with_name(f"{out.name}.merging")


def _claim_merge(out: Path, journals: list[Path], reporter: Reporter) -> bool:
    """True for exactly one shard once every shard's journal is complete. Reads the other shards' journals
    without changing them: one may be writing a line now."""
    def done(path: Path) -> bool:
        with open(path, "rb") as f:
            return any(record.get("done") for record, _ in _journal_records(f))

    if not all(j.exists() and done(j) for j in journals):
        return False
    lock = _merge_lock(out)
    try:
        os.close(os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        reporter.log(f"every shard has finished and {lock} exists: another shard is writing {out} now; if none is "
                     f"running, a merge was killed: delete {lock} and run any shard again with --resume")
        return False
    return True
