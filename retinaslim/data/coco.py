"""Read, validate and write COCO detection files; map category ids to model labels; score with pycocotools.

Every artifact of the pipeline (human labels, raw teacher output, filtered labels, predictions) is a
COCO file. A file's images resolve against an explicit image folder if given, else against the JSON
file's own folder.

Why ``load_coco`` validates instead of handing the file to pycocotools: pycocotools' ``COCO`` reads a file
without checking it. Duplicate image or annotation ids overwrite each other in its index, and boxes with
zero, negative or NaN sides, or pointing at a missing image or category, load silently and surface later as
wrong numbers or a KeyError far from the file; a truth box with id 0 is never matched (0 is its "unmatched"
id; ``CocoEvaluator`` renumbers). ``load_coco`` refuses such a file in one line naming the file, the entry
and the value: the cases are tested in ``tests/test_bad_inputs.py`` and ``tests/test_field_reports.py``
(docs/reliability.md). pycocotools still does all the scoring.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.ops import box_convert

from retinaslim.core.detections import Detections
from retinaslim.data.images import ImageError, SizeMismatch, check_declared_size, displayed_size
from retinaslim.errors import UserError, not_a_file


@dataclass(frozen=True)
class ClassMap:
    """COCO ``category_id`` <-> contiguous model ``label`` (categories sorted by id), with names."""

    category_ids: tuple[int, ...]
    names: tuple[str, ...]

    @classmethod
    def from_categories(cls, categories: list[dict[str, Any]]) -> ClassMap:
        ordered = sorted(categories, key=lambda c: c["id"])
        return cls(tuple(int(c["id"]) for c in ordered), tuple(str(c["name"]) for c in ordered))

    def __len__(self) -> int:
        return len(self.category_ids)

    def label(self, category_id: int) -> int:
        return self.category_ids.index(category_id)

    def categories(self) -> list[dict[str, Any]]:
        return [{"id": i, "name": n} for i, n in zip(self.category_ids, self.names)]


@dataclass
class CocoData:
    """A validated COCO detection file.

    ``annotations_per_image`` maps image id to that image's annotations; bboxes stay COCO xywh.
    """

    path: Path
    image_root: Path
    images: list[dict[str, Any]]
    categories: list[dict[str, Any]]
    annotations_per_image: dict[int, list[dict[str, Any]]]
    info: dict[str, Any] = field(default_factory=dict)
    num_sizes_read: int = 0  # images the file gives no width/height for: read from the image

    @property
    def classes(self) -> ClassMap:
        return ClassMap.from_categories(self.categories)

    @property
    def num_annotations(self) -> int:
        return sum(len(a) for a in self.annotations_per_image.values())

    def image_path(self, image: dict[str, Any]) -> Path:
        return self.image_root / image["file_name"]

    def to_dict(self) -> dict[str, Any]:
        annotations = [a for image in self.images for a in self.annotations_per_image[image["id"]]]
        return {"info": self.info, "images": self.images, "annotations": annotations, "categories": self.categories}


def _fail(path: Path, problem: str) -> UserError:
    return UserError(f"{path}: {problem}")


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _id(value: Any) -> bool:
    """An integer id as the evaluation's int64 arrays hold it (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool) and -2**63 <= value < 2**63


def validate_categories(path: Path, categories: list[Any]) -> set[int]:
    """Raise unless every category has an integer ``id`` (unique, int64) and a string ``name``; -> the ids."""
    category_ids: set[int] = set()
    for c in categories:
        if not isinstance(c, dict) or not _id(c.get("id")) or not isinstance(c.get("name"), str):
            raise _fail(path, f"category {c!r} needs an integer 'id' (64-bit) and a string 'name'")
        if c["id"] in category_ids:
            raise _fail(path, f"duplicate category id {c['id']}")
        category_ids.add(c["id"])
    return category_ids


def image_id(path: Path, image: Any) -> int:
    """The image entry's ``id``; raises unless it has an integer id (int64) and a string ``file_name``."""
    if not isinstance(image, dict) or not _id(image.get("id")) or not isinstance(image.get("file_name"), str):
        raise _fail(path, f"image {str(image)[:80]} needs an integer 'id' (64-bit) and a string 'file_name'")
    return image["id"]


def validate_image(path: Path, image: dict[str, Any], root: Path, unsized_ok: bool = False) -> int:
    """Check an image entry's size, reading it from the image under ``root`` when the entry has none (as
    ``load_coco`` says); -> 1 if it was read so, else 0."""
    unread, read = "", 0
    if image.get("width") is None or image.get("height") is None:  # not given: the image's own size
        try:
            image["width"], image["height"] = displayed_size(root / image["file_name"])
            read = 1
        except ImageError:
            unread = ", and the image's own size cannot be read"
            if unsized_ok:
                image["width"] = image["height"] = None
                return 0
    for key in ("width", "height"):
        if not (isinstance(image.get(key), int) and image[key] > 0):
            raise _fail(path, f"image {image['id']} ({image['file_name']}) needs a positive integer '{key}'{unread}")
    return read


