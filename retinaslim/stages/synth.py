"""synth: built-in synthetic ID-card photographs, with COCO labels, for demos, tests and benchmarks.

Writes ``labeled.json``, ``val.json`` (COCO), ``unlabeled/`` (images only), ``unlabeled.truth.json``
(the hidden truth, to measure machine labels) and a workspace file, all under one folder. Every image
is drawn from its own seed (split, index, --seed), so the same seed gives the same bytes, with any number of
``workers`` (processes drawing images; the main process writes them in order).

Images are written each to a temporary name and renamed (no half-written image under its name) but not
fsynced one by one, and without ``atomic_path``'s scan of the folder for stale temporary files: both cost
more than drawing a 64 px image and the scan grows with the folder (100,000 images: quadratic). One
``os.sync`` makes them durable before the label files, which are written atomically and last.
"""

from __future__ import annotations

import io
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import KW_ONLY, dataclass
from pathlib import Path

import numpy as np

from retinaslim.config import WORKSPACE_FILE, write_workspace
from retinaslim.core.atomic import write_json
from retinaslim.core.progress import Reporter
from retinaslim.data.coco import coco_bbox
from retinaslim.data.scenes import CARD_CLASSES, render_scene
from retinaslim.errors import UserError

SPLITS = ("labeled", "val", "unlabeled")


@dataclass
class SynthConfig:
    out: Path
    _: KW_ONLY  # inputs and outputs above may be passed in order, options below by keyword only
    num_labeled: int = 100
    num_unlabeled: int = 900
    num_val: int = 100
    size: int = 320
    seed: int = 0
    max_cards: int = 3
    classes: tuple[str, ...] = CARD_CLASSES  # card kinds to draw, a subset of CARD_CLASSES
    distractors: bool = True  # paper, screens and books: card-like rectangles that are not cards
    overwrite: bool = False
    workers: int = 0  # processes drawing images; 0: draw in this process


@dataclass
class SynthResult:
    """What ``synth`` wrote: the folder, and per split (labeled, val, unlabeled) its images, true boxes and
    file (``files["labeled"]``: labeled.json; ``files["unlabeled"]``: unlabeled.truth.json, the hidden truth)."""

    out: Path
    num_images: dict[str, int]
    num_boxes: dict[str, int]
    files: dict[str, Path]


def _jpeg_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def _draw(args: tuple[int, int, int, int, int, bool, tuple[int, ...]]) -> tuple[bytes, list, list]:
    """(JPEG bytes, boxes xyxy, labels) of image ``index`` of split ``split_index``."""
    seed, split_index, index, size, max_cards, distractors, kinds = args
    scene = render_scene(np.random.default_rng([seed, split_index, index]), size, max_cards, distractors, kinds)
    return _jpeg_bytes(scene.image), list(scene.boxes), list(scene.labels)


def _write_image(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as e:
        raise UserError(f"{path}: writing failed ({e.strerror or e})") from None


def synth(config: SynthConfig, reporter: Reporter | None = None) -> SynthResult:
    reporter = reporter or Reporter()
    out = Path(config.out)
    if config.size < 32:
        raise UserError(f"`size` {config.size} is too small; use at least 32 px")
    counts = {"labeled": config.num_labeled, "val": config.num_val, "unlabeled": config.num_unlabeled}
    if config.workers < 0:
        raise UserError(f"`workers` {config.workers} must be 0 or more")
    if any(n < 0 for n in counts.values()) or config.num_labeled == 0 or config.num_val == 0:
        raise UserError("`num_labeled` and `num_val` must be at least 1, `num_unlabeled` at least 0")
    unknown = [name for name in config.classes if name not in CARD_CLASSES]
    if unknown or not config.classes or len(set(config.classes)) != len(config.classes):
        raise UserError(f"`classes` {','.join(config.classes)!r}: choose distinct names among {', '.join(CARD_CLASSES)}")
    kinds = tuple(CARD_CLASSES.index(name) for name in config.classes)
    if (out / "labeled.json").exists() and not config.overwrite:
        raise UserError(f"{out}: already holds a synthetic dataset; choose another folder or pass `overwrite`")

    categories = [{"id": i + 1, "name": name} for i, name in enumerate(config.classes)]
    files: dict[str, Path] = {}
    num_boxes: dict[str, int] = {}
    splits = {}
    pool = ProcessPoolExecutor(config.workers) if config.workers else None
    try:
        for split_index, split in enumerate(SPLITS):
            images, annotations = [], []
            (out / split).mkdir(parents=True, exist_ok=True)
            reporter.start(f"synth {split}", counts[split])
            jobs = [(config.seed, split_index, i, config.size, config.max_cards, config.distractors, kinds)
                    for i in range(counts[split])]
            drawn = pool.map(_draw, jobs, chunksize=64) if pool else map(_draw, jobs)
            for i, (jpeg, boxes, labels) in enumerate(drawn):
                file_name = f"{split}/{split}_{i:06d}.jpg"
                _write_image(out / file_name, jpeg)
                image_id = i + 1
                images.append({"id": image_id, "file_name": file_name, "width": config.size, "height": config.size})
                for box_xyxy, label in zip(boxes, labels):
                    box = coco_bbox(box_xyxy, config.size, config.size)
                    if box is None:
                        continue
                    annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": label + 1,
                                        "bbox": box, "area": round(box[2] * box[3], 2), "iscrowd": 0})
                reporter.advance(f"synth {split}")
            reporter.finish(f"synth {split}")
            splits[split] = images, annotations
    finally:
        if pool:
            pool.shutdown()
    os.sync()  # the images are on disk before the files that name them
    for split, (images, annotations) in splits.items():
        name = "unlabeled.truth.json" if split == "unlabeled" else f"{split}.json"
        info = {"description": f"retinaslim synthetic ID cards ({split})", "seed": config.seed, "size": config.size}
        write_json(out / name, {"info": info, "images": images, "annotations": annotations, "categories": categories})
        files[split] = out / name
        num_boxes[split] = len(annotations)

    write_workspace(out / WORKSPACE_FILE, {
        "labeled": "labeled.json", "val": "val.json", "unlabeled": "unlabeled",
        "unlabeled_truth": "unlabeled.truth.json", "classes": list(config.classes), "runs": "runs",
    })
    files["workspace"] = out / WORKSPACE_FILE
    return SynthResult(out, counts, num_boxes, files)
