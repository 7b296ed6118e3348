"""Which anchors train on each box: task-aligned assignment and its loss (models.common), and ``--assign``."""

import pytest
import torch
from torchvision.ops import box_iou

import retinaslim.models.common as common
from retinaslim.errors import UserError
from retinaslim.models.checkpoint import Checkpoint
from retinaslim.models.common import task_aligned_assign, task_aligned_loss
from retinaslim.models.registry import build_model
from retinaslim.stages.train import TrainConfig, train


def squares(centres, size=10.0):
    return torch.tensor([[x - size / 2, y - size / 2, x + size / 2, y + size / 2] for x, y in centres])


def tal_by_its_definition(scores, predicted, anchors, boxes, labels, topk, alpha=0.5, beta=6.0):
    """TOOD's steps box by box, in plain Python: the reference the vectorised version must equal."""
    iou = box_iou(boxes, predicted).tolist()
    centres = [((a[0] + a[2]) / 2, (a[1] + a[3]) / 2) for a in anchors.tolist()]
    align, candidates = [], []
    for g, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        inside = [x1 < cx < x2 and y1 < cy < y2 for cx, cy in centres]
        row = [float(scores[a, labels[g]]) ** alpha * iou[g][a] ** beta if inside[a] else 0.0 for a in range(len(centres))]
        align.append(row)
        ranked = sorted((a for a in range(len(row)) if row[a] > 0), key=lambda a: -row[a])
        candidates.append(set(ranked[:topk]))
    matched = [-1] * len(centres)
    for a in range(len(centres)):
        owners = [g for g in range(len(boxes)) if a in candidates[g]]
        if owners:
            matched[a] = max(owners, key=lambda g: iou[g][a])
    quality = [0.0] * len(centres)
    for g in range(len(boxes)):
        mine = [a for a in range(len(centres)) if matched[a] == g]
        if mine:
            top_align, top_iou = max(align[g][a] for a in mine), max(iou[g][a] for a in mine)
            for a in mine:
                quality[a] = align[g][a] / top_align * top_iou
    return matched, quality


def test_task_aligned_positives_and_their_quality_by_hand():
    box, labels = torch.tensor([[0.0, 0, 20, 20]]), torch.tensor([0])
    anchors = squares([(5, 5), (15, 15), (10, 10), (30, 30)])  # the last one's centre lies outside the box
    predicted = torch.tensor([[0.0, 0, 20, 20], [0, 0, 20, 10], [0, 0, 10, 10], [0, 0, 20, 20]])  # IoU 1, .5, .25, 1
    scores = torch.tensor([[0.25], [1.0], [1.0], [1.0]])
    # alignment score**0.5 * IoU**6: 0.5, 0.015625, 0.000244 and 0 (outside); the top 2 are positives
    matched, quality = task_aligned_assign(scores, predicted, anchors, box, labels, topk=2)
    assert matched.tolist() == [0, 0, -1, -1]
    # normalised by the best alignment (0.5) and scaled by the best IoU among the positives (1)
    assert quality.tolist() == pytest.approx([1.0, 0.03125, 0.0, 0.0])


def test_a_box_with_no_anchor_centre_inside_has_no_positive():
    """As in YOLOv8: candidates are anchors whose centre lies inside the box (ranking every anchor for such a
    box instead lost validation AP on both sets, docs/results.md "Session 24")."""
    box, labels = torch.tensor([[11.0, 11, 14, 14]]), torch.tensor([0])  # between the centres of a 10 px grid
    anchors = squares([(5, 5), (15, 15), (25, 25)])
    predicted = torch.tensor([[10.0, 10, 14, 14], [11, 11, 16, 16], [20, 20, 30, 30]])  # IoU 0.5625, 0.36, 0
    matched, quality = task_aligned_assign(torch.ones(3, 1), predicted, anchors, box, labels, topk=2)
    assert matched.tolist() == [-1, -1, -1] and quality.tolist() == [0.0, 0.0, 0.0]


def test_an_anchor_both_boxes_want_trains_on_the_one_its_prediction_overlaps_most():
    boxes, labels = torch.tensor([[0.0, 0, 20, 20], [10.0, 10, 30, 30]]), torch.tensor([0, 0])
    anchors = squares([(15, 15), (5, 5), (25, 25)])  # the first lies inside both boxes
    predicted = torch.tensor([[10.0, 10, 30, 30], [0, 0, 20, 20], [12, 12, 30, 30]])
    matched, quality = task_aligned_assign(torch.ones(3, 1), predicted, anchors, boxes, labels, topk=2)
    assert matched.tolist() == [1, 0, 1]  # IoU 1 with the second box against 1/7 with the first
    assert quality.tolist() == pytest.approx([1.0, 1.0, 0.81 ** 6])


