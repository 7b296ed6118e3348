import pytest
import torch

from retinaslim.core.tta import Transform
from retinaslim.data.images import read_image
from retinaslim.models.checkpoint import load_checkpoint
from retinaslim.models.lean import LeanDetector, fold_batchnorm
from retinaslim.models.registry import build_model


def _assert_same_detections(expected: list[dict], actual: list[dict]) -> None:
    """Same count, same scores in order, and every box matched by one of the same label within 0.01 px
    (near-equal scores may swap places when convolutions round differently)."""
    for want, got in zip(expected, actual, strict=True):
        assert len(want["boxes"]) == len(got["boxes"])
        assert torch.allclose(want["scores"], got["scores"], atol=1e-4)
        if len(want["boxes"]):
            distance = (want["boxes"][:, None] - got["boxes"][None]).abs().amax(dim=2)  # (N, N)
            distance[want["labels"][:, None] != got["labels"][None]] = float("inf")
            assert distance.amin(dim=1).max() < 1e-2


def _busy(model):
    """Random weights score ~0.01 (the focal prior), below the threshold: raise the prior so there is work, and
    spread the scores, so that near-ties (which any change of summation order may flip at the top-k or NMS
    boundary) do not decide the comparison."""
    model.head.classification_head.cls_logits.bias.data.fill_(-1.5)
    model.head.classification_head.cls_logits.weight.data.normal_(0, 0.3)
    return model.eval()


@pytest.mark.parametrize("traced", [False, True])
def test_lean_path_matches_torchvision_image_by_image_on_a_mixed_size_batch(traced):
    torch.manual_seed(0)
    images = [torch.rand(3, 128, 96), torch.rand(3, 80, 128), torch.rand(3, 128, 128)]
    for arch, options in [("slim-s", {"norm": "gn"}), ("slim-m", {"norm": "bn"}), ("retinanet_resnet18_fpn", {})]:
        model = _busy(build_model(arch, 3, 128, **options))
        with torch.no_grad():  # torchvision on each image alone: batched, it pads them all to one size
            expected = [model([image])[0] for image in images]
        actual = LeanDetector(model, traced=traced)(images)
        assert sum(len(d["boxes"]) for d in actual) > 100  # the comparison is not vacuous
        _assert_same_detections(expected, actual)
        for image, dets in zip(images, actual):  # clipped to each image, not to the padded batch
            assert dets["boxes"][:, 2].max() <= image.shape[2] and dets["boxes"][:, 3].max() <= image.shape[1]


def test_lean_path_matches_a_trained_model(labeller, one_card_set):
    model = load_checkpoint(labeller).build()
    images = [Transform().apply(read_image(p), 128) for p in sorted(one_card_set.files["labeled"].parent.glob("labeled/*.jpg"))[:4]]
    with torch.no_grad():
        expected = model(images)
    actual = LeanDetector(model)(images)
    assert all(len(d["boxes"]) for d in expected)
    _assert_same_detections(expected, actual)


def test_folding_batchnorm_keeps_outputs_and_removes_the_norms():
    torch.manual_seed(0)
    model = build_model("slim-s", 1, 128, norm="bn")
    for module in model.modules():  # non-trivial statistics, as after training
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
    backbone = model.eval().backbone
    x = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        expected = backbone(x)
        folded = fold_batchnorm(backbone)
        actual = folded(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    for key in expected:
        assert torch.allclose(expected[key], actual[key], atol=1e-4)


def test_an_images_detections_do_not_depend_on_what_it_is_batched_with():
    """Padded to a portrait image's size, a landscape image's GroupNorm statistics take in the padding;
    LeanDetector runs images of different padded sizes as separate batches instead."""
    torch.manual_seed(0)
    detector = LeanDetector(_busy(build_model("slim-s", num_classes=2, image_size=128, norm="gn")))
    landscape, portrait, twin = torch.rand(3, 96, 128), torch.rand(3, 128, 96), torch.rand(3, 90, 120)
    alone = detector([landscape])
    assert len(alone[0]["boxes"]) > 10
    mixed = detector([portrait, landscape, twin])
    _assert_same_detections(alone, mixed[1:2])
    _assert_same_detections(detector([portrait]), mixed[:1])
    _assert_same_detections(detector([twin]), mixed[2:])  # 90 x 120 pads to 96 x 128: batched with landscape
    with torch.no_grad():
        padded_together = detector._forward([portrait, landscape])[1]  # what one padded batch gave
    assert (padded_together["scores"][:10] - alone[0]["scores"][:10]).abs().max() > 3e-4


def test_a_slim_head_runs_as_one_trunk_with_the_same_outputs():
    """fuse_head: a slim student's 1x1 branches (GroupNorm, or BatchNorm folded away) become one trunk whose
    outputs are the head's; a head with 3x3 convs (a baseline's, the teacher's) is left as it is."""
    from retinaslim.models.lean import FusedSlimHead, fuse_head

    torch.manual_seed(0)
    for arch, options in [("slim-s", {"norm": "gn"}), ("slim-m", {"norm": "bn"})]:
        model = fold_batchnorm(build_model(arch, 3, 128, **options).eval())
        for module in model.head.modules():  # random affine GroupNorm parameters: each half must keep its own
            if isinstance(module, torch.nn.GroupNorm):
                module.weight.data.uniform_(0.5, 1.5)
                module.bias.data.uniform_(-0.5, 0.5)
        fused = fuse_head(model.head)
        assert isinstance(fused, FusedSlimHead)
        assert sum(isinstance(m, torch.nn.Conv2d) for m in fused.modules()) == len(model.head.classification_head.conv) + 2
        features = [torch.randn(2, model.backbone.out_channels, s, s) for s in (16, 8, 4)]
        with torch.no_grad():
            want, got = model.head(features), fused(features)
        for key in ("cls_logits", "bbox_regression"):
            assert got[key].shape == want[key].shape
            torch.testing.assert_close(got[key], want[key], atol=1e-5, rtol=1e-5)
        assert isinstance(LeanDetector(model).head, FusedSlimHead)
    assert fuse_head(build_model("retinanet_resnet18_fpn", 3, 128).eval().head) is None


def test_a_traced_network_gives_the_eager_outputs_with_one_trace_per_batch_shape():
    torch.manual_seed(0)
    model = _busy(build_model("slim-s", 3, 128))
    eager, traced = LeanDetector(model), LeanDetector(model, traced=True)
    for count, (height, width) in [(1, (128, 96)), (1, (128, 96)), (2, (128, 96)), (1, (96, 128))]:
        batch = eager.batch([torch.rand(3, height, width) for _ in range(count)])  # new pixels each time
        for want, got in zip(eager.raw(batch), traced.raw(batch), strict=True):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert len(traced._traces) == 3 and not eager._traces  # (1, 128, 96) reused; batch 2 and the landscape new
