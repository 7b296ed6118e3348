"""Issue 18: faults found by replaying public bug reports, one section per kind, each case with its correct value.

1. annotation ids from 0 (pycocotools' "unmatched" id) score like any other ids, through every scorer;
2. every COCO file a command writes is read by every command that reads COCO files;
3. image sizes: read from the image when the labels do not give them, checked when they do;
4. messages print data verbatim ([brackets] kept); a pseudo-label journal left by an early kill resumes;
5. recoverable input (polygons, flipped Label Studio rectangles, empty categories) read as the other tools do.
"""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

import retinaslim.stages.evaluate as evaluate_stage
import retinaslim.stages.inference as inference
import retinaslim.stages.pseudo_label as pseudo_label_stage
from retinaslim.config import TRAIN_DEFAULTS
from retinaslim.core.detections import Detections
from retinaslim.data.coco import ClassMap, check_same_classes, coco_bbox, coco_metrics, load_coco, require_image_files
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
    return train(TrainConfig(role="student", labeled=labeled, val=labeled, out=out, iterations=1, device="cpu",
                             **{**settings, **options}))


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
    def predict_on_coco(model, coco, *args, **kwargs):
        return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
                for anns in load_coco(truth).annotations_per_image.values() for a in anns], []
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
    monkeypatch.setattr(evaluate_stage, "predict_on_coco", perfect_predictions(truth))
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
    filter_labels(FilterConfig(written[-1], tmp_path / "filtered.json", score_thresh=0.0,
                               review_out=tmp_path / "review.json"))
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


@pytest.mark.parametrize("left", ["empty", "cut header", "header only", "other settings, no batch"])
def test_journal_with_nothing_to_resume_starts_over_with_a_notice(odd_images, uninterrupted, tmp_path, left):
    folder, weights = odd_images
    out = tmp_path / "p.json"
    header = json.dumps({"header": {"fusion": "nms" if left.startswith("other") else "wbf"}})
    journal = out.with_name("p.json.journal")
    journal.write_text({"empty": "", "cut header": header[:20], "header only": header + "\n",
                        "other settings, no batch": header + "\n"}[left])
    result = run_cli("pseudo-label", folder, "--teacher", weights, "--out", out, "--scales", "1", "--device", "cpu",
                     "--batch-size", 1, "--resume", "--workers", 0)
    assert result.exit_code == 0, result.stderr
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
    assert report.per_class_ap["cards"] is None  # no truth of it: no AP, and the mean leaves it out
    assert {r["category_id"] for r in json.loads((tmp_path / "preds.json").read_text())} <= {c["id"] for c in names}
    kept = tiny_train(labels, tmp_path / "kept", keep_empty_classes=True)
    assert [c["id"] for c in load_checkpoint(kept.best).classes] == [0] + [c["id"] for c in names]


def test_an_empty_category_set_aside_must_stay_empty_elsewhere(tmp_path):
    labels = load_coco(roboflow(tmp_path / "data"))
    trained = ClassMap.from_categories([c for c in labels.categories if c["id"] != 0])
    check_same_classes(trained, "model.pt", labels)  # category 0 lists no boxes: set aside
    data = labels.to_dict()
    data["annotations"][0]["category_id"] = 0
    other = load_coco(write_json(tmp_path / "val.json", data), tmp_path / "data")
    with pytest.raises(UserError, match=r"val.json: categories \[\{'id': 0, 'name': 'cards'\}.* differ from model.pt's"):
        check_same_classes(trained, "model.pt", other)
