"""A training run's history beside its checkpoints: ``results.csv`` (one row per validated epoch) and
``results.png`` (loss and validation AP per validated epoch), both rewritten atomically after each."""

from __future__ import annotations

import csv
from pathlib import Path

from retinaslim.core.atomic import atomic_path


def write_history(path: Path, history: list[dict[str, float]]) -> None:
    """One CSV row per epoch; the columns are every key any row has, in first-seen order."""
    keys = list(dict.fromkeys(k for row in history for k in row))
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)


def plot_history(path: Path, history: list[dict[str, float]]) -> None:
    """Loss and validation AP per epoch, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for key in ("loss", "classification", "bbox_regression"):
        left.plot(epochs, [row.get(key, float("nan")) for row in history], marker=".", label=key)
    left.set(xlabel="epoch", title="training loss")
    left.legend()
    for key in ("ap", "ap50", "ap75"):
        right.plot(epochs, [row[key] for row in history], marker=".", label=key.upper())
    right.set(xlabel="epoch", title="validation (EMA weights)", ylim=(0, 1))
    right.legend()
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=90)
    plt.close(figure)
