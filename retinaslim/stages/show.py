"""show: a contact sheet (PNG/JPEG) or a self-contained HTML report of labelled images, worst first.

Boxes are coloured by class; machine labels (annotations with a ``score``) are dashed and captioned
with their score, human labels solid. Images are ordered so that the ones a person should look at come
first:

- ``score``: by the image's lowest machine-label score, ascending;
- ``disagreement``: by the image's largest share of transforms that missed a box,
  1 - agreement / number of transforms (``agreement`` is written by pseudo-label, the transforms are
  listed in the file's ``info.transforms``), descending; ties by lowest score;
- ``file``: the file's own order.

The HTML report embeds every thumbnail (base64 JPEG), so it is one file to send around; its table
re-sorts by any column on a click.
"""

from __future__ import annotations

import base64
import html
import io
import math
from array import array
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from retinaslim.core.atomic import atomic_path
from retinaslim.data.stream import CocoStream, open_stream
from retinaslim.data.draw import class_colour, draw_boxes, save_image
from retinaslim.data.images import ImageError, SizeMismatch, check_declared_size, read_rgb
from retinaslim.errors import UserError

SORTS = ("score", "disagreement", "file")
SHEET_SUFFIXES = (".png", ".jpg", ".jpeg")
CAPTION_H = 30  # pixels of text under each thumbnail
HEADER_H = 40
BACKGROUND = (40, 40, 40)


@dataclass
class ShowConfig:
    labels: Path  # any COCO file: human labels, pseudo.json, filtered labels, predictions
    out: Path  # .png / .jpg: contact sheet; .html: report
    _: KW_ONLY  # inputs and outputs above may be passed in order, options below by keyword only
    images: Path | None = None
    sort: str | None = None  # None: score when the file has machine labels, else file
    max_images: int = 48
    thumb_size: int = 256
    columns: int = 6


@dataclass
class ImageRow:
    """One shown image and what it was sorted by."""

    file_name: str
    num_human: int
    num_machine: int
    lowest_score: float | None
    disagreement: float | None  # 1 - lowest agreement / number of transforms


@dataclass
class ShowResult:
    """The picture or report written (``out``), the sort used, the number of images in the labels file, one
    row per image shown (in order) and images that could not be read (file, reason)."""

    out: Path
    sort: str
    num_images: int  # in the labels file
    rows: list[ImageRow] = field(default_factory=list)  # shown, in order
    skipped: list[dict[str, str]] = field(default_factory=list)  # file, reason


@dataclass
class _Signals:
    """Per image of the file, in order (numpy arrays, a few bytes each: the file may hold 100,000s of images):
    human and machine box counts, lowest machine score and lowest and highest agreement (NaN: none)."""

    num_human: np.ndarray
    num_machine: np.ndarray
    lowest: np.ndarray
    agreement: np.ndarray
    most_agreement: np.ndarray

    @classmethod
    def read(cls, stream: CocoStream) -> _Signals:
        human, machine, lowest, agreement, most = array("l"), array("l"), array("d"), array("d"), array("d")
        for _, anns in stream:
            scores = [a["score"] for a in anns if "score" in a]
            agreements = [a["agreement"] for a in anns if isinstance(a.get("agreement"), (int, float))]
            human.append(len(anns) - len(scores))
            machine.append(len(scores))
            lowest.append(min(scores) if scores else math.nan)
            agreement.append(min(agreements) if agreements else math.nan)
            most.append(max(agreements) if agreements else math.nan)
        return cls(*(np.asarray(a) for a in (human, machine, lowest, agreement, most)))

    def row(self, i: int, file_name: str, num_transforms: float) -> ImageRow:
        lowest, agreement = float(self.lowest[i]), float(self.agreement[i])
        return ImageRow(file_name, int(self.num_human[i]), int(self.num_machine[i]), None if math.isnan(lowest) else lowest,
                        None if math.isnan(agreement) else 1 - agreement / num_transforms)

    def order(self, sort: str, num_transforms: float) -> np.ndarray:
        """Image indices in display order; images without the sort's signal go last, in file order."""
        index = np.arange(len(self.lowest))
        lowest = np.where(np.isnan(self.lowest), 2.0, self.lowest)
        if sort == "score":
            return np.lexsort((index, lowest))
        if sort == "disagreement":
            none = np.isnan(self.agreement)
            disagreement = np.where(none, 0.0, 1 - np.nan_to_num(self.agreement) / num_transforms)
            return np.lexsort((index, lowest, -disagreement, none))
        return index


def _chosen(stream: CocoStream, indices: list[int]) -> dict[int, tuple[dict[str, Any], list[dict[str, Any]]]]:
    """The images (with their annotations) at ``indices`` of the file, read in one pass."""
    wanted, found = set(indices), {}
    for i, item in enumerate(stream):
        if i in wanted:
            found[i] = item
            if len(found) == len(wanted):
                break
    return found


