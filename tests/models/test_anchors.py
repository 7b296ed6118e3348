import torch

from retinaslim.models.anchors import DEFAULT_ANCHORS, anchor_generator, fit_anchors, shape_iou
from retinaslim.models.registry import build_model


def test_fit_recovers_planted_sizes_and_ratios():
    sizes = [0.05, 0.08, 0.15, 0.25, 0.4, 0.6]
    ratios = [0.5, 1.0, 2.0]
    g = torch.Generator().manual_seed(0)
    shapes = []
    for s in sizes:
        for r in ratios:
            jitter = 1 + 0.03 * torch.randn(40, 2, generator=g, dtype=torch.float64)
            shapes.append(torch.tensor([s / r ** 0.5, s * r ** 0.5], dtype=torch.float64) * jitter)
    fitted = fit_anchors(torch.cat(shapes))
    flat = [s for level in fitted["scales"] for s in level]
    assert [len(level) for level in fitted["scales"]] == [2, 2, 2]
    assert all(abs(a - b) / b < 0.05 for a, b in zip(flat, sizes, strict=True))
    assert all(abs(a - b) / b < 0.05 for a, b in zip(fitted["ratios"], ratios, strict=True))
    assert shape_iou(torch.cat(shapes), fitted).mean() > 0.9 > shape_iou(torch.cat(shapes), DEFAULT_ANCHORS).mean()


def test_shape_iou_is_one_for_an_anchor_shape_and_hand_computed_otherwise():
    anchors = {"scales": [[0.2]], "ratios": [1.0]}
    boxes = torch.tensor([[0.2, 0.2], [0.1, 0.2]], dtype=torch.float64)
    assert torch.allclose(shape_iou(boxes, anchors), torch.tensor([1.0, 0.5], dtype=torch.float64))


def test_anchor_sets_build_generators_and_students():
    generator = anchor_generator(320, DEFAULT_ANCHORS)
    assert generator.num_anchors_per_location() == [6, 6, 6]
    assert generator.sizes[0] == (32.0, 320 * 0.159)
    fitted = {"scales": [[0.1, 0.12], [0.2, 0.3], [0.4, 0.5]], "ratios": [0.7, 1.3]}
    model = build_model("slim-s", 1, 320, anchors=fitted)
    assert model.anchor_generator.num_anchors_per_location() == [4, 4, 4]
    assert model.head.classification_head.cls_logits.out_channels == 4