def test_task_aligned_assignment_equals_its_definition_on_random_predictions():
    torch.manual_seed(0)
    centres = [(x * 8 + 4.0, y * 8 + 4.0) for y in range(12) for x in range(12)]
    anchors = squares(centres, 12.0)
    for _ in range(30):
        num = int(torch.randint(1, 5, (1,)))
        corner = torch.rand(num, 2) * 60
        boxes = torch.cat([corner, corner + torch.rand(num, 2) * 30 + 2], dim=1)  # some smaller than the 8 px grid
        labels = torch.randint(0, 3, (num,))
        predicted = anchors + torch.randn(len(centres), 4) * 4
        predicted[:, 2:] = torch.maximum(predicted[:, 2:], predicted[:, :2] + 1)
        scores = torch.rand(len(centres), 3)
        expected_matched, expected_quality = tal_by_its_definition(scores, predicted, anchors, boxes, labels, topk=5)
        matched, quality = task_aligned_assign(scores, predicted, anchors, boxes, labels, topk=5)
        assert matched.tolist() == expected_matched
        assert quality.tolist() == pytest.approx(expected_quality, abs=1e-6)


def quality_focal(logits, truth):
    """GFL's quality focal loss written out: -(t log p + (1 - t) log(1 - p)) |t - p|^2."""
    p = logits.sigmoid()
    return (-(truth * p.log() + (1 - truth) * (1 - p).log()) * (truth - p).abs() ** 2).sum()


def test_task_aligned_loss_is_a_quality_focal_loss_and_a_quality_weighted_box_loss():
    torch.manual_seed(1)
    model = build_model("slim-s", num_classes=2, image_size=64)
    anchors = torch.rand(50, 2) * 50
    anchors = torch.cat([anchors, anchors + 12], dim=1)
    logits, regression = torch.randn(50, 2), torch.randn(50, 4) * 0.1
    target = {"boxes": torch.tensor([[5.0, 5, 40, 30], [20.0, 25, 60, 62]]), "labels": torch.tensor([0, 1])}
    loss, quality_sum = task_aligned_loss(model.head, target, logits, regression, anchors)
    predicted = model.head.regression_head.box_coder.decode_single(regression, anchors)
    matched, quality = task_aligned_assign(logits.sigmoid(), predicted, anchors, target["boxes"], target["labels"])
    positive = matched >= 0
    assert positive.sum() >= 2 and set(matched[positive].tolist()) == {0, 1}
    assert 0 < quality_sum == pytest.approx(float(quality.sum()))
    truth = torch.zeros(50, 2)
    truth[positive, target["labels"][matched[positive]]] = quality[positive]
    assert loss["classification"] == pytest.approx(float(quality_focal(logits, truth)), rel=1e-5)
    encoded = model.head.regression_head.box_coder.encode_single(target["boxes"][matched[positive]], anchors[positive])
    l1 = (regression[positive] - encoded).abs().sum(dim=1)
    assert loss["bbox_regression"] == pytest.approx(float((l1 * quality[positive]).sum()), rel=1e-5)
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    none, no_quality = task_aligned_loss(model.head, empty, logits, regression, anchors)
    assert none["classification"] == pytest.approx(float(quality_focal(logits, torch.zeros(50, 2))), rel=1e-5)
    assert none["bbox_regression"] == 0 and no_quality == 0


def test_a_batch_is_normalised_by_its_summed_quality_not_image_by_image(monkeypatch):
    """YOLOv8's normaliser: the batch's summed losses over the batch's summed quality. An image holding one box
    weighs by its quality, not as much as an image holding six (what dividing each image by its own sum did)."""
    torch.manual_seed(5)
    model = build_model("slim-s", num_classes=1, image_size=64)
    model.assigner = "tal"
    recorded = []
    original = common.task_aligned_loss
    monkeypatch.setattr(common, "task_aligned_loss", lambda *args: recorded.append(original(*args)) or recorded[-1])
    one = {"boxes": torch.tensor([[8.0, 8, 40, 30]]), "labels": torch.tensor([0])}
    six = {"boxes": squares([(12, 12), (32, 12), (52, 12), (12, 44), (32, 44), (52, 44)], size=16.0),
           "labels": torch.zeros(6, dtype=torch.int64)}
    batch = model([torch.rand(3, 64, 64), torch.rand(3, 64, 64)], [one, six])
    (sums_one, quality_one), (sums_six, quality_six) = recorded
    assert quality_six > 2 * quality_one > 0
    for name in batch:
        expected = (sums_one[name] + sums_six[name]) / (quality_one + quality_six)
        assert batch[name].item() == pytest.approx(expected.item(), rel=1e-5), name
        per_image = (sums_one[name] / quality_one.clamp(min=1) + sums_six[name] / quality_six.clamp(min=1)) / 2
        assert batch[name].item() != pytest.approx(per_image.item(), rel=1e-2), name


