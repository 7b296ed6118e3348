import torch

from retinaslim.models.macs import count_macs
from retinaslim.models.registry import build_model, list_archs


def test_baselines_are_registered_train_and_are_heavier_than_the_student():
    assert set(list_archs("baseline")) == {"retinanet_resnet18_fpn", "retinanet_mobilenet_v2_fpn", "retinanet_shufflenet_v2_fpn"}
    student_macs = sum(count_macs(build_model("slim-s", 1, 128), 128).values())
    for arch in list_archs("baseline"):
        model = build_model(arch, 2, 128)
        features = model.backbone(torch.rand(1, 3, 128, 128))
        assert [f.shape[-1] for f in features.values()] == [16, 8, 4, 2, 1]  # P3-P7
        losses = model([torch.rand(3, 128, 96)], [{"boxes": torch.tensor([[10.0, 10, 60, 50]]), "labels": torch.tensor([1])}])
        assert all(torch.isfinite(v) for v in losses.values())
        assert sum(count_macs(model, 128).values()) > 20 * student_macs
