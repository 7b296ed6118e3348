"""ONNX: the network as a graph with a static input shape; decode + NMS stay outside, in ``LeanDetector``.

The graph is ``LeanDetector.raw``: a normalised, zero-padded (N, 3, H, W) float32 batch ``images`` ->
``cls_logits`` (N, HWA, K) and ``bbox_regression`` (N, HWA, 4). Exporting only that avoids what breaks
detection exports (PITFALLS.md: data-dependent shapes in NMS, dynamo failures, zero detections crashing
ORT loops). The file's metadata (key ``retinaslim``, JSON) holds what the postprocess needs: the
architecture, its options (anchor set) and classes, to rebuild the anchor generator and box coder; the
input size; thresholds; and the normalisation mean and std.

``OnnxDetector`` is a ``LeanDetector`` whose ``raw`` runs an onnxruntime session, so its detections come
from the same decode code as PyTorch's.
"""

from __future__ import annotations

import json
import logging
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from torch import nn

from retinaslim.errors import UserError, not_a_file
from retinaslim.models.lean import LeanDetector
from retinaslim.models.registry import build_model

FORMAT = "retinaslim-onnx/1"
METADATA_KEY = "retinaslim"
INPUT_NAME = "images"
OUTPUT_NAMES = ["cls_logits", "bbox_regression"]
MIN_OPSET, MAX_OPSET = 13, 20  # 13: per-channel QuantizeLinear (int8); 20: torch's TorchScript exporter's last


class RawNetwork(nn.Module):
    """The exported part: normalised batch -> (cls_logits, bbox_regression)."""

    def __init__(self, detector: LeanDetector):
        super().__init__()
        self.detector = detector

    def forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.detector.raw(batch)


def export_network(detector: LeanDetector, path: Path, opset: int, dynamic_batch: bool) -> None:
    """Write ``detector.raw`` as ONNX at ``detector.input_size``, batch 1 (or a dynamic batch axis)."""
    height, width = detector.input_size
    example = torch.zeros(1, 3, height, width).contiguous(memory_format=torch.channels_last)
    axes = {name: {0: "batch"} for name in [INPUT_NAME, *OUTPUT_NAMES]} if dynamic_batch else None
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice and tracer chatter
        warnings.simplefilter("ignore")
        torch.onnx.export(RawNetwork(detector).eval(), (example,), str(path), input_names=[INPUT_NAME],
                          output_names=OUTPUT_NAMES, opset_version=opset, dynamic_axes=axes, dynamo=False)


def export_metadata(arch: str, arch_options: dict[str, Any], classes: list[dict[str, Any]], train_image_size: int,
                    image_size: int, detector: LeanDetector, **extra: Any) -> dict[str, Any]:
    """What the postprocess needs, as stored in the graph (``extra``: e.g. ``int8``, ``source``).

    ``train_image_size``: the checkpoint's, which the model is built at (its anchor sizes are fractions
    of it); ``image_size``: the longer side images are resized to before padding to ``input_size``.
    """
    return {"format": FORMAT, "arch": arch, "arch_options": arch_options, "classes": classes,
            "train_image_size": train_image_size, "image_size": image_size, "input_size": list(detector.input_size), "mean": detector.mean.flatten().tolist(),
            "std": detector.std.flatten().tolist(), "score_thresh": detector.score_thresh,
            "nms_thresh": detector.nms_thresh, "topk_candidates": detector.topk_candidates,
            "detections_per_img": detector.detections_per_img, **extra}


def write_metadata(path: Path, metadata: dict[str, Any]) -> None:
    """Store ``metadata`` as JSON under the ``retinaslim`` key of the model's metadata_props (in place)."""
    model = onnx.load(str(path))
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, {METADATA_KEY: json.dumps(metadata)})
    model.producer_name = "retinaslim"
    onnx.save(model, str(path))


@contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """onnxruntime.quantization logs warnings through the root logger; a library does not print."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_int8(src: Path, dst: Path, feeds: list[np.ndarray]) -> None:
    """Static int8 quantisation of the graph ``src`` -> ``dst``: QDQ, int8 per-channel weights, uint8
    activations, MinMax ranges from ``feeds`` (normalised (1, 3, H, W) batches). The graph is first
    pre-processed (shape inference, constant folding: GroupNorm's constant scales become initializers),
    as onnxruntime's quantisation guide asks."""

    class Feeds(CalibrationDataReader):
        def __init__(self):
            self.items = iter({INPUT_NAME: feed} for feed in feeds)

        def get_next(self):
            return next(self.items, None)

    with tempfile.TemporaryDirectory() as work, _quiet_root_logger():
        prepared = Path(work) / "prepared.onnx"
        quant_pre_process(str(src), str(prepared))
        quantize_static(str(prepared), str(dst), Feeds(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)


def session(path: Path, threads: int | None = None) -> ort.InferenceSession:
    """A CPU onnxruntime session on ``path`` with ``threads`` intra-op threads (default: torch's count)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.log_severity_level = 3  # errors only: ORT warns about unused initializers and the like
    # Idle ORT threads spin by default, starving the torch decode that follows each run on a small CPU.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own types for a missing, damaged or foreign file
        first_line = str(e).strip().splitlines()[0][:200] if str(e).strip() else e.__class__.__name__
        raise UserError(f"{path}: cannot load the ONNX model ({first_line})") from None


def read_metadata(path: Path, sess: ort.InferenceSession) -> dict[str, Any]:
    text = sess.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    if text is None:
        raise UserError(f"{path}: not a retinaslim ONNX export (no '{METADATA_KEY}' metadata); "
                        "make one with `retinaslim export --weights W.pt`")
    metadata = json.loads(text)
    if metadata.get("format") != FORMAT:
        raise UserError(f"{path}: unknown retinaslim ONNX format {metadata.get('format')!r} (expected {FORMAT})")
    return metadata


class OnnxDetector(LeanDetector):
    """A ``LeanDetector`` whose network is an onnxruntime session (CPU).

    The architecture named in the metadata is rebuilt without weights, for its anchor generator, box
    coder and feature-map sizes only; the weights live in the graph. Batches are padded to the graph's
    fixed input size; a static-batch graph runs image by image.
    """

    def __init__(self, path: Path, threads: int | None = None):
        path = Path(path)
        if not path.is_file():
            raise not_a_file(path, "an ONNX model")
        sess = session(path, threads)
        metadata = read_metadata(path, sess)
        model = build_model(metadata["arch"], len(metadata["classes"]), metadata["train_image_size"], **metadata["arch_options"])
        super().__init__(model.eval(), input_size=tuple(metadata["input_size"]))
        self.session, self.metadata = sess, metadata
        self.score_thresh, self.nms_thresh = metadata["score_thresh"], metadata["nms_thresh"]
        self.topk_candidates, self.detections_per_img = metadata["topk_candidates"], metadata["detections_per_img"]
        self.mean.copy_(torch.tensor(metadata["mean"]).view(1, 3, 1, 1))
        self.std.copy_(torch.tensor(metadata["std"]).view(1, 3, 1, 1))
        self.static_batch = isinstance(sess.get_inputs()[0].shape[0], int)

    def raw(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 3, H, W) normalised batch -> cls_logits (N, HWA, K), bbox_regression (N, HWA, 4), on batch's device."""
        array = batch.detach().float().cpu().contiguous().numpy()
        parts = [array[i:i + 1] for i in range(len(array))] if self.static_batch else [array]
        outputs = [self.session.run(OUTPUT_NAMES, {INPUT_NAME: part}) for part in parts]
        cls_logits, bbox_regression = (torch.from_numpy(np.concatenate([o[k] for o in outputs])) for k in range(2))
        return cls_logits.to(batch.device), bbox_regression.to(batch.device)