def annotation_id(path: Path, a: Any) -> int:
    """The annotation's ``id``; raises unless it is an object with an integer id."""
    if not isinstance(a, dict) or not isinstance(a.get("id"), int):
        raise _fail(path, f"annotation {a.get('id') if isinstance(a, dict) else a!r} needs an integer 'id'")
    return a["id"]


def validate_annotation(path: Path, a: dict[str, Any], image: dict[str, Any], category_ids: set[int]) -> None:
    """Raise unless ``a`` (an annotation of ``image``) has a known category, a finite box with positive sides
    not wholly outside the image, a score in [0, 1], an ``area`` >= 0 and an ``iscrowd`` of 0 or 1 if any
    (pycocotools reads ``iscrowd`` both as a truth value and as an integer: other values score wrongly)."""
    where = f"annotation {a['id']}"
    if not _id(a.get("category_id")) or a["category_id"] not in category_ids:
        raise _fail(path, f"{where} has category id {a.get('category_id')!r}, which is not in 'categories'")
    bbox = a.get("bbox")
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_finite_number(v) for v in bbox)):
        raise _fail(path, f"{where} needs 'bbox' as four finite numbers [x, y, width, height]")
    if bbox[2] <= 0 or bbox[3] <= 0:
        raise _fail(path, f"{where} has a box with width or height <= 0: {bbox}")
    # A box reaching past the border is clipped in training; one wholly outside means a wrong image size, and
    # one reaching past the border by more than the image's own width or height is a wrong number.
    width, height = image["width"], image["height"]
    if bbox[0] + bbox[2] <= 0 or bbox[1] + bbox[3] <= 0 or (width is not None and (bbox[0] >= width or bbox[1] >= height)):
        raise _fail(path, f"{where} has box {bbox} (x, y, width, height) wholly outside its image "
                          f"{image['file_name']} ({width} x {height})")
    if width is not None and (bbox[0] < -width or bbox[1] < -height or
                              bbox[0] + bbox[2] > 2 * width or bbox[1] + bbox[3] > 2 * height):
        raise _fail(path, f"{where} has box {bbox} (x, y, width, height) reaching past its image "
                          f"{image['file_name']} ({width} x {height}) by more than the image's size")
    if "score" in a and not (_finite_number(a["score"]) and 0 <= a["score"] <= 1):
        raise _fail(path, f"{where} has score {a['score']!r}; scores must be numbers in [0, 1]")
    if "area" in a and not (_finite_number(a["area"]) and a["area"] >= 0):
        raise _fail(path, f"{where} has area {a['area']!r}; an area is a number >= 0 (pixels)")
    if "iscrowd" in a and a["iscrowd"] not in (0, 1):  # True and False are 1 and 0
        raise _fail(path, f"{where} has iscrowd {a['iscrowd']!r}; iscrowd is 0 or 1")


