"""Issue 18: faults found by replaying public bug reports, one section per kind, each case with its correct value.

1. annotation ids from 0 (pycocotools' "unmatched" id) score like any other ids, through every scorer;
2. every COCO file a command writes is read by every command that reads COCO files;
3. image sizes: read from the image when the labels do not give them, checked when they do;
4. messages print data verbatim ([brackets] kept); a pseudo-label journal left by an early kill resumes;
5. recoverable input (polygons, flipped Label Studio rectangles, empty categories) read as the other tools do.

The second round (same kinds, more inputs), at the end:

6. two COCO files that number the same class names differently are matched by name wherever they meet;
7. files written without categories or without images are read (Label Studio round trips), readers skip
   missing images alike, sources are images, folders or lists (anything else is one line), and a class left
   out for having no boxes is named as such.
"""

import json
import os
from pathlib import Path

import pytest
import torch
from PIL import Image

import retinaslim.engine.inference as inference
import retinaslim.stages.pseudo_label as pseudo_label_stage
from retinaslim.config import TRAIN_DEFAULTS
from retinaslim.core.detections import Detections
from retinaslim.data.dataset import DetectionDataset
from retinaslim.data.coco import ClassMap, coco_bbox, coco_metrics, load_coco, match_classes, require_image_files
from retinaslim.errors import UserError
from retinaslim.models.checkpoint import load_checkpoint
from retinaslim.stages.convert import ConvertConfig, convert
from retinaslim.stages.evaluate import EvalConfig, evaluate
from retinaslim.stages.filter import FilterConfig, filter_labels
from retinaslim.stages.predict import PredictConfig, predict
from retinaslim.stages.pseudo_label import PseudoLabelConfig, pseudo_label
from retinaslim.stages.show import ShowConfig, show
from retinaslim.stages.synth import SynthConfig, synth
from retinaslim.stages.train import TrainConfig, train
from tests.conftest import assert_user_error, run_cli


