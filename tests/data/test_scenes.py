"""Tests for the synthetic ID-card scene renderer."""

from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image

from retinaslim.data import scenes
from retinaslim.data.scenes import CARD_CLASSES, Scene, render_scene


def _render(seed: int, size: int, **kwargs) -> Scene:
    return render_scene(np.random.default_rng(seed), size, **kwargs)


def _check_contract(scene: Scene, size: int, max_cards: int) -> None:
    assert isinstance(scene.image, Image.Image)
    assert scene.image.mode == "RGB"
    assert scene.image.size == (size, size)
    assert 1 <= len(scene.boxes) <= max_cards
    assert len(scene.labels) == len(scene.boxes)
    for (x1, y1, x2, y2), label in zip(scene.boxes, scene.labels):
        assert all(isinstance(v, float) for v in (x1, y1, x2, y2))
        assert 0 <= x1 < x2 <= size and 0 <= y1 < y2 <= size
        assert x2 - x1 >= 2 and y2 - y1 >= 2
        assert isinstance(label, int) and 0 <= label < len(CARD_CLASSES)


@pytest.mark.parametrize("size", [64, 320])
def test_same_seed_gives_identical_scene(size: int) -> None:
    a, b = _render(7, size), _render(7, size)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert a.boxes == b.boxes
    assert a.labels == b.labels


def test_different_seeds_differ() -> None:
    a, b = _render(1, 128), _render(2, 128)
    assert not np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert a.boxes != b.boxes


def test_leaves_global_random_state_alone() -> None:
    np_state, py_state = np.random.get_state(), random.getstate()
    first = _render(3, 96)
    np.random.seed(123)
    random.seed(123)
    second = _render(3, 96)
    assert np.array_equal(np.asarray(first.image), np.asarray(second.image))
    assert first.boxes == second.boxes
    np.random.set_state(np_state)
    random.setstate(py_state)


@pytest.mark.parametrize("size", [64, 100, 256, 320])
@pytest.mark.parametrize("distractors", [True, False])
def test_output_contract(size: int, distractors: bool) -> None:
    for seed in range(8):
        _check_contract(_render(seed, size, distractors=distractors), size, max_cards=3)


def test_large_frame() -> None:
    _check_contract(_render(0, 1024), 1024, max_cards=3)


@pytest.mark.parametrize("max_cards", [1, 2, 5])
def test_card_count_respects_max_cards(max_cards: int) -> None:
    counts = [len(_render(seed, 128, max_cards=max_cards).boxes) for seed in range(30)]
    assert all(1 <= n <= max_cards for n in counts)
    if max_cards == 1:
        assert set(counts) == {1}
    else:
        assert max(counts) > 1


@pytest.mark.parametrize("kwargs", [{"size": 16}, {"size": 128, "max_cards": 0}])
def test_rejects_bad_arguments(kwargs: dict) -> None:
    size = kwargs.pop("size")
    with pytest.raises(ValueError):
        render_scene(np.random.default_rng(0), size, **kwargs)


def test_distractors_change_the_picture() -> None:
    with_d, without_d = _render(4, 128, distractors=True), _render(4, 128, distractors=False)
    assert not np.array_equal(np.asarray(with_d.image), np.asarray(without_d.image))


def test_boxes_are_tight(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a black background with the camera effects off, every card pixel is
    non-black, so each box edge must touch the card and no card pixel may lie
    more than the 1 px antialiased rim outside the boxes."""
    monkeypatch.setattr(scenes, "_background", lambda rng, size: Image.new("RGB", (size, size)))
    monkeypatch.setattr(scenes, "_photometric", lambda rng, img: img)
    for seed in range(25):
        size = 160
        scene = _render(seed, size, distractors=False)
        lit = np.asarray(scene.image).any(axis=2)
        covered = np.zeros_like(lit)
        for x1, y1, x2, y2 in scene.boxes:
            x1, y1, x2, y2 = int(x1), int(y1), int(x2), int(y2)
            assert lit[y1:y2, x1].any() and lit[y1:y2, x2 - 1].any()
            assert lit[y1, x1:x2].any() and lit[y2 - 1, x1:x2].any()
            covered[max(y1 - 1, 0):y2 + 1, max(x1 - 1, 0):x2 + 1] = True
        assert not (lit & ~covered).any(), f"seed {seed}: card pixels outside every box"


def test_classes_scales_and_crowding_vary() -> None:
    size = 128
    labels: list[int] = []
    extents: list[float] = []
    counts: list[int] = []
    for seed in range(150):
        scene = _render(seed, size, distractors=False)
        labels += scene.labels
        counts.append(len(scene.boxes))
        extents += [max(x2 - x1, y2 - y1) / size for x1, y1, x2, y2 in scene.boxes]
    assert set(labels) == set(range(len(CARD_CLASSES)))
    assert min(np.bincount(labels)) > 0.15 * len(labels)
    assert 0.05 <= min(extents) < 0.2
    assert 0.55 < max(extents) <= 0.95
    # Mostly single cards, but crowded scenes must occur.
    assert counts.count(1) > len(counts) / 2
    assert max(counts) == 3
