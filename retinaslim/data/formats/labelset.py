"""The in-between form every format reader produces and every writer consumes, and COCO files as one format.

A ``LabelSet`` is a COCO dataset whose image file names are absolute paths, plus what the reader had to
skip and why. Boxes go in through ``add_box``, which clips them to the image and refuses degenerate ones,
so every writer receives boxes with positive width and height inside their image.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retinaslim.core.atomic import write_json
from retinaslim.data.coco import coco_bbox, load_coco
from retinaslim.data.images import ImageError, SizeMismatch, check_declared_size, displayed_size

# Boxes are clipped to their image; only a box that reached further out than rounding noise counts as clipped.
CLIP_TOLERANCE = 0.01  # pixels


@dataclass
class Skipped:
    """An image or a box a reader or writer left out: where it was and why."""

    kind: str  # "image" or "box"
    where: str  # the file, and the line or object within it
    reason: str


@dataclass
class LabelSet:
    """images: id, file_name (absolute path), width, height; annotations: COCO, bbox xywh in image pixels,
    ``score`` on machine labels; categories: id, name."""

    images: list[dict[str, Any]] = field(default_factory=list)
    annotations: list[dict[str, Any]] = field(default_factory=list)
    categories: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    num_clipped: int = 0
    num_sizes_read: int = 0  # images whose label file gave no size: read from the image
    num_rescaled: int = 0  # images a resized copy of the size their label file gives: their boxes rescaled
    num_polygons: int = 0  # polygons read as their enclosing boxes

    def category_id(self, name: str) -> int:
        """The id of the class called ``name``; a new class gets the next id (classes in order of appearance)."""
        for c in self.categories:
            if c["name"] == name:
                return c["id"]
        self.categories.append({"id": len(self.categories) + 1, "name": name})
        return len(self.categories)

    def add_image(self, path: Path, width: int, height: int) -> dict[str, Any]:
        image = {"id": len(self.images) + 1, "file_name": str(Path(path).absolute()), "width": int(width),
                 "height": int(height)}
        self.images.append(image)
        return image

    def add_declared_image(self, path: Path, where: Path | str, width: Any = None, height: Any = None
                           ) -> tuple[dict[str, Any], tuple[float, float]] | None:
        """Add an image whose label file gives its size as ``width`` x ``height`` (None or 0: not given), at the
        size it is displayed at (its header, EXIF rotation applied) -> (image, (sx, sy)): the scale from the
        declared pixels the file's boxes are in to the image's. None: skipped, the reason recorded.

        A declared size of the same shape at another size is a resized copy (scale != 1, counted). Another
        shape skips the image. A size not given is read from the image (counted); an image whose header cannot
        be read keeps a declared size, and is skipped without one.
        """
        try:
            declared = (int(width), int(height)) if width and height else None
        except (TypeError, ValueError):
            declared = None
        try:
            size = displayed_size(path) if declared is None else check_declared_size(path, *declared)
        except SizeMismatch as e:
            self.skip("image", where, str(e))
            return None
        except ImageError as e:
            if declared is None:
                self.skip("image", where, f"no size given and {str(e).split(': ', 1)[-1]}")
                return None
            size = declared
        self.num_sizes_read += declared is None
        self.num_rescaled += declared is not None and size != declared
        declared = declared or size
        return self.add_image(path, *size), (size[0] / declared[0], size[1] / declared[1])

    def skip(self, kind: str, where: Path | str, reason: str) -> None:
        self.skipped.append(Skipped(kind, str(where), reason))

    def add_box(self, image: dict[str, Any], box_xyxy: tuple[float, float, float, float], category_id: int,
                where: str, score: float | None = None, **extra: Any) -> bool:
        """Add one box (x1, y1, x2, y2 in image pixels), clipped to the image; a box with no area is skipped
        with the reason recorded against ``where`` (the file and line or object it came from)."""
        x1, y1, x2, y2 = box_xyxy
        if score is not None and not 0 <= score <= 1:
            self.skip("box", where, f"score {score:g} outside [0, 1]")
            return False
        if not x2 > x1 or not y2 > y1:
            self.skip("box", where, "zero or negative width/height")
            return False
        bbox = coco_bbox(box_xyxy, image["width"], image["height"], decimals=None)
        if bbox is None:
            self.skip("box", where, "outside the image")
            return False
        cx1, cy1, cx2, cy2 = bbox[0], bbox[1], bbox[0] + bbox[2], bbox[1] + bbox[3]
        self.num_clipped += max(abs(cx1 - x1), abs(cy1 - y1), abs(cx2 - x2), abs(cy2 - y2)) > CLIP_TOLERANCE
        ann = {"id": len(self.annotations) + 1, "image_id": image["id"], "category_id": category_id,
               "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": 0}
        if score is not None:
            ann["score"] = score
        self.annotations.append({**ann, **extra})
        return True

    def annotations_per_image(self) -> dict[int, list[dict[str, Any]]]:
        per_image: dict[int, list[dict[str, Any]]] = {image["id"]: [] for image in self.images}
        for a in self.annotations:
            per_image[a["image_id"]].append(a)
        return per_image


def read_coco(path: Path, images_dir: Path | None = None) -> LabelSet:
    """A COCO file (validated by ``load_coco``), image names made absolute; category ids are kept."""
    coco = load_coco(path, images_dir)
    labels = LabelSet(categories=coco.categories, num_sizes_read=coco.num_sizes_read)
    for image in coco.images:
        added = labels.add_declared_image(coco.image_path(image), f"{path}: image {image['id']}", image["width"],
                                          image["height"])
        if added is None:
            continue
        added, (sx, sy) = added
        for a in coco.annotations_per_image[image["id"]]:
            x, y, w, h = a["bbox"]
            extra = {k: v for k, v in a.items() if k not in ("id", "image_id", "category_id", "bbox", "area", "score")}
            labels.add_box(added, (x * sx, y * sy, (x + w) * sx, (y + h) * sy), a["category_id"],
                           f"{path}: annotation {a['id']}", a.get("score"), **extra)
    return labels


def write_coco(labels: LabelSet, out: Path, info: dict[str, Any]) -> None:
    """One COCO file; image names relative to its folder (COCO names resolve against the JSON's own folder)."""
    base = Path(out).parent.absolute()
    images = [{**image, "file_name": os.path.relpath(image["file_name"], base)} for image in labels.images]
    write_json(out, {"info": info, "images": images, "annotations": labels.annotations, "categories": labels.categories})