def image(path: Path, width: int, height: int, orientation: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    picture = Image.new("RGB", (width, height), (90, 90, 90))
    exif = picture.getexif()
    if orientation is not None:
        exif[0x0112] = orientation
    picture.save(path, exif=exif)
    return path


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def tiny_train(labeled: Path, out: Path, **options):
    """One optimiser step of the slim student at 64 px: a real checkpoint in a few seconds."""
    settings = {**TRAIN_DEFAULTS["student"], "image_size": 64, "batch_size": 2, "epochs": 1, "augment": "none"}
    return train(TrainConfig(role="student", labeled=labeled, out=out, iterations=1, device="cpu",
                             **{"val": labeled, **settings, **options}))


def truth_with_ids_from_zero(folder: Path) -> Path:
    """3 images, 5 truth boxes with ids 0..4, two classes."""
    for name in ("a", "b", "c"):
        image(folder / f"{name}.jpg", 96, 64)
    boxes = [(1, 1, [5, 5, 30, 20]), (1, 1, [40, 30, 40, 25]), (2, 2, [10, 10, 50, 40]), (3, 1, [60, 5, 30, 50]),
             (3, 2, [2, 30, 40, 30])]
    return write_json(folder / "truth.json", {
        "images": [{"id": i, "file_name": f"{n}.jpg", "width": 96, "height": 64} for i, n in zip((1, 2, 3), "abc")],
        "annotations": [{"id": k, "image_id": i, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
                        for k, (i, c, b) in enumerate(boxes)],
        "categories": [{"id": 1, "name": "card"}, {"id": 2, "name": "passport"}],
    })


def perfect_predictions(truth: Path):
    """A stand-in for a model's single pass over ``coco``: exactly its truth boxes, score 0.9."""
    def predict_on_coco(model, coco, classes, image_size, device, on_chunk, *args, **kwargs):
        on_chunk([image["id"] for image in coco.images],
                 [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
                  for anns in load_coco(truth).annotations_per_image.values() for a in anns])
        return []
    return predict_on_coco


# --- 1. annotation ids from 0 ---

def test_truth_ids_from_zero_score_one_like_ids_from_one(tmp_path):
    truth = load_coco(truth_with_ids_from_zero(tmp_path))
    results = [{**a, "score": 0.9} for anns in truth.annotations_per_image.values() for a in anns]
    assert sorted(a["id"] for a in results) == [0, 1, 2, 3, 4]
    assert coco_metrics(truth, results)["ap"] == pytest.approx(1.0)  # pycocotools alone: 0.642
    assert sorted(a["id"] for anns in truth.annotations_per_image.values() for a in anns) == [0, 1, 2, 3, 4]  # untouched


def test_filter_truth_report_with_ids_from_zero_is_ap_one(tmp_path):
    truth_path = truth_with_ids_from_zero(tmp_path)
    pseudo = json.loads(truth_path.read_text())
    pseudo["annotations"] = [{**a, "id": a["id"] + 1, "score": 0.9} for a in pseudo["annotations"]]
    write_json(tmp_path / "pseudo.json", pseudo)
    result = run_cli("filter", tmp_path / "pseudo.json", "--truth", truth_path, "--report", tmp_path / "r.json",
                     "--out", tmp_path / "filtered.json")
    assert result.exit_code == 0, result.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["truth_metrics"]["before"]["ap"] == pytest.approx(1.0)
    assert report["truth_metrics"]["after"]["ap"] == pytest.approx(1.0)


def test_validation_ap_and_eval_with_ids_from_zero_are_one(tmp_path, monkeypatch):
    truth = truth_with_ids_from_zero(tmp_path)
    monkeypatch.setattr(inference, "predict_on_coco", perfect_predictions(truth))
    run = tiny_train(truth, tmp_path / "run")
    assert run.history[-1]["ap"] == pytest.approx(1.0)  # training's validation AP
    report = evaluate(EvalConfig([run.best], truth, device="cpu", latency_runs=1, warmup_runs=0)).reports[0]
    assert report.ap == pytest.approx(1.0)


# --- 2. one COCO contract: what a command writes, every command reads ---

def test_box_rule_clips_rounds_and_drops_what_is_left_of_nothing():
    assert coco_bbox([70.83, 61.0, 87.61, 61.0], 97, 61) is None  # on the bottom edge: height 0
    assert coco_bbox([10.0, 10.0, 10.004, 30.0], 97, 61) is None  # 0.004 px wide: 0.0 once rounded
    assert coco_bbox([96.996, 10.0, 97.5, 30.0], 97, 61) is None  # its corner would round onto the border
    assert coco_bbox([100.0, 70.0, 120.0, 80.0], 97, 61) is None  # wholly outside
    assert coco_bbox([90.0, -5.0, 120.0, 30.0], 97, 61) == [90.0, 0.0, 7.0, 30.0]  # clipped
    assert coco_bbox([1.234, 2.345, 11.234, 12.345], 97, 61) == [1.23, 2.35, 10.0, 10.0]
    assert coco_bbox([1.234, 2.0, 11.0, 12.0], 97, 61, decimals=None) == [1.234, 2.0, 9.766, 10.0]


EDGE_BOXES = torch.tensor([
    [70.83, 61.0, 87.61, 61.0],  # the reported box: on the bottom edge of a 97 x 61 image
    [10.0, 10.0, 10.004, 30.0],  # a sliver
    [90.0, 40.0, 120.0, 80.0],  # reaching past the corner
    [100.0, 70.0, 120.0, 80.0],  # wholly outside
    [5.0, 5.0, 40.0, 40.0],
])


@pytest.fixture(scope="module")
def odd_images(tmp_path_factory):
    """A folder with two 97 x 61 images and a one-step checkpoint that labels them (any checkpoint will do)."""
    root = tmp_path_factory.mktemp("odd")
    for name in ("p.jpg", "q.jpg"):
        image(root / "images" / name, 97, 61)
    data = synth(SynthConfig(root / "cards", num_labeled=2, num_unlabeled=0, num_val=1, size=64, seed=0))
    return root / "images", tiny_train(data.files["labeled"], root / "run").best


@pytest.fixture
def edge_detections(monkeypatch):
    """Every model pass finds ``EDGE_BOXES`` in every image."""
    def detect(detector, images, image_size, transforms, device):
        n = len(EDGE_BOXES)
        return [[Detections(EDGE_BOXES.clone(), torch.linspace(0.9, 0.5, n), torch.zeros(n, dtype=torch.int64),
                            {"agreement": torch.ones(n, dtype=torch.int64)} if len(transforms) > 1 else {})
                 for _ in transforms] for _ in images]
    monkeypatch.setattr(inference, "detect", detect)


def read_everywhere(path: Path, tmp_path: Path) -> None:
    """``path`` through every reader of COCO files: load_coco (train, eval, filter), convert, show, filter."""
    coco = load_coco(path)
    boxes = [a["bbox"] for anns in coco.annotations_per_image.values() for a in anns]
    assert boxes and all(w > 0 and h > 0 for _, _, w, h in boxes), path
    converted = convert(ConvertConfig(path, "coco", "coco", tmp_path / f"{path.stem}.converted.json"))
    assert converted.skipped == [] and sum(converted.num_boxes.values()) == len(boxes), path
    assert show(ShowConfig(path, tmp_path / f"{path.stem}.sheet.png")).skipped == []
    if all("score" in a for anns in coco.annotations_per_image.values() for a in anns):
        filter_labels(FilterConfig(path, tmp_path / f"{path.stem}.filtered.json", score_thresh=0.0))


def test_every_writer_output_is_read_by_every_reader(odd_images, edge_detections, tmp_path):
    folder, weights = odd_images
    written = []
    predict(PredictConfig(weights, [folder], tmp_path / "preds.json", score_thresh=0.0, device="cpu"))
    written.append(tmp_path / "preds.json")
    assert [a["bbox"] for a in json.loads(written[-1].read_text())["annotations"]] == [
        [90.0, 40.0, 7.0, 21.0], [5.0, 5.0, 35.0, 35.0]] * 2  # per image: the corner box clipped, three left out
    pseudo_label(PseudoLabelConfig(folder, weights, tmp_path / "pseudo.json", scales=(1.0,), hflip=False, score_floor=0.0,
                                   device="cpu"))
    written.append(tmp_path / "pseudo.json")
    filter_labels(FilterConfig(written[-1], tmp_path / "filtered.json", score_thresh=0.0))
    # the review lists images holding a box below its threshold: at 0.95, every box, two per image
    filter_labels(FilterConfig(written[-1], tmp_path / "strict.json", score_thresh=0.95, review_out=tmp_path / "review.json"))
    written += [tmp_path / "filtered.json", tmp_path / "review.coco.json"]
    labels = Path(synth(SynthConfig(tmp_path / "synth", num_labeled=2, num_unlabeled=0, num_val=1, size=64)).files["labeled"])
    written.append(labels)
    convert(ConvertConfig(written[0], "coco", "yolo", tmp_path / "yolo"))
    convert(ConvertConfig(tmp_path / "yolo", "yolo", "coco", tmp_path / "from_yolo.json"))
    written.append(tmp_path / "from_yolo.json")
    convert(ConvertConfig(written[0], "coco", "labelstudio", tmp_path / "ls.json"))
    for tasks in (tmp_path / "ls.json", tmp_path / "review.json"):  # Label Studio files, read back as COCO
        back = convert(ConvertConfig(tasks, "labelstudio", "coco", tmp_path / f"{tasks.stem}.coco.json"))
        assert back.skipped == [] and sum(back.num_boxes.values()) == 4, tasks
        written.append(tmp_path / f"{tasks.stem}.coco.json")
    evaluate(EvalConfig([weights], labels, device="cpu", latency_runs=1, warmup_runs=0,
                        predictions_out=tmp_path / "results.json"))
    results = json.loads((tmp_path / "results.json").read_text())
    assert results and all(r["bbox"][2] > 0 and r["bbox"][3] > 0 for r in results)
    for path in written:
        read_everywhere(path, tmp_path)


# --- 3. image sizes ---

def labelstudio_task(ref: str, value: dict, size: tuple[int, int] | None = None) -> dict:
    declared = {"original_width": size[0], "original_height": size[1]} if size else {}
    return {"id": 1, "data": {"image": ref}, "annotations": [{"result": [
        {"id": "r", "type": "rectanglelabels", **declared, "value": {**value, "rotation": 0, "rectanglelabels": ["cat"]}}]}]}


BOX = {"x": 10, "y": 20, "width": 25, "height": 50}


@pytest.mark.parametrize("size, counted", [(None, "num_sizes_read"), ((200, 100), None), ((400, 200), "num_rescaled")])
def test_labelstudio_size_missing_or_scaled_gives_the_same_box(tmp_path, size, counted):
    image(tmp_path / "photo.jpg", 200, 100)
    write_json(tmp_path / "ls.json", [labelstudio_task("photo.jpg", BOX, size)])
    result = convert(ConvertConfig(tmp_path / "ls.json", "labelstudio", "coco", tmp_path / "coco.json"))
    data = json.loads((tmp_path / "coco.json").read_text())
    assert result.skipped == [] and [a["bbox"] for a in data["annotations"]] == [[20.0, 20.0, 50.0, 50.0]]
    assert (data["images"][0]["width"], data["images"][0]["height"]) == (200, 100)
    assert (result.num_sizes_read, result.num_rescaled) == ((1, 0) if counted == "num_sizes_read" else
                                                            (0, 1) if counted else (0, 0))


def test_labelstudio_size_read_from_the_image_is_reported_by_the_cli(tmp_path):
    image(tmp_path / "photo.jpg", 200, 100)
    write_json(tmp_path / "ls.json", [labelstudio_task("photo.jpg", BOX)])
    result = run_cli("convert", tmp_path / "ls.json", "--from", "labelstudio", "--to", "coco", "--out", tmp_path / "c.json")
    assert result.exit_code == 0, result.stderr
    assert "1 image sizes were not in the labels and were read from the images" in result.stdout


def test_sizes_of_another_shape_skip_the_image_saying_both_sizes(tmp_path):
    image(tmp_path / "photo.jpg", 200, 100)
    image(tmp_path / "turned.jpg", 40, 20, orientation=6)  # displayed 20 x 40
    write_json(tmp_path / "ls.json", [labelstudio_task("photo.jpg", BOX, (100, 200)),
                                      labelstudio_task("turned.jpg", BOX, (40, 20))])
    with pytest.raises(UserError, match=r"no usable images \(first problem: .*task 1: declares 100 x 200, but the image "
                                        r"is 200 x 100 as displayed\)"):
        convert(ConvertConfig(tmp_path / "ls.json", "labelstudio", "coco", tmp_path / "o.json"))
    image(tmp_path / "ok.jpg", 200, 100)
    write_json(tmp_path / "ls.json", [labelstudio_task("ok.jpg", BOX, (200, 100)),
                                      labelstudio_task("turned.jpg", BOX, (40, 20))])
    result = convert(ConvertConfig(tmp_path / "ls.json", "labelstudio", "coco", tmp_path / "o.json"))
    assert [s.reason for s in result.skipped] == [
        "declares 40 x 20, but the image is 20 x 40 as displayed (its EXIF orientation 6 turns it a quarter)"]


def voc(path: Path, filename: str, size: tuple[int, int] | None, box=(11, 21, 60, 70)) -> None:
    size_xml = f"<size><width>{size[0]}</width><height>{size[1]}</height></size>" if size else ""
    xmin, ymin, xmax, ymax = box
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<annotation><filename>{filename}</filename>{size_xml}<object><name>cat</name><bndbox>"
                    f"<xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>"
                    "</annotation>")


def test_voc_sizes_missing_scaled_and_turned(tmp_path):
    for name in ("a", "b", "c"):
        image(tmp_path / "JPEGImages" / f"{name}.jpg", 200, 100)
    image(tmp_path / "JPEGImages" / "d.jpg", 100, 200, orientation=8)  # displayed 200 x 100
    voc(tmp_path / "Annotations" / "a.xml", "a.jpg", None)  # no <size>: read from the image
    voc(tmp_path / "Annotations" / "b.xml", "b.jpg", (400, 200), box=(21, 41, 120, 140))  # labelled at twice the size
    voc(tmp_path / "Annotations" / "c.xml", "c.jpg", (100, 200))  # another shape
    voc(tmp_path / "Annotations" / "d.xml", "d.jpg", (100, 200))  # the stored size, before the EXIF turn
    result = convert(ConvertConfig(tmp_path, "voc", "coco", tmp_path / "o.json"))
    data = json.loads((tmp_path / "o.json").read_text())
    assert [a["bbox"] for a in data["annotations"]] == [[10.0, 20.0, 50.0, 50.0], [10.0, 20.0, 50.0, 50.0]]
    assert (result.num_sizes_read, result.num_rescaled) == (1, 1)
    assert [(Path(s.where).name, s.reason) for s in result.skipped] == [
        ("c.xml", "declares 100 x 200, but the image is 200 x 100 as displayed"),
        ("d.xml", "declares 100 x 200, but the image is 200 x 100 as displayed (its EXIF orientation 8 turns it a quarter)")]


def coco_of(folder: Path, width: int, height: int, name="photo.jpg", bbox=(20, 20, 50, 50)) -> Path:
    return write_json(folder / "labels.json", {
        "images": [{"id": 1, "file_name": name, "width": width, "height": height}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": list(bbox), "area": bbox[2] * bbox[3],
                         "iscrowd": 0}],
        "categories": [{"id": 1, "name": "card"}]})


