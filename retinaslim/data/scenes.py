"""Synthetic photographs of ID-like cards for training and checking detectors.

Every coordinate in this module is in absolute pixels. Frame coordinates have
their origin at the top-left corner of the output image, x to the right and
y downwards, and pixel ``(i, j)`` covers ``[i, i + 1) x [j, j + 1)``. Boxes are
``(x1, y1, x2, y2)`` with exclusive ``x2``/``y2`` edges, so a box around the
single pixel ``(0, 0)`` is ``(0.0, 0.0, 1.0, 1.0)``.

Card artwork is drawn in millimetres of the physical document, scaled by ``k``
template pixels per millimetre, then warped into the frame.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = ["CARD_CLASSES", "Scene", "render_scene"]

CARD_CLASSES: tuple[str, ...] = ("id_card", "bank_card", "passport")

Rgb = tuple[int, int, int]

# A pixel counts as part of a card once the card covers at least half of it.
_ALPHA_ON = 128
_MIN_INSIDE = 0.85
_MAX_HIDDEN = 0.3
_PLACE_TRIES = 6
# Templates near the on-frame size keep bilinear warping free of aliasing;
# the cap bounds drawing cost for large frames.
_TEMPLATE_MIN_PX, _TEMPLATE_MAX_PX = 40.0, 400.0


@dataclass
class Scene:
    """One rendered frame and its annotations.

    ``boxes`` are tight axis-aligned ``(x1, y1, x2, y2)`` boxes in absolute
    frame pixels (exclusive right/bottom edges) around the part of each card
    that lies inside the frame; ``labels[i]`` indexes the kinds the scene was drawn from
    (``CARD_CLASSES`` by default).
    """

    image: Image.Image
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)


def _colour(rng: np.random.Generator, hue: float | None = None,
            sat: tuple[float, float] = (0.0, 1.0), val: tuple[float, float] = (0.0, 1.0)) -> Rgb:
    h = rng.uniform() if hue is None else hue
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, rng.uniform(*sat), rng.uniform(*val))
    return int(r * 255), int(g * 255), int(b * 255)


def _shade(c: Rgb, f: float) -> Rgb:
    r, g, b = (int(min(255, v * f)) for v in c)
    return r, g, b


def _mm(k: float, *v: float) -> list[float]:
    """Millimetres on the document to template pixels."""
    return [x * k for x in v]


def _canvas(w_mm: float, h_mm: float, long_px: float, fill: Rgb) -> tuple[Image.Image, ImageDraw.ImageDraw, float]:
    k = long_px / max(w_mm, h_mm)
    img = Image.new("RGB", (max(2, round(w_mm * k)), max(2, round(h_mm * k))), fill)
    return img, ImageDraw.Draw(img), k


def _with_alpha(img: Image.Image, radius: float) -> Image.Image:
    """Rounds the corners of ``img`` and adds a 1 px transparent rim.

    The rim lets bilinear warping antialias the outline (PIL cuts hard at the
    source border); its RGB repeats the edge colour so no dark fringe appears.
    """
    rgb = np.pad(np.asarray(img), ((1, 1), (1, 1), (0, 0)), mode="edge")
    mask = Image.new("L", img.size, 0)
    ImageDraw.Draw(mask).rounded_rectangle([0, 0, img.width - 1, img.height - 1], radius=radius, fill=255)
    alpha = np.pad(np.asarray(mask), 1)
    return Image.fromarray(np.dstack([rgb, alpha]), "RGBA")


def _text(d: ImageDraw.ImageDraw, rng: np.random.Generator, box: list[float], lines: int, fill: Rgb,
          weight: float = 0.4) -> None:
    """Fills ``box`` (template pixels) with ``lines`` rows of word-like dashes
    whose stroke is ``weight`` times the line pitch."""
    x0, y0, x1, y1 = box
    pitch = (y1 - y0) / lines
    thick = max(1, round(pitch * weight))
    for i in range(lines):
        y = round(y0 + i * pitch + (pitch - thick) / 2)
        x, end = x0, x0 + (x1 - x0) * rng.uniform(0.3, 1.0)
        while x < end:
            w = (x1 - x0) * rng.uniform(0.04, 0.25)
            d.rectangle([x, y, min(x + w, end), y + thick - 1], fill=fill)
            x += w + thick * rng.uniform(0.8, 2.0)


def _photo(d: ImageDraw.ImageDraw, rng: np.random.Generator, box: list[float]) -> None:
    """Portrait photo: plain backdrop, shoulders and a head."""
    x0, y0, x1, y1 = box
    w, h, cx = x1 - x0, y1 - y0, (x0 + x1) / 2
    d.rectangle(box, fill=_colour(rng, sat=(0.0, 0.2), val=(0.6, 0.95)))
    d.chord([x0 - 0.05 * w, y0 + 0.62 * h, x1 + 0.05 * w, y1 + 0.5 * h], 180, 360,
            fill=_colour(rng, sat=(0.1, 0.7), val=(0.1, 0.6)))
    skin = _colour(rng, hue=rng.uniform(0.03, 0.1), sat=(0.25, 0.6), val=(0.35, 0.9))
    d.ellipse([cx - 0.24 * w, y0 + 0.15 * h, cx + 0.24 * w, y0 + 0.7 * h], fill=skin)
    d.chord([cx - 0.26 * w, y0 + 0.1 * h, cx + 0.26 * w, y0 + 0.45 * h], 180, 360,
            fill=_colour(rng, sat=(0.2, 0.6), val=(0.05, 0.5)))


def _id_card(rng: np.random.Generator, long_px: float) -> Image.Image:
    """Light ID-1 card: coloured header band, photo left, dark text right."""
    img, d, k = _canvas(85.6, 54.0, long_px, _colour(rng, sat=(0.03, 0.25), val=(0.85, 1.0)))
    band = _colour(rng, sat=(0.5, 0.9), val=(0.3, 0.65))
    d.rectangle(_mm(k, 0, 0, 85.6, 10), fill=band)
    d.ellipse(_mm(k, 3, 1.5, 10, 8.5), fill=(235, 235, 225))
    _text(d, rng, _mm(k, 14, 3, 82, 7.5), 1, (240, 240, 240))
    d.ellipse(_mm(k, 46, 18, 74, 46), outline=_shade(band, 1.6), width=max(1, round(0.6 * k)))
    _photo(d, rng, _mm(k, 4, 14, 27, 47))
    _text(d, rng, _mm(k, 31, 14, 82, 46), int(rng.integers(4, 7)), _colour(rng, sat=(0, 0.5), val=(0.05, 0.3)), 0.3)
    return _with_alpha(img, 3.18 * k)


def _bank_card(rng: np.random.Generator, long_px: float) -> Image.Image:
    """Dark saturated gradient ID-1 card with a gold chip and a number row."""
    hue = rng.uniform()
    c0 = np.array(_colour(rng, hue=hue, sat=(0.5, 1.0), val=(0.3, 0.75)), np.float32)
    c1 = np.array(_colour(rng, hue=hue + rng.uniform(-0.15, 0.15), sat=(0.6, 1.0), val=(0.05, 0.35)), np.float32)
    a = rng.uniform(0.2, 0.8)
    img, d, k = _canvas(85.6, 54.0, long_px, (0, 0, 0))
    t = a * np.linspace(0, 1, img.width)[None, :] + (1 - a) * np.linspace(0, 1, img.height)[:, None]
    img.paste(Image.fromarray((c0 + (c1 - c0) * t[..., None]).astype(np.uint8), "RGB"))
    gold = (int(rng.uniform(195, 235)), int(rng.uniform(155, 195)), int(rng.uniform(50, 100)))
    d.rounded_rectangle(_mm(k, 9, 17, 21, 26.5), radius=1.2 * k, fill=gold)
    line = max(1, round(0.3 * k))
    d.line(_mm(k, 9.5, 21.75, 20.5, 21.75), fill=_shade(gold, 0.7), width=line)
    d.line(_mm(k, 15, 17.5, 15, 26), fill=_shade(gold, 0.7), width=line)
    grey = int(rng.uniform(200, 245))
    silver = (grey, grey, grey)
    x = 8.0
    for _ in range(4):
        for _ in range(4):
            d.rectangle(_mm(k, x, 32, x + 2.9, 37.5), fill=silver)
            x += 3.8
        x += 3.0
    _text(d, rng, _mm(k, 8, 5, 45, 10), 1, silver)
    _text(d, rng, _mm(k, 8, 42, 55, 46.5), 1, silver)
    d.ellipse(_mm(k, 63, 39, 72, 48), fill=_colour(rng, sat=(0.6, 1), val=(0.7, 1)))
    d.ellipse(_mm(k, 69, 39, 78, 48), fill=_colour(rng, sat=(0.6, 1), val=(0.7, 1)))
    return _with_alpha(img, 3.18 * k)


def _passport(rng: np.random.Generator, long_px: float) -> Image.Image:
    """Passport data page (ID-3) with the booklet cover showing as a dark rim,
    a guilloche-like background and a two-line machine-readable zone."""
    cover = _colour(rng, hue=float(rng.choice([0.0, 0.97, 0.62, 0.38])), sat=(0.5, 0.9), val=(0.1, 0.4))
    img, d, k = _canvas(125.0, 88.0, long_px, cover)
    paper = _colour(rng, sat=(0.02, 0.15), val=(0.88, 1.0))
    d.rectangle(_mm(k, 2.5, 2.5, 122.5, 85.5), fill=paper)
    xs = np.linspace(2.5, 122.5, 48)
    phase, freq = rng.uniform(0, 6.3), rng.uniform(0.05, 0.15)
    for y in np.arange(8.0, 60.0, 4.0):
        ys = y + 1.5 * np.sin(xs * freq + phase + y * 0.3)
        d.line([(px * k, py * k) for px, py in zip(xs, ys)], fill=_shade(paper, 0.9), width=1)
    _text(d, rng, _mm(k, 35, 5, 100, 10), 1, _shade(cover, 1.3))
    _photo(d, rng, _mm(k, 7, 13, 37, 53))
    _text(d, rng, _mm(k, 42, 14, 118, 55), int(rng.integers(6, 9)), _colour(rng, sat=(0, 0.4), val=(0.05, 0.3)))
    ink = _colour(rng, sat=(0, 0.2), val=(0.0, 0.2))
    pitch = 113.0 / 44
    for y in (62.0, 71.0):
        # "<" fillers render as short low strokes, letters as full blocks.
        filler = rng.uniform(size=44) < 0.3
        for i, is_filler in enumerate(filler):
            x = 6.0 + i * pitch
            top = y + 3.0 if is_filler else y
            d.rectangle(_mm(k, x, top, x + 0.7 * pitch, y + 4.5), fill=ink)
    return _with_alpha(img, 3.5 * k)


def _paper(rng: np.random.Generator, long_px: float) -> Image.Image:
    """A4 sheet with paragraphs of grey text."""
    img, d, k = _canvas(210.0, 297.0, long_px, _colour(rng, sat=(0, 0.06), val=(0.85, 1.0)))
    ink = _colour(rng, sat=(0, 0.3), val=(0.1, 0.5))
    y = rng.uniform(15, 40)
    while y < 240:
        n = int(rng.integers(2, 7))
        _text(d, rng, _mm(k, 20, y, 190, y + 6 * n), n, ink, weight=0.3)
        y += 6 * n + rng.uniform(5, 20)
    return _with_alpha(img, 0)


def _screen(rng: np.random.Generator, long_px: float) -> Image.Image:
    """Phone or laptop: dark rounded body around a bright screen with app tiles."""
    w_mm, h_mm, bezel, radius = (70.0, 150.0, 4.0, 9.0) if rng.uniform() < 0.5 else (300.0, 200.0, 10.0, 5.0)
    img, d, k = _canvas(w_mm, h_mm, long_px, _colour(rng, sat=(0, 0.2), val=(0.03, 0.3)))
    screen = _mm(k, bezel, bezel, w_mm - bezel, h_mm - bezel)
    d.rectangle(screen, fill=_colour(rng, sat=(0, 0.5), val=(0.75, 1.0)))
    sx0, sy0, sx1, sy1 = screen
    for _ in range(int(rng.integers(3, 9))):
        x, y = rng.uniform(sx0, sx1), rng.uniform(sy0, sy1)
        size = rng.uniform(0.1, 0.4) * (sx1 - sx0)
        d.rectangle([x, y, min(x + size, sx1), min(y + size * rng.uniform(0.3, 1.2), sy1)],
                    fill=_colour(rng, sat=(0.3, 1.0), val=(0.4, 1.0)))
    return _with_alpha(img, radius * k)


def _book(rng: np.random.Generator, long_px: float) -> Image.Image:
    """Book cover with a darker spine band and a title block."""
    h_mm = rng.uniform(190, 240)
    colour = _colour(rng, sat=(0.3, 0.9), val=(0.2, 0.9))
    img, d, k = _canvas(150.0, h_mm, long_px, colour)
    d.rectangle(_mm(k, 0, 0, 14, h_mm), fill=_shade(colour, 0.6))
    light = _colour(rng, sat=(0, 0.3), val=(0.8, 1.0))
    _text(d, rng, _mm(k, 30, 25, 135, 55), int(rng.integers(1, 3)), light)
    d.rectangle(_mm(k, 35, 75, 130, 75 + rng.uniform(30, 90)), fill=_colour(rng))
    return _with_alpha(img, 2 * k)


_CARD_ART: tuple[Callable[[np.random.Generator, float], Image.Image], ...] = (_id_card, _bank_card, _passport)
_DISTRACTORS = ((_paper, 0.5, 1.3), (_screen, 0.3, 0.9), (_book, 0.3, 0.8))


def _quad(rng: np.random.Generator, template: Image.Image, long_side: float, angle: float, jitter: float) -> np.ndarray:
    """Frame-pixel offsets from the object centre of the warped template corners
    (TL, TR, BR, BL), with the corner jitter that fakes a tilted camera."""
    cw, ch = template.width - 2, template.height - 2
    s = long_side / max(cw, ch)
    w, h = cw * s, ch * s
    q = np.array([[-w, -h], [w, -h], [w, h], [-w, h]]) / 2
    q += rng.uniform(-jitter, jitter, (4, 2)) * min(w, h)
    t = np.deg2rad(angle)
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    return q @ rot.T


def _warp(template: Image.Image, corners: np.ndarray, clip: int | None = None) -> tuple[Image.Image, int, int] | None:
    """Warps ``template`` so its content corners land on ``corners`` (frame px).

    Returns the warped RGBA layer and its top-left offset in the frame; with
    ``clip`` the layer is cut to the ``[0, clip)`` frame, None if nothing is left.
    """
    lo, hi = np.floor(corners.min(0)).astype(int), np.ceil(corners.max(0)).astype(int)
    if clip is not None:
        lo, hi = np.maximum(lo, 0), np.minimum(hi, clip)
    if np.any(hi <= lo):
        return None
    w, h = template.size
    src = np.array([[1, 1], [w - 1, 1], [w - 1, h - 1], [1, h - 1]], np.float64)
    dst = corners - lo
    # PIL maps output (x, y) to input ((a x + b y + c) / (g x + h y + 1), ...).
    a = np.zeros((8, 8))
    a[0::2, 0:2], a[0::2, 2], a[0::2, 6:8] = dst, 1, -dst * src[:, :1]
    a[1::2, 3:5], a[1::2, 5], a[1::2, 6:8] = dst, 1, -dst * src[:, 1:]
    coeffs = np.linalg.lstsq(a, src.reshape(-1), rcond=None)[0]
    layer = template.transform((int(hi[0] - lo[0]), int(hi[1] - lo[1])), Image.PERSPECTIVE,
                               tuple(coeffs), resample=Image.BILINEAR)
    return layer, int(lo[0]), int(lo[1])


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in about [-2, 2], upsampled from a cells x cells grid."""
    grid = Image.fromarray(rng.standard_normal((cells, cells)).astype(np.float32), "F")
    return np.asarray(grid.resize((size, size), Image.BICUBIC))


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    """Table-like wood grain or a blotchy colour gradient, plus random shapes."""
    ramp = np.linspace(0, 1, size, dtype=np.float32)
    t = rng.uniform(0, 2 * np.pi)
    u = np.cos(t) * ramp[None, :] + np.sin(t) * ramp[:, None]
    u = (u - u.min()) / max(float(u.max() - u.min()), 1e-6)
    if rng.uniform() < 0.5:
        base = np.array(_colour(rng, hue=rng.uniform(0.04, 0.12), sat=(0.1, 0.7), val=(0.25, 0.85)), np.float32)
        v = -np.sin(t) * ramp[None, :] + np.cos(t) * ramp[:, None]
        warp = _smooth_noise(rng, size, 4) * rng.uniform(0.005, 0.03)
        # Interpolating random levels across the grain gives the uneven ring
        # spacing of wood; a sine would look like a moire pattern.
        knots = int(rng.integers(60, 250))
        grain = np.interp(v + warp, np.linspace(-1.5, 1.5, knots), rng.uniform(-1, 1, knots))
        tex = 1 + 0.1 * grain + 0.03 * _smooth_noise(rng, size, max(4, size // 8)) + 0.1 * (u - 0.5)
        arr = base * tex[..., None]
    else:
        c0, c1 = (np.array(_colour(rng), np.float32) for _ in range(2))
        blotch = 0.15 * _smooth_noise(rng, size, 5)
        arr = c0 + (c1 - c0) * np.clip(u + blotch, 0, 1)[..., None]
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 10))):
        x, y = rng.uniform(-0.1, 1.1, 2) * size
        r = rng.uniform(0.02, 0.25, 2) * size
        kind, fill = int(rng.integers(3)), _colour(rng)
        if kind == 0:
            d.ellipse([x - r[0], y - r[1], x + r[0], y + r[1]], fill=fill)
        elif kind == 1:
            d.rectangle([x - r[0], y - r[1], x + r[0], y + r[1]], fill=fill)
        else:
            d.line([x, y, x + r[0] * 3, y - r[1] * 3], fill=fill, width=max(1, int(r[1] * 0.2)))
    return img


