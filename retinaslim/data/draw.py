"""Boxes drawn on images: colour by class, human labels solid, machine labels (with a score) dashed."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from retinaslim.core.atomic import atomic_path

# Distinct colours that stay apart for common colour blindness (Okabe-Ito first, then Tol's bright).
PALETTE = ((230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (0, 114, 178), (213, 94, 0),
           (204, 121, 167), (238, 102, 119), (34, 136, 51), (170, 51, 119))
DASH, GAP = 6, 4  # pixels along a machine label's outline


def class_colour(label: int) -> tuple[int, int, int]:
    """The colour of contiguous class index ``label``."""
    return PALETTE[label % len(PALETTE)]


def _outline(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], colour: tuple[int, int, int], width: int,
             dashed: bool) -> None:
    """Outline the inclusive pixel box (left, top, right, bottom) from its edge inwards, ``width`` pixels thick."""
    left, top, right, bottom = box
    if not dashed:
        draw.rectangle(box, outline=colour, width=width)
        return
    for x in range(left, right + 1, DASH + GAP):
        x_end = min(x + DASH - 1, right)
        draw.rectangle([x, top, x_end, top + width - 1], fill=colour)
        draw.rectangle([x, bottom - width + 1, x_end, bottom], fill=colour)
    for y in range(top, bottom + 1, DASH + GAP):
        y_end = min(y + DASH - 1, bottom)
        draw.rectangle([left, y, left + width - 1, y_end], fill=colour)
        draw.rectangle([right - width + 1, y, right, y_end], fill=colour)


def draw_boxes(image: Image.Image, boxes_xyxy: list[list[float]], labels: list[int], names: list[str],
               scores: list[float | None], line_width: int = 2, font_size: int = 11) -> Image.Image:
    """Draw on ``image`` (RGB, in place) and return it.

    boxes_xyxy: x1, y1, x2, y2 in ``image``'s pixels; labels: contiguous class index (its colour);
    names: the caption per box; scores: None for a human label (solid outline), a number for a machine
    label (dashed outline, the score in the caption). The outline lies inside the box: its outer pixels
    are the box's first and last pixel rows and columns. Higher scores are drawn over lower ones, human
    labels over machine labels.
    """
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=font_size)
    # Lowest scores first, human labels last: where boxes overlap, the surest one stays visible on top.
    order = sorted(range(len(scores)), key=lambda i: 2.0 if scores[i] is None else scores[i])
    for i in order:
        (x1, y1, x2, y2), label, name, score = boxes_xyxy[i], labels[i], names[i], scores[i]
        colour = class_colour(label)
        # Box edges lie between pixels: x1 = 10, x2 = 40 covers pixel columns 10..39.
        left, top = round(x1), round(y1)
        _outline(draw, (left, top, max(left, round(x2) - 1), max(top, round(y2) - 1)), colour, line_width, score is not None)
        caption = name if score is None else f"{name} {score:.2f}"
        _, _, text_w, text_h = draw.textbbox((0, 0), caption, font=font)
        tag_h = text_h + 2
        tag_y = y1 - tag_h if y1 - tag_h >= 0 else y1
        draw.rectangle([x1, tag_y, x1 + text_w + 3, tag_y + tag_h], fill=colour)
        dark = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2] < 140
        draw.text((x1 + 2, tag_y + 1), caption, fill=(255, 255, 255) if dark else (0, 0, 0), font=font)
    return image


def save_image(image: Image.Image, path: Path) -> None:
    """Write atomically, in the format the file name's suffix names (JPEG: quality 90, no chroma subsampling,
    which would smear thin coloured lines)."""
    fmt = Image.registered_extensions().get(Path(path).suffix.lower(), "PNG")
    with atomic_path(path) as tmp:
        image.save(tmp, format=fmt, **({"quality": 90, "subsampling": 0} if fmt == "JPEG" else {}))