def test_coco_resized_copy_is_rescaled_and_said(tmp_path):
    image(tmp_path / "photo.jpg", 200, 100)
    coco = load_coco(coco_of(tmp_path, 400, 200, bbox=(40, 40, 100, 100)))
    note = require_image_files(coco)
    assert note == f"{coco.path}: 1 image(s) are a resized copy of the size the file declares; their boxes were rescaled to the images"
    assert (coco.images[0]["width"], coco.images[0]["height"]) == (200, 100)
    assert coco.annotations_per_image[1][0]["bbox"] == [20.0, 20.0, 50.0, 50.0]
    assert coco.annotations_per_image[1][0]["area"] == 2500.0


@pytest.mark.parametrize("command", ["train-student", "eval", "filter-calib"])
def test_coco_of_another_shape_is_refused_by_train_eval_and_calibration(tmp_path, command):
    image(tmp_path / "photo.jpg", 40, 20, orientation=6)  # displayed 20 x 40; the file gives the stored 40 x 20
    labels = coco_of(tmp_path, 40, 20, bbox=(2, 2, 10, 10))
    # the images are checked before any model is loaded: w.pt need not exist
    args = {"train-student": ["train-student", "--labeled", labels, "--val", labels, "--out", tmp_path / "run"],
            "eval": ["eval", "--weights", tmp_path / "w.pt", "--data", labels],
            "filter-calib": ["filter", labels, "--out", tmp_path / "f.json", "--auto-thresh", "precision", "--calib", labels,
                             "--teacher", tmp_path / "w.pt"]}[command]
    if command == "filter-calib":  # filter reads machine labels: give it one with a score
        data = json.loads(labels.read_text())
        data["annotations"][0]["score"] = 0.9
        write_json(tmp_path / "pseudo.json", data)
        args[1] = tmp_path / "pseudo.json"
    assert_user_error(run_cli(*args), "image 1 (photo.jpg) declares 40 x 20, but the image is 20 x 40 as displayed "
                                      "(its EXIF orientation 6 turns it a quarter); fix its width, height and boxes")