def _photometric(rng: np.random.Generator, img: Image.Image) -> Image.Image:
    """Camera effects: defocus, uneven multiplicative light, colour cast, sensor noise."""
    size = img.width
    if rng.uniform() < 0.4:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.0, 1.5) * size / 320))
    ramp = np.linspace(-0.5, 0.5, size, dtype=np.float32)
    gx, gy = rng.uniform(-0.5, 0.5, 2)
    vignette = rng.uniform(0, 0.6)
    gain = 1 + gx * ramp[None, :] + gy * ramp[:, None] - vignette * (ramp[None, :] ** 2 + ramp[:, None] ** 2)
    cast = rng.uniform(0.9, 1.1, 3).astype(np.float32) * np.float32(rng.uniform(0.75, 1.15))
    arr = np.asarray(img, np.float32) * (gain[..., None] * cast)
    noise = rng.standard_normal(arr.shape, dtype=np.float32)
    noise *= np.float32(rng.uniform(0, 8))
    arr += noise
    return Image.fromarray(np.clip(arr, 0, 255, out=arr).astype(np.uint8), "RGB")


def _add_distractor(rng: np.random.Generator, frame: Image.Image) -> None:
    draw, lo, hi = _DISTRACTORS[int(rng.integers(len(_DISTRACTORS)))]
    long_side = frame.width * rng.uniform(lo, hi)
    template = draw(rng, min(max(long_side, _TEMPLATE_MIN_PX), _TEMPLATE_MAX_PX))
    corners = _quad(rng, template, long_side, rng.uniform(-180, 180), 0.04) + rng.uniform(0, frame.width, 2)
    warped = _warp(template, corners, clip=frame.width)
    if warped is not None:
        layer, ox, oy = warped
        frame.paste(layer, (ox, oy), layer)