def _thumbnail(stream: CocoStream, image: dict[str, Any], anns: list[dict[str, Any]], size: int) -> Image.Image:
    """The image scaled to fit ``size`` x ``size`` with its boxes drawn; raises ``ImageError``, or ``SizeMismatch``
    when the image is not the shape the file declares (a resized copy is fine: its boxes are scaled with it)."""
    picture = read_rgb(stream.image_path(image))
    check_declared_size(stream.image_path(image), image["width"], image["height"])
    scale = min(size / picture.width, size / picture.height)
    sx, sy = scale * picture.width / image["width"], scale * picture.height / image["height"]
    picture = picture.resize((max(1, round(picture.width * scale)), max(1, round(picture.height * scale))),
                             Image.Resampling.BILINEAR)
    classes = stream.classes
    labels = [classes.label(a["category_id"]) for a in anns]
    boxes = [[x * sx, y * sy, (x + w) * sx, (y + h) * sy] for x, y, w, h in (a["bbox"] for a in anns)]
    return draw_boxes(picture, boxes, labels, [classes.names[k] for k in labels], [a.get("score") for a in anns])


def _caption(row: ImageRow, rank: int, num_transforms: int) -> tuple[str, str]:
    parts = [f"{row.num_human} human" if row.num_human else "", f"{row.num_machine} machine" if row.num_machine else ""]
    if row.lowest_score is not None:
        parts.append(f"min {row.lowest_score:.2f}")
    if row.disagreement is not None:
        parts.append(f"agree {round((1 - row.disagreement) * num_transforms)}/{num_transforms}")
    return f"#{rank} {Path(row.file_name).name}", "  ".join(p for p in parts if p) or "no boxes"


def _legend(draw: ImageDraw.ImageDraw, x: int, y: int, names: tuple[str, ...], font: ImageFont.ImageFont) -> None:
    for k, name in enumerate(names):
        draw.rectangle([x, y, x + 10, y + 10], fill=class_colour(k))
        draw.text((x + 14, y - 1), name, fill=(230, 230, 230), font=font)
        x += 24 + round(draw.textlength(name, font=font))


def _fit(draw: ImageDraw.ImageDraw, text: str, width: int, font: ImageFont.ImageFont) -> str:
    """``text`` cut (with an ellipsis) to fit ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def _sheet(thumbs: list[tuple[Image.Image, tuple[str, str]]], config: ShowConfig, title: str, names: tuple[str, ...]) -> Image.Image:
    columns = max(1, min(config.columns, len(thumbs)))
    rows = max(1, math.ceil(len(thumbs) / columns))
    cell_w, cell_h = config.thumb_size + 8, config.thumb_size + CAPTION_H + 8
    sheet = Image.new("RGB", (max(columns * cell_w, 480), HEADER_H + rows * cell_h), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=12)
    draw.text((6, 4), title, fill=(255, 255, 255), font=font)
    _legend(draw, 6, 22, names, font)
    for k, (thumb, (line1, line2)) in enumerate(thumbs):
        x, y = (k % columns) * cell_w + 4, HEADER_H + (k // columns) * cell_h + 4
        sheet.paste(thumb, (x + (config.thumb_size - thumb.width) // 2, y + (config.thumb_size - thumb.height) // 2))
        draw.text((x, y + config.thumb_size + 2), _fit(draw, line1, config.thumb_size, font), fill=(255, 255, 255), font=font)
        draw.text((x, y + config.thumb_size + 16), _fit(draw, line2, config.thumb_size, font), fill=(200, 200, 200), font=font)
    return sheet


def _html(items: list[tuple[Image.Image, ImageRow]], title: str, names: tuple[str, ...], num_transforms: int) -> str:
    legend = " ".join(f'<span class="tag" style="background:rgb{class_colour(k)}">{html.escape(n)}</span>'
                      for k, n in enumerate(names))
    body = []
    for rank, (thumb, row) in enumerate(items, start=1):
        buffer = io.BytesIO()
        thumb.save(buffer, format="JPEG", quality=85)
        data = base64.b64encode(buffer.getvalue()).decode()
        agree = "" if row.disagreement is None else f"{round((1 - row.disagreement) * num_transforms)}/{num_transforms}"
        cells = [
            (rank, rank), (html.escape(row.file_name), f'<img src="data:image/jpeg;base64,{data}"><br>{html.escape(row.file_name)}'),
            (row.num_human, row.num_human), (row.num_machine, row.num_machine),
            ("" if row.lowest_score is None else f"{row.lowest_score:.4f}", "" if row.lowest_score is None else f"{row.lowest_score:.2f}"),
            ("" if row.disagreement is None else f"{row.disagreement:.4f}", agree),
        ]
        body.append("<tr>" + "".join(f'<td data-v="{v}">{shown}</td>' for v, shown in cells) + "</tr>")
    headers = ["rank", "image", "human boxes", "machine boxes", "lowest score", "agreement"]
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; background: #282828; color: #eee; }}
table {{ border-collapse: collapse; }} td, th {{ padding: 4px 8px; border-bottom: 1px solid #444; vertical-align: top; }}
th {{ cursor: pointer; text-align: left; }} th:hover {{ color: #fc0; }}
.tag {{ color: #000; padding: 1px 6px; border-radius: 3px; }}
</style></head><body>
<h2>{html.escape(title)}</h2>
<p>{legend} &nbsp; solid: human label, dashed: machine label (with its score). Click a column to sort.</p>
<table id="t"><thead><tr>{"".join(f"<th>{h}</th>" for h in headers)}</tr></thead>
<tbody>
{chr(10).join(body)}
</tbody></table>
<script>
document.querySelectorAll("th").forEach((th, col) => th.addEventListener("click", () => {{
  const tbody = document.querySelector("#t tbody");
  const rows = [...tbody.rows];
  const value = r => r.cells[col].dataset.v;
  const numeric = rows.every(r => value(r) === "" || !isNaN(value(r)));
  const up = th.dataset.dir !== "up";
  th.dataset.dir = up ? "up" : "down";
  rows.sort((a, b) => {{
    const [x, y] = [value(a), value(b)];
    if (x === "" || y === "") return (x === "") - (y === "");
    const c = numeric ? x - y : x.localeCompare(y);
    return up ? c : -c;
  }});
  rows.forEach(r => tbody.appendChild(r));
}}));
</script>
</body></html>
"""


