"""Label Studio JSON <-> LabelSet.

Label Studio stores a rectangle as ``value: {x, y, width, height}`` in percent of the image
(``original_width`` x ``original_height`` pixels), its top-left corner at (x, y), plus ``rotation`` in
degrees and ``rectanglelabels: [class name]``; a polygon as ``value: {points: [[x, y], ...], polygonlabels}``,
read as its enclosing box. A rectangle dragged past its opposite corner comes with a negative width or
height: it is normalised. A task without ``original_width``/``original_height`` (results uploaded through
the SDK) takes the image's size. An export lists tasks with ``data.image`` and the people's
``annotations``; an import may also carry ``predictions`` (pre-annotations, with scores) that a person then
corrects. Reading takes a task's first annotation that was not cancelled, else its first prediction.
Writing makes an image whose boxes are all human an annotation, and an image with machine (scored) boxes
a prediction scored by its lowest box score, so Label Studio can sort the doubtful tasks first.

Label Studio keeps class names only in the project's label config, which its JSON export leaves out. So
that the classes survive a round trip (their ids, and classes no image has a box of), each written task
carries them in ``data.coco_categories`` (Label Studio keeps any key in ``data``); reading takes them from
there, and numbers classes found only in the results after them, in order of appearance. Two tasks for one
image (imported twice) are read as one image with the boxes of both; a box both have is read once.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

from retinaslim.core.atomic import write_json
from retinaslim.data.formats.labelset import LabelSet
from retinaslim.errors import UserError, not_a_file

UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-")  # Label Studio prefixes uploaded files with 8 hex digits


def region(box_xyxy: list[float], width: int, height: int, name: str, score: float | None, region_id: str) -> dict[str, Any]:
    """One ``rectanglelabels`` result: a box in image pixels -> percent of the image."""
    x1, y1, x2, y2 = box_xyxy
    out = {
        "id": region_id, "type": "rectanglelabels", "from_name": "label", "to_name": "image",
        "original_width": width, "original_height": height, "image_rotation": 0,
        "value": {"x": 100 * x1 / width, "y": 100 * y1 / height, "width": 100 * (x2 - x1) / width,
                  "height": 100 * (y2 - y1) / height, "rotation": 0, "rectanglelabels": [name]},
    }
    if score is not None:
        out["score"] = round(score, 5)
    return out


CATEGORIES_KEY = "coco_categories"  # data key carrying the COCO categories through Label Studio


def task(image_ref: str, width: int, height: int, boxes_xyxy: list[list[float]], names: list[str],
         scores: list[float | None], model_version: str = "retinaslim",
         categories: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A Label Studio import task. Boxes all without a score: a finished annotation. Any scored (machine)
    box: every box goes into one prediction, a pre-annotation for a person to accept or correct, scored
    by its lowest box score (human boxes in it carry no score). ``categories`` (COCO id, name) ride along
    in ``data`` for ``read_labelstudio``."""
    regions = [region(box, width, height, name, score, f"r{i}")
               for i, (box, name, score) in enumerate(zip(boxes_xyxy, names, scores))]
    data = {"image": image_ref}
    if categories is not None:
        data[CATEGORIES_KEY] = [{"id": c["id"], "name": c["name"]} for c in categories]
    known = [s for s in scores if s is not None]
    if not known:
        return {"data": data, **({"annotations": [{"result": regions}]} if regions else {})}
    return {"data": data,
            "predictions": [{"model_version": model_version, "score": round(min(known), 5), "result": regions}]}


def write_labelstudio(labels: LabelSet, out: Path) -> None:
    """Label Studio import JSON: one task per image, ``data.image`` the image's absolute path."""
    names = {c["id"]: c["name"] for c in labels.categories}
    per_image = labels.annotations_per_image()
    tasks = []
    for image in labels.images:
        anns = [a for a in per_image[image["id"]] if not a.get("iscrowd", 0)]
        for a in per_image[image["id"]]:
            if a.get("iscrowd", 0):
                labels.skip("box", f"{image['file_name']}: annotation {a['id']}",
                            "ignore region (iscrowd): Label Studio has none")
        boxes = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]
        tasks.append(task(image["file_name"], image["width"], image["height"], boxes,
                          [names[a["category_id"]] for a in anns], [a.get("score") for a in anns],
                          categories=labels.categories))
    write_json(out, tasks)


def _resolve(ref: str, json_dir: Path, images_dir: Path | None) -> Path | None:
    """A task's image reference (a path, a local-files URL, an upload URL) -> an existing file, if any."""
    parsed = urlparse(ref)
    local = parse_qs(parsed.query).get("d", [None])[0] if parsed.path.endswith("/data/local-files/") else None
    path = Path(unquote(local or parsed.path))
    # the reference as a plain path first: a file name may hold '#', '?' or '%20' (retinaslim writes names as they are)
    candidates = [Path(ref), json_dir / ref, path, json_dir / path]
    if images_dir is not None:
        candidates += [images_dir / path, images_dir / path.name, images_dir / UPLOAD_PREFIX.sub("", path.name)]
    return next((c for c in candidates if str(c) and c.is_file()), None)


