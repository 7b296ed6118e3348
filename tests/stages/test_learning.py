"""Proof that losses, targets, decoding and evaluation are wired right: the student learns a tiny set."""

from retinaslim.config import TRAIN_DEFAULTS
from retinaslim.stages.train import TrainConfig, train


def test_student_learns_a_handful_of_images(one_card_set, tmp_path):
    labeled = one_card_set.files["labeled"]
    options = {**TRAIN_DEFAULTS["student"], "image_size": 128, "batch_size": 8, "epochs": 40, "lr": 0.01, "augment": "none",
               "workers": 0}
    result = train(TrainConfig(role="student", labeled=labeled, val=labeled, out=tmp_path / "run", **options))
    first, best = result.history[0], result.best_metrics
    assert len(result.history) == 40  # 40 steps: 8 images, batch 8
    assert result.history[-1]["loss"] < 0.5 * first["loss"]
    assert best["ap50"] >= 0.5, result.history
    assert (tmp_path / "run" / "best.pt").is_file() and (tmp_path / "run" / "results.csv").is_file()
