"""YOLO txt folders <-> LabelSet.

Layout (ultralytics): ``images/...`` and ``labels/...`` side by side, one ``.txt`` per image with one
line per box: ``class cx cy w h`` normalised to [0, 1] by the displayed image size, plus a sixth column
``score`` on machine labels (ultralytics' ``save_conf``). A line ``class x1 y1 x2 y2 x3 y3 ...`` is a
polygon (segmentation and oriented-box sets, e.g. Roboflow's exports): read as its enclosing box, as
ultralytics does. Darknet's layout, each ``.txt`` beside its image, is read too. Class names come from
``data.yaml`` (``names``: a list or {index: name}) or ``classes.txt`` (one name per line). YOLO has class
indices, not ids: reading gives category ids index + 1 (an index written as a whole float, "0.0", is read as
ultralytics reads it); writing numbers the classes in category-id order.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from retinaslim.core.atomic import atomic_path
from retinaslim.data.formats.labelset import LabelSet
from retinaslim.data.images import ImageError, displayed_size, list_images
from retinaslim.errors import UserError


def _names_from_yaml(path: Path) -> list[str]:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    names = data.get("names") if isinstance(data, dict) else None
    if isinstance(names, dict) and sorted(names) == list(range(len(names))):
        return [str(names[i]) for i in range(len(names))]
    if isinstance(names, list) and names:
        return [str(n) for n in names]
    raise UserError(f"{path}: needs 'names' as a list of class names or a mapping 0: name, 1: name, ...")


def _class_names(src: Path) -> tuple[Path, list[str]]:
    """(dataset root, class names) of a YOLO folder or of its data.yaml."""
    if src.is_file() and src.suffix.lower() in (".yaml", ".yml"):
        return src.parent, _names_from_yaml(src)
    if not src.is_dir():
        raise UserError(f"{src}: not a folder or data.yaml; expected a YOLO dataset")
    for name in ("data.yaml", "dataset.yaml"):
        if (src / name).is_file():
            return src, _names_from_yaml(src / name)
    for name in ("classes.txt", "obj.names"):
        if (src / name).is_file():
            names = [line.strip() for line in (src / name).read_text().splitlines() if line.strip()]
            if not names:
                raise UserError(f"{src / name}: empty; expected one class name per line")
            return src, names
    raise UserError(f"{src}: no class names; add data.yaml (names: [...]) or classes.txt (one name per line)")


def _label_path(image_path: Path, root: Path) -> Path:
    """images/a/b.jpg -> labels/a/b.txt (the last 'images' folder becomes 'labels'); else b.txt beside b.jpg."""
    parts = list(image_path.relative_to(root).parts)
    if "images" in parts[:-1]:
        k = len(parts) - 2 - parts[:-1][::-1].index("images")
        parts[k] = "labels"
        return (root / Path(*parts)).with_suffix(".txt")
    return image_path.with_suffix(".txt")


def read_yolo(src: Path) -> LabelSet:
    root, names = _class_names(Path(src))
    labels = LabelSet(categories=[{"id": i + 1, "name": n} for i, n in enumerate(names)])
    for image_path in list_images(root / "images" if (root / "images").is_dir() else root):
        try:
            width, height = displayed_size(image_path)
        except ImageError as e:
            labels.skip("image", image_path, str(e).split(": ", 1)[-1])
            continue
        image = labels.add_image(image_path, width, height)
        label_path = _label_path(image_path, root)
        lines = label_path.read_text().splitlines() if label_path.is_file() else []  # no file: a background image
        for n, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{label_path}:{n}"
            values = line.split()
            polygon = len(values) >= 7
            if len(values) < 5 or (polygon and len(values) % 2 == 0):
                labels.skip("box", where, f"{len(values)} values; expected class cx cy w h [score]" if not polygon
                            else f"{len(values) - 1} polygon coordinates; expected x y pairs")
                continue
            try:
                numbers = [float(v) for v in values]
            except ValueError:
                labels.skip("box", where, "not numbers")
                continue
            index, numbers = numbers[0], numbers[1:]
            if not index.is_integer():  # "0.0" is class 0, as ultralytics reads it; "0.5" is no class
                labels.skip("box", where, f"class {values[0]} is not a whole number")
                continue
            index = int(index)
            if not 0 <= index < len(names):
                labels.skip("box", where, f"class index outside 0..{len(names) - 1}")
                continue
            if polygon:
                xs, ys = numbers[0::2], numbers[1::2]
                labels.num_polygons += labels.add_box(
                    image, (min(xs) * width, min(ys) * height, max(xs) * width, max(ys) * height), index + 1, where)
                continue
            cx, cy, w, h = numbers[0] * width, numbers[1] * height, numbers[2] * width, numbers[3] * height
            score = numbers[4] if len(numbers) == 5 else None
            labels.add_box(image, (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), index + 1, where, score)
    return labels


def _refuse_leftovers(out: Path, rels: list[Path], paths: list[Path]) -> None:
    """Refuse an ``out`` whose images/ or labels/ hold files this conversion would not write, or a real
    image file (not our link) where a link would go. A YOLO trainer reads every file there: an earlier
    dataset's files would silently join this one, and replacing a real image would lose it."""
    wanted = {("labels", r.with_suffix(".txt")) for r in rels} | {("images", r) for r in rels}
    leftovers = sorted(str(f.relative_to(out)) for sub in ("labels", "images") if (out / sub).is_dir()
                       for f in (out / sub).rglob("*") if (f.is_symlink() or f.is_file())
                       and (sub, f.relative_to(out / sub)) not in wanted)
    leftovers += [str(Path("images") / r) for r, p in zip(rels, paths) if (out / "images" / r).is_file()
                  and not (out / "images" / r).is_symlink() and not (out / "images" / r).samefile(p)]
    if leftovers:
        raise UserError(f"`out` {out}: holds {len(leftovers)} file(s) from another dataset (e.g. {leftovers[0]}) that a "
                        "YOLO trainer would read with this one; choose an empty folder or remove them")