def test_coco_without_sizes_takes_the_images(tmp_path):
    image(tmp_path / "photo.jpg", 40, 20, orientation=6)  # displayed 20 x 40
    data = json.loads(coco_of(tmp_path, 20, 40, bbox=(2, 2, 10, 30)).read_text())
    del data["images"][0]["width"], data["images"][0]["height"]
    labels = write_json(tmp_path / "no_sizes.json", data)
    coco = load_coco(labels)
    assert (coco.images[0]["width"], coco.images[0]["height"]) == (20, 40) and coco.num_sizes_read == 1
    assert convert(ConvertConfig(labels, "coco", "coco", tmp_path / "o.json")).num_sizes_read == 1
    data["images"][0]["file_name"] = "gone.jpg"
    with pytest.raises(UserError, match=r"image 1 \(gone.jpg\) needs a positive integer 'width', and the image's own "
                                        "size cannot be read"):
        load_coco(write_json(tmp_path / "gone.json", data))


@pytest.mark.parametrize("declared, expected", [((192, 128), "rescaled"), ((64, 96), "refused")])
def test_filter_truth_declared_at_another_size(tmp_path, declared, expected):
    truth_path = truth_with_ids_from_zero(tmp_path)  # 96 x 64 images
    pseudo = json.loads(truth_path.read_text())
    pseudo["annotations"] = [{**a, "id": a["id"] + 1, "score": 0.9} for a in pseudo["annotations"]]
    write_json(tmp_path / "pseudo.json", pseudo)
    truth = json.loads(truth_path.read_text())
    sx, sy = declared[0] / 96, declared[1] / 64
    truth["images"] = [{**im, "width": declared[0], "height": declared[1]} for im in truth["images"]]
    truth["annotations"] = [{**a, "bbox": [a["bbox"][0] * sx, a["bbox"][1] * sy, a["bbox"][2] * sx, a["bbox"][3] * sy]}
                            for a in truth["annotations"]]
    write_json(truth_path, truth)
    args = ["filter", tmp_path / "pseudo.json", "--truth", truth_path, "--report", tmp_path / "r.json",
            "--out", tmp_path / "filtered.json"]
    if expected == "refused":
        assert_user_error(run_cli(*args), "image 1 (a.jpg) declares 64 x 96, but the image is 96 x 64 as pseudo-label "
                                          "decoded it")
        return
    result = run_cli(*args)
    assert result.exit_code == 0, result.stderr
    assert "3 truth image(s) declare a resized copy of the size the images have" in result.stdout
    assert json.loads((tmp_path / "r.json").read_text())["truth_metrics"]["before"]["ap"] == pytest.approx(1.0)


def test_show_scales_a_resized_copy_and_skips_another_shape(tmp_path):
    image(tmp_path / "photo.jpg", 200, 100)
    assert show(ShowConfig(coco_of(tmp_path, 400, 200), tmp_path / "s.png")).skipped == []
    image(tmp_path / "photo.jpg", 100, 200)
    with pytest.raises(UserError, match="none of its images could be read"):
        show(ShowConfig(coco_of(tmp_path, 400, 200), tmp_path / "s.png"))


# --- 4. messages that tell the truth ---

def test_brackets_in_file_names_and_reasons_print_verbatim(tmp_path):
    labels = coco_of(tmp_path, 200, 100, name="scan[left].jpg")
    assert_user_error(run_cli("train-student", "--labeled", labels, "--val", labels, "--out", tmp_path / "run"),
                      f"image {tmp_path / 'scan[left].jpg'} not found")

    image(tmp_path / "photo.jpg", 200, 100)
    labels = coco_of(tmp_path, 200, 100)
    data = json.loads(labels.read_text())
    data["categories"] = [{"id": 1, "name": "card[front]"}]
    write_json(labels, data)
    result = run_cli("convert", labels, "--from", "coco", "--to", "coco", "--out", tmp_path / "o[x].json")
    assert result.exit_code == 0, result.stderr
    assert f"saved to {tmp_path / 'o[x].json'}" in result.stdout and "card[front]" in result.stdout

    root = tmp_path / "yolo"
    image(root / "images" / "a.png", 10, 10)
    (root / "classes.txt").write_text("card\n")
    (root / "labels").mkdir()
    (root / "labels" / "a.txt").write_text("0 0.5 0.5 0.2\n")
    result = run_cli("convert", root, "--from", "yolo", "--to", "coco", "--out", tmp_path / "y.json")
    assert result.exit_code == 0, result.stderr
    assert "a.txt:1: 4 values; expected class cx cy w h [score]" in result.stdout


def test_journal_header_is_on_disk_before_the_first_batch_runs(odd_images, tmp_path, monkeypatch):
    folder, weights = odd_images
    journal = tmp_path / "p.json.journal"
    seen = []

    def killed(*args, **kwargs):
        seen.append(journal.read_text())
        raise KeyboardInterrupt  # the process dies in its first batch
    monkeypatch.setattr(pseudo_label_stage, "predict_batches", killed)
    with pytest.raises(KeyboardInterrupt):
        pseudo_label(PseudoLabelConfig(folder, weights, tmp_path / "p.json", device="cpu"))
    assert len(seen) == 1 and seen[0].count("\n") == 1 and '"header"' in seen[0]


@pytest.fixture(scope="module")
def uninterrupted(odd_images, tmp_path_factory):
    folder, weights = odd_images
    out = tmp_path_factory.mktemp("clean") / "p.json"
    pseudo_label(PseudoLabelConfig(folder, weights, out, scales=(1.0,), device="cpu", batch_size=1))
    return json.loads(out.read_text())


@pytest.mark.parametrize("resume", [["--resume"], []], ids=["resume", "plain rerun"])
@pytest.mark.parametrize("left", ["empty", "cut header", "header only", "other settings, no batch"])
def test_journal_with_nothing_to_resume_starts_over_with_a_notice(odd_images, uninterrupted, tmp_path, left, resume):
    folder, weights = odd_images
    out = tmp_path / "p.json"
    header = json.dumps({"header": {"fusion": "nms" if left.startswith("other") else "wbf"}})
    journal = out.with_name("p.json.journal")
    journal.write_text({"empty": "", "cut header": header[:20], "header only": header + "\n",
                        "other settings, no batch": header + "\n"}[left])
    result = run_cli("pseudo-label", folder, "--teacher", weights, "--out", out, "--scales", "1", "--device", "cpu",
                     "--batch-size", 1, *resume, "--workers", 0)
    assert result.exit_code == 0, result.stderr  # a kill before the first batch leaves nothing a plain rerun could lose
    assert f"{journal}: holds no finished batch; starting over" in result.stdout
    assert json.loads(out.read_text())["annotations"] == uninterrupted["annotations"] and not journal.exists()


