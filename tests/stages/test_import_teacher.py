"""import-teacher: a RetinaNet trained with torchvision predicts through retinaslim what it predicts in torchvision."""

import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.models.detection import retinanet_resnet50_fpn, retinanet_resnet50_fpn_v2
from torchvision.ops import box_iou

from retinaslim.data.coco import coco_bbox
from retinaslim.data.images import read_image
from retinaslim.models.checkpoint import load_checkpoint
from tests.conftest import CreatesFile, assert_user_error, run_cli

BUILDERS = {"retinanet_resnet50_fpn": retinanet_resnet50_fpn, "retinanet_resnet50_fpn_v2": retinanet_resnet50_fpn_v2}
TOP = 20  # boxes compared, best first


def trained_elsewhere(arch, path):
    """A seeded torchvision RetinaNet (3 classes) that keeps 120 x 160 images at their size, saved as DDP users save it."""
    torch.manual_seed(0)
    model = BUILDERS[arch](weights=None, weights_backbone=None, num_classes=3, min_size=120, max_size=160).eval()
    with torch.no_grad():  # the prior bias puts every score near 0.01, under the 0.05 threshold; centre them near 0.5
        model.head.classification_head.cls_logits.bias.zero_()
    torch.save({"model": {"module." + k: v for k, v in model.state_dict().items()}}, path)
    return model


@pytest.fixture(scope="module")
def v1_weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("v1") / "retinanet.pth"
    trained_elsewhere("retinanet_resnet50_fpn", path)
    return path


@pytest.mark.parametrize("arch", list(BUILDERS))
def test_imported_retinanet_predicts_what_torchvision_predicts(arch, tmp_path):
    model = trained_elsewhere(arch, tmp_path / "weights.pth")
    result = run_cli("import-teacher", tmp_path / "weights.pth", "--arch", arch, "--classes", "cat, dog,bird",
                     "--image-size", 160, "--out", tmp_path / "teacher.pt")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "saved to" in result.stdout and "teacher.pt" in result.stdout
    teacher = load_checkpoint(tmp_path / "teacher.pt")
    assert teacher.arch == arch and teacher.image_size == 160
    assert teacher.classes == [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "bird"}]
    assert teacher.arch_options == {"anchor_sizes": "torchvision", "detections_per_image": 300}
    rebuilt = teacher.build()
    assert rebuilt.anchor_generator.sizes == model.anchor_generator.sizes  # 32-512 px, not scaled to 160
    assert (rebuilt.score_thresh, rebuilt.nms_thresh, rebuilt.topk_candidates, rebuilt.detections_per_img) == \
           (model.score_thresh, model.nms_thresh, model.topk_candidates, model.detections_per_img) == (0.05, 0.5, 1000, 300)

    pixels = np.random.default_rng(1).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "photo.png")
    with torch.no_grad():
        expected = model([read_image(tmp_path / "photo.png")])[0]
    result = run_cli("predict", tmp_path / "photo.png", "--weights", tmp_path / "teacher.pt", "--score-thresh", 0.05,
                     "--out", tmp_path / "preds.json", "--workers", 0, "--device", "cpu")
    assert result.exit_code == 0, result.stdout + result.stderr
    found = json.loads((tmp_path / "preds.json").read_text())["annotations"]
    # Every box torchvision found, except the slivers on the border that the COCO box rule leaves out of any file
    assert len(expected["boxes"]) == 300
    assert len(found) == sum(coco_bbox(box, 160, 120) is not None for box in expected["boxes"].tolist()) > 290
    boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in found)])
    scores = torch.tensor([a["score"] for a in found])
    labels = torch.tensor([a["category_id"] - 1 for a in found])

    wanted = [i for i in range(len(expected["boxes"])) if (expected["boxes"][i, 2:] > expected["boxes"][i, :2]).all()][:TOP]
    iou = box_iou(expected["boxes"][wanted], boxes) * (expected["labels"][wanted, None] == labels[None])
    best_iou, best = iou.max(dim=1)
    assert best_iou.min() > 0.98, best_iou
    assert (scores[best] - expected["scores"][wanted]).abs().max() < 0.002


def test_a_class_list_of_another_length_is_one_line_naming_both_numbers(v1_weights, tmp_path):
    result = run_cli("import-teacher", v1_weights, "--arch", "retinanet_resnet50_fpn", "--classes", "cat,dog",
                     "--out", tmp_path / "teacher.pt")
    assert_user_error(result, str(v1_weights), "has 3 outputs", "--classes names 2")
    assert not (tmp_path / "teacher.pt").exists()


def test_weights_of_another_architecture_are_refused(v1_weights, tmp_path):
    result = run_cli("import-teacher", v1_weights, "--arch", "retinanet_resnet50_fpn_v2", "--classes", "a,b,c",
                     "--out", tmp_path / "teacher.pt")
    assert_user_error(result, str(v1_weights), "not retinanet_resnet50_fpn_v2 weights", "check --arch")
    assert_user_error(run_cli("import-teacher", v1_weights, "--arch", "retinanet_resnet18_fpn", "--classes", "a,b,c",
                              "--out", tmp_path / "teacher.pt"), "--arch 'retinanet_resnet18_fpn'", "choose one of")
    assert_user_error(run_cli("import-teacher", v1_weights, "--arch", "retinanet_resnet50_fpn", "--classes", "a,b,a",
                              "--out", tmp_path / "teacher.pt"), "'a' is named twice")
    assert not (tmp_path / "teacher.pt").exists()


def test_a_file_that_carries_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"model": {"conv.weight": torch.zeros(1)}, "args": CreatesFile(str(marker))}, f)
    result = run_cli("import-teacher", tmp_path / "evil.pth", "--arch", "retinanet_resnet50_fpn", "--classes", "a",
                     "--out", tmp_path / "teacher.pt")
    assert_user_error(result, "evil.pth", "refused to load", "save only the weights")
    assert not marker.exists() and not (tmp_path / "teacher.pt").exists()
