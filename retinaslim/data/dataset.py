"""Training dataset over COCO files: images resized to the model's input size, boxes scaled with them."""

from __future__ import annotations

import numpy as np
import torch

from retinaslim.core.tta import Transform
from retinaslim.data.augment import apply_augment, build_augment
from retinaslim.data.coco import (
    ClassMap,
    CocoData,
    image_ignore_regions,
    image_targets,
)
from retinaslim.data.images import ImageError, max_image_pixels, read_image


class DetectionDataset(torch.utils.data.Dataset):
    """(image, target) pairs; image (3, h, w) float with longer side ``image_size``, target boxes xyxy in its pixels.

    ``coco`` has been through ``require_image_files`` (its images are there, at the sizes it declares).

    ``target["ignore"]`` holds the image's ignore regions (COCO ``iscrowd``), which give no loss;
    ``target["weight"]`` scales the image's loss; ``target["machine"]`` says whether its labels are machine-made;
    with ``score_weights``, ``target["box_weights"]`` (N,) holds each box's ``score`` (0..1, the fused score
    pseudo-label wrote), which scales that box's loss terms (``models.common.weighted_head_loss``); with
    ``class_mask`` ((C,) bool), ``target["class_mask"]`` names the classes its labels speak for (the loss of
    the others is left out: ``models.common.IgnoreAwareRetinaNet``).
    An image that cannot be decoded yields None, which ``collate_skip`` drops and counts.

    With ``augment="mosaic"``, an item of an epoch up to ``mosaic_until`` is a mosaic (``mosaic``), an
    ``image_size`` square; later epochs see whole images (YOLO's ``close_mosaic``). Either way ``light``
    follows.
    """

    def __init__(self, coco: CocoData, classes: ClassMap, image_size: int, augment: str = "none", weight: float = 1.0,
                 machine: bool = False, score_weights: bool = False, seed: int = 0, mosaic_until: int = 0,
                 class_mask: torch.Tensor | None = None):
        self.coco = coco
        self.classes = classes
        self.resize = Transform(scale=1.0)
        self.image_size = image_size
        self.augment = build_augment(augment)
        self.mosaic_until = mosaic_until if augment == "mosaic" else None  # epochs up to this one are mosaics
        self.weight = weight  # scales this image's loss (machine labels: --pseudo-weight)
        self.machine = machine  # machine-labelled images are counted apart in the training log
        self.score_weights = score_weights  # machine labels: --pseudo-box-weight score
        self.class_mask = class_mask  # machine labels: the classes filter trusted the teacher with (None: all)
        # An image's augmentation depends only on (seed, epoch, index): the same in any worker process
        # and after --resume. The epoch comes with each index (see MixedBatchSampler).
        self.seed = seed
        self.max_pixels = max_image_pixels()

    def __len__(self) -> int:
        return len(self.coco.images)

    def _load(self, index: int):
        """(image (3, h, w), boxes (N, 4) xyxy pixels, labels (N,) with -1 for ignore regions, scores (N,)) or None."""
        info = self.coco.images[index]
        try:
            image = self.resize.apply(read_image(self.coco.image_path(info), self.max_pixels), self.image_size)
        except ImageError:
            return None
        boxes, labels = image_targets(self.coco, info, self.classes)
        ignore = image_ignore_regions(self.coco, info)
        scores = torch.tensor([a["score"] for a in self.coco.annotations_per_image[info["id"]] if not a.get("iscrowd", 0)]
                              if self.score_weights else [1.0] * len(labels), dtype=torch.float32)
        # Ignore regions travel with the boxes through resizing and augmentation, marked by label -1.
        boxes = torch.cat([boxes, ignore])
        labels = torch.cat([labels, torch.full((len(ignore),), -1, dtype=torch.int64)])
        scores = torch.cat([scores, torch.zeros(len(ignore))])
        # Boxes are in the size the file declares; scale them to the resized image.
        sy, sx = image.shape[1] / info["height"], image.shape[2] / info["width"]
        boxes = boxes * torch.tensor([sx, sy, sx, sy])
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, image.shape[2])
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, image.shape[1])
        return image, boxes, labels, scores

    def mosaic(self, index: int, rng: np.random.Generator):
        """The image ``index`` and three others drawn by ``rng``, tiled as in YOLOv4/v5's mosaic (Bochkovskiy et
        al. 2020; Ultralytics' ``Mosaic`` and ``RandomPerspective``, reimplemented): each image (longer side S =
        ``image_size``) in one quadrant of a grey 2S x 2S canvas, its inner corner on a centre drawn in the
        middle S x S; then a square window of side S / scale (scale 0.5..1.5, its centre up to 0.1 S off the
        canvas's) resized to S x S. Objects thus appear at 0.5-1.5 times their size, in new contexts, and an
        item holds about four images' boxes.

        Returns ``_load``'s tuple for the mosaic (boxes clipped to it; a box left with under 20% of its area
        is dropped), or None if ``index`` cannot be decoded; another image that cannot be is left grey.
        """
        size = self.image_size
        first = self._load(index)
        if first is None:
            return None
        others = rng.integers(0, len(self), 3).tolist()
        canvas = torch.full((3, 2 * size, 2 * size), 114 / 255)
        cx, cy = rng.uniform(0.5 * size, 1.5 * size, 2)
        parts = []
        for k, item in enumerate([first] + [self._load(i) for i in others]):
            if item is None:
                continue
            image, boxes, labels, scores = item
            h, w = image.shape[1:]
            # Quadrant k: the image's inner corner touches the centre.
            x0 = cx - w if k in (0, 2) else cx
            y0 = cy - h if k in (0, 1) else cy
            x0, y0 = int(round(x0)), int(round(y0))
            xa, ya, xb, yb = max(x0, 0), max(y0, 0), min(x0 + w, 2 * size), min(y0 + h, 2 * size)
            canvas[:, ya:yb, xa:xb] = image[:, ya - y0:yb - y0, xa - x0:xb - x0]
            parts.append((boxes + torch.tensor([x0, y0, x0, y0], dtype=boxes.dtype), labels, scores))
        boxes = torch.cat([p[0] for p in parts])
        labels = torch.cat([p[1] for p in parts])
        scores = torch.cat([p[2] for p in parts])
        scale = rng.uniform(0.5, 1.5)
        window = size / scale
        wx = size + rng.uniform(-0.1, 0.1) * size - window / 2
        wy = size + rng.uniform(-0.1, 0.1) * size - window / 2
        # Crop the window (grey outside the canvas) and resize it to S x S.
        theta = torch.tensor([[[window / (2 * size), 0, (wx + window / 2) / size - 1],
                               [0, window / (2 * size), (wy + window / 2) / size - 1]]], dtype=torch.float32)
        grid = torch.nn.functional.affine_grid(theta, [1, 3, size, size], align_corners=False)
        out = torch.nn.functional.grid_sample(canvas[None] - 114 / 255, grid, align_corners=False)[0] + 114 / 255
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        boxes = (boxes - torch.tensor([wx, wy, wx, wy], dtype=boxes.dtype)) * scale
        boxes = boxes.clamp(0, size)
        kept = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) >= 0.2 * area * scale**2) & (area > 0)
        return out.clamp(0, 1), boxes[kept].float(), labels[kept], scores[kept]

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, dict[str, torch.Tensor]] | None:
        """``key``: an image index, or (index, epoch)."""
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        item_seed = (self.seed * 1_000_003 + epoch * 100_003 + index) % 2**32
        if self.mosaic_until is not None and epoch <= self.mosaic_until:
            item = self.mosaic(index, np.random.default_rng(item_seed))
        else:
            item = self._load(index)
        if item is None:
            return None
        image, boxes, labels, scores = item
        if self.augment is not None:
            self.augment.set_random_seed(item_seed)
            array = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)  # (h, w, 3)
            # Each box travels as its index, so that its label and score follow it (augmentation may drop boxes).
            array, boxes_np, kept = apply_augment(self.augment, array, boxes.numpy(), np.arange(len(labels)))
            image = torch.from_numpy(array).permute(2, 0, 1).float().div_(255.0)
            kept = torch.from_numpy(kept)
            boxes, labels, scores = torch.from_numpy(boxes_np), labels[kept], scores[kept]
        valid = (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)
        real = valid & (labels >= 0)
        target = {"boxes": boxes[real], "labels": labels[real], "ignore": boxes[valid & (labels < 0)],
                  "weight": torch.tensor(self.weight), "machine": torch.tensor(self.machine)}
        if self.score_weights:
            target["box_weights"] = scores[real]
        if self.class_mask is not None:
            target["class_mask"] = self.class_mask
        return image, target


