"""The bad-input battery: every bad image, COCO file and option, through each command that reads it.

Expected: a one-line error naming the file (or option) and what is wrong, non-zero exit, no traceback;
or, where skipping is right (one bad image among good ones), the image is skipped, counted and reported.
Never wrong output in silence, and no run destroys what an earlier one produced.
"""

import json
import os
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.ops import box_iou

from tests.conftest import assert_user_error, run_cli

FAST_TRAIN = ["--image-size", 32, "--batch-size", 2, "--epochs", 1, "--workers", 0, "--arch", "slim-s", "--augment", "none"]
FAST_PSEUDO = ["--scales", "1", "--no-hflip", "--workers", 0, "--score-floor", 0.0]
FAST_EVAL = ["--latency-runs", 1, "--workers", 0]
CATEGORIES = [{"id": 1, "name": "id_card"}, {"id": 2, "name": "bank_card"}, {"id": 3, "name": "passport"}]


@pytest.fixture(scope="module")
def card(one_card_set):
    """One synthetic card photograph (128 x 128 JPEG bytes) and its COCO annotation."""
    data = json.loads(one_card_set.files["labeled"].read_text())
    image, ann = data["images"][0], data["annotations"][0]
    return (one_card_set.out / image["file_name"]).read_bytes(), ann


def xyxy(bbox):
    x, y, w, h = bbox
    return np.array([x, y, x + w, y + h])


def coco_file(path, images, annotations):
    """A COCO file whose annotations also carry score and agreement: a valid labelled file and a valid pseudo.json."""
    anns = [{"id": i + 1, "area": a["bbox"][2] * a["bbox"][3], "iscrowd": 0, "score": 0.9, "agreement": 1, **a}
            for i, a in enumerate(annotations)]
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": CATEGORIES}))
    return path


# ---------------------------------------------------------------------------------------------- images

def png_declaring(width, height):
    """A 60-byte PNG whose header declares width x height RGB pixels: a decompression bomb's shape."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def save(image, **options):
    return lambda path: image.save(path, **options)


def exif_rotated(path):
    """Stored 60 wide x 30 high, EXIF orientation 6 ("rotate 90 clockwise to display"): displayed 30 x 60."""
    image = Image.new("RGB", (60, 30), (200, 30, 30))
    exif = image.getexif()
    exif[0x0112] = 6
    image.save(path, exif=exif)


def self_loop(path):
    os.symlink(path.name, path)  # a.jpg -> a.jpg: opening it fails with "too many levels of symbolic links"


# (case, file name, how to make it, displayed (height, width) or "skip")
IMAGE_CASES = [
    ("zero_byte", "zero.jpg", lambda p: p.write_bytes(b""), "skip"),
    ("truncated_jpeg", "cut.jpg", "truncated", "skip"),
    ("random_bytes", "noise.jpg", lambda p: p.write_bytes(np.random.default_rng(0).bytes(5000)), "skip"),
    ("text_named_png", "notes.png", lambda p: p.write_text("meeting notes, not an image"), "skip"),
    ("decompression_bomb", "bomb.png", lambda p: p.write_bytes(png_declaring(100_000, 100_000)), "skip"),
    ("one_pixel", "dot.png", save(Image.new("RGB", (1, 1), (9, 9, 9))), (1, 1)),
    ("strip_20000x200", "strip.png", save(Image.new("RGB", (20000, 200), (90, 90, 90))), (200, 20000)),
    ("grayscale", "gray.png", save(Image.new("L", (40, 30), 128)), (30, 40)),
    ("rgba", "rgba.png", save(Image.new("RGBA", (40, 30), (10, 200, 10, 128))), (30, 40)),
    ("palette", "palette.png", save(Image.new("RGB", (40, 30), (10, 20, 200)).convert("P")), (30, 40)),
    ("png_16_bit", "deep.png", save(Image.fromarray(np.full((30, 40), 40000, dtype=np.uint16))), (30, 40)),
    ("cmyk_jpeg", "cmyk.jpg", save(Image.new("CMYK", (40, 30), (0, 50, 90, 0))), (30, 40)),
    ("exif_rotated_jpeg", "rotated.jpg", exif_rotated, (60, 30)),
    ("non_ascii_name", "карта ü 名片.jpg", save(Image.new("RGB", (40, 30), (5, 5, 5))), (30, 40)),
    ("symlink_loop", "loop.jpg", self_loop, "skip"),
]


def make_image(folder, card, maker, name):
    path = folder / name
    if maker == "truncated":
        path.write_bytes(card[0][:300])
    else:
        maker(path)
    return path


@pytest.fixture
def image_folder(tmp_path, card):
    """A folder holding one good card photograph, a symlink to the folder itself (a loop) and the case's file."""
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "good.jpg").write_bytes(card[0])
    os.symlink("..", folder / "again")  # folder/again/images/again/...: os.walk must not follow it
    return folder