def _add_card(rng: np.random.Generator, frame: Image.Image, owner: np.ndarray, full: list[int],
              visible: list[int], must_place: bool, kinds: tuple[int, ...]) -> tuple[tuple[float, float, float, float], int] | None:
    """Pastes one card of a kind drawn from ``kinds`` (indices into ``CARD_CLASSES``) and returns its
    frame-pixel box and its index in ``kinds``, or None if no
    placement kept it mostly inside the frame and the earlier cards mostly visible.

    ``owner`` holds, per frame pixel, the index of the topmost card (-1 for none);
    ``full``/``visible`` count each card's in-frame pixels at paste time / now.
    """
    size = frame.width
    label = int(rng.integers(len(kinds)))
    long_side = max(8.0, size * float(np.exp(rng.uniform(np.log(0.1), np.log(0.7)))))
    template = _CARD_ART[kinds[label]](rng, min(max(long_side, _TEMPLATE_MIN_PX), _TEMPLATE_MAX_PX))
    angle = rng.uniform(-30, 30) if rng.uniform() < 0.85 else rng.uniform(-90, 90)
    for attempt in range(_PLACE_TRIES):
        q = _quad(rng, template, long_side, angle, 0.06)
        # A guaranteed first card sits fully inside on its last try.
        slack = 0.0 if must_place and attempt == _PLACE_TRIES - 1 else 0.08
        ext = q.max(0) - q.min(0)
        low, high = -q.min(0) - slack * ext, size - q.max(0) + slack * ext
        centre = rng.uniform(np.minimum(low, high), np.maximum(low, high))
        warped = _warp(template, q + centre)
        if warped is None:
            continue
        layer, ox, oy = warped
        mask = np.asarray(layer.getchannel("A")) >= _ALPHA_ON
        x0, y0 = max(ox, 0), max(oy, 0)
        x1, y1 = min(ox + layer.width, size), min(oy + layer.height, size)
        if x1 <= x0 or y1 <= y0:
            continue
        inside = mask[y0 - oy:y1 - oy, x0 - ox:x1 - ox]
        count = int(inside.sum())
        if count == 0 or count < _MIN_INSIDE * mask.sum():
            continue
        ys, xs = np.nonzero(inside.any(1))[0], np.nonzero(inside.any(0))[0]
        box = (float(x0 + xs[0]), float(y0 + ys[0]), float(x0 + xs[-1] + 1), float(y0 + ys[-1] + 1))
        if box[2] - box[0] < 2 or box[3] - box[1] < 2:
            continue
        region = owner[y0:y1, x0:x1]
        hidden = np.bincount(region[inside] + 1, minlength=len(full) + 1)[1:]
        if any(v - c < (1 - _MAX_HIDDEN) * f for v, c, f in zip(visible, hidden, full)):
            continue
        for i, c in enumerate(hidden):
            visible[i] -= int(c)
        region[inside] = len(full)
        full.append(count)
        visible.append(count)
        frame.paste(layer, (ox, oy), layer)
        return box, label
    return None


