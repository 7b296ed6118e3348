"""convert: labels between COCO (retinaslim's own format), Pascal VOC, YOLO and Label Studio.

SRC is read into a ``LabelSet`` (boxes clipped to their image; polygons read as their enclosing boxes;
image sizes checked against the images, or read from them when SRC gives none; degenerate boxes,
unreadable images and lines skipped with their reasons), then written in the target format. Reading VOC, YOLO, Label Studio
or COCO, writing COCO, YOLO or Label Studio. Every output file is written atomically.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path

from retinaslim.data.formats.labelset import LabelSet, Skipped, read_coco, write_coco
from retinaslim.data.formats.labelstudio import read_labelstudio, write_labelstudio
from retinaslim.data.formats.voc import read_voc
from retinaslim.data.formats.yolo import read_yolo, write_yolo
from retinaslim.errors import UserError

READ_FORMATS = ("coco", "voc", "yolo", "labelstudio")
WRITE_FORMATS = ("coco", "yolo", "labelstudio")


@dataclass
class ConvertConfig:
    src: Path  # COCO or Label Studio JSON file, VOC folder, YOLO folder or its data.yaml
    from_format: str
    to_format: str
    out: Path  # a .json file (coco, labelstudio) or a folder (yolo)
    _: KW_ONLY  # inputs and outputs above may be passed in order, options below by keyword only
    images: Path | None = None  # where COCO / Label Studio image names resolve
    split: str | None = None  # VOC only: read the images ImageSets/Main/<split>.txt lists


@dataclass
class ConvertResult:
    """What ``convert`` wrote to ``out``: images, boxes per class name, boxes carrying a score, boxes clipped
    to their image, and every item skipped (``skipped``: kind, where, reason)."""

    out: Path
    num_images: int
    num_boxes: dict[str, int]  # per class name, written
    num_machine_boxes: int  # boxes with a score
    num_clipped: int  # boxes that reached outside their image and were clipped to it
    num_sizes_read: int = 0  # images whose labels gave no size: read from the image
    num_rescaled: int = 0  # images a resized copy of the size their labels give: boxes rescaled to the image
    num_polygons: int = 0  # polygons read as their enclosing boxes
    skipped: list[Skipped] = field(default_factory=list)

    def skipped_by_reason(self) -> list[tuple[str, str, int]]:
        """(kind, reason, count), most frequent first."""
        return [(kind, reason, n) for (kind, reason), n in Counter((s.kind, s.reason) for s in self.skipped).most_common()]


def _validate(config: ConvertConfig) -> None:
    if config.from_format not in READ_FORMATS:
        raise UserError(f"`from_format` {config.from_format!r}: choose one of {', '.join(READ_FORMATS)}")
    if config.to_format not in WRITE_FORMATS:
        raise UserError(f"`to_format` {config.to_format!r}: choose one of {', '.join(WRITE_FORMATS)}")
    out = Path(config.out)
    if config.to_format == "yolo":
        if out.exists() and not out.is_dir():
            raise UserError(f"`out` {out}: YOLO output is a folder (images/, labels/, data.yaml), and this is a file")
    elif out.suffix.lower() != ".json":
        raise UserError(f"`out` {out}: expected a .json file name for {config.to_format}")
    if config.split and config.from_format != "voc":
        raise UserError(f"`split` {config.split}: only Pascal VOC sources have split lists (ImageSets/Main/*.txt)")
    if out.resolve() == Path(config.src).resolve():  # resolved: ./sub/../labels.json is labels.json
        raise UserError(f"`out` {out}: the output would overwrite the input; choose another `out`")


def read_labels(src: Path, fmt: str, images: Path | None = None, split: str | None = None) -> LabelSet:
    if fmt == "voc":
        return read_voc(src, split)
    if fmt == "yolo":
        return read_yolo(src)
    if fmt == "labelstudio":
        return read_labelstudio(src, images)
    return read_coco(src, images)


def convert(config: ConvertConfig) -> ConvertResult:
    _validate(config)
    labels = read_labels(Path(config.src), config.from_format, config.images, config.split)
    if not labels.images:
        reason = f" (first problem: {labels.skipped[0].where}: {labels.skipped[0].reason})" if labels.skipped else ""
        raise UserError(f"{config.src}: no usable images{reason}")
    if config.to_format == "yolo":
        write_yolo(labels, config.out)
    elif config.to_format == "labelstudio":
        write_labelstudio(labels, config.out)
    else:
        write_coco(labels, config.out, {"description": f"converted by retinaslim from {config.from_format}",
                                        "source": str(config.src)})
    names = {c["id"]: c["name"] for c in labels.categories}
    written = [a for a in labels.annotations if not (config.to_format != "coco" and a.get("iscrowd", 0))]
    per_class = Counter(names[a["category_id"]] for a in written)
    return ConvertResult(
        out=Path(config.out), num_images=len(labels.images),
        num_boxes={c["name"]: per_class[c["name"]] for c in sorted(labels.categories, key=lambda c: c["id"])},
        num_machine_boxes=sum("score" in a for a in written), num_clipped=labels.num_clipped,
        num_sizes_read=labels.num_sizes_read, num_rescaled=labels.num_rescaled, num_polygons=labels.num_polygons,
        skipped=labels.skipped,
    )