def image_coco(folder, name, expected, card):
    """The good image (with its card) and the case's image (no boxes), declared at its displayed size."""
    height, width = expected if expected != "skip" else (50, 50)
    images = [{"id": 1, "file_name": "good.jpg", "width": 128, "height": 128},
              {"id": 2, "file_name": name, "width": width, "height": height}]
    return coco_file(folder / "labels.json", images, [{"image_id": 1, "category_id": card[1]["category_id"],
                                                        "bbox": card[1]["bbox"]}])


@pytest.mark.parametrize("case, name, maker, expected", IMAGE_CASES, ids=[c[0] for c in IMAGE_CASES])
def test_image_through_pseudo_label(case, name, maker, expected, image_folder, card, labeller, tmp_path):
    make_image(image_folder, card, maker, name)
    out = tmp_path / "pseudo.json"
    result = run_cli("pseudo-label", image_folder, "--teacher", labeller, "--out", out, *FAST_PSEUDO)
    assert result.exit_code == 0, result.stdout + result.stderr
    data = json.loads(out.read_text())
    sizes = {os.path.basename(im["file_name"]): (im["height"], im["width"]) for im in data["images"]}
    if expected == "skip":
        assert sizes == {"good.jpg": (128, 128)}  # listed once: the folder loop was not followed
        assert [os.path.basename(s["file"]) for s in data["skipped"]] == [name]
        assert f"skipped {image_folder / name}" in result.stdout
    else:
        assert sizes == {"good.jpg": (128, 128), name: expected} and data["skipped"] == []
        image_id = next(im["id"] for im in data["images"] if im["file_name"].endswith(name))
        boxes = [xyxy(a["bbox"]) for a in data["annotations"] if a["image_id"] == image_id]
        height, width = expected  # every box lies inside the displayed image and is at least a pixel wide and high
        assert all(0 <= b[0] < b[0] + 1 <= b[2] <= width and 0 <= b[1] < b[1] + 1 <= b[3] <= height for b in boxes)


@pytest.mark.parametrize("case, name, maker, expected", IMAGE_CASES, ids=[c[0] for c in IMAGE_CASES])
def test_image_through_train(case, name, maker, expected, image_folder, card, tmp_path):
    make_image(image_folder, card, maker, name)
    labels = image_coco(image_folder, name, expected, card)
    result = run_cli("train-student", "--labeled", labels, "--val", labels, "--out", tmp_path / "run", *FAST_TRAIN)
    if case == "symlink_loop":  # named by the COCO file but not a readable file: refused before training
        assert_user_error(result, str(labels), str(image_folder / name), "not found")
        return
    assert result.exit_code == 0, result.stdout + result.stderr
    skipped = "skipped 1 undecodable image(s) during training" in result.stdout
    assert skipped == (expected == "skip")
    assert ("validation: 1 image(s) could not be decoded" in result.stdout) == (expected == "skip")


@pytest.mark.parametrize("case, name, maker, expected", IMAGE_CASES, ids=[c[0] for c in IMAGE_CASES])
def test_image_through_eval(case, name, maker, expected, image_folder, card, labeller, tmp_path):
    make_image(image_folder, card, maker, name)
    labels = image_coco(image_folder, name, expected, card)
    result = run_cli("eval", "--weights", labeller, "--data", labels, "--json", tmp_path / "m.json", *FAST_EVAL)
    if case == "symlink_loop":
        assert_user_error(result, str(labels), str(image_folder / name), "not found")
        return
    assert result.exit_code == 0, result.stdout + result.stderr
    report = json.loads((tmp_path / "m.json").read_text())[0]
    assert report["num_skipped_images"] == (1 if expected == "skip" else 0)
    assert ("1 image(s) could not be decoded" in result.stdout) == (expected == "skip")
    assert report["ap50"] > 0.5  # the good card is still found


@pytest.mark.parametrize("case, name, maker, expected", IMAGE_CASES, ids=[c[0] for c in IMAGE_CASES])
def test_image_through_predict(case, name, maker, expected, image_folder, card, labeller, tmp_path):
    make_image(image_folder, card, maker, name)
    out = tmp_path / "preds.json"
    result = run_cli("predict", image_folder, "--weights", labeller, "--out", out, "--draw", tmp_path / "drawn",
                     "--score-thresh", 0.0, "--workers", 0)
    assert result.exit_code == 0, result.stdout + result.stderr
    data = json.loads(out.read_text())
    sizes = {os.path.basename(im["file_name"]): (im["height"], im["width"]) for im in data["images"]}
    drawn = sorted(p.name for p in (tmp_path / "drawn").iterdir())
    if expected == "skip":
        assert sizes == {"good.jpg": (128, 128)} and drawn == ["good.jpg"]
        assert [os.path.basename(s["file"]) for s in data["skipped"]] == [name]
        assert f"skipped {image_folder / name}" in result.stdout
    else:
        assert sizes == {"good.jpg": (128, 128), name: expected} and data["skipped"] == [] and len(drawn) == 2
        image_id = next(im["id"] for im in data["images"] if im["file_name"].endswith(name))
        height, width = expected
        boxes = [xyxy(a["bbox"]) for a in data["annotations"] if a["image_id"] == image_id]
        assert all(0 <= b[0] <= b[2] <= width and 0 <= b[1] <= b[3] <= height for b in boxes)


