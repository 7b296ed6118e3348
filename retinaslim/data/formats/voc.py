"""Pascal VOC XML folders -> LabelSet.

A VOC root holds ``Annotations/*.xml`` and ``JPEGImages/``; a plain folder of XML files with the images
beside them works too. VOC coordinates are 1-based pixel indices, both ends inclusive (a box from
xmin=1 to xmax=W covers the whole width), so x1 = xmin - 1 and x2 = xmax in pixel-edge coordinates
(detectron2 reads VOC the same way). A box with xmax <= xmin or ymax <= ymin is a click, not a drag:
skipped and reported. ``difficult`` objects are kept with ``"difficult": 1``. ``split`` reads only the
images that ``ImageSets/Main/<split>.txt`` lists (VOC's own train/val/test lists).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from retinaslim.data.formats.labelset import LabelSet
from retinaslim.errors import UserError


def _number(node: ET.Element, tag: str) -> float:
    child = node.find(tag)
    if child is None or child.text is None:
        raise ValueError(f"missing <{tag}>")
    try:
        return float(child.text)
    except ValueError:
        raise ValueError(f"<{tag}> is {child.text.strip()!r}, not a number") from None


def _image_path(xml_path: Path, root: Path, filename: str) -> Path:
    for candidate in (root / "JPEGImages" / filename, xml_path.parent / filename):
        if candidate.is_file():
            return candidate
    if not Path(filename).suffix:  # some exporters leave the extension out
        for candidate in sorted((root / "JPEGImages").glob(f"{filename}.*")) + sorted(xml_path.parent.glob(f"{filename}.*")):
            if candidate.suffix.lower() != ".xml":
                return candidate
    return root / "JPEGImages" / filename


def _split_xml_paths(src: Path, xml_dir: Path, split: str, labels: LabelSet) -> list[Path]:
    """The XML files ``ImageSets/Main/<split>.txt`` names (first word of each line); missing ones are skipped."""
    lists = src / "ImageSets" / "Main"
    list_path = lists / f"{split}.txt"
    if not list_path.is_file():
        found = sorted(p.stem for p in lists.glob("*.txt")) if lists.is_dir() else []
        raise UserError(f"{list_path}: no such split list (splits here: {', '.join(found) or 'none'})")
    paths = []
    for n, line in enumerate(list_path.read_text().splitlines(), start=1):
        if line.strip():
            xml_path = xml_dir / f"{line.split()[0]}.xml"
            if xml_path.is_file():
                paths.append(xml_path)
            else:
                labels.skip("image", f"{list_path}: line {n}", f"{xml_path} not found")
    return paths


def read_voc(src: Path, split: str | None = None) -> LabelSet:
    src = Path(src)
    if not src.is_dir():
        raise UserError(f"{src}: not a folder; expected a VOC root (with Annotations/) or a folder of VOC XML files")
    xml_dir = src / "Annotations" if (src / "Annotations").is_dir() else src
    labels = LabelSet()
    xml_paths = _split_xml_paths(src, xml_dir, split, labels) if split else sorted(xml_dir.rglob("*.xml"))
    if not xml_paths and not labels.skipped:
        raise UserError(f"{xml_dir}: no .xml files; expected Pascal VOC annotations")
    for xml_path in xml_paths:
        try:
            root = ET.parse(xml_path).getroot()
        except ET.ParseError as e:
            labels.skip("image", xml_path, f"not valid XML ({e})")
            continue
        filename = root.findtext("filename", default="").strip() or f"{xml_path.stem}.jpg"
        image_path = _image_path(xml_path, src, filename)
        if not image_path.is_file():
            labels.skip("image", xml_path, f"image {filename} not found in {src / 'JPEGImages'} or beside the XML")
            continue
        size, width, height = root.find("size"), None, None
        try:  # no <size> (or no number in it): read it from the image
            if size is not None:
                width, height = int(_number(size, "width")), int(_number(size, "height"))
        except ValueError:
            pass
        added = labels.add_declared_image(image_path, xml_path, width, height)
        if added is None:
            continue
        image, (sx, sy) = added
        for k, obj in enumerate(root.iter("object"), start=1):
            where = f"{xml_path}: object {k}"
            name = (obj.findtext("name") or "").strip()
            box = obj.find("bndbox")
            if not name or box is None:
                labels.skip("box", where, "no <name> or no <bndbox>")
                continue
            try:
                xmin, ymin, xmax, ymax = (_number(box, t) for t in ("xmin", "ymin", "xmax", "ymax"))
            except ValueError as e:
                labels.skip("box", where, str(e))
                continue
            if xmax <= xmin or ymax <= ymin:
                labels.skip("box", where, "zero or negative width/height")
                continue
            difficult = (obj.findtext("difficult") or "").strip() == "1"
            labels.add_box(image, ((xmin - 1) * sx, (ymin - 1) * sy, xmax * sx, ymax * sy), labels.category_id(name),
                           where, **({"difficult": 1} if difficult else {}))
    return labels
