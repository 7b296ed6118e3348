import json
import random
import tracemalloc

import pytest

from retinaslim.data.coco import load_coco
from retinaslim.data.stream import coco_writer, open_stream
from retinaslim.errors import UserError


def machine_labels(num_images: int, boxes_per_image: int = 10, shuffled: bool = False, seed: int = 0) -> dict:
    rng = random.Random(seed)
    images = [{"id": i + 1, "file_name": f"im_{i:06d}.jpg", "width": 64, "height": 64} for i in range(num_images)]
    annotations = [{"id": i * boxes_per_image + j + 1, "image_id": i + 1, "category_id": 1 + j % 2,
                    "bbox": [rng.uniform(0, 30), rng.uniform(0, 30), rng.uniform(1, 30), rng.uniform(1, 30)],
                    "area": 1.0, "iscrowd": 0, "score": rng.random(), "agreement": rng.randint(1, 6)}
                   for i in range(num_images) for j in range(boxes_per_image)]
    if shuffled:
        rng.shuffle(annotations)
    return {"info": {"transforms": ["scale1"]}, "categories": [{"id": 1, "name": "id_card"}, {"id": 2, "name": "passport"}],
            "images": images, "annotations": annotations}


def read_all(stream) -> list:
    return [(image, annotations) for image, annotations in stream]


@pytest.mark.parametrize("shuffled", [False, True])
def test_stream_yields_what_load_coco_reads(tmp_path, shuffled):
    path = tmp_path / "pseudo.json"
    path.write_text(json.dumps(machine_labels(50, shuffled=shuffled)))
    stream = open_stream(path)
    assert stream.grouped is not shuffled  # a hand-made order is read in memory, to the same result
    coco = load_coco(path)
    assert read_all(stream) == [(image, coco.annotations_per_image[image["id"]]) for image in coco.images]
    assert stream.info == {"transforms": ["scale1"]} and stream.classes.names == ("id_card", "passport")


def test_writer_round_trip_and_atomicity(tmp_path):
    data = machine_labels(20)
    source = tmp_path / "pseudo.json"
    source.write_text(json.dumps(data))
    out = tmp_path / "out.json"
    with coco_writer(out, data["info"], data["categories"]) as add:
        for image, annotations in open_stream(source):
            add(image, annotations)
    assert json.loads(out.read_text()) == {k: data[k] for k in ("info", "categories", "images", "annotations")}
    before = out.read_bytes()
    with pytest.raises(RuntimeError), coco_writer(out, {}, data["categories"]) as add:
        add(data["images"][0], [])
        raise RuntimeError("killed half way")
    assert out.read_bytes() == before  # the previous file stays whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json", "pseudo.json"]  # no temporary left


@pytest.mark.parametrize("case, fragment", [
    ("unknown_image", "points at image id 999"),
    ("duplicate_annotation", "duplicate annotation id 1"),
    ("bad_score", "score 2"),
    ("no_annotations_list", "missing list 'annotations'"),
    ("null_annotation", "annotation None needs an integer 'id'"),  # not mistaken for the end of the list
    ("list_image_id", "needs an integer 'id'"),
    ("no_images_number_annotation", "annotation 5 needs an integer 'id'"),
    ("nan_area", "annotation 1 has area nan"),  # load_coco names it (json reads NaN, ijson refuses it)
])
def test_stream_refuses_what_load_coco_refuses(tmp_path, case, fragment):
    data = machine_labels(3, boxes_per_image=2)
    if case == "unknown_image":
        data["annotations"][-1]["image_id"] = 999
    elif case == "duplicate_annotation":
        data["annotations"][-1]["id"] = 1
    elif case == "bad_score":
        data["annotations"][2]["score"] = 2
    elif case == "no_annotations_list":
        del data["annotations"]
    elif case == "null_annotation":
        data["annotations"].insert(1, None)
    elif case == "list_image_id":
        data["images"][0]["id"] = [1]
    elif case == "no_images_number_annotation":
        data["images"], data["annotations"] = [], [5]
    else:
        data["annotations"][0]["area"] = float("nan")  # json.dumps writes NaN, which is not JSON
    path = tmp_path / "pseudo.json"
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match=fragment) as error:
        read_all(open_stream(path))
    assert "\n" not in str(error.value) and str(path) in str(error.value)


def peak_bytes_reading(path) -> int:
    tracemalloc.start()
    for _ in open_stream(path):
        pass
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def test_stream_memory_does_not_grow_with_the_file(tmp_path):
    small, large = tmp_path / "small.json", tmp_path / "large.json"
    small.write_text(json.dumps(machine_labels(300)))
    large.write_text(json.dumps(machine_labels(3000)))
    # 10x the images and boxes: json.load would hold 10x the objects; the stream holds one image at a time
    # (plus 8 bytes per annotation id and a set of image ids, for the duplicate checks)
    assert peak_bytes_reading(large) < 3 * peak_bytes_reading(small)
    assert len(json.loads(large.read_text())["annotations"]) * 200 > 4 * peak_bytes_reading(large)