@pytest.mark.parametrize("case, name, maker, expected", IMAGE_CASES, ids=[c[0] for c in IMAGE_CASES])
def test_image_through_show(case, name, maker, expected, image_folder, card, tmp_path):
    make_image(image_folder, card, maker, name)
    labels = image_coco(image_folder, name, expected, card)
    result = run_cli("show", labels, "--out", tmp_path / "sheet.png")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert Image.open(tmp_path / "sheet.png").size[0] > 0
    assert (f"skipped {image_folder / name}" in result.stdout) == (expected == "skip")


def test_decompression_bomb_limit_is_configurable(image_folder, card, labeller, tmp_path, monkeypatch):
    Image.new("RGB", (300, 200)).save(image_folder / "big.png")
    monkeypatch.setenv("RETINASLIM_MAX_IMAGE_PIXELS", "50000")
    result = run_cli("pseudo-label", image_folder, "--teacher", labeller, "--out", tmp_path / "p.json", *FAST_PSEUDO)
    assert result.exit_code == 0, result.stderr
    skipped = json.loads((tmp_path / "p.json").read_text())["skipped"]
    assert len(skipped) == 1 and "300 x 200 = 60,000 pixels" in skipped[0]["reason"]
    assert "RETINASLIM_MAX_IMAGE_PIXELS" in skipped[0]["reason"]
    monkeypatch.setenv("RETINASLIM_MAX_IMAGE_PIXELS", "lots")
    assert_user_error(run_cli("pseudo-label", image_folder, "--teacher", labeller, "--out", tmp_path / "q.json",
                              *FAST_PSEUDO), "RETINASLIM_MAX_IMAGE_PIXELS", "'lots'")


def test_pseudo_label_fails_when_no_image_could_be_read(card, labeller, tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    for name in ("a.jpg", "b.jpg"):
        (folder / name).write_bytes(card[0][:200])  # truncated: the header reads, the pixels do not
    out = tmp_path / "p.json"
    result = run_cli("pseudo-label", folder, "--teacher", labeller, "--out", out, *FAST_PSEUDO)
    assert_user_error(result, f"{folder}: none of its 2 images could be read", "a.jpg", f"{out} lists each with its reason")
    assert "saved to" not in result.stdout
    assert json.loads(out.read_text())["images"] == []  # the output says which images failed and why
    assert len(json.loads(out.read_text())["skipped"]) == 2


def test_exif_rotated_photo_gets_boxes_in_its_displayed_orientation(card, labeller, tmp_path):
    """The same card photograph stored upright, and stored sideways with an EXIF rotation: the same boxes."""
    upright, sideways = tmp_path / "upright", tmp_path / "sideways"
    upright.mkdir()
    sideways.mkdir()
    (upright / "card.jpg").write_bytes(card[0])
    photo = Image.open(upright / "card.jpg")
    stored = photo.transpose(Image.Transpose.ROTATE_90)  # what a phone held sideways stores
    exif = stored.getexif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display": undoes ROTATE_90 (counter-clockwise)
    stored.save(sideways / "card.jpg", quality=95, exif=exif)
    boxes = {}
    for folder in (upright, sideways):
        out = tmp_path / f"{folder.name}.json"
        assert run_cli("pseudo-label", folder, "--teacher", labeller, "--out", out, *FAST_PSEUDO).exit_code == 0
        data = json.loads(out.read_text())
        best = max(data["annotations"], key=lambda a: a["score"])
        boxes[folder.name] = xyxy(best["bbox"])
        assert best["score"] > 0.5
    truth = torch.tensor(xyxy(card[1]["bbox"]))[None]
    for box in boxes.values():  # each found where the card is displayed, not where it is stored
        assert box_iou(torch.tensor(box)[None], truth).item() > 0.7, (box, truth)
    assert np.abs(boxes["upright"] - boxes["sideways"]).max() < 3


def test_symlinked_folder_loop_lists_each_image_once(image_folder):
    from retinaslim.data.images import list_images

    os.symlink(".", image_folder / "self")
    assert [p.name for p in list_images(image_folder)] == ["good.jpg"]


# ------------------------------------------------------------------------------------------ COCO files

def good_coco_dict():
    images = [{"id": 1, "file_name": "good.jpg", "width": 128, "height": 128},
              {"id": 2, "file_name": "second.jpg", "width": 128, "height": 128}]
    anns = [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [24.0, 44.0, 84.0, 65.0], "area": 5460.0,
             "iscrowd": 0, "score": 0.9, "agreement": 2},
            {"id": 2, "image_id": 2, "category_id": 1, "bbox": [10.0, 10.0, 50.0, 30.0], "area": 1500.0,
             "iscrowd": 0, "score": 0.8, "agreement": 2}]
    return {"images": images, "annotations": anns, "categories": [dict(c) for c in CATEGORIES]}