# --- 5. recoverable input ---

def test_yolo_polygon_lines_are_their_enclosing_boxes(tmp_path):
    root = tmp_path / "yolo"
    image(root / "images" / "a.png", 200, 100)
    (root / "classes.txt").write_text("card\n")
    (root / "labels").mkdir()
    (root / "labels" / "a.txt").write_text(
        "0 0.1 0.2 0.35 0.2 0.35 0.7 0.1 0.7\n"  # a rectangle as 4 corners: [20, 20, 70, 70] xyxy
        "0 0.5 0.5 0.6 0.9 0.4 0.9\n"  # a triangle: [80, 50, 120, 90]
        "0 0.5 0.5 0.1 0.1\n"  # a box
        "0 0.1 0.1 0.2 0.2 0.3 0.3 0.4\n")  # 7 coordinates: not x y pairs
    result = convert(ConvertConfig(root, "yolo", "coco", tmp_path / "o.json"))
    data = json.loads((tmp_path / "o.json").read_text())
    assert [a["bbox"] for a in data["annotations"]] == [pytest.approx(b) for b in
                                                         ([20, 20, 50, 50], [80, 50, 40, 40], [90, 45, 20, 10])]
    assert result.num_polygons == 2
    assert [s.reason for s in result.skipped] == ["7 polygon coordinates; expected x y pairs"]
    cli = run_cli("convert", root, "--from", "yolo", "--to", "coco", "--out", tmp_path / "o.json")
    assert "2 polygons were read as their enclosing boxes" in cli.stdout


def test_labelstudio_flipped_rectangle_and_polygon(tmp_path):
    image(tmp_path / "photo.jpg", 200, 100)
    flipped = labelstudio_task("photo.jpg", {"x": 35, "y": 70, "width": -25, "height": -50}, (200, 100))
    polygon = {"id": "p", "type": "polygonlabels", "original_width": 200, "original_height": 100,
               "value": {"points": [[10, 20], [35, 20], [35, 70], [10, 70]], "polygonlabels": ["cat"]}}
    flipped["annotations"][0]["result"].append(polygon)
    write_json(tmp_path / "ls.json", [flipped])
    result = convert(ConvertConfig(tmp_path / "ls.json", "labelstudio", "coco", tmp_path / "o.json"))
    data = json.loads((tmp_path / "o.json").read_text())
    assert result.skipped == [] and result.num_polygons == 1
    assert [a["bbox"] for a in data["annotations"]] == [[20.0, 20.0, 50.0, 50.0], [20.0, 20.0, 50.0, 50.0]]


def roboflow(folder: Path) -> Path:
    """Roboflow's COCO export: the dataset's supercategory listed as category 0, with no boxes."""
    data = synth(SynthConfig(folder, num_labeled=2, num_unlabeled=0, num_val=1, size=64, seed=2))
    labels = json.loads(Path(data.files["labeled"]).read_text())
    labels["annotations"] = [{**a, "category_id": 1 + k % 2} for k, a in enumerate(labels["annotations"])]
    assert len(labels["annotations"]) >= 2
    labels["categories"] = [{"id": 0, "name": "cards", "supercategory": "none"},
                            {"id": 1, "name": "id_card", "supercategory": "cards"},
                            {"id": 2, "name": "passport", "supercategory": "cards"}]
    return write_json(folder / "roboflow.json", labels)


def test_roboflow_supercategory_is_not_trained_and_ids_stay_mapped(tmp_path):
    labels = roboflow(tmp_path / "data")
    names = [c for c in json.loads(labels.read_text())["categories"] if c["id"] != 0]
    result = run_cli("train-student", "--labeled", labels, "--val", labels, "--out", tmp_path / "run", "--iterations", 1,
                     "--image-size", 64, "--batch-size", 2, "--augment", "none", "--device", "cpu", "--workers", 0)
    assert result.exit_code == 0, result.stderr
    assert (f"{labels}: no boxes of category 0 'cards' in the labelled set: left out of the model's classes "
            "(pass --keep-empty-classes to keep it)") in result.stdout
    weights = tmp_path / "run" / "best.pt"
    assert load_checkpoint(weights).classes == [{"id": c["id"], "name": c["name"]} for c in names]
    # eval and predict on the export itself: the model's labels map back to the file's own ids
    report = evaluate(EvalConfig([weights], labels, device="cpu", latency_runs=1, warmup_runs=0,
                                 predictions_out=tmp_path / "preds.json")).reports[0]
    assert set(report.per_class_ap) == {"id_card", "passport"}  # "cards": not the model's, no boxes: set aside
    assert {r["category_id"] for r in json.loads((tmp_path / "preds.json").read_text())} <= {c["id"] for c in names}
    kept = tiny_train(labels, tmp_path / "kept", keep_empty_classes=True)
    assert [c["id"] for c in load_checkpoint(kept.best).classes] == [0] + [c["id"] for c in names]


def test_an_empty_category_set_aside_must_stay_empty_elsewhere(tmp_path):
    labels = load_coco(roboflow(tmp_path / "data"))
    trained = ClassMap.from_categories([c for c in labels.categories if c["id"] != 0])
    data = labels.to_dict()
    assert match_classes(trained, "model.pt", labels) is None  # category 0 lists no boxes: set aside
    assert labels.categories == trained.categories()
    data["annotations"][0]["category_id"] = 0
    other = load_coco(write_json(tmp_path / "val.json", data), tmp_path / "data")
    with pytest.raises(UserError, match=r"val.json: has boxes of category 0 'cards', which model.pt does not have "
                                        r"\(its classes: id_card, passport\)"):
        match_classes(trained, "model.pt", other)


# --- 6. classes matched by name wherever two files meet ---