def render_scene(rng: np.random.Generator, size: int, max_cards: int = 3, distractors: bool = True,
                 kinds: tuple[int, ...] = tuple(range(len(CARD_CLASSES)))) -> Scene:
    """Renders a ``size`` x ``size`` RGB photo of 1..``max_cards`` cards of the kinds ``kinds``
    (indices into ``CARD_CLASSES``; ``Scene.labels`` index ``kinds``).

    Randomness comes only from ``rng``, so equal generator states give equal
    pixels and boxes. Boxes are tight absolute-pixel ``(x1, y1, x2, y2)``
    boxes of each card's in-frame pixels (alpha >= 50 %), in ``[0, size]``;
    a card partly hidden by a later one keeps its full box.
    """
    if size < 32:
        raise ValueError(f"size must be >= 32, got {size}")
    if max_cards < 1:
        raise ValueError(f"max_cards must be >= 1, got {max_cards}")
    frame = _background(rng, size)
    if distractors:
        for _ in range(int(rng.integers(1, 5))):
            _add_distractor(rng, frame)
    n_cards = 1 if max_cards == 1 or rng.uniform() < 0.65 else int(rng.integers(2, max_cards + 1))
    owner = np.full((size, size), -1, np.int16)
    full: list[int] = []
    visible: list[int] = []
    scene = Scene(image=frame)
    for i in range(n_cards):
        placed = _add_card(rng, frame, owner, full, visible, must_place=i == 0, kinds=kinds)
        if placed is None:
            break
        scene.boxes.append(placed[0])
        scene.labels.append(placed[1])
    scene.image = _photometric(rng, frame)
    return scene