def changed(change):
    def make():
        data = good_coco_dict()
        change(data)
        return json.dumps(data)
    return make


def text(content):
    return lambda: content


# (case, file content, fragments of the one-line error; None: the command reads the file without error)
COCO_CASES = [
    ("not_json", text("images: [good.jpg]"), ["not valid JSON"]),
    ("binary", text(None), ["not a text file"]),
    ("json_not_coco", text('{"name": "my dataset", "version": 2}'), ["not a COCO file", "'images'"]),
    ("json_list", text("[1, 2, 3]"), ["not a COCO file"]),
    ("missing_images", changed(lambda d: d.pop("images")), ["missing list 'images'"]),
    ("missing_annotations", changed(lambda d: d.pop("annotations")), ["missing list 'annotations'"]),
    ("missing_categories", changed(lambda d: d.pop("categories")), ["missing list 'categories'"]),
    ("duplicate_image_ids", changed(lambda d: d["images"][1].update(id=1)), ["duplicate image id 1"]),
    ("duplicate_annotation_ids", changed(lambda d: d["annotations"][1].update(id=1)), ["duplicate annotation id 1"]),
    ("duplicate_category_ids", changed(lambda d: d["categories"][1].update(id=1)), ["duplicate category id 1"]),
    ("annotation_of_missing_image", changed(lambda d: d["annotations"][1].update(image_id=7)), ["image id 7", "not in 'images'"]),
    ("unknown_category", changed(lambda d: d["annotations"][1].update(category_id=42)), ["category id 42", "not in 'categories'"]),
    ("negative_box", changed(lambda d: d["annotations"][1].update(bbox=[10, 10, -5, 30])), ["annotation 2", "width or height <= 0"]),
    ("zero_box", changed(lambda d: d["annotations"][1].update(bbox=[10, 10, 50, 0])), ["annotation 2", "width or height <= 0"]),
    ("box_outside_image", changed(lambda d: d["annotations"][1].update(bbox=[300, 10, 50, 30])), ["annotation 2", "wholly outside", "second.jpg (128 x 128)"]),
    ("box_far_past_image", changed(lambda d: d["annotations"][1].update(bbox=[10, 10, 1e6, 30])), ["annotation 2", "by more than the image's size", "second.jpg (128 x 128)"]),
    ("nan_box", text(json.dumps(good_coco_dict()).replace("50.0, 30.0", "NaN, 30.0")), ["annotation 2", "four finite numbers"]),
    ("inf_score", text(json.dumps(good_coco_dict()).replace('"score": 0.8', '"score": Infinity')), ["annotation 2", "score"]),
    ("nan_image_width", text(json.dumps(good_coco_dict()).replace('"width": 128, "height": 128}]', '"width": NaN, "height": 128}]')), ["image 2", "positive integer 'width'"]),
    ("zero_image_size", changed(lambda d: d["images"][0].update(width=0)), ["image 1", "positive integer 'width'"]),
    ("string_ids", changed(lambda d: d["images"][0].update(id="1")), ["needs an integer 'id'"]),
    ("id_beyond_64_bits", changed(lambda d: d["categories"][0].update(id=2**63)), ["needs an integer 'id' (64-bit)"]),
    ("iscrowd_not_0_or_1", changed(lambda d: d["annotations"][1].update(iscrowd="0")), ["annotation 2", "iscrowd '0'", "0 or 1"]),
    ("null_area", changed(lambda d: d["annotations"][1].update(area=None)), ["annotation 2", "area None", ">= 0"]),
    ("image_missing_on_disk", changed(lambda d: d["images"][1].update(file_name="gone.jpg")), ["gone.jpg", "not found"]),
]
COCO_COMMANDS = ["train-student", "eval", "filter"]


def run_reading(command, path, labeller, tmp_path):
    """Run ``command`` with ``path`` as the COCO file it reads (train: --labeled, eval: --data, filter: PSEUDO)."""
    if command == "train-student":
        return run_cli("train-student", "--labeled", path, "--val", path, "--out", tmp_path / "run", *FAST_TRAIN)
    if command == "eval":
        return run_cli("eval", "--weights", labeller, "--data", path, *FAST_EVAL)
    return run_cli("filter", path, "--out", tmp_path / "filtered.json")


