"""CocoEvaluator: pycocotools' numbers, bit for bit, however the images are chunked."""

import contextlib
import io
import json
import random

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from retinaslim.data.coco import CocoEvaluator, load_coco


def random_set(tmp_path, seed=0, images=40):
    """Truth with crowd boxes, boxes of every size and empty images; results with tied scores, misses,
    images with only false detections, and more than 100 detections on one image."""
    rng = random.Random(seed)
    truth = {"images": [], "annotations": [], "categories": [{"id": 3, "name": "card"}, {"id": 7, "name": "coin"}]}
    results = []
    for image_id in rng.sample(range(1, 1000), images):  # ids out of order
        truth["images"].append({"id": image_id, "file_name": f"{image_id}.jpg", "width": 640, "height": 480})
        for _ in range(rng.choice([0, 0, 1, 3, 8])):
            w, h = rng.choice([8, 20, 60, 150]), rng.choice([8, 25, 70, 200])
            box = [rng.uniform(0, 640 - w), rng.uniform(0, 480 - h), w, h]
            category = rng.choice([3, 7])
            truth["annotations"].append({"id": len(truth["annotations"]) + 1, "image_id": image_id,
                                         "category_id": category, "bbox": box, "area": w * h,
                                         "iscrowd": int(rng.random() < 0.05)})
            if rng.random() < 0.8:
                jitter = [v + rng.uniform(-0.1, 0.1) * (w if i % 2 == 0 else h) for i, v in enumerate(box)]
                jitter[2:] = [max(1.0, jitter[2]), max(1.0, jitter[3])]
                results.append({"image_id": image_id, "category_id": category, "bbox": jitter,
                                "score": rng.choice([0.9, 0.5, round(rng.random(), 2)])})
        crowded = rng.random() < 0.1  # > 100 detections of one class: pycocotools keeps the top 100
        for _ in range(120 if crowded else rng.choice([0, 1, 2, 5])):
            w, h = rng.uniform(5, 200), rng.uniform(5, 200)
            results.append({"image_id": image_id, "category_id": 3 if crowded else rng.choice([3, 7]),
                            "bbox": [rng.uniform(0, 400), rng.uniform(0, 250), w, h], "score": round(rng.random(), 1)})
    path = tmp_path / "truth.json"
    path.write_text(json.dumps(truth))
    return load_coco(path), truth, results


def pycocotools_alone(truth, results):
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = truth
        gt.createIndex()
        evaluator = COCOeval(gt, gt.loadRes(results), iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_chunked_evaluation_equals_one_cocoeval_bit_for_bit(tmp_path, seed, chunk):
    data, truth, results = random_set(tmp_path, seed)
    per_image_class = {}
    for r in results:
        key = (r["image_id"], r["category_id"])
        per_image_class[key] = per_image_class.get(key, 0) + 1
    assert max(per_image_class.values()) > 100  # the 100-detection cap is exercised
    reference = pycocotools_alone(truth, results)
    evaluator = CocoEvaluator(data)
    for boxes in data.annotations_per_image.values():  # the evaluator holds its own copy of the truth:
        for a in boxes:                                  # eval lets go of the dicts, match_classes edits them
            a["category_id"], a["bbox"] = 3 if a["category_id"] == 7 else 7, [0.0, 0.0, 1.0, 1.0]
    data.annotations_per_image.clear()
    ids = [image["id"] for image in data.images]
    starts = list(range(0, len(ids), chunk))
    for start in reversed(starts):  # chunks out of order: accumulate must still see the images sorted by id
        part = set(ids[start:start + chunk])
        evaluator.add(sorted(part), [r for r in results if r["image_id"] in part])
    evaluation = evaluator.evaluation()
    expected = [float(reference.stats[i]) for i in (0, 1, 2, 3, 4, 5, 8)]
    assert [v if v is not None else -1.0 for v in evaluation.metrics.values()] == expected
    assert np.array_equal(evaluation.precision, reference.eval["precision"][:, :, :, 0, -1])
    assert 0.05 < evaluation.metrics["ap"] < 0.95  # neither trivial nor perfect
    # every area range and detection limit, precision and recall: the whole of accumulate's output
    precision, recall = evaluator._accumulate(reference.params)
    assert np.array_equal(precision, reference.eval["precision"])
    assert np.array_equal(recall, reference.eval["recall"])
    assert (recall > 0).any()


def test_images_without_results_count_their_truth_as_missed(tmp_path):
    data, truth, results = random_set(tmp_path, 3)
    evaluator = CocoEvaluator(data)
    ids = [image["id"] for image in data.images]
    evaluator.add(ids[:20], [r for r in results if r["image_id"] in set(ids[:20])])
    evaluator.add(ids[20:], [])
    kept = [r for r in results if r["image_id"] in set(ids[:20])]
    assert evaluator.evaluation().metrics["ap"] == float(pycocotools_alone(truth, kept).stats[0])


def test_an_image_added_twice_or_unknown_is_refused_and_nothing_to_add_is_nothing(tmp_path):
    data, _, results = random_set(tmp_path, 0)
    evaluator = CocoEvaluator(data)
    evaluator.add([], [])
    ids = [image["id"] for image in data.images]
    evaluator.add(ids[:5], [r for r in results if r["image_id"] in set(ids[:5])])
    with pytest.raises(ValueError, match=f"image id {sorted(ids[:5])[2]} was added before"):
        evaluator.add(sorted(ids[:5])[2:3], [])
    for unknown in (100000, 0):  # above and below every id of the truth
        with pytest.raises(ValueError, match=f"image id {unknown} is not in the truth"):
            evaluator.add([unknown], [])
    stray = [r for r in results if r["image_id"] in set(ids[:6])]
    first_stray = min(r["image_id"] for r in stray if r["image_id"] != ids[5])
    with pytest.raises(ValueError, match=f"a result for image id {first_stray}, which is not among"):
        evaluator.add(ids[5:6], stray)
