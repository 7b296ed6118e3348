import json

import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from retinaslim.core.detections import Detections
from retinaslim.data.coco import ClassMap, coco_metrics, detections_to_annotations, load_coco, relative_boxes
from retinaslim.errors import UserError


def coco_dict():
    return {
        "images": [{"id": 10, "file_name": "a.jpg", "width": 100, "height": 80},
                   {"id": 11, "file_name": "b.jpg", "width": 100, "height": 80}],
        "annotations": [{"id": 1, "image_id": 10, "category_id": 17, "bbox": [10, 10, 30, 20], "area": 600, "iscrowd": 0},
                        {"id": 2, "image_id": 11, "category_id": 3, "bbox": [50, 40, 20, 20], "area": 400, "iscrowd": 0},
                        {"id": 3, "image_id": 11, "category_id": 17, "bbox": [5, 5, 40, 30], "area": 1200, "iscrowd": 0}],
        "categories": [{"id": 17, "name": "passport"}, {"id": 3, "name": "id_card"}],
    }


def write(tmp_path, data, name="labels.json"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_load_and_class_map(tmp_path):
    coco = load_coco(write(tmp_path, coco_dict()))
    assert coco.classes == ClassMap((3, 17), ("id_card", "passport"))
    assert coco.classes.label(17) == 1 and coco.classes.category_ids[0] == 3
    assert coco.image_root == tmp_path and coco.num_annotations == 3


def broken(change):
    data = coco_dict()
    change(data)
    return data


@pytest.mark.parametrize("data, message", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "not a COCO file"),
    (broken(lambda d: d.pop("images")), "missing list 'images'"),
    (broken(lambda d: d.pop("categories")), "missing list 'categories'"),
    (broken(lambda d: d["images"].append(dict(d["images"][0]))), "duplicate image id 10"),
    (broken(lambda d: d["annotations"][0].update(category_id=99)), "category id 99"),
    (broken(lambda d: d["annotations"][0].update(image_id=5)), "image id 5"),
    (broken(lambda d: d["annotations"][0].update(category_id=[1])), "category id [1]"),
    (broken(lambda d: d["annotations"][0].update(image_id=[10])), "image id [10]"),
    (broken(lambda d: d["annotations"][0].update(bbox=[1, 1, 0, 5])), "width or height <= 0"),
    (broken(lambda d: d["annotations"][0].update(bbox=[1, 1, float("nan"), 5])), "four finite numbers"),
    (broken(lambda d: d["annotations"][0].update(score=1.5)), "score"),
    (broken(lambda d: d["annotations"][0].update(bbox=[10, 10, 1e6, 20])), "by more than the image's size"),
    (broken(lambda d: d["images"][0].update(width=0)), "positive integer 'width'"),
])
def test_bad_files_raise_one_clear_line(tmp_path, data, message):
    path = write(tmp_path, data)
    with pytest.raises(UserError) as e:
        load_coco(path)
    assert str(path) in str(e.value) and message in str(e.value) and "\n" not in str(e.value)


def test_relative_boxes_are_clipped_to_the_image_as_training_clips_them(tmp_path):
    # Anchors are fitted to these: a box reaching past the border must count with the part training sees.
    data = coco_dict()
    data["annotations"][0].update(bbox=[-10, 70, 60, 40])  # 100 x 80 image: x -10..50 -> 0..50, y 70..110 -> 70..80
    boxes, category_ids = relative_boxes(load_coco(write(tmp_path, data)))
    assert torch.allclose(boxes[0], torch.tensor([0, 70, 50, 80], dtype=torch.float64) / 100)
    assert torch.allclose(boxes[1:], torch.tensor([[50, 40, 70, 60], [5, 5, 45, 35]], dtype=torch.float64) / 100)
    assert category_ids.tolist() == [17, 3, 17]


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match=r"nope.json: not found \(expected a COCO JSON file\)"):
        load_coco(tmp_path / "nope.json")
    with pytest.raises(UserError, match="a folder, expected a COCO JSON file; pass the file itself"):
        load_coco(tmp_path)


def test_detections_to_annotations_uses_dataset_category_ids():
    classes = ClassMap((3, 17), ("id_card", "passport"))
    dets = Detections(torch.tensor([[10.0, 20.0, 40.0, 60.0]]), torch.tensor([0.8]), torch.tensor([1]),
                      {"agreement": torch.tensor([4])})
    (ann,) = detections_to_annotations(dets, image_id=7, classes=classes, width=100, height=80, first_id=5)
    assert ann == {"id": 5, "image_id": 7, "category_id": 17, "bbox": [10.0, 20.0, 30.0, 40.0], "area": 1200.0,
                   "iscrowd": 0, "score": 0.8, "agreement": 4}


def test_metrics_match_pycocotools(tmp_path):
    path = write(tmp_path, coco_dict())
    results = [
        {"image_id": 10, "category_id": 17, "bbox": [11, 10, 30, 20], "score": 0.9},   # good
        {"image_id": 11, "category_id": 3, "bbox": [50, 40, 20, 20], "score": 0.8},    # exact
        {"image_id": 11, "category_id": 17, "bbox": [20, 20, 40, 30], "score": 0.7},   # loose
        {"image_id": 11, "category_id": 3, "bbox": [0, 0, 10, 10], "score": 0.95},     # false positive
    ]
    ours = coco_metrics(load_coco(path), results)
    gt = COCO(str(path))
    ev = COCOeval(gt, gt.loadRes(results), "bbox")
    ev.evaluate(), ev.accumulate(), ev.summarize()
    assert ours["ap"] == pytest.approx(ev.stats[0]) and ours["ap50"] == pytest.approx(ev.stats[1])
    assert ours["ap75"] == pytest.approx(ev.stats[2])
    assert 0 < ours["ap"] < 1


def test_perfect_predictions_score_one(tmp_path):
    coco = load_coco(write(tmp_path, coco_dict()))
    results = [{**a, "score": 1.0} for anns in coco.annotations_per_image.values() for a in anns]
    assert coco_metrics(coco, results)["ap"] == pytest.approx(1.0)
    assert coco_metrics(coco, [])["ap"] == 0.0