@pytest.mark.parametrize("command", COCO_COMMANDS)
@pytest.mark.parametrize("case, content, fragments", COCO_CASES, ids=[c[0] for c in COCO_CASES])
def test_coco_file(case, content, fragments, command, card, labeller, tmp_path):
    (tmp_path / "good.jpg").write_bytes(card[0])
    (tmp_path / "second.jpg").write_bytes(card[0])
    path = tmp_path / "labels.json"
    body = content()
    if body is None:
        path.write_bytes(bytes(range(256)) * 4)
    else:
        path.write_text(body)
    before = path.read_bytes()
    result = run_reading(command, path, labeller, tmp_path)
    if case == "image_missing_on_disk" and command == "filter":  # filter reads labels only, never the images
        assert result.exit_code == 0, result.stderr
        assert json.loads((tmp_path / "filtered.json").read_text())["images"][1]["file_name"] == "gone.jpg"
    else:
        assert_user_error(result, str(path), *fragments)
        assert not (tmp_path / "run").exists() and not (tmp_path / "filtered.json").exists()
    assert path.read_bytes() == before


def test_a_labelled_set_without_boxes_is_refused_before_training_or_scoring(card, labeller, tmp_path):
    (tmp_path / "good.jpg").write_bytes(card[0])
    (tmp_path / "second.jpg").write_bytes(card[0])
    data = good_coco_dict()
    data["annotations"] = [{**data["annotations"][0], "iscrowd": 1}]  # a crowd region teaches no box
    path = tmp_path / "labels.json"
    path.write_text(json.dumps(data))
    result = run_cli("train-student", "--labeled", path, "--val", path, "--out", tmp_path / "run", *FAST_TRAIN)
    assert_user_error(result, str(path), "no boxes (crowd regions aside) in its 2 images", "label some objects first")
    assert not (tmp_path / "run").exists()
    # nor can it validate: every epoch would score AP 0.000 and the first be kept as the best
    good = tmp_path / "good.json"
    good.write_text(json.dumps(good_coco_dict()))
    result = run_cli("train-student", "--labeled", good, "--val", path, "--out", tmp_path / "run", *FAST_TRAIN)
    assert_user_error(result, str(path), "no boxes (crowd regions aside) to validate on")
    assert not (tmp_path / "run").exists()
    # eval would print AP 0.000 for data that cannot score anything
    result = run_cli("eval", "--weights", labeller, "--data", path, "--json", tmp_path / "m.json", *FAST_EVAL)
    assert_user_error(result, str(path), "no boxes (crowd regions aside) to score detections against", "retinaslim predict")
    assert not (tmp_path / "m.json").exists()


def test_file_names_from_data_never_make_a_command_write_outside_its_outputs(card, labeller, tmp_path):
    """'../../x.jpg' and absolute file names are read (or refused as missing), never written to."""
    root = tmp_path / "a" / "b"
    root.mkdir(parents=True)
    (root / "good.jpg").write_bytes(card[0])
    data = good_coco_dict()
    data["images"][1]["file_name"] = "../../escaped.jpg"
    data["images"].append({"id": 3, "file_name": "/etc/passwd", "width": 128, "height": 128})
    path = root / "labels.json"
    path.write_text(json.dumps(data))
    before = {p for p in tmp_path.rglob("*")}

    result = run_cli("filter", path, "--out", root / "out" / "f.json", "--review-out", root / "out" / "review.json",
                     "--score-thresh", 0.85, "--ambiguous-low", 0.1, "--report", root / "out" / "report.json")
    assert result.exit_code == 0, result.stderr
    written = {p for p in tmp_path.rglob("*")} - before
    assert written == {root / "out", *(root / "out" / n for n in ("f.json", "review.json", "review.coco.json", "report.json"))}
    names = [im["file_name"] for im in json.loads((root / "out" / "f.json").read_text())["images"]]
    assert names == ["../good.jpg", "../../../escaped.jpg", "/etc/passwd"]  # rebased, still pointing at the same files

    assert_user_error(run_cli("train-student", "--labeled", path, "--val", path, "--out", root / "run", *FAST_TRAIN),
                      "escaped.jpg", "not found")
    assert not (tmp_path / "escaped.jpg").exists() and not (root / "run").exists()


# --------------------------------------------------------------------------------------------- options

@pytest.fixture
def inputs(card, tmp_path):
    """A good labelled/pseudo COCO file with its images, and a file standing where a folder is expected."""
    (tmp_path / "good.jpg").write_bytes(card[0])
    (tmp_path / "second.jpg").write_bytes(card[0])
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps(good_coco_dict()))
    (tmp_path / "blocker").write_text("a file, not a folder")
    return {"labels": labels, "folder": tmp_path, "unwritable": tmp_path / "blocker" / "sub"}


