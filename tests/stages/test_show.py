"""show: order by lowest score / disagreement, boxes drawn at the right place on the sheet, HTML self-contained."""

import base64
import io
import json
import re

import pytest
from PIL import Image

from retinaslim.data.draw import class_colour
from retinaslim.errors import UserError
from retinaslim.stages.show import HEADER_H, ShowConfig, show
from tests.conftest import assert_user_error, run_cli

GREY = (90, 90, 90)
TRANSFORMS = ["scale0.75", "scale0.75+hflip", "scale1", "scale1+hflip", "scale1.25", "scale1.25+hflip"]


def ann(id_, image_id, category_id, bbox, score=None, agreement=None):
    out = {"id": id_, "image_id": image_id, "category_id": category_id, "bbox": bbox}
    if score is not None:
        out["score"] = score
    if agreement is not None:
        out["agreement"] = agreement
    return out


@pytest.fixture
def labels(tmp_path):
    """Three 64 x 48 grey images: a (score 0.9, agreement 6/6), b (a human box and a 0.3 machine box, 6/6),
    c (score 0.8, agreement 2/6)."""
    for name in "abc":
        Image.new("RGB", (64, 48), GREY).save(tmp_path / f"{name}.png")
    path = tmp_path / "pseudo.json"
    path.write_text(json.dumps({
        "info": {"transforms": TRANSFORMS},
        "images": [{"id": i, "file_name": f"{n}.png", "width": 64, "height": 48} for i, n in enumerate("abc", start=1)],
        "categories": [{"id": 1, "name": "card"}, {"id": 2, "name": "passport"}],
        "annotations": [ann(1, 1, 1, [5, 5, 20, 20], 0.9, 6), ann(2, 2, 1, [8, 10, 20, 16]),
                        ann(3, 2, 2, [40, 30, 10, 10], 0.3, 6), ann(4, 3, 2, [5, 5, 30, 30], 0.8, 2)],
    }))
    return path


@pytest.mark.parametrize("sort, order", [("score", ["b", "c", "a"]), ("disagreement", ["c", "b", "a"]), ("file", ["a", "b", "c"])])
def test_sort_orders(labels, tmp_path, sort, order):
    result = show(ShowConfig(labels, tmp_path / "sheet.png", sort=sort))
    assert [r.file_name[0] for r in result.rows] == order
    assert result.rows[order.index("c")].disagreement == pytest.approx(1 - 2 / 6)
    assert result.rows[order.index("b")].lowest_score == 0.3 and result.rows[order.index("b")].num_human == 1


def test_sheet_draws_boxes_scaled_onto_their_thumbnails(labels, tmp_path):
    show(ShowConfig(labels, tmp_path / "sheet.png", thumb_size=128, columns=2, max_images=2))
    sheet = Image.open(tmp_path / "sheet.png").convert("RGB")
    # first cell: image b scaled x2 to 128 x 96, centred in a 128 x 128 cell at (4, HEADER_H + 4) -> offset y 16
    x0, y0 = 4, HEADER_H + 4 + 16
    # b's human box x 8..28, y 10..26 -> 16..56, 20..52 on the thumbnail; its left edge is columns 16, 17
    row = [sheet.getpixel((x0 + x, y0 + 40)) for x in (15, 16, 17, 18)]
    assert row == [GREY, class_colour(0), class_colour(0), GREY]
    # the 0.3 machine box (passport) x 40..50, y 30..40 -> 80..100, 60..80: its bottom edge (rows 78, 79) is dashed
    bottom = [sheet.getpixel((x0 + x, y0 + 79)) for x in range(80, 100)]
    assert bottom.count(class_colour(1)) == 12 and GREY in bottom
    assert sheet.size == (max(2 * (128 + 8), 480), HEADER_H + 128 + 30 + 8)  # one row; at least 480 wide for the title