def show(config: ShowConfig) -> ShowResult:
    out = Path(config.out)
    suffix = out.suffix.lower()
    if suffix not in (*SHEET_SUFFIXES, ".html"):
        raise UserError(f"`out` {out}: expected a .png or .jpg contact sheet or an .html report")
    if config.sort is not None and config.sort not in SORTS:
        raise UserError(f"`sort` {config.sort!r}: choose one of {', '.join(SORTS)}")
    if config.max_images < 1 or config.thumb_size < 32 or config.columns < 1:
        raise UserError("`max_images` and `columns` must be at least 1, `thumb_size` at least 32")
    stream = open_stream(config.labels, config.images)  # read image by image: two passes, flat memory
    signals = _Signals.read(stream)
    num_images = len(signals.lowest)
    if not num_images:
        raise UserError(f"{config.labels}: holds no images to show")
    transforms = stream.info.get("transforms")
    any_agreement = bool((~np.isnan(signals.most_agreement)).any())
    most = float(np.nanmax(signals.most_agreement)) if any_agreement else 1.0
    teachers = stream.info.get("teacher")
    num_teachers = len(teachers) if isinstance(teachers, list) and teachers else 1  # agreement counts teacher x transform
    num_transforms = len(transforms) * num_teachers if isinstance(transforms, list) and transforms else int(max(most, 1))
    # filter writes its first file's info: a class it took from the fused file counts both models' passes
    num_transforms = max(num_transforms, int(most))
    has_scores = bool((signals.num_machine > 0).any())
    sort = config.sort or ("score" if has_scores else "file")
    if sort == "score" and not has_scores:
        raise UserError(f"{config.labels}: `sort` score needs machine labels (annotations with a 'score'); "
                        "this file has none: use `sort` file")
    if sort == "disagreement" and not any_agreement:
        raise UserError(f"{config.labels}: `sort` disagreement needs each box's 'agreement' (written by "
                        "pseudo-label with several transforms); use `sort` score")

    # `out` (a .png, .jpg or .html, never the .json labels) may be one of the images: a pass over the file if it exists
    if out.resolve().exists() and any(stream.image_path(image).resolve() == out.resolve() for image, _ in stream):
        raise UserError(f"`out` {out}: the output would overwrite one of its images; choose another `out`")
    result = ShowResult(out, sort, num_images)
    shown: list[tuple[Image.Image, ImageRow]] = []
    order = signals.order(sort, num_transforms).tolist()
    wanted = config.max_images
    while order and len(shown) < config.max_images:  # a pass per batch; batches double while images fail
        batch, order = order[:wanted], order[wanted:]
        chosen = _chosen(stream, batch)
        for i in batch:
            image, anns = chosen[i]
            if len(shown) == config.max_images:
                break
            try:
                shown.append((_thumbnail(stream, image, anns, config.thumb_size),
                              signals.row(i, image["file_name"], num_transforms)))
            except (ImageError, SizeMismatch) as e:
                result.skipped.append({"file": str(stream.image_path(image)), "reason": str(e).split(": ", 1)[-1]})
        wanted *= 2
    if not shown:
        raise UserError(f"{config.labels}: none of its images could be read (first: {result.skipped[0]['file']}: "
                        f"{result.skipped[0]['reason']}); pass `images` DIR, the folder they resolve against")
    result.rows = [row for _, row in shown]
    order = {"score": "lowest score first", "disagreement": "most disagreement first", "file": "file order"}[sort]
    title = f"{Path(config.labels).name}: {len(shown)} of {num_images} images, {order}"
    names = stream.classes.names
    if suffix == ".html":
        page = _html(shown, title, names, num_transforms)
        with atomic_path(out) as tmp:
            tmp.write_text(page)
    else:
        thumbs = [(thumb, _caption(row, rank, num_transforms)) for rank, (thumb, row) in enumerate(shown, start=1)]
        save_image(_sheet(thumbs, config, title + "; dashed: machine label", names), out)
    return result
