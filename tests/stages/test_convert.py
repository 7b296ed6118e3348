"""convert: each format against hand-computed boxes, round trips, the real BCCD set, bad inputs skipped or refused."""

import json
from pathlib import Path

import pytest
from PIL import Image

from retinaslim.errors import UserError
from retinaslim.stages.convert import ConvertConfig, convert
from tests.conftest import assert_user_error, run_cli

BCCD = Path(__file__).parents[3] / "shared" / "data" / "bccd"


def image(path: Path, width: int, height: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), (90, 90, 90)).save(path)
    return path


def voc_object(name: str, xmin, ymin, xmax, ymax, difficult: int = 0) -> str:
    return (f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin>"
            f"<xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>")


def voc_file(path: Path, filename: str, objects: list[str], size=(20, 10)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<annotation><filename>{filename}</filename><size><width>{size[0]}</width>"
                    f"<height>{size[1]}</height></size>{''.join(objects)}</annotation>")


def boxes_by_file(coco_path: Path) -> dict[tuple[str, str], list[list[float]]]:
    """(image file name, class name) -> sorted xyxy boxes, with scores appended when present."""
    data = json.loads(coco_path.read_text())
    names = {c["id"]: c["name"] for c in data["categories"]}
    files = {i["id"]: Path(i["file_name"]).name for i in data["images"]}
    out: dict = {}
    for a in data["annotations"]:
        x, y, w, h = a["bbox"]
        out.setdefault((files[a["image_id"]], names[a["category_id"]]), []).append([x, y, x + w, y + h, a.get("score", -1)])
    return {k: sorted(v) for k, v in out.items()}