# (case, arguments (callables of the inputs dict and the labeller), fragments of the error)
OPTION_CASES = [
    ("score_thresh_above_1", lambda i, t: ["filter", i["labels"], "--out", "f.json", "--score-thresh", 1.5], ["--score-thresh", "[0, 1]"]),
    ("class_thresh_below_0", lambda i, t: ["filter", i["labels"], "--out", "f.json", "--score-thresh", "id_card=-0.2"], ["--score-thresh", "[0, 1]"]),
    ("score_thresh_nan", lambda i, t: ["filter", i["labels"], "--out", "f.json", "--score-thresh", "nan"], ["--score-thresh", "[0, 1]"]),
    ("ambiguous_low_above_1", lambda i, t: ["filter", i["labels"], "--out", "f.json", "--ambiguous-low", 2], ["--ambiguous-low 2.0", "[0, 1]"]),
    ("target_precision_above_1", lambda i, t: ["filter", i["labels"], "--out", "f.json", "--auto-thresh", "precision", "--calib", i["labels"], "--target-precision", 1.2], ["--target-precision 1.2", "[0, 1]"]),
    ("target_precision_without_its_rule", lambda i, t: ["filter", i["labels"], "--out", "f.json", "--score-thresh", 0.2, "--target-precision", 0.5], ["--target-precision 0.5", "no effect with --score-thresh"]),
    ("target_precision_default_value_given", lambda i, t: ["filter", i["labels"], "--out", "f.json", "--score-thresh", 0.2, "--target-precision", 0.95], ["--target-precision 0.95", "no effect with --score-thresh"]),
    ("target_precision_without_validation_set", lambda i, t: ["filter", i["labels"], "--out", "f.json", "--target-precision", 0.9], ["--target-precision 0.9", "give one with --calib"]),
    ("target_precision_under_f1", lambda i, t: ["filter", i["labels"], "--out", "f.json", "--auto-thresh", "f1", "--calib", i["labels"], "--target-precision", 0.5], ["no effect with --auto-thresh f1"]),
    ("max_size_frac_negative", lambda i, t: ["filter", i["labels"], "--out", "f.json", "--max-size-frac", -1], ["--max-size-frac", "[0, 1]"]),
    ("score_floor_above_1", lambda i, t: ["pseudo-label", i["folder"], "--teacher", t, "--out", "p.json", "--score-floor", 1.5], ["--score-floor 1.5", "[0, 1]"]),
    ("unknown_class_name", lambda i, t: ["filter", i["labels"], "--out", "f.json", "--score-thresh", "id_crad=0.6"], ["unknown class 'id_crad'", "id_card, bank_card, passport"]),
    ("bad_max_pixels_env", lambda i, t: ["eval", "--weights", t, "--data", i["labels"]], ["RETINASLIM_MAX_IMAGE_PIXELS", "'-5'"]),
    ("pseudo_out_not_json", lambda i, t: ["pseudo-label", i["folder"], "--teacher", t, "--out", "p.txt"], ["--out p.txt", ".json"]),
    ("shard_out_of_range", lambda i, t: ["pseudo-label", i["folder"], "--teacher", t, "--out", "p.json", "--shard", "4/4"], ["--shard 4/4"]),
    # unwritable output folders
    ("unwritable_pseudo_out", lambda i, t: ["pseudo-label", i["folder"], "--teacher", t, "--out", i["unwritable"] / "p.json", *FAST_PSEUDO], ["--out", "blocker/sub"]),
    ("unwritable_filter_out", lambda i, t: ["filter", i["labels"], "--out", i["unwritable"] / "f.json"], ["blocker/sub/f.json", "cannot write"]),
    ("unwritable_filter_report", lambda i, t: ["filter", i["labels"], "--out", "f.json", "--report", i["unwritable"] / "r.json"], ["blocker/sub/r.json", "cannot write"]),
    ("unwritable_train_out", lambda i, t: ["train-student", "--labeled", i["labels"], "--val", i["labels"], "--out", i["unwritable"], *FAST_TRAIN], ["--out", "blocker/sub", "cannot create"]),
    ("unwritable_eval_json", lambda i, t: ["eval", "--weights", t, "--data", i["labels"], "--json", i["unwritable"] / "m.json", *FAST_EVAL], ["blocker/sub/m.json", "cannot write"]),
    ("unwritable_profile_json", lambda i, t: ["profile", "--weights", t, "--runs", 1, "--json", i["unwritable"] / "p.json"], ["blocker/sub/p.json", "cannot write"]),
    # an output that is an input
    ("filter_out_is_input", lambda i, t: ["filter", i["labels"], "--out", i["labels"]], ["--out", "overwrite the input PSEUDO"]),
    ("filter_review_is_input", lambda i, t: ["filter", i["labels"], "--out", "f.json", "--review-out", i["labels"]], ["--review-out", "overwrite the input PSEUDO"]),
    ("filter_report_is_out", lambda i, t: ["filter", i["labels"], "--out", "f.json", "--report", "f.json"], ["--report f.json", "overwrite the input --out"]),
    ("eval_predictions_is_data", lambda i, t: ["eval", "--weights", t, "--data", i["labels"], "--predictions-out", i["labels"]], ["--predictions-out", "overwrite the input --data"]),
    ("eval_json_is_weights", lambda i, t: ["eval", "--weights", t, "--data", i["labels"], "--json", t], ["--json", "overwrite the input --weights"]),
    ("profile_json_is_weights", lambda i, t: ["profile", "--weights", t, "--json", t], ["--json", "overwrite the input --weights"]),
    ("train_out_is_a_file", lambda i, t: ["train-student", "--labeled", i["labels"], "--val", i["labels"], "--out", i["labels"], *FAST_TRAIN], ["--out", "is a file"]),
    # a folder where an output file belongs: refused before the work, not after it
    ("eval_json_is_a_folder", lambda i, t: ["eval", "--weights", t, "--data", i["labels"], "--json", i["folder"]], ["--json", "a folder, expected a file name"]),
    ("filter_report_is_a_folder", lambda i, t: ["filter", i["labels"], "--out", "f.json", "--report", i["folder"]], ["--report", "a folder, expected a file name"]),
    ("filter_out_is_a_folder", lambda i, t: ["filter", i["labels"], "--out", i["folder"]], ["--out", "a folder, expected a file name"]),
    ("import_teacher_out_is_a_folder", lambda i, t: ["import-teacher", t, "--arch", "retinanet_resnet50_fpn", "--classes", "id_card", "--out", i["folder"]], ["--out", "a folder, expected a file name"]),
    ("predict_draw_is_a_file", lambda i, t: ["predict", i["folder"], "--weights", t, "--out", "p.json", "--draw", i["labels"]], ["--draw", "a file, expected a folder"]),
    ("predict_weights_is_a_folder", lambda i, t: ["predict", i["folder"], "--weights", i["folder"], "--out", "p.json"], ["a folder, expected a checkpoint"]),
    ("predict_weights_not_found", lambda i, t: ["predict", i["folder"], "--weights", "nope", "--out", "p.json"], ["nope: not found"]),
]