def load_coco(path: Path, images_dir: Path | None = None, require_annotations: bool = True,
              unsized_ok: bool = False) -> CocoData:
    """Read and validate a COCO detection file; any problem raises a ``UserError`` naming the file.

    ``require_annotations=False`` accepts a file with no ``annotations`` key (an image list). An image
    without ``width``/``height`` gets the size it is displayed at, read from its header; where that cannot
    be read either (a missing or broken file) it is an error, or with ``unsized_ok`` its width and height
    stay None for the caller to skip it (convert does, with the reason).
    """
    path = Path(path)
    if not path.is_file():
        raise not_a_file(path, "a COCO JSON file")
    try:
        data = json.loads(path.read_text())
    except UnicodeDecodeError:
        raise _fail(path, "not a text file; expected COCO JSON") from None
    except json.JSONDecodeError as e:
        raise _fail(path, f"not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    if not isinstance(data, dict):
        raise _fail(path, "not a COCO file: the top level must be an object with images, annotations, categories")
    required = ("images", "annotations", "categories") if require_annotations else ("images", "categories")
    for key in required:
        if not isinstance(data.get(key), list):
            raise _fail(path, f"not a COCO file: missing list '{key}'")

    categories = data["categories"]
    category_ids = validate_categories(path, categories)
    images = data["images"]
    root = Path(images_dir) if images_dir is not None else path.parent
    annotations_per_image: dict[int, list[dict[str, Any]]] = {}
    num_sizes_read = 0
    for image in images:
        if image_id(path, image) in annotations_per_image:
            raise _fail(path, f"duplicate image id {image['id']}")
        num_sizes_read += validate_image(path, image, root, unsized_ok)
        annotations_per_image[image["id"]] = []

    images_by_id = {image["id"]: image for image in images}
    annotation_ids: set[int] = set()
    for a in data.get("annotations", []):
        if annotation_id(path, a) in annotation_ids:
            raise _fail(path, f"duplicate annotation id {a['id']}")
        annotation_ids.add(a["id"])
        if not _id(a.get("image_id")) or a["image_id"] not in annotations_per_image:
            raise _fail(path, f"annotation {a['id']} points at image id {a.get('image_id')!r}, which is not in 'images'")
        validate_annotation(path, a, images_by_id[a["image_id"]], category_ids)
        annotations_per_image[a["image_id"]].append(a)

    info = data.get("info") if isinstance(data.get("info"), dict) else {}
    return CocoData(path, root, images, categories, annotations_per_image, info, num_sizes_read)


def rescale_image(coco: CocoData, image: dict[str, Any], width: int, height: int) -> None:
    """Give ``image`` (one of ``coco``'s) the size ``width`` x ``height``, its boxes and areas scaled with it."""
    sx, sy = width / image["width"], height / image["height"]
    for a in coco.annotations_per_image[image["id"]]:
        x, y, w, h = a["bbox"]
        a["bbox"] = [x * sx, y * sy, w * sx, h * sy]
        if "area" in a:
            a["area"] = a["area"] * sx * sy
    image["width"], image["height"] = width, height


def require_scores(coco: CocoData) -> None:
    """Raise UserError unless every box of ``coco`` (ignore regions aside) has a ``score`` in 0..1, as the
    machine labels ``pseudo-label`` and ``filter`` write do."""
    for annotations in coco.annotations_per_image.values():
        for a in annotations:
            score = a.get("score")
            if not a.get("iscrowd", 0) and not (isinstance(score, (int, float)) and 0 <= score <= 1):
                raise _fail(coco.path, f"annotation {a.get('id')} has no score in 0..1 ({score!r}); weighting machine "
                                       "boxes by score needs the scores pseudo-label writes")


def machine_class_mask(coco: CocoData, classes: ClassMap) -> tuple[torch.Tensor | None, str | None]:
    """((C,) bool, True for the classes of ``classes`` the machine labels ``coco`` speak for, or None when they
    speak for all; a note naming the others, or None). ``filter`` records in ``info.filter.unreliable_classes``
    the classes whose teacher boxes it kept none of (the teacher missed its precision target there on the
    validation images, or the human-only student beat it): a machine-labelled image says nothing about them.

    Raises UserError when that entry is not a list of class names."""
    names = (coco.info.get("filter") or {}).get("unreliable_classes") or []
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise _fail(coco.path, f"info.filter.unreliable_classes must be a list of class names (got {names!r})")
    left = [n for n in classes.names if n in names]
    if not left:
        return None, None
    mask = torch.tensor([n not in names for n in classes.names])
    return mask, (f"{coco.path}: its machine labels carry no loss for {', '.join(left)} (the filter kept none of "
                  "the machine boxes there: it missed the precision target or the human-only student was better), "
                  "so the student learns them from the human labels only")


def require_image_files(coco: CocoData, option: str = "`images`") -> str | None:
    """Check the images the file names against the files on disk, before they train or score anything.

    Raises if one is missing (a typo'd folder would otherwise train or score on nothing) or is not the shape
    the file declares (its boxes belong to another picture or orientation). One of the same shape at another
    size (a resized copy) gets its declared size and boxes rescaled to the image here; the returned note
    says how many. An image whose header cannot be read is left to the decoder, which skips and counts it.
    """
    missing = [coco.image_path(im) for im in coco.images if not coco.image_path(im).is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UserError(f"{coco.path}: image {missing[0]} not found{more}; pass {option} DIR if they live elsewhere")
    mismatched, num_rescaled = [], 0
    for image in coco.images:
        try:
            width, height = check_declared_size(coco.image_path(image), image["width"], image["height"])
        except ImageError:
            continue
        except SizeMismatch as e:
            mismatched.append(f"image {image['id']} ({image['file_name']}) {e}")
            continue
        if (width, height) != (image["width"], image["height"]):
            rescale_image(coco, image, width, height)
            num_rescaled += 1
    if mismatched:
        more = f" (and {len(mismatched) - 1} more)" if len(mismatched) > 1 else ""
        raise UserError(f"{coco.path}: {mismatched[0]}{more}; fix its width, height and boxes in the file")
    if num_rescaled:
        return (f"{coco.path}: {num_rescaled} image(s) are a resized copy of the size the file declares; "
                "their boxes were rescaled to the images")
    return None


def trained_classes(labeled: CocoData, keep_empty: bool = False) -> tuple[ClassMap, str | None]:
    """The classes a model learns from the labelled file ``labeled``, and a note naming those left out.

    A category with no boxes in ``labeled`` cannot be learned (Roboflow's COCO exports list the dataset's
    supercategory as one, id 0): it is left out unless ``keep_empty``. Kept categories keep their ids.
    """
    with_boxes = {a["category_id"] for anns in labeled.annotations_per_image.values() for a in anns}
    empty = [c for c in labeled.categories if c["id"] not in with_boxes]
    if keep_empty or not empty or len(empty) == len(labeled.categories):
        return labeled.classes, None
    kept = ClassMap.from_categories([c for c in labeled.categories if c["id"] in with_boxes])
    named = ", ".join(f"{c['id']} {c['name']!r}" for c in empty)
    return kept, (f"{labeled.path}: no boxes of category {named} in the labelled set: left out of the model's "
                  "classes (pass --keep-empty-classes to keep it)")


def match_classes(classes: ClassMap, source: Path | str, other: CocoData,
                  left_out: Sequence[dict[str, Any]] = ()) -> str | None:
    """Give ``other`` the category ids of ``classes`` (those of ``source``: a labelled file, machine labels or a
    model), matching categories by NAME: tools renumber classes (COCO -> Label Studio -> COCO numbers them in
    order of appearance), and the same name under another id is the same class. ``other``'s annotations are
    rewritten in place to ``classes``' ids and its categories become ``classes``': a class it does not list has
    no boxes there; a category it lists without boxes that ``classes`` lacks is set aside.

    Raises, naming both files, when ``other`` has boxes of a class ``classes`` lacks (one of ``left_out``, the
    source's categories left out of ``classes`` for having no boxes, says so and how to keep it) or when a name
    cannot be matched because it is listed twice. Returns a note naming the ids that changed, else None.
    """
    with_boxes = {a["category_id"] for anns in other.annotations_per_image.values() for a in anns}
    pairs = set(zip(classes.category_ids, classes.names))
    ids_by_name: dict[str, list[int]] = {}
    for category_id, name in zip(classes.category_ids, classes.names):
        ids_by_name.setdefault(name, []).append(category_id)
    mapping: dict[int, int] = {}
    unknown = []
    for c in sorted(other.categories, key=lambda c: c["id"]):
        ids = ids_by_name.get(c["name"], [])
        if (c["id"], c["name"]) in pairs:
            mapping[c["id"]] = c["id"]
        elif len(ids) == 1:
            mapping[c["id"]] = ids[0]
        elif ids and c["id"] in with_boxes:
            raise UserError(f"{other.path}: category {c['id']} {c['name']!r} matches none of {source}'s categories of "
                            f"that name (ids {', '.join(map(str, ids))}) by id; give each class a distinct name")
        elif c["id"] in with_boxes:
            unknown.append(c)
    if unknown:
        named = ", ".join(f"{c['id']} {c['name']!r}" for c in unknown)
        empty = [c for c in unknown if c["name"] in {e["name"] for e in left_out}]
        if empty:
            raise UserError(f"{other.path}: has boxes of category {named}, which {source} has no boxes of, so it was "
                            "left out of the model's classes; pass --keep-empty-classes to train it, or remove its boxes "
                            f"from {other.path.name}")
        raise UserError(f"{other.path}: has boxes of category {named}, which {source} does not have (its classes: "
                        f"{', '.join(classes.names) or 'none'}); classes are matched by name: rename it or remove its boxes")
    used: dict[int, dict[str, Any]] = {}
    for c in other.categories:
        if c["id"] in mapping and c["id"] in with_boxes:
            twin = used.setdefault(mapping[c["id"]], c)
            if twin is not c:
                raise UserError(f"{other.path}: categories {twin['id']} and {c['id']} are both called {c['name']!r} "
                                f"and both have boxes; give each class a distinct name to match {source}'s")
    for anns in other.annotations_per_image.values():
        for a in anns:
            a["category_id"] = mapping[a["category_id"]]
    names = {c["id"]: c["name"] for c in other.categories}
    changed = [f"{names[old]!r} {old} -> {new}" for old, new in sorted(mapping.items())
               if old != new and old in with_boxes]
    other.categories = classes.categories()
    if changed:
        return (f"{other.path}: categories matched to {source}'s by name; ids renumbered: {', '.join(changed)}")
    return None


def has_boxes(coco: CocoData) -> bool:
    """Whether ``coco`` holds at least one box that is not a crowd region (``iscrowd``): something to learn or score."""
    return any(not a.get("iscrowd") for anns in coco.annotations_per_image.values() for a in anns)


def annotation_boxes(annotations: list[dict[str, Any]]) -> torch.Tensor:
    """(N, 4) xyxy boxes of COCO annotations (whose bboxes are xywh)."""
    boxes_xywh = torch.tensor([a["bbox"] for a in annotations], dtype=torch.float32).reshape(-1, 4)
    return box_convert(boxes_xywh, "xywh", "xyxy")


def relative_boxes(coco: CocoData) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, 4) xyxy non-crowd boxes, clipped to their image as training clips them, as fractions of the image's
    longer side (the side training resizes to ``image_size``): multiplied by ``image_size``, the boxes in pixels
    as training sees them; and (M,) their COCO category ids."""
    boxes, category_ids = [], []
    for image in coco.images:
        width, height = image["width"], image["height"]
        side = max(width, height)
        for a in coco.annotations_per_image[image["id"]]:
            x, y, w, h = a["bbox"]
            x1, y1, x2, y2 = max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)
            if not a.get("iscrowd") and x2 > x1 and y2 > y1:
                boxes.append((x1 / side, y1 / side, x2 / side, y2 / side))
                category_ids.append(a["category_id"])
    return (torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4), torch.tensor(category_ids, dtype=torch.int64))


def image_targets(coco: CocoData, image: dict[str, Any], classes: ClassMap) -> tuple[torch.Tensor, torch.Tensor]:
    """An image's boxes (N, 4) xyxy in its own pixels and labels (N,), crowd/ignore annotations excluded."""
    kept = [a for a in coco.annotations_per_image[image["id"]] if not a.get("iscrowd", 0)]
    return annotation_boxes(kept), torch.tensor([classes.label(a["category_id"]) for a in kept], dtype=torch.int64)


def image_ignore_regions(coco: CocoData, image: dict[str, Any]) -> torch.Tensor:
    """(M, 4) xyxy boxes of an image's ``iscrowd`` annotations: regions that give no training loss."""
    return annotation_boxes([a for a in coco.annotations_per_image[image["id"]] if a.get("iscrowd", 0)])


def coco_bbox(box_xyxy: Sequence[float], width: int, height: int, decimals: int | None = 2) -> list[float] | None:
    """The box rule of every COCO file retinaslim writes, so that ``load_coco`` reads back whatever it wrote.

    ``box_xyxy`` in image pixels -> [x, y, width, height] clipped to the ``width`` x ``height`` image and
    rounded to ``decimals`` (None: not rounded), with width and height > 0 and its corner inside the image;
    None when nothing is left (a sliver on the border, a box outside the image).
    """
    x1, y1, x2, y2 = (min(max(float(v), 0.0), float(side)) for v, side in zip(box_xyxy, (width, height, width, height)))
    box = [x1, y1, x2 - x1, y2 - y1]
    if decimals is not None:
        box = [round(v, decimals) for v in box]
    return box if box[2] > 0 and box[3] > 0 and box[0] < width and box[1] < height else None


def detections_to_annotations(
    dets: Detections, image_id: int, classes: ClassMap, width: int, height: int, first_id: int = 1
) -> list[dict[str, Any]]:
    """COCO annotations (with ``score`` and any extra per-box fields) for one ``width`` x ``height`` image's
    detections; boxes go through ``coco_bbox`` (those with nothing left inside the image are left out)."""
    extra = {k: v.tolist() for k, v in dets.extra.items()}
    out = []
    for i, (box_xyxy, score, label) in enumerate(zip(dets.boxes.tolist(), dets.scores.tolist(), dets.labels.tolist())):
        box = coco_bbox(box_xyxy, width, height)
        if box is None:
            continue
        ann = {
            "id": first_id + len(out),
            "image_id": image_id,
            "category_id": classes.category_ids[label],
            "bbox": box,
            "area": round(box[2] * box[3], 2),
            "iscrowd": 0,
            "score": round(score, 5),
        }
        ann.update({k: v[i] for k, v in extra.items()})
        out.append(ann)
    return out


COCO_METRIC_NAMES = ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large", "ar100")


@dataclass
class CocoEvaluation:
    """pycocotools' bbox evaluation: summary metrics, AP per class and the precision-recall curves.

    ``metrics``: COCO_METRIC_NAMES -> 0..1, or None where pycocotools reports -1 (no truth of that kind,
    e.g. no small objects). ``per_class_ap``: class name -> AP at IoU 0.50:0.95 (None: no truth of that
    class). ``precision``: (T, R, K) precision at the IoU thresholds ``iou_thresholds`` (T), the recall
    thresholds ``recall_thresholds`` (R) and the classes (K, sorted by category id), for all areas and
    100 detections per image; -1 where undefined.
    """

    metrics: dict[str, float | None]
    per_class_ap: dict[str, float | None]
    iou_thresholds: np.ndarray
    recall_thresholds: np.ndarray
    precision: np.ndarray

    def as_floats(self) -> dict[str, float]:
        """``metrics`` with 0.0 where pycocotools cannot define one, as training's history records them."""
        return {k: v or 0.0 for k, v in self.metrics.items()}

    def per_class_ap_at(self, iou: float) -> dict[str, float | None]:
        """Class name -> AP at one of ``iou_thresholds`` (e.g. 0.5 for AP50, 0.75 for AP75), as pycocotools
        averages its curve (None: no truth of that class). Raises ValueError for an IoU not evaluated.

        A class whose AP50 is high and AP75 low finds its objects but places them loosely."""
        at = [i for i, t in enumerate(self.iou_thresholds) if abs(float(t) - iou) < 1e-6]
        if not at:
            raise ValueError(f"IoU {iou} is not one of the evaluated thresholds {self.iou_thresholds.tolist()}")
        result = {}
        for k, name in enumerate(self.per_class_ap):
            curve = self.precision[at[0], :, k]
            result[name] = float(curve.mean()) if (curve > -1).any() else None
        return result


class CocoEvaluator:
    """pycocotools' bbox evaluation of ``gt``, fed the results of a chunk of images at a time.

    ``add`` runs ``COCOeval.evaluate`` on its chunk (evaluate scores each image on its own) against a
    pycocotools index of that chunk's truth only (built from the evaluator's own arrays), and keeps only
    what ``COCOeval.accumulate`` reads: per class, area range and image, the detections' scores (float64),
    which IoU thresholds matched and which ignored each detection (bits), and which truth boxes are
    ignored. ``evaluation`` accumulates those records one class and IoU threshold at a time
    (``_accumulate``, the arithmetic of ``COCOeval.accumulate``) and hands pycocotools' own ``summarize``
    the result. The numbers equal one COCOeval over all the results bit for bit, in any chunking
    (tests/data/test_coco_eval.py).

    Why: one COCOeval holds every result and every image's evaluation as Python objects; ``eval`` of
    100,000 images peaked at 7.5 GB that way, while these records take 24 bytes per detection. Measured
    (docs/results.md, issue 17; 100,000 64 px images, slim-s, the eval command's own peak RSS):
    pycocotools' accumulate on the records 2,693 MB, this one with a whole-truth index 1,397 MB, with a
    chunk's truth only 1,176 MB (821 MB at 10,000 images). The truth is copied into arrays at
    construction, so ``gt``'s dicts can be let go (``stages.evaluate`` does): for a 100,000-image file
    ``load_coco`` holds 162 MB, the arrays 11 MB.
    """

    def __init__(self, gt: CocoData):
        from pycocotools.cocoeval import COCOeval

        # The truth as arrays, images in id order, each image's boxes contiguous: what COCOeval reads of a
        # truth box (class, xywh, area, crowd), 49 bytes a box instead of a dict's ~400 (load_coco's dicts
        # took 131 MB at 100,000 images): the caller may let go of gt's annotations once this is built.
        self._categories = gt.categories
        self._image_ids = np.array(sorted(gt.annotations_per_image), dtype=np.int64)
        boxes = [gt.annotations_per_image[int(i)] for i in self._image_ids]
        self._starts = np.concatenate([[0], np.cumsum([len(b) for b in boxes])]).astype(np.int64)
        flat = [a for image_boxes in boxes for a in image_boxes]
        self._category_ids = np.array([a["category_id"] for a in flat], dtype=np.int64)
        self._boxes = np.array([a["bbox"] for a in flat], dtype=np.float64).reshape(-1, 4)
        self._areas = np.array([a.get("area", a["bbox"][2] * a["bbox"][3]) for a in flat], dtype=np.float64)
        self._crowd = np.array([a.get("iscrowd", 0) == 1 for a in flat], dtype=bool)  # load_coco: 0 or 1
        self._params = COCOeval(self._chunk_truth([]), iouType="bbox").params
        self._chunks: list[_EvaluatedChunk] = []
        self._added: set[int] = set()

    def _rows(self, image_ids: Sequence[int]) -> np.ndarray:
        """Each id's row in the id-sorted truth; -1 for an id the truth does not have."""
        ids = np.asarray(image_ids, dtype=np.int64)
        rows = np.searchsorted(self._image_ids, ids)
        found = rows < len(self._image_ids)
        found[found] = self._image_ids[rows[found]] == ids[found]
        return np.where(found, rows, -1)

    def _chunk_truth(self, image_ids: list[int]) -> Any:
        """A pycocotools ``COCO`` of these images' truth only, built from the arrays. pycocotools records a
        match as the matched annotation's id, 0 meaning none: a truth box with id 0 could never be found,
        so the boxes are numbered 1..n here, where every score (eval, filter --truth, validation) passes."""
        from pycocotools.coco import COCO

        annotations = []
        for image_id, row in zip(image_ids, self._rows(image_ids)):
            for j in range(self._starts[row], self._starts[row + 1]):
                annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                    "category_id": int(self._category_ids[j]), "bbox": self._boxes[j].tolist(),
                                    "area": float(self._areas[j]), "iscrowd": int(self._crowd[j])})
        truth = COCO()
        truth.dataset = {"images": [{"id": i} for i in image_ids], "annotations": annotations,
                         "categories": self._categories}
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints; the CLI owns the terminal
            truth.createIndex()
        return truth

    def add(self, image_ids: Sequence[int], results: list[dict[str, Any]]) -> None:
        """Evaluate the images ``image_ids`` (ids of ``gt``, each added once) given ``results``: COCO result
        dicts (``image_id`` among them, ``category_id`` of ``gt``, ``bbox`` xywh pixels, ``score``).
        Raises ValueError for an image added before or not in ``gt``, or a result for another image."""
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        ids = sorted(set(image_ids))
        again = sorted(set(ids) & self._added)
        if again:
            raise ValueError(f"image id {again[0]} was added before: each image is evaluated once")
        unknown = [i for i, row in zip(ids, self._rows(ids)) if row < 0]
        if unknown:
            raise ValueError(f"image id {unknown[0]} is not in the truth")
        elsewhere = {r["image_id"] for r in results} - set(ids)
        if elsewhere:
            raise ValueError(f"a result for image id {min(elsewhere)}, which is not among the images added")
        if not ids:
            return
        truth = self._chunk_truth(ids)
        with contextlib.redirect_stdout(io.StringIO()):
            if results:
                found = truth.loadRes([{k: r[k] for k in ("image_id", "category_id", "bbox", "score")} for r in results])
            else:  # loadRes refuses an empty list; no detections is a valid answer scoring 0
                found = COCO()
                found.dataset = {"images": truth.dataset["images"], "categories": self._categories, "annotations": []}
                found.createIndex()
            evaluator = COCOeval(truth, found, iouType="bbox")
            evaluator.params.imgIds = ids
            evaluator.evaluate()
        self._chunks.append(_EvaluatedChunk(ids, evaluator.evalImgs, len(self._params.catIds),
                                            len(self._params.areaRng), len(self._params.iouThrs)))
        self._added.update(ids)

    def evaluation(self) -> CocoEvaluation:
        """AP over every image added so far: ``COCOeval.accumulate``'s numbers computed by ``_accumulate``,
        then pycocotools' own ``summarize``."""
        from pycocotools.cocoeval import COCOeval

        evaluator = COCOeval(self._chunk_truth([]), iouType="bbox")
        evaluator.params.imgIds = sorted(self._added)
        precision, recall = self._accumulate(evaluator.params)
        evaluator.eval = {"params": evaluator.params, "precision": precision, "recall": recall}
        with contextlib.redirect_stdout(io.StringIO()):
            evaluator.summarize()
        stats = [float(evaluator.stats[i]) for i in (0, 1, 2, 3, 4, 5, 8)]
        precision = precision[:, :, :, 0, -1]  # (T, R, K, area, max dets) -> all areas, 100 dets
        names = {c["id"]: c["name"] for c in self._categories}
        per_class_ap = {}
        for k, category_id in enumerate(evaluator.params.catIds):
            defined = precision[:, :, k][precision[:, :, k] > -1]
            per_class_ap[names[category_id]] = float(defined.mean()) if defined.size else None
        return CocoEvaluation(
            dict(zip(COCO_METRIC_NAMES, (s if s >= 0 else None for s in stats))), per_class_ap,
            evaluator.params.iouThrs.copy(), evaluator.params.recThrs.copy(), precision.copy(),
        )

    def _accumulate(self, params: Any) -> tuple[np.ndarray, np.ndarray]:
        """``COCOeval.accumulate`` (pycocotools 2.0) on the kept records: precision (T, R, K, A, M) and
        recall (T, K, A, M), -1 where a class has no truth that counts in an area range.

        Same steps, same float64 operations in the same order, so the same bits (tested against
        pycocotools): per class, area range and detections-per-image limit M, every image's top-M
        detections ranked by score (stable: ties keep image-id order, then the image's own order), true
        and false positives summed along the ranking, precision made monotone from the right and read at
        the recall thresholds. Why not pycocotools' own: it turns every image's record into a dict, then
        builds the cumulative sums of all T IoU thresholds at once as float64, 16 bytes per detection and
        threshold; at 100,000 images that was the largest thing eval held (docs/results.md, issue 17).
        Here one threshold's sums exist at a time, read from the packed flags."""
        T, R = len(params.iouThrs), len(params.recThrs)
        K, A, M = len(params.catIds), len(params.areaRng), len(params.maxDets)
        precision = -np.ones((T, R, K, A, M))
        recall = -np.ones((T, K, A, M))
        position = {image_id: n for n, image_id in enumerate(params.imgIds)}
        for k in range(K):
            scores, images, ranks, matched, ignored = [], [], [], [[] for _ in range(A)], [[] for _ in range(A)]
            counted = np.zeros(A, dtype=np.int64)  # truth boxes not ignored, per area range
            for chunk in self._chunks:
                begin, end, image_rows, rank = chunk.detections_of(k)
                scores.append(chunk.scores[begin:end])
                images.append(np.array([position[i] for i in chunk.image_ids], dtype=np.int32)[image_rows])
                ranks.append(rank)
                g0 = int(chunk.gt_start[k, 0])
                g1 = g0 + int(chunk.gts[k].sum())
                for a in range(A):
                    matched[a].append(chunk.matched[a][:, begin:end])
                    ignored[a].append(chunk.ignored[a][:, begin:end])
                    counted[a] += int(np.count_nonzero(~chunk.gt_ignored[a][g0:g1]))
            rank = np.concatenate(ranks) if ranks else np.zeros(0, dtype=np.int32)
            order = np.lexsort((rank, np.concatenate(images) if images else rank, -np.concatenate(scores or [np.zeros(0)])))
            del scores, images, ranks
            for a in range(A):
                if counted[a] == 0:
                    continue
                packed_matched = np.concatenate(matched[a], axis=1) if matched[a] else np.zeros((0, 0), np.uint8)
                packed_ignored = np.concatenate(ignored[a], axis=1) if ignored[a] else np.zeros((0, 0), np.uint8)
                for m, max_dets in enumerate(params.maxDets):
                    kept = order[rank[order] < max_dets]
                    for t in range(T):
                        recall[t, k, a, m], precision[t, :, k, a, m] = _precision_recall(
                            packed_matched, packed_ignored, kept, t, int(counted[a]), params.recThrs)
        return precision, recall


