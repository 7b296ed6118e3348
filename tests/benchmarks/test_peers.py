"""benchmarks/peers.py's own parts: the SSD peer's split paths (traced network, ONNX network) give the torch
model's detections; a distilled student's row."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
peers = pytest.importorskip("peers")


@pytest.mark.parametrize("runtime", ["traced", "onnx"])
def test_the_split_ssd_gives_the_torch_detections(runtime, tmp_path):
    torch.manual_seed(0)
    peer = peers.ssdlite(num_classes=2, image_size=320).eval()
    with torch.no_grad():  # random head weights: scores far from the untrained model's near-ties
        for conv in peer.model.head.modules():
            if isinstance(conv, torch.nn.Conv2d):
                conv.weight.normal_(0, 0.05)
    image = torch.rand(3, 240, 320)
    with torch.no_grad():
        expected = peer([image])[0]
    split = peers.SsdSplit(peer, onnx=tmp_path / "ssd.onnx" if runtime == "onnx" else None)
    found = split([image])[0]
    assert (tmp_path / "ssd.onnx").exists() == (runtime == "onnx")
    assert len(expected["boxes"]) > 20 and len(found["boxes"]) == len(expected["boxes"])
    assert set(found["labels"].tolist()) <= {0, 1}  # retinaslim's 0-based labels, as the torch path gives
    torch.testing.assert_close(found["scores"], expected["scores"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(found["boxes"], expected["boxes"], atol=1e-2, rtol=1e-4)  # pixels of the 320 x 240 image
    assert torch.equal(found["labels"], expected["labels"])


def _slim_checkpoint(folder: Path, image_size: int) -> Path:
    from retinaslim.models.checkpoint import Checkpoint, save_checkpoint
    from retinaslim.models.registry import build_model

    classes = [{"id": 1, "name": "card"}]
    folder.mkdir()
    save_checkpoint(folder / "best.pt", Checkpoint("slim-s", {}, classes, image_size,
                                                   model=build_model("slim-s", 1, image_size).state_dict()))
    return folder / "best.pt"


def test_a_distilled_student_row_takes_its_epochs_best_epoch_and_minutes_from_its_training_log(tmp_path):
    best = _slim_checkpoint(tmp_path / "student_default", 128)
    (best.parent / "results.csv").write_text("epoch,step,ap,time\n1,10,0.20,60.0\n2,20,0.35,118.8\n3,30,0.30,180.0\n")
    run = peers.distilled_run("slim-s distilled", best, 128)
    assert run["arch"] == "slim-s" and run["labels"] == "human + machine"
    assert (run["epochs"], run["best_epoch"], run["val_ap"], run["train_min"]) == (3, 2, 0.35, 3.0)


def test_a_distilled_student_at_another_size_or_without_its_log_is_refused_by_name(tmp_path):
    best = _slim_checkpoint(tmp_path / "student", 128)
    with pytest.raises(SystemExit, match="at 128 px; the table compares slim students .* at --image-size 320"):
        peers.distilled_run("d", best, 320)
    with pytest.raises(SystemExit, match="no results.csv beside it"):
        peers.distilled_run("d", best, 128)