def collate_skip(batch: list) -> tuple[list, list, int]:
    """(images, targets, number of undecodable images dropped from this batch)."""
    good = [item for item in batch if item is not None]
    return [item[0] for item in good], [item[1] for item in good], len(batch) - len(good)


class MixedDataset(torch.utils.data.Dataset):
    """Human then machine DetectionDatasets behind one index space; items are fetched by (index, epoch)."""

    def __init__(self, datasets: list[DetectionDataset]):
        self.datasets = datasets
        self.offsets = [sum(len(d) for d in datasets[:k]) for k in range(len(datasets))]

    def __len__(self) -> int:
        return sum(len(d) for d in self.datasets)

    def __getitem__(self, key: tuple[int, int]):
        index, epoch = key
        k = max(k for k, offset in enumerate(self.offsets) if index >= offset)
        return self.datasets[k][index - self.offsets[k], epoch]


class MixedBatchSampler(torch.utils.data.Sampler):
    """Batches of (index, epoch) keys into MixedDataset([human, machine]) with a fixed share of machine images.

    Each batch holds ``round(pseudo_ratio * batch_size)`` machine images (at least one when the ratio is
    above 0, at most ``batch_size - 1``) and human images for the rest; an epoch is one shuffled pass over the human images, machine
    images are drawn without replacement, reshuffled when used up. With no machine images it is a plain
    shuffled batching. Images carry an orientation group (``portrait_human``/``portrait_machine``: height
    > width) and a batch holds one orientation only, so letterboxed images are not padded to a square.
    ``rank``/``world_size`` keep every world_size-th batch for DDP, the same number on every rank. The order depends only on (seed,
    epoch), so a resumed run sees the batches an uninterrupted one would.
    """

    def __init__(self, num_human: int, num_machine: int, batch_size: int, pseudo_ratio: float, seed: int = 0,
                 rank: int = 0, world_size: int = 1, portrait_human: list[bool] | None = None,
                 portrait_machine: list[bool] | None = None):
        self.num_human, self.num_machine = num_human, num_machine
        machine = round(pseudo_ratio * batch_size) if num_machine else 0
        self.machine_per_batch = min(max(machine, 1 if num_machine and pseudo_ratio > 0 else 0), batch_size - 1)
        self.human_per_batch = batch_size - self.machine_per_batch
        self.seed, self.rank, self.world_size, self.epoch = seed, rank, world_size, 0
        self.human_group = [int(p) for p in portrait_human] if portrait_human else [0] * num_human
        machine_group = [int(p) for p in portrait_machine] if portrait_machine else [0] * num_machine
        # Machine images of each orientation; a group without any borrows from all of them.
        everyone = list(range(num_human, num_human + num_machine))
        self.machine_of_group = {g: [num_human + i for i, mg in enumerate(machine_group) if mg == g] or everyone
                                 for g in (0, 1)}
        self.num_batches = sum(-(-self.human_group.count(g) // self.human_per_batch) for g in (0, 1))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        human = torch.randperm(self.num_human, generator=generator).tolist()
        batches: list[list[int]] = []
        pending: dict[int, list[int]] = {0: [], 1: []}  # human images waiting for a batch, per orientation
        pools: dict[int, list[int]] = {0: [], 1: []}  # machine images left to draw this round, per orientation

        def emit(group: int) -> None:
            batch = pending[group]
            for _ in range(self.machine_per_batch):
                if not pools[group]:
                    candidates = self.machine_of_group[group]
                    pools[group] = [candidates[k] for k in torch.randperm(len(candidates), generator=generator).tolist()]
                batch.append(pools[group].pop())
            batches.append(batch)
            pending[group] = []

        for index in human:
            group = self.human_group[index]
            pending[group].append(index)
            if len(pending[group]) == self.human_per_batch:
                emit(group)
        for group in (0, 1):
            if pending[group]:
                emit(group)
        return batches

    def __iter__(self):
        batches = self._batches()
        # Every rank takes as many batches (DDP's all-reduce needs each step on each): the first ones again pad the
        # list to a multiple of world_size, as torch's DistributedSampler pads with the first samples
        batches = (batches * self.world_size)[:len(self) * self.world_size]
        # The epoch travels with each index, so persistent workers augment for the right epoch.
        return iter([[(i, self.epoch) for i in batch] for batch in batches[self.rank::self.world_size]])

    def __len__(self) -> int:
        return -(-self.num_batches // self.world_size)