def test_html_report_is_self_contained_and_ordered(labels, tmp_path):
    result = show(ShowConfig(labels, tmp_path / "report.html", thumb_size=64))
    page = (tmp_path / "report.html").read_text()
    thumbnails = re.findall(r'src="data:image/jpeg;base64,([^"]+)"', page)
    assert len(thumbnails) == 3 and "src=\"http" not in page and "<script>" in page
    assert Image.open(io.BytesIO(base64.b64decode(thumbnails[0]))).size == (64, 48)
    assert [page.index(f"{n}.png</td>") for n in "bca"] == sorted(page.index(f"{n}.png</td>") for n in "bca")
    assert result.sort == "score"


def test_missing_images_are_skipped_and_bad_requests_refused(labels, tmp_path):
    (tmp_path / "c.png").unlink()
    result = show(ShowConfig(labels, tmp_path / "s.png"))
    assert [r.file_name for r in result.rows] == ["b.png", "a.png"] and result.skipped[0]["file"].endswith("c.png")
    with pytest.raises(UserError, match="none of its images could be read"):
        show(ShowConfig(labels, tmp_path / "s.png", images=tmp_path / "elsewhere"))
    human = json.loads(labels.read_text())
    human["annotations"] = [human["annotations"][1]]
    (tmp_path / "human.json").write_text(json.dumps(human))
    assert show(ShowConfig(tmp_path / "human.json", tmp_path / "s.png")).sort == "file"
    with pytest.raises(UserError, match="`sort` disagreement needs each box's 'agreement'"):
        show(ShowConfig(tmp_path / "human.json", tmp_path / "s.png", sort="disagreement"))
    assert_user_error(run_cli("show", labels, "--out", tmp_path / "s.gif"), "expected a .png or .jpg contact sheet")
    result = run_cli("show", labels, "--out", tmp_path / "r.html", "--sort", "disagreement")
    assert result.exit_code == 0, result.stderr
    assert "sorted by disagreement" in result.stdout and "skipped" in result.stdout and "saved to" in result.stdout


def test_without_info_transforms_the_most_agreeing_box_counts_them(labels, tmp_path):
    """No info.transforms: the number of transforms is the highest agreement of any box (here a's 6, while
    every image's lowest is at most 6 and c's is 2)."""
    data = json.loads(labels.read_text())
    del data["info"]["transforms"]
    data["annotations"].append(ann(5, 3, 1, [40, 5, 10, 10], 0.7, 5))  # c: agreements 2 and 5
    labels.write_text(json.dumps(data))
    result = show(ShowConfig(labels, tmp_path / "sheet.png", sort="disagreement"))
    assert [r.file_name[0] for r in result.rows] == ["c", "b", "a"]
    assert result.rows[0].disagreement == pytest.approx(1 - 2 / 6)


def test_an_agreement_above_the_recorded_passes_is_counted_and_bad_outputs_refused(labels, tmp_path):
    """filter writes its first file's info: a class taken from the fused file (two models) agrees up to 12 of
    the 6 recorded passes; disagreement stays in [0, 1]. An empty file, or an `out` that is an input, is refused."""
    data = json.loads(labels.read_text())
    data["annotations"][0]["agreement"] = 12
    labels.write_text(json.dumps(data))
    result = show(ShowConfig(labels, tmp_path / "sheet.png", sort="disagreement"))
    assert all(0 <= r.disagreement <= 1 for r in result.rows) and result.rows[0].disagreement == pytest.approx(1 - 2 / 12)
    with pytest.raises(UserError, match="the output would overwrite one of its images"):
        show(ShowConfig(labels, tmp_path / "sub" / ".." / "a.png"))
    assert Image.open(tmp_path / "a.png").size == (64, 48)
    (tmp_path / "empty.json").write_text(json.dumps({**data, "images": [], "annotations": []}))
    with pytest.raises(UserError, match="empty.json: holds no images to show"):
        show(ShowConfig(tmp_path / "empty.json", tmp_path / "s.png"))
