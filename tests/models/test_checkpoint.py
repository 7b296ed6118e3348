import pickle

import pytest
import torch

from retinaslim.errors import UserError
from retinaslim.models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from retinaslim.models.registry import build_model, list_archs
from tests.conftest import CreatesFile


def test_round_trip_keeps_everything(tmp_path):
    model = build_model("slim-s", num_classes=2, image_size=96, norm="bn")
    classes = [{"id": 3, "name": "id_card"}, {"id": 17, "name": "passport"}]
    save_checkpoint(tmp_path / "m.pt", Checkpoint("slim-s", {"norm": "bn"}, classes, 96,
                                                  {"lr": 0.1}, 4, {"ap": 0.5}, model.state_dict()))
    loaded = load_checkpoint(tmp_path / "m.pt")
    assert loaded.classes == classes and loaded.image_size == 96 and loaded.epoch == 4 and loaded.metrics == {"ap": 0.5}
    rebuilt = loaded.build()
    x = [torch.rand(3, 96, 64)]
    model.eval()
    with torch.no_grad():
        assert torch.equal(model.backbone(x[0][None])["c3"], rebuilt.backbone(x[0][None])["c3"])
    assert not list(tmp_path.glob(".*tmp"))  # no temporary file left behind


def test_code_carrying_checkpoint_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"format": "retinaslim-checkpoint/1", "model": CreatesFile(str(marker))}, f)
    with pytest.raises(UserError, match="refused to load"):
        load_checkpoint(path)
    assert not marker.exists()


def test_foreign_and_missing_files(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="not a retinaslim checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(UserError, match="text.pt"):
        load_checkpoint(tmp_path / "text.pt")
    with pytest.raises(UserError, match="not found"):
        load_checkpoint(tmp_path / "none.pt")


def test_registry_names_teacher_and_student_builders():
    assert {"retinanet_resnet50_fpn", "retinanet_resnet50_fpn_v2"} <= set(list_archs("teacher"))
    assert {"slim-s", "slim-m"} <= set(list_archs("student"))
    with pytest.raises(UserError, match="unknown architecture"):
        build_model("resnet9000", 1, 64)


def test_pretrained_without_local_weights_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(UserError, match="nothing is downloaded"):
        build_model("retinanet_resnet50_fpn", 1, 64, pretrained=True)


def test_weights_of_another_layout_are_a_clear_error(tmp_path):
    state = build_model("slim-s", num_classes=1, image_size=96).state_dict()
    state["backbone.fpn.layer_blocks.0.0.weight"] = torch.zeros(64, 64, 3, 3)  # the dense FPN conv of older versions
    save_checkpoint(tmp_path / "old.pt", Checkpoint("slim-s", {}, [{"id": 1, "name": "card"}], 96, model=state))
    with pytest.raises(UserError, match=r"old\.pt: the weights do not fit slim-s"):
        load_checkpoint(tmp_path / "old.pt").build()
    assert "source" not in torch.load(tmp_path / "old.pt", weights_only=True)  # where it was read from is not saved
