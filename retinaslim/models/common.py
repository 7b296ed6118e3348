"""Pieces every registered RetinaNet shares."""

from __future__ import annotations

import torch
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import box_area, box_iou

# Anchors lying mostly inside an ignore region (intersection / anchor area above this) give no loss.
IGNORE_COVERAGE = 0.5


def scaled_anchor_generator(image_size: int) -> AnchorGenerator:
    """torchvision RetinaNet's anchors (P3-P7, 3 sizes x 3 ratios) scaled to the input size.

    Its 32..512 px anchors are meant for 800-1333 px inputs; keep their ratio to the input.
    """
    bases = [32 * 2**i * image_size / 512 for i in range(5)]
    sizes = tuple(tuple(b * 2 ** (k / 3) for k in range(3)) for b in bases)
    return AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))


class NoResizeTransform(GeneralizedRCNNTransform):
    """torchvision's normalise-and-pad transform without its resize.

    retinaslim sizes images itself (``core.tta.Transform``) so that training, evaluation and every
    test-time transform share one exact, invertible resize; torchvision's own resize would undo it.
    """

    def __init__(self) -> None:
        super().__init__(min_size=1, max_size=1, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])

    def resize(self, image: torch.Tensor, target=None):
        return image, target


class IgnoreAwareRetinaNet(RetinaNet):
    """torchvision's RetinaNet whose targets may carry ``ignore`` boxes (COCO ``iscrowd`` regions) and a ``weight``.

    Background anchors mostly covered by an ignore region are left out of the classification loss,
    as the matcher's between-thresholds anchors are. Each image's losses are scaled by its ``weight``
    (machine-labelled images can count less). Everything else is torchvision's loss.
    """

    def compute_loss(self, targets, head_outputs, anchors):
        matched_idxs = []
        for anchors_per_image, target in zip(anchors, targets):
            if target["boxes"].numel() == 0:
                matched = torch.full((anchors_per_image.size(0),), -1, dtype=torch.int64, device=anchors_per_image.device)
            else:
                matched = self.proposal_matcher(box_iou(target["boxes"], anchors_per_image))
            ignore = target.get("ignore")
            if ignore is not None and ignore.numel():
                lt = torch.maximum(anchors_per_image[:, None, :2], ignore[None, :, :2])
                rb = torch.minimum(anchors_per_image[:, None, 2:], ignore[None, :, 2:])
                inter = (rb - lt).clamp(min=0).prod(dim=2)  # (num_anchors, num_ignore)
                covered = (inter / box_area(anchors_per_image)[:, None].clamp(min=1e-6)).amax(dim=1) > IGNORE_COVERAGE
                matched = torch.where(covered & (matched < 0), self.proposal_matcher.BETWEEN_THRESHOLDS, matched)
            matched_idxs.append(matched)
        if all("weight" not in t for t in targets):
            return self.head.compute_loss(targets, head_outputs, anchors, matched_idxs)
        # torchvision averages per-image losses over the batch; weight each image's share.
        losses: dict[str, torch.Tensor] = {}
        for i, target in enumerate(targets):
            one = self.head.compute_loss([target], {k: v[i:i + 1] for k, v in head_outputs.items()},
                                         [anchors[i]], [matched_idxs[i]])
            for name, value in one.items():
                losses[name] = losses.get(name, 0) + target.get("weight", 1.0) * value / len(targets)
        return losses


def configure(model, detections_per_image: int = 100):
    """Install the no-resize transform and the inference settings shared by every model."""
    model.transform = NoResizeTransform()
    model.score_thresh = 0.05
    model.detections_per_img = detections_per_image
    return model
