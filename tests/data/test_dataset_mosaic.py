import json

import numpy as np
import pytest
import torch
from PIL import Image

from retinaslim.data.coco import ClassMap, load_coco
from retinaslim.data.dataset import DetectionDataset


@pytest.fixture
def rectangles(tmp_path):
    """Ten black images (some landscape, some portrait), each with one or two white rectangles and their boxes;
    every fourth image's rectangles are ignore regions (iscrowd)."""
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for i in range(10):
        width, height = (160, 120) if i % 3 else (90, 150)
        pixels = np.zeros((height, width, 3), dtype=np.uint8)
        for _ in range(1 + i % 2):
            w, h = int(rng.integers(15, 40)), int(rng.integers(15, 40))
            x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
            pixels[y:y + h, x:x + w] = 255
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": 1 + i % 2,
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": int(i % 4 == 0)})
        Image.fromarray(pixels).save(tmp_path / f"{i}.png")
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": width, "height": height})
    path = tmp_path / "rectangles.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}))
    coco = load_coco(path)
    return coco, ClassMap.from_categories(coco.categories)


def test_mosaic_boxes_frame_their_rectangles(rectangles):
    coco, classes = rectangles
    data = DetectionDataset(coco, classes, 128, "mosaic", mosaic_until=5)
    data.augment = None  # the mosaic's geometry alone: light's colour jitter would blur "white"
    boxes_seen = ignore_seen = 0
    for index in range(len(data)):
        for epoch in (1, 2, 3):
            image, target = data[index, epoch]
            assert image.shape == (3, 128, 128)  # four images of either orientation tile one square
            white = image.min(dim=0).values > 0.6  # the canvas is grey (0.45), the pictures black and white
            covered = torch.zeros_like(white)
            ignore_seen += len(target["ignore"])
            for x1, y1, x2, y2 in torch.cat([target["boxes"], target["ignore"]]).round().int().tolist():
                # The box is the white rectangle's: white inside (resampling softens a pixel at its edges).
                inside = white[y1 + 1:y2 - 1, x1 + 1:x2 - 1]
                assert inside.numel() and inside.float().mean() > 0.95, (index, epoch, (x1, y1, x2, y2))
                covered[max(y1 - 1, 0):y2 + 1, max(x1 - 1, 0):x2 + 1] = True
                boxes_seen += 1
            # White left outside every box: only slivers of rectangles cut to under 20% of their area.
            assert (white & ~covered).sum() < 0.2 * 40 * 40 * 1.5**2
    assert boxes_seen > 3 * len(data) and ignore_seen > 0  # most mosaics hold boxes from several images


def test_mosaic_is_reproducible_and_closes_after_its_epochs(rectangles):
    coco, classes = rectangles
    data = DetectionDataset(coco, classes, 128, "mosaic", seed=3, mosaic_until=2)
    plain = DetectionDataset(coco, classes, 128, "light", seed=3)
    first, again = data[4, 1], data[4, 1]
    assert torch.equal(first[0], again[0]) and torch.equal(first[1]["boxes"], again[1]["boxes"])
    assert not torch.equal(first[0], data[4, 2][0])  # another epoch, another mosaic
    # After mosaic_until, the preset is `light` on the image alone (YOLO's close_mosaic).
    late, light = data[4, 3], plain[4, 3]
    assert late[0].shape == light[0].shape == (3, 96, 128)
    assert torch.equal(late[0], light[0]) and torch.equal(late[1]["boxes"], light[1]["boxes"])


def test_train_stage_closes_the_mosaic_for_the_last_epochs(tiny_cards, tmp_path, monkeypatch):
    from retinaslim.config import TRAIN_DEFAULTS
    from retinaslim.stages import train as train_stage

    monkeypatch.setattr(train_stage, "CLOSE_MOSAIC_EPOCHS", 1)
    mosaic_indices = []
    original = DetectionDataset.mosaic
    monkeypatch.setattr(DetectionDataset, "mosaic", lambda self, index, rng: (
        mosaic_indices.append(index), original(self, index, rng))[1])
    options = {**TRAIN_DEFAULTS["student"], "image_size": 64, "batch_size": 4, "epochs": 2, "augment": "mosaic",
               "workers": 0}
    train_stage.train(train_stage.TrainConfig(role="student", labeled=tiny_cards.files["labeled"],
                                              val=tiny_cards.files["val"], out=tmp_path / "run", **options))
    assert sorted(mosaic_indices) == list(range(8))  # epoch 1: each of the 8 images once; epoch 2: none


def test_a_run_too_short_for_mosaics_says_so_and_makes_none(tiny_cards, tmp_path, monkeypatch):
    from retinaslim.config import TRAIN_DEFAULTS
    from retinaslim.stages import train as train_stage
    from tests.conftest import LogLines

    monkeypatch.setattr(DetectionDataset, "mosaic", lambda *args: pytest.fail("a mosaic in a closed epoch"))
    reporter = LogLines()
    options = {**TRAIN_DEFAULTS["student"], "image_size": 64, "batch_size": 4, "epochs": 2, "augment": "mosaic",
               "workers": 0}
    train_stage.train(train_stage.TrainConfig(role="student", labeled=tiny_cards.files["labeled"],
                                              val=tiny_cards.files["val"], out=tmp_path / "run", **options), reporter)
    assert any("a run of 2 epochs sees no mosaics" in line and "trains as `light`" in line for line in reporter.lines)
