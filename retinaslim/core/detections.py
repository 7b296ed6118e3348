"""The one detections structure that flows between stages."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Detections:
    """Detections of one image.

    boxes: (N, 4) float, x1, y1, x2, y2 in original-image pixels.
    scores: (N,) float in [0, 1].
    labels: (N,) int64, the model's contiguous class index (not the COCO category id).
    extra: per-box fields of shape (N,), e.g. ``agreement`` (how many transforms found the box).

    Index with a mask or index tensor to select boxes: ``dets[dets.scores > 0.5]``.
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    extra: dict[str, torch.Tensor] = field(default_factory=dict)

    @classmethod
    def empty(cls) -> Detections:
        return cls(torch.zeros((0, 4)), torch.zeros(0), torch.zeros(0, dtype=torch.int64))

    @classmethod
    def cat(cls, items: list[Detections]) -> Detections:
        """Concatenate; extra fields are kept only when every item has them."""
        if not items:
            return cls.empty()
        keys = set.intersection(*(set(d.extra) for d in items))
        return cls(
            torch.cat([d.boxes for d in items]),
            torch.cat([d.scores for d in items]),
            torch.cat([d.labels for d in items]),
            {k: torch.cat([d.extra[k] for d in items]) for k in sorted(keys)},
        )

    def __len__(self) -> int:
        return self.scores.shape[0]

    def __getitem__(self, index: torch.Tensor | slice) -> Detections:
        return Detections(
            self.boxes[index],
            self.scores[index],
            self.labels[index],
            {k: v[index] for k, v in self.extra.items()},
        )
