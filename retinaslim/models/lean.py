"""A lean inference path for any registered RetinaNet: the same detections as ``model(images)``, less Python.

torchvision's generic path normalises and pads image by image, rebuilds anchors on every call and
decodes, thresholds and suppresses per image and per level. For a small network that costs more than
the network itself (PITFALLS.md). ``LeanDetector`` keeps torchvision's network and rules but:

- normalises the whole batch in one op and pads it to a multiple of 32, as torchvision does, but runs
  images of different padded sizes as separate batches: torchvision pads a batch to its largest image,
  which moves the other images' GroupNorm statistics, so their detections depend on their batch;
- caches anchors per padded input size;
- thresholds every level for the whole batch at once, and takes the top k of the scores above the
  threshold (torchvision's rule and order) only for an image and level where more than k pass. On a 320 px
  BCCD photograph the slim-s of benchmarks/peers.py passes about 1,450, 730 and 160 scores on its three
  levels, so only the first needs a top k, and that over its 1,450 scores rather than all 69,000;
- decodes only the kept candidates, clips them to each image, and runs each image's class-wise NMS as one
  call (torchvision's offset trick, which torchvision itself uses up to 1,000 boxes and replaces with a call
  per class above; here ~1,900 boxes: 0.9 ms against 1.4 ms). Equal scores (a saturated sigmoid gives many
  1.0s) keep each image's candidate order, so the top ``detections_per_img`` of an image do not depend on
  its batch. Together: decode 2.7 ms against 3.4 ms for the previous version on that photograph, the same
  detections (2-core VM, one thread, 200 runs interleaved);
- runs a slim student's two 1x1 head branches as one trunk (``FusedSlimHead``).

Why it is written here, measured: through torchvision's generic path (``model(images)``) slim-s (gn) takes
9.6 ms end to end at 320 px, batch 1, against 8.6 ms here (docs/results.md, ``benchmarks/speed.py``); the
shared notes measured a 0.2 M-parameter model at 9 ms for its network and 23 ms end to end on that path
(PITFALLS.md). ``tests/models/test_lean.py`` checks the detections against torchvision's image by image on a
mixed-size batch and on a trained model.

BatchNorm layers are folded into their convolutions and the network runs channels-last (oneDNN's
preferred layout on CPU), on a copy of the model: the original is untouched. ``raw`` is the network
alone (normalised batch -> head outputs), the part ONNX exports; ``decode`` is the postprocess that
turns head outputs into detections. With a fixed ``input_size`` every batch is padded to that size,
as a graph exported with a static input shape needs (``models.onnx``).
"""

from __future__ import annotations

import copy
import math
import warnings

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import clip_boxes_to_image, nms

from retinaslim.errors import UserError

SIZE_DIVISIBLE = 32


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """Fold every BatchNorm2d that directly follows a Conv2d inside an ``nn.Sequential`` into the conv (in place)."""
    for child in module.children():
        fold_batchnorm(child)
    if isinstance(module, nn.Sequential):
        for i in range(len(module) - 1):
            conv, norm = module[i], module[i + 1]
            if isinstance(conv, nn.Conv2d) and type(norm) is nn.BatchNorm2d:
                module[i] = fuse_conv_bn_eval(conv, norm)
                module[i + 1] = nn.Identity()
    return module


