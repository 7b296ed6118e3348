"""benchmarks/peers.py's own parts: the split ONNX path of the SSD peer gives the torch model's detections."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
peers = pytest.importorskip("peers")


def test_ssd_onnx_gives_the_torch_detections(tmp_path):
    torch.manual_seed(0)
    peer = peers.ssdlite(num_classes=2, image_size=320).eval()
    with torch.no_grad():  # random head weights: scores far from the untrained model's near-ties
        for conv in peer.model.head.modules():
            if isinstance(conv, torch.nn.Conv2d):
                conv.weight.normal_(0, 0.05)
    image = torch.rand(3, 240, 320)
    with torch.no_grad():
        expected = peer([image])[0]
    found = peers.SsdOnnx(peer, tmp_path / "ssd.onnx")([image])[0]
    assert len(expected["boxes"]) > 20 and len(found["boxes"]) == len(expected["boxes"])
    assert set(found["labels"].tolist()) <= {0, 1}  # retinaslim's 0-based labels, as the torch path gives
    torch.testing.assert_close(found["scores"], expected["scores"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(found["boxes"], expected["boxes"], atol=1e-2, rtol=1e-4)  # pixels of the 320 x 240 image
    assert torch.equal(found["labels"], expected["labels"])
