"""MAC counts agree with an independent counter (ptflops' aten backend, test-only dependency)."""

import pytest
import torch
from ptflops import get_model_complexity_info

from retinaslim.models.macs import count_macs, group_by_prefix, network_forward
from retinaslim.models.registry import build_model


class Network(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return network_forward(self.model, x)


@pytest.mark.parametrize("arch, size", [("slim-s", 320), ("slim-m", 256), ("retinanet_resnet50_fpn", 128)])
def test_total_macs_match_ptflops(arch, size):
    model = build_model(arch, num_classes=3, image_size=size).eval()
    ours = sum(count_macs(model, size).values())
    theirs, _ = get_model_complexity_info(Network(model), (3, size, size), as_strings=False,
                                          print_per_layer_stat=False, backend="aten")
    assert ours == pytest.approx(theirs, rel=0.05), (ours, theirs)


def test_hand_computed_conv_and_grouping():
    # slim-s stem conv: 3 -> 16 channels, 3x3, stride 2 on 64 x 64 -> 32 x 32 x 16 outputs x 3 x 9 MACs each
    counts = count_macs(build_model("slim-s", num_classes=1, image_size=64), 64)
    assert counts["backbone.stem.0.0"] == 32 * 32 * 16 * 3 * 9
    grouped = group_by_prefix(counts, 1)
    assert list(grouped) == ["backbone", "head"] and sum(grouped.values()) == sum(counts.values())


def test_run_counts_a_whole_torchvision_detector_through_its_own_path():
    import torchvision

    ssd = torchvision.models.detection.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None,
                                                                     num_classes=2).eval()
    network = sum(count_macs(ssd, 320).values())  # SSD has a backbone and a head: the network alone
    whole = sum(count_macs(ssd, 320, run=lambda: ssd([torch.zeros(3, 160, 320)])).values())
    assert whole == network > 0  # its transform resizes any image to 320 x 320: the same network runs
    assert sum(count_macs(ssd, 160).values()) < network  # without run, the size given is what runs