def test_the_assignment_is_a_fixed_target_no_gradient_flows_through_it():
    torch.manual_seed(4)
    model = build_model("slim-s", num_classes=2, image_size=64)
    anchors = torch.rand(60, 2) * 50
    anchors = torch.cat([anchors, anchors + 12], dim=1)
    target = {"boxes": torch.tensor([[5.0, 5, 40, 30], [20.0, 25, 60, 62]]), "labels": torch.tensor([0, 1])}
    logits = torch.randn(60, 2, requires_grad=True)
    regression = (torch.randn(60, 4) * 0.1).requires_grad_()
    loss, _ = task_aligned_loss(model.head, target, logits, regression, anchors)
    got = torch.autograd.grad(loss["classification"] + loss["bbox_regression"], [logits, regression])
    predicted = model.head.regression_head.box_coder.decode_single(regression.detach(), anchors)
    matched, quality = task_aligned_assign(logits.detach().sigmoid(), predicted, anchors, target["boxes"], target["labels"])
    positive = matched >= 0
    truth = torch.zeros(60, 2)
    truth[positive, target["labels"][matched[positive]]] = quality[positive]
    encoded = model.head.regression_head.box_coder.encode_single(target["boxes"][matched[positive]], anchors[positive])
    fixed = quality_focal(logits, truth) + ((regression[positive] - encoded).abs().sum(dim=1) * quality[positive]).sum()
    expected = torch.autograd.grad(fixed, [logits, regression])
    for g, e in zip(got, expected):
        assert torch.allclose(g, e, atol=1e-6)


def test_an_ignore_region_silences_background_anchors_but_not_positives():
    torch.manual_seed(2)
    model = build_model("slim-s", num_classes=1, image_size=64)
    model.assigner = "tal"
    model.head.classification_head.cls_logits.bias.data.zero_()  # p = 0.5 everywhere: background costs loss
    image = [torch.rand(3, 64, 64)]
    target = {"boxes": torch.tensor([[8.0, 8, 40, 30]]), "labels": torch.tensor([0])}
    plain = model(image, [target])
    everywhere = model(image, [{**target, "ignore": torch.tensor([[-200.0, -200, 264, 264]])}])
    assert everywhere["bbox_regression"] == plain["bbox_regression"] > 0
    assert 0 < everywhere["classification"] < 0.5 * plain["classification"]  # the positives' terms remain


def test_training_uses_the_assigner_it_is_given(tiny_cards, tmp_path, monkeypatch):
    calls = []
    original = common.task_aligned_loss
    monkeypatch.setattr(common, "task_aligned_loss", lambda *args: calls.append(1) or original(*args))
    for assign in ("iou", "tal"):
        train(TrainConfig(role="student", labeled=tiny_cards.files["labeled"], val=tiny_cards.files["val"],
                          out=tmp_path / assign, image_size=64, batch_size=4, iterations=2, workers=0, assign=assign))
        assert (len(calls) > 0) == (assign == "tal")
    assert TrainConfig(role="student", labeled=None, val=None, out=None).assign == "tal"
    assert TrainConfig(role="teacher", labeled=None, val=None, out=None).assign == "iou"


def test_a_run_from_before_assign_resumes_with_the_iou_thresholds(tmp_path):
    config = TrainConfig(role="student", labeled=tmp_path / "l.json", val=tmp_path / "v.json", out=tmp_path / "run")
    args = {k: str(v) if hasattr(v, "suffix") else v for k, v in vars(config).items() if k != "assign"}
    checkpoint = Checkpoint(arch="slim-s", arch_options={}, classes=[], image_size=64, train_args=args)
    assert TrainConfig.from_checkpoint(checkpoint, tmp_path / "last.pt").assign == "iou"


def test_an_unknown_assigner_is_refused():
    with pytest.raises(UserError, match="`assign` 'atss': choose iou or tal"):
        TrainConfig(role="student", labeled=None, val=None, out=None, assign="atss")


def test_task_aligned_loss_under_half_precision_autocast_assigns_in_float32():
    torch.manual_seed(3)
    model = build_model("slim-s", num_classes=2, image_size=64)
    model.assigner = "tal"
    image = [torch.rand(3, 64, 64)]
    target = {"boxes": torch.tensor([[8.0, 8, 40, 30], [30.0, 34, 60, 62]]), "labels": torch.tensor([0, 1])}
    full = model(image, [target])
    with torch.autocast("cpu", dtype=torch.bfloat16):  # what AMP does on CUDA, in the half type a CPU runs
        half = model(image, [target])
    for name in full:
        assert half[name].item() == pytest.approx(full[name].item(), rel=0.1), name
    # float16 as CUDA's AMP gives it: IoU ** 6 would underflow in it, the loss computes in float32
    anchors = torch.tensor([[4.0, 4, 16, 16], [20.0, 20, 44, 36], [28.0, 30, 56, 60]])
    logits, regression = torch.randn(3, 2), torch.randn(3, 4) * 0.1
    exact, exact_quality = task_aligned_loss(model.head, target, logits, regression, anchors)
    low, low_quality = task_aligned_loss(model.head, target, logits.half(), regression.half(), anchors.half())
    assert low_quality.dtype == torch.float32 and low_quality.item() == pytest.approx(exact_quality.item(), rel=0.01)
    assert exact["bbox_regression"] > 0
    for name in exact:
        assert low[name].dtype == torch.float32 and low[name].item() == pytest.approx(exact[name].item(), rel=0.01), name
