"""Training dataset over COCO files: images resized to the model's input size, boxes scaled with them."""

from __future__ import annotations

import numpy as np
import torch

from retinaslim.core.tta import Transform
from retinaslim.data.augment import apply_augment, build_augment
from retinaslim.data.coco import ClassMap, CocoData, image_ignore_regions, image_targets
from retinaslim.data.images import ImageError, read_image
from retinaslim.errors import UserError


class DetectionDataset(torch.utils.data.Dataset):
    """(image, target) pairs; image (3, h, w) float with longer side ``image_size``, target boxes xyxy in its pixels.

    ``target["ignore"]`` holds the image's ignore regions (COCO ``iscrowd``), which give no loss.
    An image that cannot be decoded yields None, which ``collate_skip`` drops and counts.
    """

    def __init__(self, coco: CocoData, classes: ClassMap, image_size: int, augment: str = "none"):
        missing = [coco.image_path(im) for im in coco.images if not coco.image_path(im).is_file()]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise UserError(f"{coco.path}: image {missing[0]} not found{more}; pass --images DIR if they live elsewhere")
        self.coco = coco
        self.classes = classes
        self.resize = Transform(scale=1.0)
        self.image_size = image_size
        self.augment_name = augment
        self.augment = build_augment(augment)

    def __len__(self) -> int:
        return len(self.coco.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]] | None:
        info = self.coco.images[index]
        try:
            original = read_image(self.coco.image_path(info))
        except ImageError:
            return None
        boxes, labels = image_targets(self.coco, info, self.classes)
        ignore = image_ignore_regions(self.coco, info)
        # Ignore regions travel with the boxes through resizing and augmentation, marked by label -1.
        boxes = torch.cat([boxes, ignore])
        labels = torch.cat([labels, torch.full((len(ignore),), -1, dtype=torch.int64)])
        image = self.resize.apply(original, self.image_size)
        # Boxes are in the size the file declares; scale them to the resized image.
        sy, sx = image.shape[1] / info["height"], image.shape[2] / info["width"]
        boxes = boxes * torch.tensor([sx, sy, sx, sy])
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, image.shape[2])
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, image.shape[1])
        if self.augment is not None:
            array = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)  # (h, w, 3)
            array, boxes_np, labels_np = apply_augment(self.augment, array, boxes.numpy(), labels.numpy())
            image = torch.from_numpy(array).permute(2, 0, 1).float().div_(255.0)
            boxes, labels = torch.from_numpy(boxes_np), torch.from_numpy(labels_np)
        valid = (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)
        real = valid & (labels >= 0)
        return image, {"boxes": boxes[real], "labels": labels[real], "ignore": boxes[valid & (labels < 0)]}


def collate_skip(batch: list) -> tuple[list, list, int]:
    """(images, targets, number of undecodable images dropped from this batch)."""
    good = [item for item in batch if item is not None]
    return [item[0] for item in good], [item[1] for item in good], len(batch) - len(good)