def write_yolo(labels: LabelSet, out: Path) -> None:
    """``out/images`` (symbolic links to the images), ``out/labels/*.txt``, ``classes.txt`` and ``data.yaml``.

    Images keep their folder structure below the folder they all share. Ignore regions (``iscrowd``) have
    no YOLO equivalent: they are left out and reported.
    """
    out = Path(out)
    categories = sorted(labels.categories, key=lambda c: c["id"])
    index = {c["id"]: i for i, c in enumerate(categories)}
    paths = [Path(image["file_name"]) for image in labels.images]
    common = Path(os.path.commonpath([p.parent for p in paths])) if paths else Path()
    rels = [path.relative_to(common) for path in paths]
    label_files: dict[Path, Path] = {}
    for rel in rels:  # YOLO names a label file after its image less the extension: a.jpg and a.png would share one
        other = label_files.setdefault(rel.with_suffix(".txt"), rel)
        if other != rel:
            raise UserError(f"`out` {out}: images {other} and {rel} would share the label file "
                            f"labels/{rel.with_suffix('.txt')}; rename one of them")
    _refuse_leftovers(out, rels, paths)
    per_image = labels.annotations_per_image()
    for image, path, rel in zip(labels.images, paths, rels):
        lines = []
        for a in per_image[image["id"]]:
            if a.get("iscrowd", 0):
                labels.skip("box", f"{path}: annotation {a['id']}", "ignore region (iscrowd): YOLO has none")
                continue
            x, y, w, h = a["bbox"]
            W, H = image["width"], image["height"]
            line = f"{index[a['category_id']]} {(x + w / 2) / W:.6f} {(y + h / 2) / H:.6f} {w / W:.6f} {h / H:.6f}"
            lines.append(line + (f" {a['score']:.5f}" if "score" in a else ""))
        with atomic_path(out / "labels" / rel.with_suffix(".txt")) as tmp:
            tmp.write_text("".join(f"{line}\n" for line in lines))
        link = out / "images" / rel
        if link.exists() and not link.is_symlink():
            continue  # the image itself already lives there
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink():
            link.unlink()
        link.symlink_to(os.path.relpath(path.absolute(), link.parent.absolute()))
    names = [c["name"] for c in categories]
    with atomic_path(out / "classes.txt") as tmp:
        tmp.write_text("".join(f"{n}\n" for n in names))
    with atomic_path(out / "data.yaml") as tmp:
        tmp.write_text(yaml.safe_dump({"train": "images", "val": "images", "names": dict(enumerate(names))},
                                      sort_keys=False))
