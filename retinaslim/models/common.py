"""Pieces every registered RetinaNet shares."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import (box_area, box_iou, complete_box_iou_loss, distance_box_iou_loss, generalized_box_iou_loss,
                             sigmoid_focal_loss)

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
    """torchvision's RetinaNet whose targets may carry ``ignore`` boxes (COCO ``iscrowd`` regions), a ``weight``
    and ``box_weights``.

    Background anchors mostly covered by an ignore region are left out of the classification loss,
    as the matcher's between-thresholds anchors are. Each image's losses are scaled by its ``weight``
    (machine-labelled images can count less). ``box_weights`` ((N,) floats, one per box of ``boxes``) scale
    the classification and regression terms of the anchors matched to each box: a machine box counts as much
    as the teacher trusted it (Soft Teacher's idea, Xu et al. 2021, applied to the boxes' own terms; their
    background terms keep weight 1). Everything else is torchvision's loss.
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
        if all("weight" not in t and "box_weights" not in t for t in targets):
            return self.head.compute_loss(targets, head_outputs, anchors, matched_idxs)
        # torchvision averages per-image losses over the batch; weight each image's share.
        losses: dict[str, torch.Tensor] = {}
        for i, target in enumerate(targets):
            outputs = {k: v[i:i + 1] for k, v in head_outputs.items()}
            if "box_weights" in target:
                one = box_weighted_loss(self.head, target, outputs, anchors[i], matched_idxs[i])
            else:
                one = self.head.compute_loss([target], outputs, [anchors[i]], [matched_idxs[i]])
            for name, value in one.items():
                losses[name] = losses.get(name, 0) + target.get("weight", 1.0) * value / len(targets)
        return losses


def box_weighted_loss(head, target: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor],
                      anchors: torch.Tensor, matched: torch.Tensor) -> dict[str, torch.Tensor]:
    """torchvision's RetinaNet head loss for one image, each foreground anchor's focal and box terms scaled by
    ``target["box_weights"][box it matched]``.

    ``outputs``: the head's ``cls_logits`` (1, A, C) and ``bbox_regression`` (1, A, 4) for the image;
    ``anchors`` (A, 4) xyxy pixels; ``matched`` (A,) the matcher's box index per anchor (-1 background, -2
    between thresholds). Both terms are normalised by the number of foreground anchors, as torchvision's
    are (a count, not the sum of the weights: an image of boxes scored 0.5 weighs half as much), so with every
    weight 1 this is torchvision's loss (tests/stages/test_train.py).
    """
    cls_logits, regression = outputs["cls_logits"][0], outputs["bbox_regression"][0]
    foreground = matched >= 0
    num_foreground = max(1, int(foreground.sum()))
    weight = torch.ones(matched.shape, dtype=cls_logits.dtype, device=cls_logits.device)
    weight[foreground] = target["box_weights"][matched[foreground]].to(cls_logits.dtype)
    truth = torch.zeros_like(cls_logits)
    truth[foreground, target["labels"][matched[foreground]]] = 1.0
    valid = matched != head.classification_head.BETWEEN_THRESHOLDS
    focal = sigmoid_focal_loss(cls_logits[valid], truth[valid], reduction="none").sum(dim=1)
    boxes = _box_loss_per_anchor(head.regression_head, anchors[foreground], target["boxes"][matched[foreground]],
                                 regression[foreground])
    return {"classification": (focal * weight[valid]).sum() / num_foreground,
            "bbox_regression": (boxes * weight[foreground]).sum() / num_foreground}


def _box_loss_per_anchor(regression_head, anchors: torch.Tensor, boxes: torch.Tensor,
                         regression: torch.Tensor) -> torch.Tensor:
    """(F,) the regression head's box loss of each foreground anchor (torchvision's ``_box_loss``, unsummed)."""
    kind, coder = regression_head._loss_type, regression_head.box_coder
    if kind in ("l1", "smooth_l1"):
        encoded = coder.encode_single(boxes, anchors)
        loss = F.l1_loss if kind == "l1" else F.smooth_l1_loss
        return loss(regression, encoded, reduction="none").sum(dim=1)
    iou_loss = {"giou": generalized_box_iou_loss, "diou": distance_box_iou_loss, "ciou": complete_box_iou_loss}[kind]
    return iou_loss(coder.decode_single(regression, anchors), boxes, reduction="none", eps=1e-7)


def configure(model, detections_per_image: int = 100):
    """Install the no-resize transform and the inference settings shared by every model."""
    model.transform = NoResizeTransform()
    model.score_thresh = 0.05
    model.detections_per_img = detections_per_image
    return model