def renumbered(path: Path, ids: dict[str, int], out: Path, **extra) -> Path:
    """``path`` (a COCO file) with its categories given the ids ``ids`` (name -> id), boxes following them."""
    data = json.loads(path.read_text())
    new = {c["id"]: ids[c["name"]] for c in data["categories"]}
    data["categories"] = [{**c, "id": new[c["id"]]} for c in data["categories"]]
    data["annotations"] = [{**a, "category_id": new[a["category_id"]], **extra} for a in data["annotations"]]
    data["images"] = [{**im, "file_name": os.path.relpath(path.parent / im["file_name"], out.parent)}
                      for im in data["images"]]
    return write_json(out, data)


RENUMBERINGS = {"swapped": {"card": 2, "passport": 1}, "from zero": {"card": 0, "passport": 1},
                "sparse": {"card": 7, "passport": 3}}


@pytest.mark.parametrize("numbering", RENUMBERINGS)
def test_filter_truth_numbering_the_classes_otherwise_is_ap_one(tmp_path, numbering):
    machine = renumbered(truth_with_ids_from_zero(tmp_path), {"card": 1, "passport": 2}, tmp_path / "pseudo.json",
                         score=0.9)
    truth = renumbered(tmp_path / "truth.json", RENUMBERINGS[numbering], tmp_path / "truth2.json")
    result = run_cli("filter", machine, "--truth", truth, "--report", tmp_path / "r.json", "--out", tmp_path / "f.json")
    assert result.exit_code == 0, result.stderr  # "from zero" was a traceback: tuple.index(x): x not in tuple
    metrics = json.loads((tmp_path / "r.json").read_text())["truth_metrics"]
    for when in ("before", "after"):
        assert metrics[when]["ap"] == pytest.approx(1.0)  # was 0.000 (swapped) or 0.411
        assert {name: (c["precision"], c["recall"]) for name, c in metrics[when]["per_class"].items()} == {
            "card": (1.0, 1.0), "passport": (1.0, 1.0)}
    assert f"{truth}: categories matched to {machine}'s by name; ids renumbered" in " ".join(result.stdout.split())


def test_filter_truth_with_boxes_of_a_class_the_labels_lack_is_one_line_naming_both(tmp_path):
    machine = renumbered(truth_with_ids_from_zero(tmp_path), {"card": 1, "passport": 2}, tmp_path / "pseudo.json",
                         score=0.9)
    data = json.loads((tmp_path / "truth.json").read_text())
    data["categories"][1]["name"] = "dog"
    truth = write_json(tmp_path / "truth2.json", data)
    result = run_cli("filter", machine, "--truth", truth, "--out", tmp_path / "f.json")
    assert_user_error(result, f"{truth}: has boxes of category 2 'dog', which {machine} does not have (its classes: "
                              "card, passport)")


def test_filter_instances_rule_reads_human_boxes_by_class_name(tmp_path):
    truth = truth_with_ids_from_zero(tmp_path)
    machine = json.loads(truth.read_text())  # card .9 .8 .6, passport .7 .5, each box again below .5
    anns = machine["annotations"]
    machine["annotations"] = [{**a, "id": k + 1, "score": 0.9 - 0.1 * k} for k, a in enumerate(anns)] + [
        {**a, "id": k + 6, "bbox": [v + 1 for v in a["bbox"]], "score": 0.4 - 0.05 * k} for k, a in enumerate(anns)]
    pseudo = write_json(tmp_path / "pseudo.json", machine)
    labeled = renumbered(truth, RENUMBERINGS["swapped"], tmp_path / "labeled.json")
    result = filter_labels(FilterConfig(pseudo, tmp_path / "f.json", auto_thresh="instances", labeled=labeled))
    # 3 card and 2 passport boxes per 3 images -> the 3rd best card score, the 2nd best passport score
    assert result.thresholds == {"card": pytest.approx(0.6), "passport": pytest.approx(0.5)}


@pytest.fixture(scope="module")
def truth_run(tmp_path_factory):
    """The ids-from-zero truth (card 1, passport 2) and a one-step checkpoint trained on it."""
    folder = tmp_path_factory.mktemp("truth")
    truth = truth_with_ids_from_zero(folder)
    return truth, tiny_train(truth, folder / "run").best


def test_filter_calibration_matches_calib_and_teacher_classes_by_name(truth_run, tmp_path, monkeypatch):
    import retinaslim.engine.thresholds as thresholds
    from retinaslim.engine.inference import ImageResult
    truth, weights = truth_run
    teacher_label = {"card": 0, "passport": 1}  # the checkpoint's classes: card 1, passport 2
    calib = renumbered(truth, RENUMBERINGS["from zero"], tmp_path / "calib.json")
    pseudo = renumbered(truth, RENUMBERINGS["swapped"], tmp_path / "pseudo.json", score=0.9)
    data = json.loads(pseudo.read_text())
    data["info"] = {"teacher": str(weights), "transforms": ["scale1.0"], "fusion": "wbf", "image_size": 64}
    data["images"] = [{**im, "file_name": str(truth.parent / im["file_name"])} for im in data["images"]]
    write_json(pseudo, data)
    names = {c["id"]: c["name"] for c in json.loads(truth.read_text())["categories"]}

    def perfect(model, paths, batches, image_size, transforms, device, on_batch, **kwargs):  # in the teacher's labels
        coco = load_coco(truth)
        for batch in batches:
            results = []
            for k in batch:
                anns = coco.annotations_per_image[coco.images[k]["id"]]
                boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)])
                labels = torch.tensor([teacher_label[names[a["category_id"]]] for a in anns])
                results.append(ImageResult(k, 64, 96, Detections(boxes, torch.full((len(anns),), 0.9), labels)))
            on_batch(results)
    monkeypatch.setattr(thresholds, "predict_batches", perfect)
    result = filter_labels(FilterConfig(pseudo, tmp_path / "f.json", auto_thresh="precision", calib=calib, device="cpu"))
    assert {c.class_name: (c.precision, c.recall, c.reached) for c in result.calibration} == {
        "card": (1.0, 1.0, True), "passport": (1.0, 1.0, True)}