def _precision_recall(matched: np.ndarray, ignored: np.ndarray, kept: np.ndarray, t: int, truth: int,
                      recall_thresholds: np.ndarray) -> tuple[float, np.ndarray]:
    """One cell of ``COCOeval.accumulate``: the detections ``kept`` (best score first) at IoU threshold ``t``
    (bit t of the packed flags) against ``truth`` boxes -> (recall, precision at each recall threshold).
    pycocotools' float64 operations in its order; the cumulative sums are reused in place."""
    byte, shift = divmod(t, 8)
    hit = (matched[byte, kept] >> (7 - shift)) & 1 if kept.size else np.zeros(0, np.uint8)
    counts = ((ignored[byte, kept] >> (7 - shift)) & 1) == 0 if kept.size else np.zeros(0, bool)
    tp = np.cumsum(counts & (hit == 1), dtype=np.float64)
    fp = np.cumsum(counts & (hit == 0), dtype=np.float64)
    del hit, counts
    fp += tp
    fp += np.spacing(1)
    pr = np.divide(tp, fp, out=fp)  # tp / (fp + tp + eps)
    rc = np.divide(tp, truth, out=tp)
    recall = float(rc[-1]) if kept.size else 0.0
    pr = np.maximum.accumulate(pr[::-1])[::-1]  # precision made monotone from the right
    at = np.searchsorted(rc, recall_thresholds, side="left")
    found = at < kept.size
    q = np.zeros(len(recall_thresholds))
    q[found] = pr[at[found]]
    return recall, q