def test_voc_to_coco_boxes_skips_and_clipping(tmp_path):
    root = tmp_path / "voc"
    image(root / "JPEGImages" / "a.jpg", 20, 10)
    image(root / "JPEGImages" / "b.jpg", 20, 10)
    voc_file(root / "Annotations" / "a.xml", "a.jpg", [
        voc_object("cat", 1, 2, 10, 8),          # 1-based inclusive -> x1 0, y1 1, x2 10, y2 8
        voc_object("dog", 5, 5, 5, 5),           # a click, not a box
        voc_object("dog", 11, 1, 25, 10, 1),     # reaches past the right edge (width 20)
    ])
    voc_file(root / "Annotations" / "b.xml", "b", [voc_object("cat", "x", 1, 4, 4)])  # no extension; bad number
    voc_file(root / "Annotations" / "c.xml", "missing.jpg", [voc_object("cat", 1, 1, 4, 4)])
    (root / "Annotations" / "d.xml").write_text("<annotation><filename>")
    result = convert(ConvertConfig(root, "voc", "coco", tmp_path / "out" / "labels.json"))

    data = json.loads((tmp_path / "out" / "labels.json").read_text())
    assert [i["file_name"] for i in data["images"]] == ["../voc/JPEGImages/a.jpg", "../voc/JPEGImages/b.jpg"]
    assert data["categories"] == [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
    assert [(a["category_id"], a["bbox"]) for a in data["annotations"]] == [(1, [0.0, 1.0, 10.0, 7.0]), (2, [10.0, 0.0, 10.0, 10.0])]
    assert data["annotations"][1]["difficult"] == 1
    assert result.num_images == 2 and result.num_boxes == {"cat": 1, "dog": 1} and result.num_clipped == 1
    assert sorted((s.kind, Path(s.where.split(":")[0]).name, s.reason.split(" (")[0]) for s in result.skipped) == [
        ("box", "a.xml", "zero or negative width/height"), ("box", "b.xml", "<xmin> is 'x', not a number"),
        ("image", "c.xml", f"image missing.jpg not found in {root / 'JPEGImages'} or beside the XML"),
        ("image", "d.xml", "not valid XML"),
    ]


def test_bccd_real_set_converts_with_its_two_degenerate_boxes_reported(tmp_path):
    if not BCCD.is_dir():
        pytest.skip(f"{BCCD} not present")
    result = convert(ConvertConfig(BCCD, "voc", "coco", tmp_path / "bccd.json"))
    assert result.num_images == 364
    assert result.num_boxes == {"WBC": 372, "RBC": 4153, "Platelets": 361}  # README: 4,888 boxes, RBC 4,155
    assert [(Path(s.where).name, s.reason) for s in result.skipped] == [
        ("BloodImage_00338.xml: object 13", "zero or negative width/height"),
        ("BloodImage_00343.xml: object 4", "zero or negative width/height")]
    coco = json.loads((tmp_path / "bccd.json").read_text())
    assert all(0 <= a["bbox"][0] and a["bbox"][0] + a["bbox"][2] <= 640 for a in coco["annotations"])


def test_bccd_splits_follow_its_image_set_lists(tmp_path):
    if not BCCD.is_dir():
        pytest.skip(f"{BCCD} not present")
    names = {}
    for split in ("train", "val", "test"):
        result = convert(ConvertConfig(BCCD, "voc", "coco", tmp_path / f"{split}.json", split=split))
        listed = (BCCD / "ImageSets" / "Main" / f"{split}.txt").read_text().split()
        names[split] = {Path(i["file_name"]).stem for i in json.loads((tmp_path / f"{split}.json").read_text())["images"]}
        assert result.num_images == len(listed) and names[split] == set(listed)
    assert len(names["train"]) + len(names["val"]) + len(names["test"]) == 364
    assert not names["train"] & names["test"] and not names["val"] & names["test"]


def test_voc_split_list_missing_file_and_bad_use(tmp_path):
    voc_file(tmp_path / "voc" / "Annotations" / "a.xml", "a.png", [voc_object("card", 1, 1, 5, 5)])
    image(tmp_path / "voc" / "JPEGImages" / "a.png", 20, 10)
    (tmp_path / "voc" / "ImageSets" / "Main").mkdir(parents=True)
    (tmp_path / "voc" / "ImageSets" / "Main" / "train.txt").write_text("a\n\nghost 1\n")
    result = convert(ConvertConfig(tmp_path / "voc", "voc", "coco", tmp_path / "o.json", split="train"))
    assert result.num_images == 1
    assert [(s.where.split("/")[-1], s.reason.split("/")[-1]) for s in result.skipped] == [("train.txt: line 3", "ghost.xml not found")]
    with pytest.raises(UserError, match=r"test.txt: no such split list \(splits here: train\)"):
        convert(ConvertConfig(tmp_path / "voc", "voc", "coco", tmp_path / "o.json", split="test"))
    assert_user_error(run_cli("convert", tmp_path / "o.json", "--from", "coco", "--to", "yolo", "--out", tmp_path / "y",
                              "--split", "train"), "--split train: only Pascal VOC")


@pytest.fixture
def scored_coco(tmp_path):
    """Two images (ids 5 and 9, category ids 3 and 17), human and machine boxes, one ignore region."""
    image(tmp_path / "imgs" / "p.png", 100, 200)
    image(tmp_path / "imgs" / "sub" / "q.png", 64, 48)
    path = tmp_path / "labels.json"
    path.write_text(json.dumps({
        "images": [{"id": 5, "file_name": "imgs/p.png", "width": 100, "height": 200},
                   {"id": 9, "file_name": "imgs/sub/q.png", "width": 64, "height": 48}],
        "categories": [{"id": 17, "name": "passport"}, {"id": 3, "name": "card"}],
        "annotations": [
            {"id": 1, "image_id": 5, "category_id": 3, "bbox": [10, 20, 20, 20]},
            {"id": 2, "image_id": 5, "category_id": 17, "bbox": [0.3, 0.7, 99.7, 150.1], "score": 0.42, "agreement": 3},
            {"id": 3, "image_id": 9, "category_id": 17, "bbox": [33.3, 1.1, 12.34, 40.0], "score": 0.9},
            {"id": 4, "image_id": 9, "category_id": 3, "bbox": [0, 0, 5, 5], "iscrowd": 1},
        ]}))
    return path


def test_coco_to_yolo_lines_and_round_trip_within_half_a_pixel(scored_coco, tmp_path):
    out = tmp_path / "yolo"
    result = convert(ConvertConfig(scored_coco, "coco", "yolo", out))
    # classes numbered in category-id order: card (3) -> 0, passport (17) -> 1
    assert (out / "classes.txt").read_text() == "card\npassport\n"
    assert (out / "labels" / "p.txt").read_text().splitlines() == [
        "0 0.200000 0.150000 0.200000 0.100000",                  # (10 + 20 / 2) / 100, (20 + 20 / 2) / 200, ...
        "1 0.501500 0.378750 0.997000 0.750500 0.42000"]
    assert (out / "images" / "sub" / "q.png").resolve() == (tmp_path / "imgs" / "sub" / "q.png").resolve()
    assert [(s.kind, s.reason) for s in result.skipped] == [("box", "ignore region (iscrowd): YOLO has none")]
    assert result.num_boxes == {"card": 1, "passport": 2} and result.num_machine_boxes == 2

    back = convert(ConvertConfig(out / "data.yaml", "yolo", "coco", tmp_path / "back.json"))
    assert back.skipped == [] and back.num_clipped == 0
    before, after = boxes_by_file(scored_coco), boxes_by_file(tmp_path / "back.json")
    del before["q.png", "card"]  # the ignore region
    assert before.keys() == after.keys()
    for key in before:
        for b, a in zip(before[key], after[key]):
            assert a == pytest.approx(b, abs=0.5), key
            assert a == pytest.approx(b, abs=1e-3), key  # in fact far closer: 6 decimals of the image size


def test_yolo_output_refuses_another_datasets_files_and_keeps_images_in_place(scored_coco, tmp_path):
    out = tmp_path / "yolo"
    convert(ConvertConfig(scored_coco, "coco", "yolo", out))
    convert(ConvertConfig(scored_coco, "coco", "yolo", out))  # the same set again: its own files are rewritten
    one = json.loads(scored_coco.read_text())
    one["images"] = one["images"][:1]
    one["annotations"] = [a for a in one["annotations"] if a["image_id"] == 5]
    (tmp_path / "one.json").write_text(json.dumps(one))
    # q.png's label and link would stay behind and train with the new set
    with pytest.raises(UserError, match=r"`out` .*yolo: holds 2 file\(s\) from another dataset \(e.g. images/sub/q.png\)"):
        convert(ConvertConfig(tmp_path / "one.json", "coco", "yolo", out))
    assert (out / "labels" / "p.txt").read_text() == "0 0.200000 0.150000 0.200000 0.100000\n1 0.501500 0.378750 0.997000 0.750500 0.42000\n"

    # images that already live in OUT/images stay where they are, untouched
    home = tmp_path / "home"
    image(home / "images" / "p.png", 100, 200)
    (home / "images" / "stranger.png").write_bytes((home / "images" / "p.png").read_bytes())
    labels = {**one, "images": [{**one["images"][0], "file_name": "images/p.png"}]}
    (home / "labels.json").write_text(json.dumps(labels))
    with pytest.raises(UserError, match=r"holds 1 file\(s\) .*images/stranger.png"):
        convert(ConvertConfig(home / "labels.json", "coco", "yolo", home))
    (home / "images" / "stranger.png").unlink()
    convert(ConvertConfig(home / "labels.json", "coco", "yolo", home))
    assert not (home / "images" / "p.png").is_symlink() and Image.open(home / "images" / "p.png").size == (100, 200)
    assert (home / "labels" / "p.txt").read_text().startswith("0 0.200000 0.150000")


def test_coco_to_labelstudio_percent_boxes_and_back(scored_coco, tmp_path):
    result = convert(ConvertConfig(scored_coco, "coco", "labelstudio", tmp_path / "ls.json"))
    tasks = json.loads((tmp_path / "ls.json").read_text())
    assert [Path(t["data"]["image"]).name for t in tasks] == ["p.png", "q.png"]
    assert "annotations" not in tasks[0]  # an image with machine boxes becomes one pre-annotation
    prediction = tasks[0]["predictions"][0]
    human, machine = prediction["result"]
    assert human["value"] == {"x": 10.0, "y": 10.0, "width": 20.0, "height": 10.0, "rotation": 0, "rectanglelabels": ["card"]}
    assert "score" not in human and (human["original_width"], human["original_height"]) == (100, 200)
    assert prediction["score"] == 0.42 and machine["score"] == 0.42
    assert machine["value"]["x"] == pytest.approx(0.3) and machine["value"]["height"] == pytest.approx(75.05)
    assert tasks[1]["predictions"][0]["score"] == 0.9
    assert result.num_machine_boxes == 2

    convert(ConvertConfig(tmp_path / "ls.json", "labelstudio", "coco", tmp_path / "back.json"))
    before, after = boxes_by_file(scored_coco), boxes_by_file(tmp_path / "back.json")
    del before["q.png", "card"]
    assert after.keys() == before.keys()
    for key in before:
        assert after[key] == [pytest.approx(b, abs=1e-6) for b in before[key]]


def test_labelstudio_export_annotations_uploads_and_bad_regions(tmp_path):
    image(tmp_path / "photos" / "cat.jpg", 200, 100)
    box = {"original_width": 200, "original_height": 100, "type": "rectanglelabels"}
    export = [
        {"id": 7, "data": {"image": "/data/upload/3/0a1b2c3d-cat.jpg"},
         "annotations": [
             {"was_cancelled": True, "result": [{**box, "value": {"x": 0, "y": 0, "width": 50, "height": 50, "rectanglelabels": ["dog"]}}]},
             {"result": [
                 {**box, "id": "a", "value": {"x": 10, "y": 20, "width": 25, "height": 50, "rotation": 0, "rectanglelabels": ["cat"]}},
                 {**box, "id": "b", "value": {"x": 10, "y": 20, "width": 25, "height": 50, "rotation": 30, "rectanglelabels": ["cat"]}},
                 {**box, "id": "c", "value": {"x": 10, "y": 20, "width": 0, "height": 50, "rectanglelabels": ["cat"]}},
                 {"id": "d", "type": "choices", "value": {"choices": ["blurry"]}},
             ]}]},
        {"id": 8, "data": {"image": "/data/upload/3/ffffffff-gone.jpg"}, "annotations": []},
    ]
    (tmp_path / "export.json").write_text(json.dumps(export))
    result = convert(ConvertConfig(tmp_path / "export.json", "labelstudio", "coco", tmp_path / "coco.json", images=tmp_path / "photos"))
    data = json.loads((tmp_path / "coco.json").read_text())
    assert data["images"] == [{"id": 1, "file_name": "photos/cat.jpg", "width": 200, "height": 100}]
    assert [(a["bbox"], "score" in a) for a in data["annotations"]] == [([20.0, 20.0, 50.0, 50.0], False)]
    assert data["categories"] == [{"id": 1, "name": "cat"}]  # the cancelled annotation's dog is not read
    assert sorted((s.where.split(": ")[1], s.reason.split(" (")[0]) for s in result.skipped) == [
        ("task 7 result b", "rotated rectangle"), ("task 7 result c", "zero or negative width/height"),
        ("task 7 result d", "result type 'choices' is not a rectangle or polygon"),
        ("task 8", "image /data/upload/3/ffffffff-gone.jpg not found")]


def test_yolo_bad_lines_are_skipped_with_file_and_line(tmp_path):
    root = tmp_path / "yolo"
    image(root / "images" / "a.png", 10, 10)
    image(root / "images" / "b.png", 10, 10)  # no label file: a background image
    (root / "classes.txt").write_text("card\n")
    (root / "labels").mkdir()
    (root / "labels" / "a.txt").write_text("0 0.5 0.5 0.2 0.4\n0 0.5 0.5\n3 0.5 0.5 0.1 0.1\n0 a b c d\n0 0.5 0.5 0.1 0.1 1.5\n\n")
    result = convert(ConvertConfig(root, "yolo", "coco", tmp_path / "out.json"))
    data = json.loads((tmp_path / "out.json").read_text())
    assert [a["bbox"] for a in data["annotations"]] == [pytest.approx([4.0, 3.0, 2.0, 4.0])]
    assert len(data["images"]) == 2
    assert [(s.where.rsplit("/", 1)[1], s.reason) for s in result.skipped] == [
        ("a.txt:2", "3 values; expected class cx cy w h [score]"), ("a.txt:3", "class index outside 0..0"),
        ("a.txt:4", "not numbers"), ("a.txt:5", "score 1.5 outside [0, 1]")]


def test_unusable_inputs_are_one_line_errors(tmp_path, scored_coco):
    with pytest.raises(UserError, match="no class names; add data.yaml"):
        convert(ConvertConfig(tmp_path, "yolo", "coco", tmp_path / "o.json"))
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(UserError, match="bad.json: not valid JSON"):
        convert(ConvertConfig(tmp_path / "bad.json", "labelstudio", "coco", tmp_path / "o.json"))
    assert_user_error(run_cli("convert", scored_coco, "--from", "pascal", "--to", "coco", "--out", tmp_path / "o.json"),
                      "--from 'pascal'", "voc")
    assert_user_error(run_cli("convert", scored_coco, "--from", "coco", "--to", "coco", "--out", tmp_path / "o.txt"),
                      "expected a .json file name")
    result = run_cli("convert", scored_coco, "--from", "coco", "--to", "yolo", "--out", tmp_path / "y")
    assert result.exit_code == 0, result.stderr
    assert "ignore region (iscrowd): YOLO has none" in result.stdout and f"saved to {tmp_path / 'y'}" in result.stdout
