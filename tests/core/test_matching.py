import pytest
import torch

from retinaslim.core.detections import Detections
from retinaslim.core.matching import lowest_threshold_for_precision, match


def test_match_is_greedy_by_score_and_per_class():
    truth = torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]])
    labels = torch.tensor([0, 1])
    dets = Detections(torch.tensor([[0.0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [50, 50, 60, 60]]),
                      torch.tensor([0.6, 0.9, 0.8, 0.7]), torch.tensor([0, 0, 0, 0]))
    # 0.9 takes the class-0 box first; 0.6 finds it taken; the class-1 box does not match a class-0 detection.
    assert match(dets, truth, labels).tolist() == [False, True, False, False]


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