class _EvaluatedChunk:
    """One ``add``'s ``COCOeval.evalImgs`` (K classes x A area ranges x I images, None where an image has
    neither truth nor detections of the class) as flat arrays: per (class, image) how many detections
    and truth boxes it has and where they start (class-major, so a class's are contiguous); the scores
    once (they do not depend on the area range); per area range the matched and ignored flags of each
    detection at the T IoU thresholds, packed 8 to a byte along T, and the ignored flags of each truth box."""

    def __init__(self, image_ids: Sequence[int], eval_imgs: list[dict[str, Any] | None], K: int, A: int, T: int):
        I = len(image_ids)
        self.image_ids = list(image_ids)
        self.dets = np.zeros((K, I), dtype=np.int64)
        self.gts = np.zeros((K, I), dtype=np.int64)
        scores, matched, ignored, gt_ignored = [], [[] for _ in range(A)], [[] for _ in range(A)], [[] for _ in range(A)]
        for k in range(K):
            for i in range(I):
                e = eval_imgs[(k * A) * I + i]
                if e is None:
                    continue
                self.dets[k, i], self.gts[k, i] = len(e["dtScores"]), len(e["gtIgnore"])
                scores.append(np.asarray(e["dtScores"], dtype=np.float64))
                for a in range(A):
                    e = eval_imgs[(k * A + a) * I + i]
                    matched[a].append(e["dtMatches"] != 0)
                    ignored[a].append(e["dtIgnore"] != 0)
                    gt_ignored[a].append(np.asarray(e["gtIgnore"], dtype=bool))
        self.det_start = np.cumsum(self.dets, axis=None).reshape(K, I) - self.dets
        self.gt_start = np.cumsum(self.gts, axis=None).reshape(K, I) - self.gts
        self.scores = np.concatenate(scores) if scores else np.zeros(0)

        def packed(flags: list[np.ndarray]) -> np.ndarray:
            return (np.packbits(np.concatenate(flags, axis=1), axis=0) if flags
                    else np.zeros(((T + 7) // 8, 0), dtype=np.uint8))

        self.matched = [packed(m) for m in matched]
        self.ignored = [packed(g) for g in ignored]
        self.gt_ignored = [np.concatenate(g) if g else np.zeros(0, dtype=bool) for g in gt_ignored]

    def detections_of(self, k: int) -> tuple[int, int, np.ndarray, np.ndarray]:
        """Class ``k``'s detections: [begin, end) in the flat arrays, each one's image (row of
        ``image_ids``) and its rank among its image's detections (0 = highest score)."""
        counts = self.dets[k]
        begin = int(self.det_start[k, 0]) if counts.size else 0
        end = begin + int(counts.sum())
        image_rows = np.repeat(np.arange(counts.size, dtype=np.int32), counts)
        rank = (np.arange(end - begin) - np.repeat(self.det_start[k] - begin, counts)).astype(np.int32)
        return begin, end, image_rows, rank


def coco_evaluate(gt: CocoData, results: list[dict[str, Any]]) -> CocoEvaluation:
    """Score ``results`` (COCO result dicts with the dataset's category ids) against every image of ``gt``
    with pycocotools."""
    evaluator = CocoEvaluator(gt)
    evaluator.add([image["id"] for image in gt.images], results)
    return evaluator.evaluation()


def coco_metrics(gt: CocoData, results: list[dict[str, Any]]) -> dict[str, float]:
    """pycocotools bbox metrics (0..1) of ``results`` (COCO result dicts) against ``gt``.

    Keys: ap, ap50, ap75, ap_small, ap_medium, ap_large, ar100. All zero when there are no results;
    a metric pycocotools cannot define (no truth of that size) is 0.
    """
    if not results or gt.num_annotations == 0:
        return dict.fromkeys(COCO_METRIC_NAMES, 0.0)
    return coco_evaluate(gt, results).as_floats()