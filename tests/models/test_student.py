import torch

from retinaslim.models.registry import build_model


def test_slim_student_is_small_and_uses_only_1x1_convs_in_its_heads():
    model = build_model("slim-s", num_classes=1, image_size=320)
    assert sum(p.numel() for p in model.parameters()) < 300_000
    head_convs = [m for m in model.head.modules() if isinstance(m, torch.nn.Conv2d)]
    assert head_convs and all(m.kernel_size == (1, 1) for m in head_convs)
    stem = model.backbone.stem[0][0]
    assert stem.kernel_size == (3, 3) and stem.dilation == (2, 2)


def test_student_outputs_per_level_and_trains():
    model = build_model("slim-s", num_classes=3, image_size=128)
    features = model.backbone(torch.rand(2, 3, 128, 96))
    assert [tuple(f.shape[-2:]) for f in features.values()] == [(16, 12), (8, 6), (4, 3)]  # strides 8, 16, 32
    losses = model([torch.rand(3, 128, 96)], [{"boxes": torch.tensor([[10.0, 10, 60, 50]]), "labels": torch.tensor([2])}])
    assert set(losses) == {"classification", "bbox_regression"} and all(torch.isfinite(v) for v in losses.values())


def test_bn_variant_builds():
    model = build_model("slim-s", num_classes=1, image_size=128, norm="bn")
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert not any(isinstance(m, torch.nn.GroupNorm) for m in model.modules())


def test_the_family_grows_from_s_to_m_to_l():
    from retinaslim.models.macs import count_macs

    sizes = []
    for arch in ("slim-s", "slim-m", "slim-l"):
        model = build_model(arch, num_classes=3, image_size=320)
        sizes.append((sum(p.numel() for p in model.parameters()), sum(count_macs(model, 320).values())))
    assert sizes == sorted(sizes) and len(set(sizes)) == 3
    assert [params for params, _ in sizes[:2]] == [125_434, 319_202]  # the counts slim_s's and slim_m's docstrings give
    assert 0.9e6 < sizes[2][0] < 1.1e6  # slim-l: about 1 M parameters, as issue 16 asks