@pytest.mark.parametrize("case, args, fragments", OPTION_CASES, ids=[c[0] for c in OPTION_CASES])
def test_option(case, args, fragments, inputs, labeller, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if case == "bad_max_pixels_env":
        monkeypatch.setenv("RETINASLIM_MAX_IMAGE_PIXELS", "-5")
    before = {p: p.read_bytes() for p in [inputs["labels"], labeller]}
    assert_user_error(run_cli(*args(inputs, labeller)), *fragments)
    assert all(p.read_bytes() == content for p, content in before.items())
    if case == "unwritable_filter_report":  # the report is written last: the labels before it are complete
        assert len(json.loads((tmp_path / "f.json").read_text())["images"]) == 2
        return
    assert not {"f.json", "p.json", "p.txt", "r.json"} & set(os.listdir(tmp_path))


SIZE_ZERO = [
    ["train-student", "--image-size", 0],
    ["train-teacher", "--image-size", 0],
    ["pseudo-label", ".", "--image-size", 0],
    ["eval", "--weights", "w.pt", "--image-size", 0],
    ["profile", "--arch", "slim-s", "--image-size", 0],
]


@pytest.mark.parametrize("args", SIZE_ZERO, ids=[a[0] for a in SIZE_ZERO])
def test_image_size_zero_is_a_usage_error(args, tmp_path, monkeypatch):
    """Ranges the option parser knows are click's usage errors: exit 2, the option and its bound, no traceback."""
    monkeypatch.chdir(tmp_path)
    result = run_cli(*args)
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.stderr and "Invalid value for" in result.stderr
    assert "'--image-size'" in result.stderr
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("size", [0, 16])
def test_synth_size_below_32_is_refused(size, tmp_path):
    assert_user_error(run_cli("synth", tmp_path / "s", "--size", size, "--labeled", 1, "--val", 1), f"--size {size}")
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("flag, value, fragment", [
    ("--device", "gpu", "--device 'gpu': choose auto, cpu, cuda or cuda:N"),
    ("--augment", "heavy", "--augment 'heavy': choose none, light, strong, mosaic"),
    ("--norm", "ln", "--norm 'ln': choose gn or bn"),
    ("--batch-size", "0", "Invalid value"),  # typer's range check, before the library's
])
def test_a_bad_training_option_value_is_one_line(tiny_cards, tmp_path, flag, value, fragment):
    data = tiny_cards.files
    args = ["train-student", "--labeled", data["labeled"], "--val", data["val"], "--out", tmp_path / "run", *FAST_TRAIN]
    result = run_cli(*args, flag, value)
    if fragment == "Invalid value":
        assert result.exit_code == 2 and "Traceback" not in result.stdout + result.stderr
    else:
        assert_user_error(result, fragment)


@pytest.mark.parametrize("init, fragment", [("", "a folder, expected a weights file"),
                                            ("missing.pt", "not found (expected a weights file)"),
                                            ("garbage.pt", "garbage.pt: not a PyTorch checkpoint")])
def test_train_teacher_init_that_is_no_weights_file_is_refused_first(tiny_cards, tmp_path, init, fragment):
    data = tiny_cards.files
    (tmp_path / "garbage.pt").write_bytes(b"not weights at all")
    result = run_cli("train-teacher", "--labeled", data["labeled"], "--val", data["val"], "--out", tmp_path / "run",
                     "--image-size", 32, "--epochs", 1, "--workers", 0, "--init", tmp_path / init)
    assert_user_error(result, fragment)
    assert "anchors" not in result.stdout  # refused before the data are read and the anchors fitted


def test_an_image_size_beyond_the_memory_is_one_line(tiny_cards, tmp_path):
    data = tiny_cards.files  # 300,000 px: one 3-channel image would need a terabyte
    result = run_cli("train-student", "--labeled", data["labeled"], "--val", data["val"], "--out", tmp_path / "run",
                     "--image-size", 300_000, "--epochs", 1, "--workers", 0)
    assert_user_error(result, "out of memory (", "can't allocate memory", "--image-size")
    assert not (tmp_path / "run").exists()


def test_a_diverging_run_says_whether_a_checkpoint_was_kept(tiny_cards, tmp_path):
    data = tiny_cards.files
    result = run_cli("train-student", "--labeled", data["labeled"], "--val", data["val"], "--out", tmp_path / "run",
                     "--image-size", 64, "--batch-size", 1, "--lr", 1e9, "--epochs", 3, "--workers", 0)
    assert_user_error(result, "training loss became non-finite in epoch 1", "lower --lr",
                      "no checkpoint was saved yet")
    assert "Warning" not in result.stdout + result.stderr and not (tmp_path / "run" / "last.pt").exists()


def test_a_library_config_out_of_range_is_a_user_error_naming_the_field(tiny_cards, tmp_path):
    from retinaslim.errors import UserError
    from retinaslim.stages.train import TrainConfig

    data = tiny_cards.files
    for field, value in [("batch_size", 0), ("epochs", 0), ("image_size", 16), ("lr", -0.1)]:
        with pytest.raises(UserError, match=f"`{field}`"):
            TrainConfig(role="student", labeled=data["labeled"], val=data["val"], out=tmp_path, **{field: value})
    with pytest.raises(UserError, match="`norm` bn: retinanet_resnet18_fpn has no choice of normalisation layer"):
        TrainConfig(role="student", labeled=data["labeled"], val=data["val"], out=tmp_path, arch="retinanet_resnet18_fpn",
                    arch_options={"norm": "bn"})


@pytest.mark.parametrize("name, content", [("labels.json", b'{"images": []}'), ("photo.jpg.pt", b"\xff\xd8\xff\xe0 jpeg")])
def test_a_file_that_is_not_a_checkpoint_says_so(tiny_cards, tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    assert_user_error(run_cli("eval", "--weights", path, "--data", tiny_cards.files["val"]), str(path),
                      "not a PyTorch checkpoint")


def test_pseudo_label_refuses_a_coco_file_and_a_list_without_images(tiny_cards, labeller, tmp_path):
    coco = tiny_cards.files["labeled"]
    assert_user_error(run_cli("pseudo-label", coco, "--teacher", labeller, "--out", tmp_path / "p.json"),
                      str(coco), "a JSON file, not images")
    notes = tmp_path / "notes.txt"
    notes.write_text("first line\nsecond line\n")
    assert_user_error(run_cli("predict", notes, "--weights", labeller, "--out", tmp_path / "pred.json"),
                      str(notes), "none of its 2 lines names an image file")


def test_filter_warns_when_it_keeps_no_machine_box(tiny_cards, labeller, tmp_path):
    pseudo = tmp_path / "pseudo.json"
    assert run_cli("pseudo-label", tiny_cards.out / "unlabeled", "--teacher", labeller, "--out", pseudo,
                   *FAST_PSEUDO).exit_code == 0
    result = run_cli("filter", pseudo, "--score-thresh", "1.0", "--out", tmp_path / "f.json")
    assert result.exit_code == 0 and "warning: no machine box was kept" in result.stdout


def test_train_student_warns_when_the_machine_file_has_no_box(tiny_cards, tmp_path):
    truth = json.loads((tiny_cards.out / "unlabeled.truth.json").read_text())
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({**truth, "annotations": []}))
    (tmp_path / "unlabeled").symlink_to(tiny_cards.out / "unlabeled")  # its file names are relative to its folder
    data = tiny_cards.files
    result = run_cli("train-student", "--labeled", data["labeled"], "--val", data["val"], "--pseudo", empty,
                     "--out", tmp_path / "run", *FAST_TRAIN)
    assert result.exit_code == 0, result.stderr
    assert f"warning: {empty} has no machine boxes" in result.stdout
    assert "training on human labels" in result.stdout  # its images do train, toward background
    none = tmp_path / "none.json"  # what filter writes when it keeps no image: said once, not contradicted
    none.write_text(json.dumps({**truth, "images": [], "annotations": []}))
    result = run_cli("train-student", "--labeled", data["labeled"], "--val", data["val"], "--pseudo", none,
                     "--out", tmp_path / "run2", *FAST_TRAIN)
    assert result.exit_code == 0, result.stderr
    said = " ".join(result.stdout.split())
    assert f"{none} holds no images (the filter kept none): the student trains on the human labels only" in said
    assert "training on human labels" not in said