class FusedSlimHead(nn.Module):
    """A RetinaNet head whose two branches are the same stack of 1x1 conv -> GroupNorm (or nothing, BatchNorm
    folded) -> ReLU blocks (the slim students' heads), run as one trunk: the branches' first convs stacked into
    one conv, each later pair as one conv of 2 groups, each GroupNorm pair as one GroupNorm of twice the
    groups (its groups are contiguous channel blocks, so every group's statistics are unchanged), then each
    branch's output conv on its half of the channels. The same outputs as torchvision's head (tests), in half
    the ops: a 1x1 head is bound by per-op overhead. The slim-s of benchmarks/peers.py on a 320 px BCCD
    photograph took 11.7 ms end to end against 12.8 ms with the two branches (2-core VM, 200 runs
    interleaved by engine.timing.measure). A head with larger kernels (the teacher's) is bound by its
    arithmetic and is left as it is (``fuse_head`` returns None).

    Input: the FPN levels, each (N, C, H, W); output: ``cls_logits`` (N, HWA, K) and ``bbox_regression``
    (N, HWA, 4), levels in order, as torchvision's head returns them.
    """

    def __init__(self, trunk: nn.Sequential, cls_logits: nn.Conv2d, bbox_reg: nn.Conv2d, num_classes: int):
        super().__init__()
        self.trunk, self.cls_logits, self.bbox_reg = trunk, cls_logits, bbox_reg
        self.hidden, self.num_classes = cls_logits.in_channels, num_classes

    def forward(self, features: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        cls_logits, bbox_regression = [], []
        for feature in features:
            x = self.trunk(feature)
            for out, conv, width, part in ((cls_logits, self.cls_logits, self.num_classes, x[:, :self.hidden]),
                                           (bbox_regression, self.bbox_reg, 4, x[:, self.hidden:])):
                y = conv(part)
                n, _, h, w = y.shape  # (N, A * width, H, W) -> (N, HWA, width), torchvision's order
                out.append(y.view(n, -1, width, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, width))
        return {"cls_logits": torch.cat(cls_logits, dim=1), "bbox_regression": torch.cat(bbox_regression, dim=1)}


def fuse_head(head: nn.Module) -> FusedSlimHead | None:
    """``FusedSlimHead`` of a (BatchNorm-folded, eval-mode) torchvision RetinaNet head, or None when its branches
    are not matching stacks of 1x1 conv -> GroupNorm or Identity -> ReLU blocks."""
    cls, reg = head.classification_head, head.regression_head
    blocks = list(zip(cls.conv, reg.conv))
    if len(cls.conv) != len(reg.conv) or not blocks or cls.cls_logits.kernel_size != (1, 1) \
            or reg.bbox_reg.kernel_size != (1, 1):
        return None
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(blocks):
        kinds = [[type(m) for m in block] for block in (a, b)]
        if kinds[0] != kinds[1] or len(a) != 3 or kinds[0][0] is not nn.Conv2d or kinds[0][2] is not nn.ReLU \
                or kinds[0][1] not in (nn.GroupNorm, nn.Identity):
            return None
        (conv_a, norm_a, _), (conv_b, norm_b, _) = a, b
        if conv_a.kernel_size != (1, 1) or conv_b.kernel_size != (1, 1) or conv_a.groups != 1 or conv_b.groups != 1 \
                or conv_a.weight.shape != conv_b.weight.shape:
            return None
        out, cin = conv_a.out_channels, conv_a.in_channels
        conv = nn.Conv2d(cin * (1 if i == 0 else 2), 2 * out, 1, groups=1 if i == 0 else 2)
        bias = [c.bias.detach() if c.bias is not None else torch.zeros(out) for c in (conv_a, conv_b)]
        with torch.no_grad():
            conv.weight.copy_(torch.cat([conv_a.weight, conv_b.weight]))
            conv.bias.copy_(torch.cat(bias))
        layers.append(conv)
        if isinstance(norm_a, nn.GroupNorm):
            if (norm_a.num_groups, norm_a.eps, norm_a.affine) != (norm_b.num_groups, norm_b.eps, norm_b.affine) \
                    or not norm_a.affine:
                return None
            norm = nn.GroupNorm(2 * norm_a.num_groups, 2 * out, eps=norm_a.eps)
            with torch.no_grad():
                norm.weight.copy_(torch.cat([norm_a.weight, norm_b.weight]))
                norm.bias.copy_(torch.cat([norm_a.bias, norm_b.bias]))
            layers.append(norm)
        layers.append(nn.ReLU(inplace=True))
    return FusedSlimHead(nn.Sequential(*layers), cls.cls_logits, reg.bbox_reg, cls.num_classes).eval()


class _Network(nn.Module):
    """backbone + head -> (cls_logits, bbox_regression): the part ``trace_network`` traces."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = self.head(list(self.backbone(batch).values()))
        return outputs["cls_logits"], outputs["bbox_regression"]


def trace_network(network: nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    """A TorchScript trace of ``network`` (a batch -> tensors) at ``example``'s shape, sharing its parameters.

    Why: a slim student is a few hundred small ops, and eager PyTorch spends a fixed few microseconds of Python
    on every module call and op; the trace runs the same ops from C++. slim-s's network on a 320 px BCCD
    photograph (2-core VM, 1 thread, 60 runs interleaved while a training used the CPU too): 8.7 ms traced
    against 12.3 ms eager; freezing the trace gained nothing more (8.6 ms) and would copy the weights. The
    trace is returned warm: TorchScript's profiling executor runs a graph's first call profiled and builds its
    optimised graph on the second (a ResNet50 teacher at 96 px, while a training shared the CPU: 4.5 s, 2.6 s,
    then 0.2 s a call), and both calls are made here, in inference mode as ``engine.timing.measure`` calls,
    so that no timed call pays for them. A trace costs about 0.5 s a shape (a process's first one 2-4 s on a
    busy VM: the JIT starts) and pays after some 150 calls of one shape, so it is for inference over many
    images and for timing (``traced``), not for training's validation passes. A trace is only valid at its
    example's shape (the graph records the shapes the ops saw), so ``LeanDetector`` keeps one per batch
    shape. The tracer's deprecation notice and its warning on GroupNorm's batch-size check (a shape check,
    not a data-dependent branch) are silenced.
    TorchScript is deprecated in favour of torch.compile and torch.export, and works in every torch that
    pyproject.toml admits (< 2.15); measured the same way, torch.compile took 78 s to compile and gained less
    (10.9 against 12.7 ms), and torch.export's graph module gained 14%.
    """
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(network.eval(), example, check_trace=False)
    with torch.inference_mode():
        for _ in range(2):  # TorchScript's profiling run, then the run that builds the optimised graph
            traced(example)
    return traced


class LeanDetector(nn.Module):
    """Wraps a torchvision RetinaNet for inference. Call it like the model: a list of (3, H, W) images
    in [0, 1] -> a list of dicts with ``boxes`` (xyxy, pixels of each image), ``scores`` and ``labels``.

    ``input_size`` (height, width), multiples of 32: pad every batch to this size instead of to the
    largest image's; an image that does not fit is refused. ``traced``: run the network as one TorchScript
    trace per batch shape (``trace_network``), the same outputs about 30% sooner once traced.
    """

    def __init__(self, model: nn.Module, input_size: tuple[int, int] | None = None, traced: bool = False):
        super().__init__()
        self.input_size, self.traced = input_size, traced
        model = fold_batchnorm(copy.deepcopy(model).eval())
        self.backbone, self.head = model.backbone, fuse_head(model.head) or model.head
        self.to(memory_format=torch.channels_last)
        self.anchor_generator, self.box_coder = model.anchor_generator, model.box_coder
        self.num_classes = model.head.classification_head.num_classes
        self.score_thresh, self.nms_thresh = model.score_thresh, model.nms_thresh
        self.topk_candidates, self.detections_per_img = model.topk_candidates, model.detections_per_img
        self.register_buffer("mean", torch.tensor(model.transform.image_mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(model.transform.image_std).view(1, 3, 1, 1))
        self._anchors: dict[tuple, tuple[torch.Tensor, list[int]]] = {}
        self._traces: dict[tuple, torch.jit.ScriptModule] = {}

    def batch(self, images: list[torch.Tensor]) -> torch.Tensor:
        """Images -> (N, 3, H, W) normalised batch, zero-padded (after normalising) to a multiple of 32
        or to ``input_size``."""
        height = math.ceil(max(i.shape[1] for i in images) / SIZE_DIVISIBLE) * SIZE_DIVISIBLE
        width = math.ceil(max(i.shape[2] for i in images) / SIZE_DIVISIBLE) * SIZE_DIVISIBLE
        if self.input_size is not None:
            if height > self.input_size[0] or width > self.input_size[1]:
                largest = max(max(i.shape[1:]) for i in images)
                raise UserError(f"an image of {largest} px (longer side) does not fit the model's fixed "
                                f"{self.input_size[0]} x {self.input_size[1]} input; use an image size up to "
                                f"{min(self.input_size)}, or export again with a larger `image_size`")
            height, width = self.input_size
        if all(i.shape[1:] == (height, width) for i in images):
            batch = (torch.stack(images) - self.mean) / self.std
        else:
            batch = images[0].new_zeros(len(images), 3, height, width)
            for out, image in zip(batch, images):
                out[:, :image.shape[1], :image.shape[2]] = (image - self.mean[0]) / self.std[0]
        return batch.contiguous(memory_format=torch.channels_last)

    def raw(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The network: (N, 3, H, W) normalised batch -> class logits (N, HWA, K), box deltas (N, HWA, 4).
        With ``traced``, each batch shape runs through its own TorchScript trace (``trace_network``)."""
        if not self.traced:
            outputs = self.head(list(self.backbone(batch).values()))
            return outputs["cls_logits"], outputs["bbox_regression"]
        key = (tuple(batch.shape), batch.dtype, str(batch.device), batch.is_contiguous(memory_format=torch.channels_last))
        if key not in self._traces:
            self._traces[key] = trace_network(_Network(self.backbone, self.head), batch)
        return self._traces[key](batch)

    def anchors(self, height: int, width: int, device: torch.device) -> tuple[torch.Tensor, list[int]]:
        """Anchors (HWA, 4) for a padded input size, and the number of anchors per FPN level; cached."""
        key = (height, width, str(device))
        if key not in self._anchors:
            probe = torch.zeros(1, 3, height, width, device=device)
            features = list(self.backbone(probe).values())
            anchors = self.anchor_generator(ImageList(probe, [(height, width)]), features)[0]
            per_location = self.anchor_generator.num_anchors_per_location()[0]
            self._anchors[key] = (anchors, [f.shape[-2] * f.shape[-1] * per_location for f in features])
        return self._anchors[key]

    def padded_size(self, image: torch.Tensor) -> tuple[int, int]:
        """The (height, width) a (3, H, W) image is padded to: the next multiples of 32, or ``input_size``."""
        if self.input_size is not None:
            return self.input_size
        return (math.ceil(image.shape[1] / SIZE_DIVISIBLE) * SIZE_DIVISIBLE,
                math.ceil(image.shape[2] / SIZE_DIVISIBLE) * SIZE_DIVISIBLE)

    @torch.no_grad()
    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """Images of different padded sizes run as separate batches, so that an image's detections do not
        depend on what it is batched with: padded to a larger image's size, a slim student's GroupNorm
        statistics take in the padding (scores moved by up to 0.08 on a BCCD photograph batched with its
        portrait copy), and any network's border features change."""
        groups: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(images):
            groups.setdefault(self.padded_size(image), []).append(i)
        if len(groups) == 1:
            return self._forward(images)
        detections: list[dict[str, torch.Tensor]] = [{} for _ in images]
        for indices in groups.values():
            for i, found in zip(indices, self._forward([images[i] for i in indices])):
                detections[i] = found
        return detections

    def _forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        batch = self.batch(images)
        cls_logits, bbox_regression = self.raw(batch)
        anchors, per_level = self.anchors(batch.shape[-2], batch.shape[-1], batch.device)
        sizes = torch.tensor([i.shape[1:] for i in images], device=batch.device)
        return self.decode(cls_logits, bbox_regression, anchors, per_level, sizes)

    def decode(self, cls_logits: torch.Tensor, bbox_regression: torch.Tensor, anchors: torch.Tensor,
               per_level: list[int], sizes: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """Head outputs -> detections per image, by torchvision's rules.

        cls_logits (N, HWA, K), bbox_regression (N, HWA, 4), anchors (HWA, 4) xyxy in input pixels,
        per_level: anchors per FPN level, sizes (N, 2): each image's (height, width) before padding.
        Per level, scores above ``score_thresh`` and among the top ``topk_candidates``; boxes clipped
        to each image; class-wise NMS per image; at most ``detections_per_img`` per image.
        """
        num_images, num_classes = cls_logits.shape[0], cls_logits.shape[-1]
        image_idx, scores, anchor_idx, labels = [], [], [], []
        start = 0
        for count in per_level:
            level_scores = torch.sigmoid(cls_logits[:, start:start + count].float()).flatten(1)  # (N, count*K)
            level_images, flat_idx = (level_scores > self.score_thresh).nonzero(as_tuple=True)  # image-major
            level_kept = level_scores[level_images, flat_idx]
            passed = torch.bincount(level_images, minlength=num_images).tolist()
            if max(passed) > self.topk_candidates:  # keep each such image's top k, in anchor order (torchvision
                # takes the top k of the scores above the threshold, in this order), so that its detections do
                # not depend on its batch
                keep = torch.ones_like(level_kept, dtype=torch.bool)
                first = 0
                for n in passed:
                    if n > self.topk_candidates:
                        top = level_kept[first:first + n].topk(self.topk_candidates).indices
                        keep[first:first + n] = False
                        keep[first + top] = True
                    first += n
                level_images, flat_idx, level_kept = level_images[keep], flat_idx[keep], level_kept[keep]
            image_idx.append(level_images)
            scores.append(level_kept)
            anchor_idx.append(start + torch.div(flat_idx, num_classes, rounding_mode="floor"))
            labels.append(flat_idx % num_classes)
            start += count
        image_idx, scores = torch.cat(image_idx), torch.cat(scores)
        anchor_idx, labels = torch.cat(anchor_idx), torch.cat(labels)
        boxes = self.box_coder.decode_single(bbox_regression[image_idx, anchor_idx].float(), anchors[anchor_idx])
        detections = []
        for i, (height, width) in enumerate(sizes.tolist()):
            mine = (image_idx == i).nonzero().squeeze(1)
            image_boxes = clip_boxes_to_image(boxes[mine], (height, width))
            image_scores, image_labels = scores[mine], labels[mine]
            # Class-wise NMS as one call: each class's boxes shifted beyond the image's extent from the others'
            # (torchvision's batched_nms trick, with the image's own offsets, so that its batch cannot change
            # the rounding); the same boxes kept as a call per class (module docstring: faster here)
            offsets = (image_labels * (max(height, width) + 1)).to(image_boxes.dtype)[:, None]
            kept = nms(image_boxes + offsets, image_scores, self.nms_thresh).sort().values  # candidate order
            kept = kept[image_scores[kept].sort(descending=True, stable=True).indices][:self.detections_per_img]
            detections.append({"boxes": image_boxes[kept], "scores": image_scores[kept], "labels": image_labels[kept]})
        return detections
