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
# Which anchors train on each box (``IgnoreAwareRetinaNet.assigner``): "iou", RetinaNet's IoU thresholds
# (torchvision's matcher); "tal", task-aligned assignment with a quality focal loss (``task_aligned_loss``).
ASSIGNERS = ("iou", "tal")
# Task-aligned assignment's constants, YOLOv8's (ultralytics TaskAlignedAssigner): the top 10 anchors per box by
# score**0.5 * IoU**6. Not tuned here; with them slim-s gained 7.7 validation AP points on the cards and 9.5 on
# BCCD over the IoU thresholds (docs/results.md, "Session 20: which anchors train on each box").
TAL_TOPK, TAL_ALPHA, TAL_BETA = 10, 0.5, 6.0


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
    and ``box_weights``, and whose anchors can be assigned to boxes in two ways (``assigner``).

    ``assigner`` (one of ``ASSIGNERS``; the training stage sets it from ``--assign``): "iou" is torchvision's
    loss, with RetinaNet's matcher (IoU >= 0.5 foreground, < 0.4 background, each box's best anchor kept);
    "tal" is ``task_aligned_loss``. Under either, background anchors mostly covered by an ignore region are
    left out of the classification loss, as the matcher's between-thresholds anchors are. Each image's
    losses are scaled by its ``weight`` (machine-labelled images can count less). ``box_weights`` ((N,)
    floats, one per box of ``boxes``) scale the classification and regression terms of the anchors matched to
    each box: a machine box counts as much as the teacher trusted it (Soft Teacher's idea, Xu et al. 2021,
    applied to the boxes' own terms; their background terms keep weight 1). ``class_mask`` ((C,) bool) names
    the classes the image's labels speak for: the classification loss of the others is left out at every
    anchor, so a machine-labelled image whose teacher was not trusted on a class (``filter``'s
    ``unreliable_classes``) teaches that class neither object nor background (as a federated loss leaves out
    the classes an image was not checked for, Zhou et al. 2021).
    """

    assigner = "iou"

    def compute_loss(self, targets, head_outputs, anchors):
        if self.assigner == "tal":
            # normalised by the whole batch's summed quality, as YOLOv8 does: per image, an image holding one
            # box would weigh as much as one holding twenty (session 23's BCCD runs, docs/results.md). An
            # image's ``weight`` scales its sums, not its share of the normaliser (like box_weights under iou,
            # which leave torchvision's anchor count as it is).
            per_image, qualities = zip(*(task_aligned_loss(self.head, t, head_outputs["cls_logits"][i],
                                                           head_outputs["bbox_regression"][i], anchors[i])
                                         for i, t in enumerate(targets)))
            return _weighted_sum(targets, per_image, torch.stack(qualities).sum().clamp(min=1.0))
        matched_idxs = []
        for anchors_per_image, target in zip(anchors, targets):
            if target["boxes"].numel() == 0:
                matched = torch.full((anchors_per_image.size(0),), -1, dtype=torch.int64, device=anchors_per_image.device)
            else:
                matched = self.proposal_matcher(box_iou(target["boxes"], anchors_per_image))
            covered = ignored_anchors(anchors_per_image, target.get("ignore"))
            if covered is not None:
                matched = torch.where(covered & (matched < 0), self.proposal_matcher.BETWEEN_THRESHOLDS, matched)
            matched_idxs.append(matched)
        if all("weight" not in t and "box_weights" not in t and "class_mask" not in t for t in targets):
            return self.head.compute_loss(targets, head_outputs, anchors, matched_idxs)
        per_image = []
        for i, target in enumerate(targets):
            outputs = {k: v[i:i + 1] for k, v in head_outputs.items()}
            if "box_weights" in target or "class_mask" in target:
                per_image.append(weighted_head_loss(self.head, target, outputs, anchors[i], matched_idxs[i]))
            else:
                per_image.append(self.head.compute_loss([target], outputs, [anchors[i]], [matched_idxs[i]]))
        return _weighted_sum(targets, per_image, len(targets))  # the batch mean, as torchvision averages its images


def _weighted_sum(targets: list[dict[str, torch.Tensor]], per_image, divisor) -> dict[str, torch.Tensor]:
    """Each loss summed over the batch's images, each image's share scaled by its target's ``weight`` (1 when
    absent), and divided by ``divisor`` (a number or a 0-d tensor)."""
    losses: dict[str, torch.Tensor] = {}
    for target, one in zip(targets, per_image):
        for name, value in one.items():
            losses[name] = losses.get(name, 0) + target.get("weight", 1.0) * value
    return {name: value / divisor for name, value in losses.items()}


def ignored_anchors(anchors: torch.Tensor, ignore: torch.Tensor | None) -> torch.Tensor | None:
    """(A,) bool: the anchors (A, 4) whose area lies more than ``IGNORE_COVERAGE`` inside one of the ignore
    regions (R, 4) (both xyxy pixels); None when there are no regions."""
    if ignore is None or not ignore.numel():
        return None
    lt = torch.maximum(anchors[:, None, :2], ignore[None, :, :2])
    rb = torch.minimum(anchors[:, None, 2:], ignore[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=2)  # (A, R)
    return (inter / box_area(anchors)[:, None].clamp(min=1e-6)).amax(dim=1) > IGNORE_COVERAGE


def task_aligned_assign(scores: torch.Tensor, predicted: torch.Tensor, anchors: torch.Tensor, boxes: torch.Tensor,
                        labels: torch.Tensor, topk: int = TAL_TOPK, alpha: float = TAL_ALPHA,
                        beta: float = TAL_BETA) -> tuple[torch.Tensor, torch.Tensor]:
    """Task-aligned assignment (TOOD, Feng et al. 2021, as YOLOv8 uses it): which box each anchor trains on,
    chosen by how well the model already scores and places it.

    Each anchor's alignment with a box is ``score ** alpha * IoU ** beta``: its predicted probability of the
    box's class times the IoU of its predicted box with the box. Per box, the ``topk`` best-aligned anchors
    whose centres lie inside the box are candidates (a box so small that no anchor centre lies inside it gets
    none, as in YOLOv8: letting it rank every anchor lost validation AP on both sets, docs/results.md
    "Session 24"); an anchor that is a candidate of several boxes takes the one its prediction overlaps most.
    A positive's classification target (its quality) is its alignment normalised per box so that the box's
    best-aligned positive gets the box's best IoU among its positives.

    ``scores`` (A, C) 0..1 class probabilities; ``predicted`` (A, 4) the decoded boxes and ``anchors``
    (A, 4), ``boxes`` (G, 4, G >= 1): xyxy pixels; ``labels`` (G,) class indices. Returns ``matched`` (A,)
    int64, a box index or -1 (background), and ``quality`` (A,) 0..1, 0 for the background.
    """
    iou = box_iou(boxes, predicted)  # (G, A)
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    inside = ((centres[None] > boxes[:, None, :2]) & (centres[None] < boxes[:, None, 2:])).all(dim=2)  # (G, A)
    align = scores[:, labels].T.pow(alpha) * iou.pow(beta) * inside
    top = align.topk(min(topk, anchors.shape[0]), dim=1).indices
    candidate = torch.zeros_like(inside).scatter_(1, top, True) & inside & (align > 0)
    best, matched = torch.where(candidate, iou, torch.full_like(iou, -1.0)).max(dim=0)
    positive = best > 0  # (A,)
    chosen = torch.zeros_like(candidate)
    chosen[matched[positive], positive.nonzero().squeeze(1)] = True
    align, iou = align * chosen, iou * chosen
    quality = (align / align.amax(dim=1, keepdim=True).clamp(min=1e-9) * iou.amax(dim=1, keepdim=True)).amax(dim=0)
    return torch.where(positive, matched, torch.full_like(matched, -1)), quality


def task_aligned_loss(head, target: dict[str, torch.Tensor], cls_logits: torch.Tensor, regression: torch.Tensor,
                      anchors: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One image's loss under task-aligned assignment (``task_aligned_assign``): a quality focal loss (GFL, Li et
    al. 2020) whose target for a positive is its quality (0 elsewhere), and the head's box loss on the
    positives weighted by their quality; both summed, with the image's summed quality (a 0-d tensor) beside
    them: the caller divides the batch's sums by the batch's summed quality (at least 1), as YOLOv8 does.

    ``cls_logits`` (A, C), ``regression`` (A, 4): the head's outputs for the image; ``anchors`` (A, 4) xyxy
    pixels; ``target`` as for ``IgnoreAwareRetinaNet`` (its ``ignore``, ``box_weights`` and ``class_mask`` are
    honoured; its ``weight`` is applied by the caller). The assignment reads the model's own predictions without gradient.
    """
    # in float32 under AMP too: IoU ** 6 and the per-box normalisation underflow in half precision
    cls_logits, regression, anchors = cls_logits.float(), regression.float(), anchors.float()
    boxes, labels = target["boxes"].float(), target["labels"]
    truth = torch.zeros_like(cls_logits)
    matched = torch.full((anchors.shape[0],), -1, dtype=torch.int64, device=anchors.device)
    quality = torch.zeros(anchors.shape[0], dtype=cls_logits.dtype, device=anchors.device)
    if boxes.numel():
        with torch.no_grad():
            predicted = head.regression_head.box_coder.decode_single(regression, anchors)
            matched, quality = task_aligned_assign(cls_logits.sigmoid(), predicted, anchors, boxes, labels)
    positive = matched >= 0
    truth[positive, labels[matched[positive]]] = quality[positive]
    weight = torch.ones_like(quality)
    if "box_weights" in target:
        weight[positive] = target["box_weights"][matched[positive]].to(weight.dtype)
    covered = ignored_anchors(anchors, target.get("ignore"))
    if covered is not None:
        weight[covered & ~positive] = 0.0
    focal = F.binary_cross_entropy_with_logits(cls_logits, truth, reduction="none") * (truth - cls_logits.sigmoid()).abs().pow(2)
    if "class_mask" in target:
        focal = focal * target["class_mask"].to(focal.dtype)
    boxes_loss = _box_loss_per_anchor(head.regression_head, anchors[positive], boxes[matched[positive]], regression[positive])
    return ({"classification": (focal * weight[:, None]).sum(),
             "bbox_regression": (boxes_loss * quality[positive] * weight[positive]).sum()}, truth.sum())


def weighted_head_loss(head, target: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor],
                       anchors: torch.Tensor, matched: torch.Tensor) -> dict[str, torch.Tensor]:
    """torchvision's RetinaNet head loss for one image, each foreground anchor's focal and box terms scaled by
    ``target["box_weights"][box it matched]`` (1 when absent), and the focal terms of the classes outside
    ``target["class_mask"]`` (when present) left out.

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
    if "box_weights" in target:
        weight[foreground] = target["box_weights"][matched[foreground]].to(cls_logits.dtype)
    truth = torch.zeros_like(cls_logits)
    truth[foreground, target["labels"][matched[foreground]]] = 1.0
    valid = matched != head.classification_head.BETWEEN_THRESHOLDS
    focal = sigmoid_focal_loss(cls_logits[valid], truth[valid], reduction="none")
    if "class_mask" in target:
        focal = focal * target["class_mask"].to(focal.dtype)
    focal = focal.sum(dim=1)
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