def test_eval_and_training_match_val_and_pseudo_by_class_name(truth_run, tmp_path, monkeypatch):
    import retinaslim.stages.train as train_stage
    truth, weights = truth_run
    val = renumbered(truth, RENUMBERINGS["swapped"], tmp_path / "val.json")
    monkeypatch.setattr(inference, "predict_on_coco", perfect_predictions(truth))  # the model's ids
    report = evaluate(EvalConfig([weights], val, device="cpu", latency_runs=1, warmup_runs=0)).reports[0]
    assert report.ap == pytest.approx(1.0) and report.per_class_ap == {"card": pytest.approx(1.0),
                                                                       "passport": pytest.approx(1.0)}
    datasets = []
    monkeypatch.setattr(train_stage, "DetectionDataset",
                        lambda coco, classes, *a, **k: datasets.append((coco, classes)) or DetectionDataset(coco, classes, *a, **k))
    pseudo = renumbered(truth, RENUMBERINGS["sparse"], tmp_path / "pseudo.json", score=0.9)
    run = tiny_train(truth, tmp_path / "run", val=val, pseudo=pseudo)
    assert run.history[-1]["ap"] == pytest.approx(1.0)  # validation AP against the renumbered val
    (labeled, classes), (machine, _) = datasets
    by_name = {c["name"]: c["id"] for c in json.loads(truth.read_text())["categories"]}
    expected = [by_name[c] for c in ("card", "card", "passport", "card", "passport")]
    assert [a["category_id"] for anns in machine.annotations_per_image.values() for a in anns] == expected
    assert [classes.names[classes.label(i)] for i in expected] == ["card", "card", "passport", "card", "passport"]


def test_a_class_left_out_for_having_no_boxes_is_named_when_val_has_boxes_of_it(tmp_path):
    data = json.loads(truth_with_ids_from_zero(tmp_path).read_text())
    data["categories"] = [{"id": 1, "name": "card"}, {"id": 2, "name": "other"}]
    data["annotations"] = [{**a, "id": a["id"] + 1, "category_id": 1} for a in data["annotations"]]
    labeled = write_json(tmp_path / "lab2.json", data)
    data["annotations"][0]["category_id"] = 2
    val = write_json(tmp_path / "val.json", data)
    args = ["train-student", "--labeled", labeled, "--val", val, "--iterations", 1, "--image-size", 64,
            "--batch-size", 2, "--augment", "none", "--device", "cpu", "--workers", 0]
    assert_user_error(run_cli(*args, "--out", tmp_path / "run"),
                      f"{val}: has boxes of category 2 'other', which {labeled} has no boxes of, so it was left out of "
                      "the model's classes; pass --keep-empty-classes to train it")
    result = run_cli(*args, "--out", tmp_path / "kept", "--keep-empty-classes")
    assert result.exit_code == 0, result.stderr


# --- 7. what one command writes, every command reads; readers and sources alike ---

def test_labelstudio_round_trip_keeps_the_categories_and_their_ids(tmp_path):
    image(tmp_path / "a.jpg", 200, 100)
    image(tmp_path / "b.jpg", 200, 100)
    source = write_json(tmp_path / "src.json", {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 200, "height": 100},
                   {"id": 2, "file_name": "b.jpg", "width": 200, "height": 100}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 5, "bbox": [20, 20, 50, 50], "area": 2500, "iscrowd": 0}],
        "categories": [{"id": 3, "name": "a"}, {"id": 5, "name": "b"}]})
    convert(ConvertConfig(source, "coco", "labelstudio", tmp_path / "ls.json"))
    convert(ConvertConfig(tmp_path / "ls.json", "labelstudio", "coco", tmp_path / "back.json"))
    back = json.loads((tmp_path / "back.json").read_text())
    assert back["categories"] == [{"id": 3, "name": "a"}, {"id": 5, "name": "b"}]  # was [{"id": 1, "name": "b"}]
    assert [(a["category_id"], a["bbox"]) for a in back["annotations"]] == [(5, [20.0, 20.0, 50.0, 50.0])]


@pytest.mark.parametrize("carried", [True, False])
def test_labelstudio_without_boxes_becomes_coco_every_reader_takes(tmp_path, carried):
    image(tmp_path / "a.jpg", 200, 100)
    data = {"image": "a.jpg", **({"coco_categories": [{"id": 1, "name": "card"}]} if carried else {})}
    write_json(tmp_path / "ls.json", [{"id": 1, "data": data}])  # an image nobody drew a box on
    convert(ConvertConfig(tmp_path / "ls.json", "labelstudio", "coco", tmp_path / "c.json"))
    written = tmp_path / "c.json"
    assert json.loads(written.read_text())["categories"] == ([{"id": 1, "name": "card"}] if carried else [])
    assert len(load_coco(written).images) == 1  # was "no categories"
    assert convert(ConvertConfig(written, "coco", "coco", tmp_path / "again.json")).num_images == 1
    assert show(ShowConfig(written, tmp_path / "sheet.png")).skipped == []
    assert filter_labels(FilterConfig(written, tmp_path / "f.json")).num_images_out == 1
    # nothing to learn: said as such
    assert_user_error(run_cli("train-student", "--labeled", written, "--val", written, "--out", tmp_path / "run"),
                      f"{written}: no boxes (crowd regions aside) in its 1 image, so nothing to learn")


def test_labelstudio_two_tasks_for_one_image_are_one_image_with_both_tasks_boxes(tmp_path):
    image(tmp_path / "photo.jpg", 200, 100)
    first = labelstudio_task("photo.jpg", BOX, (200, 100))
    second = labelstudio_task("photo.jpg", {"x": 50, "y": 10, "width": 20, "height": 40}, (200, 100))
    second["id"] = 2
    second["annotations"][0]["result"].append(first["annotations"][0]["result"][0])  # the first task's box again
    write_json(tmp_path / "ls.json", [first, second])
    result = convert(ConvertConfig(tmp_path / "ls.json", "labelstudio", "coco", tmp_path / "o.json"))
    data = json.loads((tmp_path / "o.json").read_text())
    assert len(data["images"]) == 1  # was two images, each with part of the boxes
    assert [a["bbox"] for a in data["annotations"]] == [[20.0, 20.0, 50.0, 50.0], [100.0, 10.0, 40.0, 40.0]]
    assert [s.reason for s in result.skipped] == ["the same box as an earlier task for this image has"]


