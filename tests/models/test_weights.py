"""Weights from elsewhere: every accepted layout read, matched by name and shape, and nothing skipped unreported."""

import pickle

import pytest
import torch
from torchvision.models import resnet50
from torchvision.models.detection import retinanet_resnet50_fpn

from retinaslim.errors import UserError
from retinaslim.models.registry import build_model
from retinaslim.models.teacher import coco_weights_path
from retinaslim.models.weights import load_matching, read_weights, summarise_names
from tests.conftest import CreatesFile

STATE = {"backbone.body.conv1.weight": torch.arange(6.0).view(2, 3), "head.bias": torch.ones(2)}


@pytest.mark.parametrize("wrap", [
    lambda s: s,
    lambda s: {"model": s, "epoch": 3},
    lambda s: {"state_dict": s},
    lambda s: {"model": {"module." + k: v for k, v in s.items()}},  # saved from DistributedDataParallel
])
def test_every_wrapper_gives_the_same_tensors(tmp_path, wrap):
    torch.save(wrap(STATE), tmp_path / "w.pth")
    state = read_weights(tmp_path / "w.pth").state
    assert list(state) == list(STATE) and all(torch.equal(state[k], STATE[k]) for k in STATE)


def test_a_resnet50_classifier_becomes_the_backbone_and_its_fc_is_reported_unused(tmp_path):
    torch.manual_seed(0)
    classifier = resnet50(weights=None)
    torch.save(classifier.state_dict(), tmp_path / "r50.pth")
    model = build_model("retinanet_resnet50_fpn", num_classes=2, image_size=64)
    report = load_matching(model, read_weights(tmp_path / "r50.pth"), "retinanet_resnet50_fpn")
    body = model.backbone.body.state_dict()
    for name, tensor in classifier.state_dict().items():
        if not name.startswith("fc."):
            assert torch.equal(body[name], tensor), name
    assert report.unused == ["fc.weight", "fc.bias"] and not report.reinitialised
    assert report.missing and all(k.startswith(("backbone.fpn.", "head.")) for k in report.missing)
    assert summarise_names(report.missing).startswith("backbone.fpn.* (")


def test_a_class_head_for_other_classes_is_reinitialised_and_named(tmp_path):
    torch.manual_seed(0)
    coco_like = retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
    torch.save(coco_like.state_dict(), tmp_path / "coco.pth")
    model = build_model("retinanet_resnet50_fpn", num_classes=3, image_size=64)
    own_logits = model.head.classification_head.cls_logits.weight.clone()
    report = load_matching(model, read_weights(tmp_path / "coco.pth"), "retinanet_resnet50_fpn")
    assert report.reinitialised == ["head.classification_head.cls_logits.weight (file 819x256x3x3, model 27x256x3x3)",
                                    "head.classification_head.cls_logits.bias (file 819, model 27)"]
    assert not report.unused and not report.missing
    assert torch.equal(model.head.classification_head.cls_logits.weight, own_logits)
    state = model.state_dict()
    for name, tensor in coco_like.state_dict().items():
        if "cls_logits" not in name:
            assert torch.equal(state[name], tensor), name


def test_a_file_that_carries_code_is_refused_unrun(tmp_path):
    marker = tmp_path / "pwned"
    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"model": STATE, "args": CreatesFile(str(marker))}, f)
    with pytest.raises(UserError, match=r"evil\.pth: refused to load.*save only the weights"):
        read_weights(tmp_path / "evil.pth")
    assert not marker.exists()


def test_files_without_fitting_tensors_are_errors(tmp_path):
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(UserError, match=r"list\.pth: not a state dict"):
        read_weights(tmp_path / "list.pth")
    torch.save({"encoder.weight": torch.zeros(2)}, tmp_path / "other.pth")
    model = build_model("retinanet_resnet50_fpn", num_classes=1, image_size=64)
    with pytest.raises(UserError, match=r"other\.pth: none of its 1 tensors fit retinanet_resnet50_fpn"):
        load_matching(model, read_weights(tmp_path / "other.pth"), "retinanet_resnet50_fpn")


def test_coco_weights_come_from_the_local_cache_only(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    expected = tmp_path / "checkpoints" / "retinanet_resnet50_fpn_v2_coco-5905b1c5.pth"
    with pytest.raises(UserError, match=f"at {expected} \\(nothing is downloaded\\)"):
        coco_weights_path("retinanet_resnet50_fpn_v2")
    expected.parent.mkdir()
    expected.write_bytes(b"")
    assert coco_weights_path("retinanet_resnet50_fpn_v2") == expected
    with pytest.raises(UserError, match="COCO weights for retinanet_resnet50_fpn, retinanet_resnet50_fpn_v2 only"):
        coco_weights_path("slim-s")