def _results(t: dict[str, Any]) -> list[dict[str, Any]]:
    """The first annotation a person did not cancel; a task without one gives its first prediction, where
    a region with its own ``score`` is a machine box."""
    candidates = [a for a in t.get("annotations") or [] if isinstance(a, dict) and not a.get("was_cancelled")]
    candidates += [p for p in t.get("predictions") or [] if isinstance(p, dict)]
    return (candidates[0].get("result") or []) if candidates else []


def _categories(tasks: list[Any]) -> list[dict[str, Any]]:
    """The categories the first task carrying ``data.coco_categories`` gives (distinct integer ids and
    names), else none."""
    for t in tasks:
        data = t.get("data") if isinstance(t, dict) else None
        given = data.get(CATEGORIES_KEY) if isinstance(data, dict) else None
        if not isinstance(given, list):
            continue
        categories = [{"id": c["id"], "name": c["name"]} for c in given if isinstance(c, dict)
                      and isinstance(c.get("id"), int) and not isinstance(c.get("id"), bool)
                      and isinstance(c.get("name"), str)]
        if (len(categories) == len(given) and len({c["id"] for c in categories}) == len(categories)
                and len({c["name"] for c in categories}) == len(categories)):
            return categories
    return []


def read_labelstudio(src: Path, images_dir: Path | None = None) -> LabelSet:
    src = Path(src)
    if not src.is_file():
        raise not_a_file(src, "a Label Studio JSON export")
    try:
        tasks = json.loads(src.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{src}: not valid JSON ({e.__class__.__name__}); expected a Label Studio JSON export") from None
    if not isinstance(tasks, list):
        raise UserError(f"{src}: expected a list of tasks (Label Studio's JSON export), got {type(tasks).__name__}")
    labels = LabelSet(categories=_categories(tasks))
    images_by_path: dict[Path, tuple[dict[str, Any], set]] = {}  # image, boxes (name, x1, y1, x2, y2) read
    for n, t in enumerate(tasks, start=1):
        where = f"{src}: task {t.get('id', n) if isinstance(t, dict) else n}"
        data = t.get("data") if isinstance(t, dict) else None
        ref = data.get("image") if isinstance(data, dict) else None
        if not isinstance(ref, str):
            labels.skip("image", where, "no data.image")
            continue
        path = _resolve(ref, src.parent, images_dir)
        if path is None:
            labels.skip("image", where, f"image {ref} not found (pass --images DIR, the folder holding the images)")
            continue
        results = [r for r in _results(t) if isinstance(r, dict)]
        boxes = [r for r in results if r.get("type") in ("rectanglelabels", "polygonlabels")
                 and isinstance(r.get("value"), dict)]
        earlier = images_by_path.get(path.resolve())
        if earlier is None:
            # Results uploaded through the SDK may lack original_width/height (label-studio#8396): read the image.
            declared = boxes[0] if boxes else {}
            added = labels.add_declared_image(path, where, declared.get("original_width"), declared.get("original_height"))
            if added is None:
                continue
            image = added[0]  # percent boxes: the image's own size converts them
            images_by_path[path.resolve()] = (image, set())
        else:  # a second task for the same image (imported twice): its boxes join the first task's
            image = earlier[0]
        width, height = image["width"], image["height"]
        seen_before = images_by_path[path.resolve()][1]
        seen_here = set()
        for k, r in enumerate(results, start=1):
            box_where = f"{where} result {r.get('id', k)}"
            value = r.get("value")
            if r not in boxes:
                labels.skip("box", box_where, f"result type {r.get('type')!r} is not a rectangle or polygon")
                continue
            score = None
            if r["type"] == "polygonlabels":
                try:
                    xs, ys = zip(*((float(px), float(py)) for px, py in value["points"]))
                    name = str(value["polygonlabels"][0])
                except (KeyError, IndexError, TypeError, ValueError):
                    labels.skip("box", box_where, "needs value.points [[x, y], ...] and polygonlabels")
                    continue
                box = (min(xs) * width / 100, min(ys) * height / 100, max(xs) * width / 100, max(ys) * height / 100)
            else:
                try:
                    x, y, w, h = (float(value[key]) for key in ("x", "y", "width", "height"))
                    name = str(value["rectanglelabels"][0])
                    score = None if r.get("score") is None else float(r["score"])
                    rotation = float(value.get("rotation") or 0)
                except (KeyError, IndexError, TypeError, ValueError):
                    labels.skip("box", box_where, "needs value.x, y, width, height (and rotation, if any) as numbers "
                                "and rectanglelabels")
                    continue
                if rotation != 0:
                    labels.skip("box", box_where, "rotated rectangle")
                    continue
                # A rectangle dragged past its opposite corner has a negative width/height (label-studio#1141).
                x1, x2 = sorted((x * width / 100, (x + w) * width / 100))
                y1, y2 = sorted((y * height / 100, (y + h) * height / 100))
                box = (x1, y1, x2, y2)
            key = (name, *(round(v, 2) for v in box))
            if key in seen_before:
                labels.skip("box", box_where, "the same box as an earlier task for this image has")
                continue
            seen_here.add(key)
            added_box = labels.add_box(image, box, labels.category_id(name), box_where, score)
            labels.num_polygons += added_box and r["type"] == "polygonlabels"
        seen_before |= seen_here
    return labels
