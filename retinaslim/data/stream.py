"""COCO files read and written one image at a time, so that memory stays flat however many images they hold.

pseudo-label's output holds every fused box above a low floor: about 15 boxes per image, 1.5 million
annotations and ~290 MB for 100,000 images. ``json.load`` turns that into ~1.6 GB of Python objects; read
with ``CocoStream`` (ijson, a streaming JSON parser with a C backend: ~6 s per pass over such a file) an
image's annotations exist only while it is processed. ``filter`` and ``show`` read machine labels so and
``coco_writer`` writes filter's output so (benchmarks/scale.py measures it, docs/results.md "scale").

Streaming needs the annotations grouped by image in the images' order, as pseudo-label and filter write
them; ``open_stream`` checks that in one pass over the ids (~15% of a filter run at 100,000 images) and reads
a file in another order (a hand-made one) with ``load_coco``, in memory. Every entry is checked as
``load_coco`` checks it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from array import array
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ijson
import numpy as np

from retinaslim.core.atomic import atomic_path
from retinaslim.data.coco import (ClassMap, annotation_id, image_id, load_coco, validate_annotation,
                                  validate_categories, validate_image)
from retinaslim.errors import UserError, not_a_file


_END = object()


@dataclass
class CocoStream:
    """A COCO detection file whose images (each with its annotations, bboxes COCO xywh) are read one at a time
    by iterating it: ``for image, annotations in stream``. ``info`` and ``categories`` are read on opening
    (``open_stream``). Iterating raises ``UserError``, naming the file, at the first bad entry."""

    path: Path
    image_root: Path
    info: dict[str, Any]
    categories: list[dict[str, Any]]
    grouped: bool = True  # annotations grouped by image in the images' order: streamed, else read in memory

    @property
    def classes(self) -> ClassMap:
        return ClassMap.from_categories(self.categories)

    def image_path(self, image: dict[str, Any]) -> Path:
        return self.image_root / image["file_name"]

    def _items(self, f, prefix: str) -> Iterator[Any]:
        try:
            yield from ijson.items(f, prefix, use_float=True)
        except (ijson.JSONError, UnicodeDecodeError) as e:
            load_coco(self.path, self.image_root)  # raises the precise one-line error (not JSON, not text, where)
            raise UserError(f"{self.path}: not valid JSON for a streaming reader ({type(e).__name__}): NaN, Infinity "
                            "and numbers beyond 64 bits are not JSON; write them as null or finite numbers") from None

    def _require_lists(self) -> None:
        """Raise load_coco's error unless the top level has 'images' and 'annotations' lists."""
        found = set()
        with open(self.path, "rb") as f:
            for prefix, event, value in ijson.parse(f):
                if prefix in ("images", "annotations") and event == "start_array":
                    found.add(prefix)
        if found != {"images", "annotations"}:
            load_coco(self.path, self.image_root)
            raise UserError(f"{self.path}: not a COCO file: missing list '{min({'images', 'annotations'} - found)}'")

    def __iter__(self) -> Iterator[tuple[dict[str, Any], list[dict[str, Any]]]]:
        if not self.grouped:
            data = load_coco(self.path, self.image_root)
            for image in data.images:
                yield image, data.annotations_per_image[image["id"]]
            return
        path, category_ids = self.path, validate_categories(self.path, self.categories)
        seen: set[int] = set()
        ids = array("q")  # annotation ids, checked for duplicates at the end
        with open(path, "rb") as image_file, open(path, "rb") as annotation_file:
            annotations = self._items(annotation_file, "annotations.item")
            pending = next(annotations, _END)  # a JSON null is an annotation (and an error), not the end
            for image in self._items(image_file, "images.item"):
                if image_id(path, image) in seen:
                    raise UserError(f"{path}: duplicate image id {image['id']}")
                seen.add(image["id"])
                validate_image(path, image, self.image_root)
                own = []
                while pending is not _END:
                    ids.append(annotation_id(path, pending))
                    if pending.get("image_id") != image["id"]:
                        ids.pop()  # counted when its image comes
                        break
                    validate_annotation(path, pending, image, category_ids)
                    own.append(pending)
                    pending = next(annotations, _END)
                yield image, own
            if not seen or not ids:  # no image, or no box: a file lacking either list gets load_coco's error
                self._require_lists()
            if pending is not _END:
                annotation_id(path, pending)
                if pending.get("image_id") in seen:
                    raise UserError(f"{path}: annotation {pending['id']} (image {pending['image_id']}) comes after other "
                                    "images' annotations; this file is read image by image and needs its annotations "
                                    "grouped by image in the images' order, as pseudo-label and filter write them")
                raise UserError(f"{path}: annotation {pending['id']} points at image id {pending.get('image_id')!r}, "
                                "which is not in 'images'")
        unique, counts = np.unique(np.frombuffer(ids, dtype=np.int64), return_counts=True)
        if (counts > 1).any():
            raise UserError(f"{path}: duplicate annotation id {int(unique[counts > 1][0])}")


