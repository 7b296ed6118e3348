"""Box format conversions. Boxes are absolute-pixel x1, y1, x2, y2 unless the name says otherwise."""

import torch


def xywh_to_xyxy(boxes_xywh: torch.Tensor) -> torch.Tensor:
    """(N, 4) COCO x, y, width, height -> (N, 4) x1, y1, x2, y2."""
    x, y, w, h = boxes_xywh.unbind(-1)
    return torch.stack([x, y, x + w, y + h], dim=-1)
