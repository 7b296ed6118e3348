import pytest
import torch

from retinaslim.core.detections import Detections
from retinaslim.core.fusion import fuse, fuse_many


def dets(boxes, scores, labels=None):
    labels = labels or [0] * len(scores)
    return Detections(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), torch.tensor(scores),
                      torch.tensor(labels, dtype=torch.int64))


@pytest.fixture
def two_transforms():
    # Transform 0 finds one card; transform 1 finds it shifted by 1 px (IoU 81/119 = 0.68) and a second object.
    return [dets([[0, 0, 10, 10]], [0.9]), dets([[1, 1, 11, 11], [50, 50, 60, 60]], [0.6, 0.8])]


def test_wbf_averages_boxes_by_score_and_scales_score_by_agreement(two_transforms):
    out = fuse(two_transforms, "wbf")
    # (0.9 * [0,0,10,10] + 0.6 * [1,1,11,11]) / 1.5 = [0.4, 0.4, 10.4, 10.4]; score mean 0.75 x 2/2
    # the lone box: score 0.8 x 1/2 = 0.4
    assert torch.allclose(out.boxes, torch.tensor([[0.4, 0.4, 10.4, 10.4], [50, 50, 60, 60]]), atol=1e-5)
    assert torch.allclose(out.scores, torch.tensor([0.75, 0.4]))
    assert out.extra["agreement"].tolist() == [2, 1]


def test_wbf_keeps_classes_apart():
    out = fuse([dets([[0, 0, 10, 10]], [0.9], [0]), dets([[0, 0, 10, 10]], [0.7], [1])], "wbf")
    assert sorted(out.labels.tolist()) == [0, 1]
    assert torch.allclose(out.scores, torch.tensor([0.45, 0.35]))
    assert out.extra["agreement"].tolist() == [1, 1]


def test_wbf_iou_threshold_is_strict():
    # IoU exactly 0.5: not above iou_thresh=0.5, so two clusters.
    out = fuse([dets([[0, 0, 10, 10]], [0.9]), dets([[0, 0, 10, 5]], [0.8])], "wbf", iou_thresh=0.5)
    assert len(out) == 2


def test_nms_keeps_best_box_and_counts_agreeing_transforms(two_transforms):
    out = fuse(two_transforms, "nms")
    assert out.boxes.tolist() == [[0, 0, 10, 10], [50, 50, 60, 60]]
    assert torch.allclose(out.scores, torch.tensor([0.9, 0.8]))
    assert out.extra["agreement"].tolist() == [2, 1]


def test_vote_averages_only_boxes_above_vote_iou(two_transforms):
    strict = fuse(two_transforms, "vote", vote_iou_thresh=0.9)  # 0.68 < 0.9: the kept box votes alone
    assert strict.boxes.tolist() == [[0, 0, 10, 10], [50, 50, 60, 60]]
    loose = fuse(two_transforms, "vote", vote_iou_thresh=0.6)
    assert torch.allclose(loose.boxes[0], torch.tensor([0.4, 0.4, 10.4, 10.4]), atol=1e-5)
    assert torch.allclose(loose.scores, torch.tensor([0.9, 0.8]))


@pytest.mark.parametrize("method", ["wbf", "nms", "vote"])
def test_fusion_of_nothing_is_empty(method):
    out = fuse([Detections.empty(), Detections.empty()], method)
    assert len(out) == 0 and out.extra["agreement"].shape == (0,)


def test_unknown_method():
    with pytest.raises(ValueError, match="unknown fusion"):
        fuse([Detections.empty()], "mean")


def test_wbf_matches_reference_package_on_random_inputs():
    import ensemble_boxes  # test-only reference implementation (dev extra)
    generator = torch.Generator().manual_seed(0)
    for trial in range(50):
        num_transforms = int(torch.randint(2, 7, (1,), generator=generator))
        per_transform, boxes_list, scores_list, labels_list = [], [], [], []
        for _ in range(num_transforms):
            n = int(torch.randint(0, 12, (1,), generator=generator))
            # Jittered copies of a few objects, so that clusters form, in normalised [0, 1] coordinates.
            centres = torch.tensor([[0.3, 0.3], [0.6, 0.5], [0.5, 0.8]])[torch.randint(0, 3, (n,), generator=generator)]
            centres = centres + 0.03 * torch.randn(n, 2, generator=generator)
            sizes = 0.15 + 0.05 * torch.rand(n, 2, generator=generator)
            boxes = torch.cat([centres - sizes / 2, centres + sizes / 2], dim=1).clamp(0, 1)
            scores = torch.rand(n, generator=generator)
            labels = torch.randint(0, 2, (n,), generator=generator)
            per_transform.append(Detections(boxes * 640, scores, labels))
            boxes_list.append(boxes.tolist())
            scores_list.append(scores.tolist())
            labels_list.append(labels.tolist())
        ref_boxes, ref_scores, ref_labels = ensemble_boxes.weighted_boxes_fusion(
            boxes_list, scores_list, labels_list, iou_thr=0.55, skip_box_thr=0.0)
        ours = fuse(per_transform, "wbf")
        order = torch.argsort(ours.scores, descending=True)
        assert len(ours) == len(ref_scores), trial
        assert torch.allclose(ours.scores[order], torch.tensor(ref_scores, dtype=torch.float32), atol=1e-5), trial
        assert torch.allclose(ours.boxes[order] / 640, torch.tensor(ref_boxes, dtype=torch.float32), atol=1e-4), trial
        assert ours.labels[order].tolist() == [int(v) for v in ref_labels], trial


def test_wbf_of_a_batch_equals_wbf_image_by_image():
    """pseudo-label fuses a batch at once; each image's result must not depend on the others (resume, shards)."""
    generator = torch.Generator().manual_seed(1)
    ensembles = []
    for _ in range(24):
        per_transform = []
        for _ in range(int(torch.randint(1, 7, (1,), generator=generator))):
            n = int(torch.randint(0, 30, (1,), generator=generator))
            xy = 200 * torch.rand(n, 2, generator=generator)
            boxes = torch.cat([xy, xy + 20 + 40 * torch.rand(n, 2, generator=generator)], dim=1)
            per_transform.append(Detections(boxes, torch.rand(n, generator=generator),
                                            torch.randint(0, 3, (n,), generator=generator)))
        ensembles.append(per_transform)
    batched = fuse_many(ensembles, "wbf")
    assert sum(len(d) for d in batched) > 100
    for one, alone in zip(batched, [fuse(e, "wbf") for e in ensembles]):
        assert torch.equal(one.boxes, alone.boxes) and torch.equal(one.scores, alone.scores)
        assert torch.equal(one.labels, alone.labels) and torch.equal(one.extra["agreement"], alone.extra["agreement"])


def test_wbf_agreement_counts_every_transform_beyond_63():
    same_box = [dets([[0, 0, 10, 10]], [0.5]) for _ in range(70)]
    out = fuse(same_box, "wbf")
    assert len(out) == 1 and int(out.extra["agreement"][0]) == 70 and float(out.scores[0]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="iou_thresh"):
        fuse(same_box, "wbf", iou_thresh=-0.1)
