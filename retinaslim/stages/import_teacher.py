"""import-teacher: a RetinaNet trained elsewhere with torchvision, wrapped into a retinaslim checkpoint.

The checkpoint rebuilds the model as torchvision built it for inference (``models.teacher.TORCHVISION_INFERENCE``:
its own 32-512 px anchors, score 0.05, top-1000 candidates per level, NMS 0.5, 300 boxes per image; ImageNet
mean and std), so ``pseudo-label``, ``predict``, ``eval``, ``filter`` and ``export`` predict what torchvision's
``model(images)`` predicts on the same image at the same size. Only the resize differs: retinaslim resizes the
longer side to ``image_size``. Nothing is trained.
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass
from pathlib import Path
from typing import Any

from retinaslim.config import IMPORT_IMAGE_SIZE
from retinaslim.core.atomic import refuse_overwriting_inputs
from retinaslim.errors import UserError
from retinaslim.models.checkpoint import Checkpoint, save_checkpoint
from retinaslim.models.registry import build_model, list_archs
from retinaslim.models.teacher import TORCHVISION_INFERENCE
from retinaslim.models.weights import CLASS_LOGITS, load_matching, read_weights, summarise_names


@dataclass
class ImportTeacherConfig:
    weights: Path  # torchvision-format state dict: bare, {'model': ...} or {'state_dict': ...}, 'module.' prefixes allowed
    arch: str  # retinanet_resnet50_fpn or retinanet_resnet50_fpn_v2
    classes: list[str]  # one name per output of the class head, in output order: category ids 1..K
    out: Path  # the retinaslim checkpoint to write
    _: KW_ONLY  # inputs and outputs above may be passed in order, options below by keyword only
    image_size: int = IMPORT_IMAGE_SIZE  # longer side (px) images are resized to by default at inference


@dataclass
class ImportTeacherResult:
    """The teacher checkpoint written (``out``), its architecture, classes as COCO categories in label order,
    the input size (longer side, px) and the number of tensors copied from the file."""

    out: Path
    arch: str
    classes: list[dict[str, Any]]  # [{"id": 1, "name": ...}, ...] in label order
    image_size: int
    num_tensors: int  # weights copied from the file


def _validate(config: ImportTeacherConfig) -> None:
    if config.arch not in list_archs("teacher"):
        raise UserError(f"`arch` {config.arch!r}: choose one of {', '.join(list_archs('teacher'))}")
    if not config.classes or any(not name.strip() for name in config.classes):
        raise UserError(f"`classes` {','.join(config.classes)!r}: expected class names separated by commas, e.g. cat,dog")
    duplicates = sorted({name for name in config.classes if config.classes.count(name) > 1})
    if duplicates:
        raise UserError(f"`classes`: {duplicates[0]!r} is named twice; every output of the class head needs its own name")
    if config.image_size < 32:
        raise UserError(f"`image_size` {config.image_size} is too small; use at least 32 px")
    refuse_overwriting_inputs([("`out`", config.out)], [("`weights`", config.weights)])


def import_teacher(config: ImportTeacherConfig) -> ImportTeacherResult:
    """Wrap the torchvision RetinaNet weights ``config.weights`` into the retinaslim checkpoint ``config.out``.

    Label k (the class head's k-th output, 0-based) becomes category id k + 1 named ``config.classes[k]``.
    Raises ``UserError`` naming the file when it is missing, carries code, does not hold every tensor of
    ``config.arch`` with its shape (other tensors, missing ones), or its class head has another number of
    outputs than ``config.classes`` names.
    """
    _validate(config)
    weights = read_weights(config.weights)
    model = build_model(config.arch, len(config.classes), config.image_size, **TORCHVISION_INFERENCE)
    logits = weights.state.get(CLASS_LOGITS + "weight")
    num_anchors = model.head.classification_head.num_anchors
    if logits is not None and logits.shape[0] != num_anchors * len(config.classes):
        raise UserError(f"{weights.path}: its class head has {logits.shape[0] // num_anchors} outputs but `classes` "
                        f"names {len(config.classes)}; name one class per output, in output order")
    report = load_matching(model, weights, config.arch)
    problems = [f"{what}: {summarise_names(names)}" for what, names in
                (("shapes differ", report.reinitialised), ("not in the model", report.unused),
                 ("missing", report.missing)) if names]
    if problems:
        raise UserError(f"{weights.path}: not {config.arch} weights ({'; '.join(problems)}); check `arch`")
    classes = [{"id": k + 1, "name": name} for k, name in enumerate(config.classes)]
    save_checkpoint(Path(config.out), Checkpoint(config.arch, dict(TORCHVISION_INFERENCE), classes, config.image_size,
                                                 model={k: v.detach() for k, v in model.state_dict().items()}))
    return ImportTeacherResult(Path(config.out), config.arch, classes, config.image_size, report.num_loaded)