@pytest.mark.parametrize("sized", [True, False])
def test_convert_from_coco_skips_a_missing_image_with_the_reason(tmp_path, sized):
    image(tmp_path / "photo.jpg", 200, 100)
    data = json.loads(coco_of(tmp_path, 200, 100).read_text())
    data["images"].append({"id": 2, "file_name": "gone.jpg", **({"width": 200, "height": 100} if sized else {})})
    data["annotations"].append({**data["annotations"][0], "id": 2, "image_id": 2})
    labels = write_json(tmp_path / "labels.json", data)
    result = convert(ConvertConfig(labels, "coco", "yolo", tmp_path / "yolo"))
    assert [(s.kind, s.where, s.reason) for s in result.skipped] == [  # was written silently, a dangling link in YOLO
        ("image", f"{labels}: image 2", f"image {tmp_path / 'gone.jpg'} not found (pass --images DIR, the folder "
                                        "holding the images)")]
    assert result.num_images == 1 and result.num_boxes == {"card": 1}
    assert sorted(p.name for p in (tmp_path / "yolo" / "images").iterdir()) == ["photo.jpg"]
    cli = run_cli("convert", labels, "--from", "coco", "--to", "coco", "--out", tmp_path / "o.json")
    assert cli.exit_code == 0 and "gone.jpg not found" in " ".join(cli.stdout.split())
    assert [im["id"] for im in json.loads((tmp_path / "o.json").read_text())["images"]] == [1]


def test_an_image_file_is_a_one_image_source_and_a_binary_file_is_one_line(odd_images, tmp_path):
    folder, weights = odd_images
    photo = folder / "p.jpg"
    result = run_cli("pseudo-label", photo, "--teacher", weights, "--out", tmp_path / "pseudo.json", "--scales", "1",
                     "--no-hflip", "--device", "cpu", "--workers", 0)
    assert result.exit_code == 0, result.stderr  # was UnicodeDecodeError
    images = json.loads((tmp_path / "pseudo.json").read_text())["images"]
    assert [(Path(im["file_name"]).name, im["width"], im["height"]) for im in images] == [("p.jpg", 97, 61)]
    assert_user_error(run_cli("predict", weights, "--weights", weights, "--out", tmp_path / "p.json"),
                      f"{weights}: a binary file that is not an image", "it looks like weights")
    blob = tmp_path / "scan.heic"
    blob.write_bytes(bytes(range(256)) * 4)
    assert_user_error(run_cli("pseudo-label", blob, "--teacher", weights, "--out", tmp_path / "q.json"),
                      f"{blob}: a binary file that is not an image")


def test_yolo_class_written_as_a_whole_float_is_that_class(tmp_path):
    root = tmp_path / "yolo"
    image(root / "images" / "a.png", 200, 100)
    (root / "classes.txt").write_text("card\npassport\n")
    (root / "labels").mkdir()
    (root / "labels" / "a.txt").write_text("0.0 0.5 0.5 0.2 0.2\n1.000 0.25 0.5 0.1 0.2\n0.5 0.5 0.5 0.2 0.2\n")
    result = convert(ConvertConfig(root, "yolo", "coco", tmp_path / "o.json"))
    data = json.loads((tmp_path / "o.json").read_text())
    assert [(a["category_id"], a["bbox"]) for a in data["annotations"]] == [  # "0.0" was skipped as "not numbers"
        (1, pytest.approx([80, 40, 40, 20])), (2, pytest.approx([40, 40, 20, 20]))]
    assert [s.reason for s in result.skipped] == ["class 0.5 is not a whole number"]


# --- file names and folders that meet each other ---

def two_image_coco(folder: Path, names: tuple[str, str]) -> Path:
    """COCO labels of two 40 x 30 images with one box each."""
    for name in names:
        image(folder / name, 40, 30)
    return write_json(folder / "labels.json", {
        "images": [{"id": i, "file_name": n, "width": 40, "height": 30} for i, n in enumerate(names, start=1)],
        "annotations": [{"id": i, "image_id": i, "category_id": 1, "bbox": [2.0 * i, 3.0, 10.0, 8.0], "area": 80.0,
                         "iscrowd": 0} for i in (1, 2)],
        "categories": [{"id": 1, "name": "card"}]})


def test_yolo_refuses_two_images_that_would_share_a_label_file(tmp_path):
    labels = two_image_coco(tmp_path, ("a.jpg", "a.png"))
    with pytest.raises(UserError, match=r"images a.jpg and a.png would share the label file labels/a.txt"):
        convert(ConvertConfig(labels, "coco", "yolo", tmp_path / "yolo"))
    assert not (tmp_path / "yolo" / "labels").exists()


def test_labelstudio_round_trip_of_names_holding_url_characters(tmp_path):
    labels = two_image_coco(tmp_path, ("img#1.png", "a%20b?.png"))
    convert(ConvertConfig(labels, "coco", "labelstudio", tmp_path / "ls.json"))
    back = convert(ConvertConfig(tmp_path / "ls.json", "labelstudio", "coco", tmp_path / "back.json"))
    data = json.loads((tmp_path / "back.json").read_text())
    assert back.skipped == [] and sorted(Path(im["file_name"]).name for im in data["images"]) == ["a%20b?.png", "img#1.png"]
    assert sorted(a["bbox"] for a in data["annotations"]) == [pytest.approx([2, 3, 10, 8]), pytest.approx([4, 3, 10, 8])]


def test_labelstudio_rotation_that_is_not_a_number_skips_the_box_saying_why(tmp_path):
    image(tmp_path / "photo.jpg", 200, 100)
    task = labelstudio_task("photo.jpg", {"x": 10, "y": 10, "width": 20, "height": 20}, (200, 100))
    task["annotations"][0]["result"][0]["value"]["rotation"] = "n/a"
    write_json(tmp_path / "ls.json", [task])
    result = convert(ConvertConfig(tmp_path / "ls.json", "labelstudio", "coco", tmp_path / "o.json"))
    assert [s.reason for s in result.skipped] == [
        "needs value.x, y, width, height (and rotation, if any) as numbers and rectanglelabels"]


def test_predict_refuses_to_draw_over_its_own_images_and_convert_over_its_input_through_dot_dot(odd_images, tmp_path):
    folder, weights = odd_images
    before = (folder / "p.jpg").read_bytes()
    with pytest.raises(UserError, match="the images' own folder; the drawn copies would replace them"):
        predict(PredictConfig(weights, [folder], tmp_path / "preds.json", draw=folder / ".", device="cpu"))
    with pytest.raises(UserError, match="which is searched for images: a rerun would take the drawn copies as inputs"):
        predict(PredictConfig(weights, [folder.parent], tmp_path / "preds.json", draw=folder / "drawn", device="cpu"))
    assert (folder / "p.jpg").read_bytes() == before and not (folder / "drawn").exists()
    labels = two_image_coco(tmp_path, ("a.jpg", "b.jpg"))
    (tmp_path / "sub").mkdir()
    with pytest.raises(UserError, match="the output would overwrite the input"):
        convert(ConvertConfig(labels, "coco", "coco", tmp_path / "sub" / ".." / "labels.json"))
