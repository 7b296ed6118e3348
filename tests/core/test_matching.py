import pytest
import torch

from retinaslim.core.detections import Detections
from retinaslim.core.matching import best_f1_threshold, lowest_threshold_for_precision, match, match_at


def test_match_is_greedy_by_score_and_per_class():
    truth = torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]])
    labels = torch.tensor([0, 1])
    dets = Detections(torch.tensor([[0.0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [50, 50, 60, 60]]),
                      torch.tensor([0.6, 0.9, 0.8, 0.7]), torch.tensor([0, 0, 0, 0]))
    # 0.9 takes the class-0 box first; 0.6 finds it taken; the class-1 box does not match a class-0 detection.
    assert match(dets, truth, labels).tolist() == [False, True, False, False]


def test_matching_at_several_thresholds_equals_matching_at_each_alone():
    """match_at shares the IoUs and the order across thresholds; each threshold keeps its own greedy matching
    (a box taken at 0.9 may be free at 0.5 for a detection that ranks later)."""
    torch.manual_seed(0)
    truth = torch.rand(12, 2) * 80
    truth = torch.cat([truth, truth + 8 + torch.rand(12, 2) * 12], dim=1)
    labels = torch.randint(0, 2, (12,))
    jitter = truth[torch.randint(0, 12, (40,))] + torch.randn(40, 4) * 2.5
    dets = Detections(jitter, torch.rand(40), torch.randint(0, 2, (40,)))
    thresholds = [0.5, 0.65, 0.8, 0.95]
    together = match_at(dets, truth, labels, thresholds)
    assert together.shape == (40, 4)
    for t, column in zip(thresholds, together.T):
        assert torch.equal(column, match(dets, truth, labels, t))
    counts = together.sum(dim=0).tolist()
    assert counts == sorted(counts, reverse=True) and counts[0] > counts[-1]  # stricter IoU, fewer hits


def test_lowest_threshold_for_precision_on_hand_made_scores():
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    is_tp = torch.tensor([True, True, False, True, False, False])
    # precision at each cut: 1, 1, 2/3, 3/4, 3/5, 1/2 -> lowest reaching 0.75 is 0.6 (recall 3/4)
    assert lowest_threshold_for_precision(scores, is_tp, num_true=4, target=0.75) == pytest.approx((0.6, 0.75, 0.75))
    assert lowest_threshold_for_precision(scores, is_tp, num_true=4, target=1.0) == pytest.approx((0.8, 1.0, 0.5))
    assert lowest_threshold_for_precision(scores, ~is_tp, num_true=4, target=0.9) is None


def test_equal_scores_cut_together():
    scores = torch.tensor([0.9, 0.5, 0.5])
    is_tp = torch.tensor([True, True, False])
    # a threshold of 0.5 keeps both 0.5 boxes: precision 2/3, not the 1.0 of the first two
    assert lowest_threshold_for_precision(scores, is_tp, num_true=2, target=0.9) == pytest.approx((0.9, 1.0, 0.5))


def test_best_f1_threshold_on_hand_made_scores():
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    is_tp = torch.tensor([True, True, False, True, False, True])
    # 5 truth boxes; F1 at each cut: 2/6, 4/7, 4/8, 6/9, 6/10, 8/11 -> best 8/11 at 0.4 (precision 4/6, recall 4/5)
    assert best_f1_threshold(scores, is_tp, num_true=5) == pytest.approx((0.4, 4 / 6, 4 / 5))
    # F1 = 2 TP / (kept + truth): with 10 truth boxes the last true positive still pays
    assert best_f1_threshold(scores, is_tp, num_true=10)[0] == pytest.approx(0.4)
    # a wrong box at the bottom is not worth keeping
    assert best_f1_threshold(scores[:5], is_tp[:5], num_true=3) == pytest.approx((0.6, 3 / 4, 1.0))
    assert best_f1_threshold(scores, torch.zeros(6, dtype=torch.bool), num_true=3) is None
    assert best_f1_threshold(torch.zeros(0), torch.zeros(0, dtype=torch.bool), num_true=3) is None


def test_best_f1_threshold_cuts_equal_scores_together_and_prefers_the_higher_threshold():
    # 0.5 keeps both 0.5 boxes: F1 at 0.5 = 2 * (2/3 * 1) / (2/3 + 1) = 0.8 vs 2/3 at 0.9
    assert best_f1_threshold(torch.tensor([0.9, 0.5, 0.5]), torch.tensor([True, True, False]), num_true=2) == \
        pytest.approx((0.5, 2 / 3, 1.0))
    # equal F1 at 0.9 (1 of 2 found, precision 1) and at 0.3 (2 of 2, precision 1/2): F1 2/3 both; the higher wins
    assert best_f1_threshold(torch.tensor([0.9, 0.5, 0.4, 0.3]), torch.tensor([True, False, False, True]),
                             num_true=2)[0] == pytest.approx(0.9)
