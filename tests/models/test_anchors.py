import torch

from retinaslim.models.anchors import (DEFAULT_ANCHORS, anchor_generator, class_coverage, covered, fit_anchors,
                                      fit_retinanet_anchors, grid_coverage, retinanet_anchors, shape_iou)
from retinaslim.models.common import scaled_anchor_generator
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


def _boxes(size: int, sides: tuple[float, float], num: int, seed: int = 0) -> torch.Tensor:
    """(num, 4) xyxy boxes with sides drawn uniformly in ``sides`` px (aspect ratio 0.63), anywhere in the image."""
    g = torch.Generator().manual_seed(seed)
    w = sides[0] + (sides[1] - sides[0]) * torch.rand(num, generator=g, dtype=torch.float64)
    h = 0.63 * w
    x = (size - w) * torch.rand(num, generator=g, dtype=torch.float64)
    y = (size - h) * torch.rand(num, generator=g, dtype=torch.float64)
    return torch.stack([x, y, x + w, y + h], dim=1)


def test_teacher_keeps_torchvisions_anchors_when_the_boxes_allow():
    boxes = _boxes(512, (40, 300), 300)
    anchors, coverage = fit_retinanet_anchors(boxes, 512)
    assert [round(level[0] * 512) for level in anchors["scales"]] == [32, 64, 128, 256, 512]  # 4x each stride
    assert coverage > 0.97 and 0.55 < anchors["ratios"][0] < 0.7  # every box has the ratio 0.63


def test_teacher_anchors_shrink_for_small_boxes_and_cover_them_where_scaled_ones_did_not():
    # 128 px images with 12-40 px boxes: the teacher's old anchors (torchvision's scaled by 128/512) are 1x their
    # stride, so boxes between anchor centres have no anchor of IoU >= 0.5
    boxes = _boxes(128, (12, 40), 400)
    anchors, coverage = fit_retinanet_anchors(boxes, 128)
    scaled = {"scales": [[s / 128 for s in level] for level in scaled_anchor_generator(128).sizes], "ratios": [0.63, 1.0, 1.59]}
    assert anchors["scales"][0][0] * 128 < 32  # smaller than torchvision's 32 px at P3
    assert coverage > 0.85 and coverage > grid_coverage(boxes, 128, scaled) + 0.15  # 0.87 vs 0.65
    assert coverage > grid_coverage(boxes, 128, retinanet_anchors(128, 4.0, anchors["ratios"])) + 0.4  # vs 0.39


def test_teacher_builds_with_fitted_anchors():
    anchors, _ = fit_retinanet_anchors(_boxes(128, (12, 40), 100), 128)
    model = build_model("retinanet_resnet50_fpn", 2, 128, anchors=anchors)
    assert model.anchor_generator.num_anchors_per_location() == [9] * 5
    assert model.anchor_generator.sizes[0][0] == 128 * anchors["scales"][0][0]


def test_class_coverage_counts_each_class_and_warns_about_a_starved_one():
    # slim-s's three levels (strides 8, 16, 32) at 128 px. "card": 30-40 px boxes, near the 32 px anchors;
    # "dot": 3 px boxes, far below the smallest 16 px anchor, so no anchor reaches IoU 0.5 with any of them.
    anchors = {"scales": [[0.125, 0.19], [0.25, 0.38], [0.5, 0.75]], "ratios": [0.63, 1.0]}
    cards, dots = _boxes(128, (30, 40), 50), _boxes(128, (3, 3.5), 20, seed=1)
    boxes = torch.cat([cards, dots]) / 128
    labels = torch.tensor([0] * 50 + [1] * 20)
    shares, line = class_coverage(boxes, labels, ["card", "dot"], 128, anchors)
    assert shares["card"] > 0.9 and shares["dot"] == 0.0
    assert line == (f"warning: boxes with an anchor of IoU >= 0.5 at 128 px: card {shares['card']:.0%}, dot 0%; dot below 80%: "
                    "few positive anchors, so poorly learnt (a larger --image-size helps: the anchor grid's strides are fixed in pixels)")
    assert covered(cards, 128, anchors).sum().item() == round(shares["card"] * 50)
    shares, line = class_coverage(boxes[:50], labels[:50], ["card", "dot"], 128, anchors)  # a class without boxes is left out
    assert list(shares) == ["card"] and line.startswith("boxes with an anchor of IoU >= 0.5 at 128 px: card ")
    assert class_coverage(boxes[:0], labels[:0], ["card"], 128, anchors) == ({}, "boxes with an anchor of IoU >= 0.5 at 128 px: no boxes")


def test_covered_lays_the_students_levels_at_strides_8_16_32_on_the_padded_input():
    # torchvision puts anchor centres at multiples of the stride. A 16 px square centred at (24, 24) sits on a
    # 16 px anchor of the stride-8 level (IoU 1); moved to (28, 24), half a stride off, IoU 0.6 (still a
    # positive); on a stride-16 level (centres 16, 32) the box at (24, 24) would reach IoU 0.14 only.
    anchors = {"scales": [[0.125], [0.5], [0.75]], "ratios": [1.0]}  # 16 px at 128 px, then 64 and 96 px
    box = lambda x, y: torch.tensor([[x - 8.0, y - 8.0, x + 8.0, y + 8.0]], dtype=torch.float64)  # noqa: E731
    assert covered(box(24, 24), 128, anchors).item() and covered(box(28, 24), 128, anchors).item()
    assert not covered(box(24, 24), 128, {"scales": [[0.5], [0.125], [0.75]], "ratios": [1.0]}).item()  # 16 px at stride 16
    # 120 px pads to 128: the network's strides stay 8 / 16 / 32 (unpadded, torchvision would take 120 // 15 = 8,
    # then 120 // 8 = 15 at C4 and 120 // 4 = 30 at C5), so a 16 px box at (48, 48) is covered at C4 too
    assert covered(box(48, 48), 120, {"scales": [[0.5], [16 / 120], [0.75]], "ratios": [1.0]}).item()