def open_stream(path: Path, images_dir: Path | None = None) -> CocoStream:
    """Open a COCO file for reading image by image; its images resolve against ``images_dir``, else its folder.

    Raises ``UserError`` naming the file when it is missing, is not JSON, or lacks a valid ``categories`` list.
    """
    path = Path(path)
    if not path.is_file():
        raise not_a_file(path, "a COCO JSON file")
    stream = CocoStream(path, Path(images_dir) if images_dir is not None else path.parent, {}, [])
    with open(path, "rb") as f:  # 'categories' and 'info' come first in the files we write: found at once
        categories = next(stream._items(f, "categories"), None)
    if not isinstance(categories, list):
        load_coco(path, images_dir)  # not COCO: its precise one-line error
        raise UserError(f"{path}: not a COCO file: missing list 'categories'")
    validate_categories(path, categories)
    with open(path, "rb") as f:
        info = next(stream._items(f, "info"), None)
    stream.info, stream.categories = info if isinstance(info, dict) else {}, categories
    stream.grouped = _grouped(stream)
    return stream


def _grouped(stream: CocoStream) -> bool:
    """Whether the annotations come grouped by image in the images' order (ids only are read)."""
    with open(stream.path, "rb") as f:
        position = {image_id: k for k, image_id in enumerate(stream._items(f, "images.item.id"))
                    if isinstance(image_id, int)}
    last = 0
    with open(stream.path, "rb") as f:
        for image_id in stream._items(f, "annotations.item.image_id"):
            k = position.get(image_id, -1) if isinstance(image_id, int) else -1
            if k < last:  # also an unknown image: the in-memory reader names the error
                return False
            last = k
    return True


@contextmanager
def coco_writer(path: Path, info: dict[str, Any], categories: list[dict[str, Any]]
                ) -> Iterator[Callable[[dict[str, Any], list[dict[str, Any]]], None]]:
    """Write a COCO file image by image: yields ``add(image, annotations)``. Annotations wait in a temporary
    file beside ``path`` until the images are written; ``path`` appears (atomically) only if the block
    finishes, so a killed or failed run leaves any previous file as it was."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w") as f, tempfile.TemporaryFile("w+", dir=path.parent) as later:
        f.write('{"info": %s,\n"categories": %s,\n"images": [' % (json.dumps(info), json.dumps(categories)))
        count = {"images": 0, "annotations": 0}

        def add(image: dict[str, Any], annotations: list[dict[str, Any]]) -> None:
            f.write((",\n" if count["images"] else "\n") + json.dumps(image, allow_nan=False))
            count["images"] += 1
            for a in annotations:
                later.write((",\n" if count["annotations"] else "\n") + json.dumps(a, allow_nan=False))
                count["annotations"] += 1

        yield add
        f.write('],\n"annotations": [')
        later.seek(0)
        shutil.copyfileobj(later, f)
        f.write("]}\n")


@contextmanager
def results_writer(path: Path) -> Iterator[Callable[[list[dict[str, Any]]], None]]:
    """Write a COCO results file (a JSON list of result dicts, one per line) a chunk at a time: yields
    ``add(results)``. ``path`` appears (atomically) only if the block finishes."""
    with atomic_path(Path(path)) as tmp, open(tmp, "w") as f:
        f.write("[")
        count = 0

        def add(results: list[dict[str, Any]]) -> None:
            nonlocal count
            for r in results:
                f.write((",\n" if count else "\n") + json.dumps(r, allow_nan=False))
                count += 1

        yield add
        f.write("\n]\n")
