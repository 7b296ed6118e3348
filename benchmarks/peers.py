"""The student against what a user would otherwise train on the same human labels (issue 16).

    python benchmarks/peers.py --out bench/peers_bccd --bccd ../shared/data/bccd --results-json docs/results.json
    python benchmarks/peers.py --out bench/peers_synth --results-json docs/results.json
    python benchmarks/peers.py --out bench/peers_quick --quick       # smoke test: minutes, numbers mean nothing

Data: distill.py's splits. BCCD: a seeded draw of --labeled train-split images (distill's `hold_out`), the
dataset's val split (each run's best epoch) and test split (the table). Synthetic: distill's `retinaslim
synth` draws (labelled and val images; the test images from another seed).

Models, each from scratch (no downloaded weights), on the human labels only, all trained by retinaslim's
training stage with the student's recipe (AdamW, warm-up then cosine, the student's default augmentation: `light`
until session 17's runs, `mosaic` since, named in each run's name, e.g. slim-s@60ep@mosaic; EMA, the best epoch by
validation AP), for the same --epochs at the same batch size and input size (every image resized so that
its longer side is --image-size pixels):
- slim-s, slim-m, slim-l: retinaslim's students (anchors fitted to the human boxes, as train-student does), at the
  student's learning rate, or once per --slim-lrs value, keeping the run with the higher validation AP;
- ssdlite320_mobilenet_v3_large and fasterrcnn_mobilenet_v3_large_320_fpn: torchvision's builders with
  weights=None, weights_backbone=None, and torchvision's own pre- and post-processing (their transforms
  resize to 320 px inside the model, as users run them). Each is trained once per --peer-lrs value and the
  run with the higher validation AP is kept (the slim students' rate was chosen so too: config.py).
- yolov8n: Ultralytics' YOLOv8 nano built from its yaml (no .pt), trained by Ultralytics' own trainer and
  recipe (its optimiser choice, mosaic and other augmentation, best epoch by its fitness on val) on a YOLO
  copy of the same files written by `retinaslim convert --to yolo`, at imgsz --image-size (letterboxed).
  Needs the `bench` extra (`pip install -e '.[bench]'`); runs offline with plots off; --models without
  yolov8n leaves it out.
The same --epochs for every model compares the networks; --model-epochs gives chosen models other epochs, for
example about the same CPU minutes each (what a user with a CPU budget gets). Each run's CPU minutes are reported
(train_min) and its epochs are part of its name in OUT/runs.json, so a run at other epochs is never reused.

Scored: one single-pass prediction per test image and one pycocotools evaluation per model
(engine.inference.evaluate_on_coco). Timed: end to end (a (3, H, W) image in [0, 1], longer side
--image-size -> boxes, scores, labels), batch 1, all models interleaved in rounds (engine.timing.measure):
slim models through their lean path (models.lean) with the network as a TorchScript trace, SSDLite split the
same way (its backbone and head traced at its fixed 320 x 320 input; torchvision's resize, anchors and
postprocess in torch around it), Faster R-CNN through torchvision's path (its RoI stage sits between its two
networks), every torchvision network with BatchNorm folded and channels-last, and YOLO through Ultralytics'
`predict` (a uint8 image of that size in: letterbox, fused network, NMS at conf 0.05 as the others' score
threshold). In onnxruntime too: the slim models (the graph `retinaslim export` writes, postprocess in torch),
SSDLite with the same split (its network as the ONNX graph), and YOLO through Ultralytics' own ONNX export and
predict. Not measured (null): Faster R-CNN in onnxruntime. YOLO's test
AP is scored the same way from its `predict` boxes at conf 0.001 (Ultralytics' validation setting), in
original pixels.

--distilled NAME=CHECKPOINT adds a slim student trained elsewhere on human + machine labels (distill.py's
student_default: on the synthetic set its labelled, validation and test images are these, drawn from the same
seeds) to the table and plot, scored and timed with the rest; the target is checked on human labels only.

Every finished training is recorded in OUT/runs.json and skipped when the script is rerun. Output: the table
(printed, OUT/peers.json), one plot per dataset (AP against latency; --plot, default docs/img/peers_<dataset>.png
when --results-json is given) and the `peers` object of --results-json: {dataset: {model: {"ap", "ap50",
"latency_ms", "latency_ms_onnx", "params", "macs", "train_min", ...}}}.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from datetime import date
from pathlib import Path

import torch
import torchvision
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from distill import PRESETS, hold_out, machine  # noqa: E402  (the same splits)

from retinaslim.config import TRAIN_DEFAULTS  # noqa: E402
from retinaslim.core.atomic import atomic_path, write_json  # noqa: E402
from retinaslim.core.progress import Reporter  # noqa: E402
from retinaslim.core.tta import Transform  # noqa: E402
from retinaslim.data.coco import ClassMap, load_coco  # noqa: E402
from retinaslim.data.images import read_image  # noqa: E402
from retinaslim.engine.inference import evaluate_on_coco  # noqa: E402
from retinaslim.engine.timing import measure, median_ms  # noqa: E402
from retinaslim.models.checkpoint import load_checkpoint  # noqa: E402
from retinaslim.models.lean import LeanDetector, fold_batchnorm, trace_network  # noqa: E402
from retinaslim.models.macs import count_macs  # noqa: E402
from retinaslim.models.onnx import (OnnxDetector, export_metadata, export_network, session,  # noqa: E402
                                   write_metadata)
from retinaslim.models.registry import register  # noqa: E402
from retinaslim.stages.convert import ConvertConfig, convert  # noqa: E402
from retinaslim.stages.synth import SynthConfig, synth  # noqa: E402
from retinaslim.stages.train import TrainConfig, train  # noqa: E402

SLIM = ("slim-s", "slim-m", "slim-l")
PEERS = ("ssdlite320_mobilenet_v3_large", "fasterrcnn_mobilenet_v3_large_320_fpn")
SSD = ("ssdlite320_mobilenet_v3_large",)  # peers split as the slim models are (SsdSplit); the two-stage one is not
YOLO = "yolov8n"


class TorchvisionPeer(nn.Module):
    """A torchvision detector whose class 0 is the background, seen through retinaslim's 0-based labels:
    training targets' labels + 1 in, detections' labels - 1 out. Otherwise the model as torchvision builds it."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]] | None = None):
        if self.training:
            return self.model(images, [{"boxes": t["boxes"], "labels": t["labels"] + 1} for t in targets])
        return [{**out, "labels": out["labels"] - 1} for out in self.model(images)]


@register("ssdlite320_mobilenet_v3_large", role="peer")
def ssdlite(num_classes: int, image_size: int) -> nn.Module:
    """torchvision's SSDLite (MobileNetV3-Large, 320 x 320 input), untrained."""
    return TorchvisionPeer(torchvision.models.detection.ssdlite320_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=num_classes + 1))


@register("fasterrcnn_mobilenet_v3_large_320_fpn", role="peer")
def fasterrcnn_mobilenet(num_classes: int, image_size: int) -> nn.Module:
    """torchvision's Faster R-CNN (MobileNetV3-Large FPN, shorter side 320), untrained."""
    return TorchvisionPeer(torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None, num_classes=num_classes + 1))


def prepare_data(args, out: Path) -> tuple[Path, Path, Path, dict]:
    """(labelled, val, test) COCO files and the split sizes, made once under OUT/data."""
    data_dir = out / "data"
    if args.bccd:
        for split in ("train", "val", "test"):
            if not (data_dir / f"{split}.json").exists():
                convert(ConvertConfig(args.bccd, "voc", "coco", data_dir / f"{split}.json", split=split))
        data, sizes = hold_out(out, args.labeled, args.seed)
        return data.labeled, data.val, data.test, {"labeled": args.labeled, **sizes}
    test_dir = out / "test"
    if not (data_dir / "val.json").exists():
        synth(SynthConfig(data_dir, num_labeled=args.labeled, num_unlabeled=0, num_val=args.val, size=args.size,
                          seed=args.seed, overwrite=True))
    if not (test_dir / "val.json").exists():
        synth(SynthConfig(test_dir, num_labeled=1, num_unlabeled=0, num_val=args.val, size=args.size,
                          seed=args.seed + 2, overwrite=True))
    return (data_dir / "labeled.json", data_dir / "val.json", test_dir / "val.json",
            {"labeled": args.labeled, "val": args.val, "test": args.val, "test_seed": args.seed + 2})


def train_runs(args, out: Path, labeled: Path, val: Path) -> dict[str, dict]:
    """Every model's training (peers once per learning rate), recorded in OUT/runs.json; -> the kept run per model."""
    path = out / "runs.json"
    runs = json.loads(path.read_text()) if path.exists() else {}
    plan = [(arch, lr) for arch in SLIM if arch in args.models for lr in (args.slim_lrs or [None])]
    plan += [(arch, lr) for arch in PEERS if arch in args.models for lr in args.peer_lrs]
    student = TRAIN_DEFAULTS["student"]
    planned = [run_name(arch, lr, epochs_of(args, arch), student["augment"], student["assign"] if arch in SLIM else None)
               for arch, lr in plan]
    for (arch, lr), name in zip(plan, planned):
        if name in runs:
            continue
        epochs = epochs_of(args, arch)
        print(f"\n== training {name}: {epochs} epochs at {args.image_size} px", flush=True)
        config = TrainConfig(role="student", labeled=labeled, val=val, out=out / "runs" / name, arch=arch,
                             image_size=args.image_size, epochs=epochs, batch_size=args.batch_size,
                             workers=args.workers, device="cpu", seed=args.seed, **({"lr": lr} if lr else {}))
        last = out / "runs" / name / "last.pt"
        result = train(config, Reporter(), resume=last if last.exists() else None)  # a killed run continues
        runs[name] = {"arch": arch, "lr": config.lr, "epochs": epochs, "best": str(result.best), "best_epoch": result.best_epoch,
                      "val_ap": result.best_metrics["ap"], "train_min": round(result.history[-1]["time"] / 60, 2)}
        write_json(path, runs)
    kept = {}
    runs = {name: run for name, run in runs.items() if name in planned}  # earlier runs at other rates are not compared
    for name, run in runs.items():
        if run["arch"] not in kept or run["val_ap"] > kept[run["arch"]]["val_ap"]:
            kept[run["arch"]] = {**run, "name": name}
    for arch, run in kept.items():
        run["lr_runs"] = {n: r["val_ap"] for n, r in runs.items() if r["arch"] == arch}
        run["train_min_all_lrs"] = round(sum(r["train_min"] for r in runs.values() if r["arch"] == arch), 2)
    return kept


def epochs_of(args, arch: str) -> int:
    """The model's training epochs: its --model-epochs value, else --epochs."""
    return args.model_epochs.get(arch, args.epochs)


def run_name(arch: str, lr: float | None, epochs: int, augment: str | None = None, assign: str | None = None) -> str:
    """A run's name in OUT/runs.json and OUT/runs: the model, its learning rate unless the default, its epochs,
    the augmentation of our training loop (not Ultralytics') and the slim models' anchor assignment, so an OUT
    folder made under another default trains again instead of reusing its runs."""
    return (arch + (f"@lr{lr:g}" if lr is not None else "") + f"@{epochs}ep" + (f"@{augment}" if augment else "")
            + (f"@{assign}" if assign else ""))


def train_yolo(args, out: Path, labeled: Path, val: Path) -> dict:
    """Ultralytics' trainer on a YOLO copy of the labelled and val files; recorded like the others."""
    path = out / "runs.json"
    runs = json.loads(path.read_text()) if path.exists() else {}
    epochs = epochs_of(args, YOLO)
    name = run_name(YOLO, None, epochs)
    if name in runs:
        return runs[name]
    try:
        from ultralytics import YOLO as Ultralytics
    except ImportError:
        sys.exit("yolov8n needs Ultralytics: pip install -e '.[bench]' (or leave it out of --models)")
    folder = out / "yolo"
    for split, coco in (("train", labeled), ("val", val)):
        if not (folder / split / "data.yaml").exists():
            convert(ConvertConfig(coco, "coco", "yolo", folder / split))
    names = ClassMap.from_categories(load_coco(labeled).categories).names
    data_yaml = folder / "data.yaml"
    data_yaml.write_text(f"path: {folder.resolve()}\ntrain: train/images\nval: val/images\n"
                         f"names: {json.dumps(dict(enumerate(names)))}\n")
    print(f"\n== training {name} (Ultralytics' trainer): {epochs} epochs at imgsz {args.image_size}", flush=True)
    started = time.perf_counter()
    model = Ultralytics(f"{YOLO}.yaml")
    model.train(data=str(data_yaml), epochs=epochs, imgsz=args.image_size, batch=args.batch_size, device="cpu",
                workers=args.workers, project=str(folder.resolve()), name=name, exist_ok=True, pretrained=False,
                amp=False, plots=False, seed=args.seed, deterministic=True, verbose=False)
    best = folder / name / "weights" / "best.pt"
    runs[name] = {"arch": YOLO, "lr": None, "epochs": epochs, "best": str(best), "best_epoch": None, "val_ap": None,
                  "train_min": round((time.perf_counter() - started) / 60, 2)}
    write_json(path, runs)
    return runs[name]


def score_and_time_yolo(run: dict, truth, image: torch.Tensor, side: tuple[int, int], args,
                        tmp: Path) -> tuple[dict, Callable[[], object], Callable[[], object]]:
    """YOLO's row (AP from its predict boxes on the test images) and its timed calls: PyTorch, and onnxruntime
    (Ultralytics' own ONNX export at the padded ``side``, run by its own predict; without onnxslim, which it
    would try to install)."""
    from ultralytics import YOLO as Ultralytics

    from retinaslim.core.detections import Detections
    from retinaslim.data.coco import CocoEvaluator, detections_to_annotations

    model = Ultralytics(run["best"])
    classes = ClassMap.from_categories(truth.categories)
    evaluator = CocoEvaluator(truth)
    results = []
    for im in truth.images:
        found = model.predict(str(truth.image_path(im)), imgsz=args.image_size, conf=0.001, iou=0.7, max_det=100,
                              device="cpu", verbose=False)[0]
        height, width = found.orig_shape
        detections = Detections(found.boxes.xyxy.float(), found.boxes.conf.float(), found.boxes.cls.long())
        results += [{k: a[k] for k in ("image_id", "category_id", "bbox", "score")}  # the COCO box contract
                    for a in detections_to_annotations(detections, im["id"], classes, width, height)]
    evaluator.add([im["id"] for im in truth.images], results)
    evaluation = evaluator.evaluation()
    network = model.model
    row = {"arch": YOLO, "labels": "human", "ap": evaluation.metrics["ap"] or 0.0, "ap50": evaluation.metrics["ap50"] or 0.0,
           "per_class_ap": evaluation.per_class_ap, "per_class_ap50": evaluation.per_class_ap_at(0.5),
           "per_class_ap75": evaluation.per_class_ap_at(0.75), "params": sum(p.numel() for p in network.parameters()),
           "macs": sum(count_macs(network, args.image_size,
                                  lambda: network(torch.zeros(1, 3, args.image_size, args.image_size))).values()),
           "epochs": run["epochs"], "train_min": run["train_min"], "train_min_all_lrs": run["train_min"], "lr": None,
           "lr_runs": {}, "best_epoch": None, "val_ap": None}
    pixels = (image.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()[:, :, ::-1].copy()  # BGR, as cv2 reads
    model.predict(pixels, imgsz=max(image.shape[1:]), conf=0.05, device="cpu", verbose=False)  # builds, fuses
    exported = Path(tmp) / "yolo"
    exported.mkdir()
    shutil.copy(run["best"], exported / "best.pt")
    onnx_path = Ultralytics(str(exported / "best.pt")).export(format="onnx", imgsz=list(side), simplify=False,
                                                             dynamic=False, opset=17, device="cpu", verbose=False)
    onnx = Ultralytics(onnx_path, task="detect")
    onnx.predict(pixels, imgsz=list(side), conf=0.05, device="cpu", verbose=False)
    return (row, lambda: model.predict(pixels, imgsz=max(image.shape[1:]), conf=0.05, device="cpu", verbose=False),
            lambda: onnx.predict(pixels, imgsz=list(side), conf=0.05, device="cpu", verbose=False))


def inference_copy(model: nn.Module, arch: str):
    """What is timed in PyTorch: a RetinaNet's lean path with its network traced (``LeanDetector(traced=True)``), an
    SSD peer split the same way (``SsdSplit``), and Faster R-CNN as torchvision runs it, with the same BatchNorm
    folding and channels-last layout (its RoI stage sits between its two networks, so it is not traced)."""
    if arch in SLIM:
        return LeanDetector(model, traced=True)
    if arch in SSD:
        return SsdSplit(model)
    return fold_batchnorm(copy.deepcopy(model).eval()).to(memory_format=torch.channels_last)


class SsdSplit:
    """A torchvision SSD peer as the slim models' lean path runs theirs: torchvision's own resize, anchors and
    postprocess in torch around its network (backbone + head at the fixed input, BatchNorm folded, channels-last),
    which runs as a TorchScript trace (``models.lean.trace_network``), or in onnxruntime when ``onnx`` names the
    graph file to write (the split `retinaslim export` makes)."""

    class Network(nn.Module):
        def __init__(self, ssd: nn.Module):
            super().__init__()
            self.backbone, self.head = ssd.backbone, ssd.head

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            outputs = self.head(list(self.backbone(x).values()))
            return outputs["cls_logits"], outputs["bbox_regression"]

    def __init__(self, peer: TorchvisionPeer, onnx: Path | None = None):
        self.ssd = fold_batchnorm(copy.deepcopy(peer.model).eval()).to(memory_format=torch.channels_last)
        height, width = self.ssd.transform.fixed_size
        probe = torch.zeros(1, 3, height, width).contiguous(memory_format=torch.channels_last)
        network = self.Network(self.ssd).eval()
        if onnx is None:
            traced = trace_network(network, probe)
            self.network = lambda batch: traced(batch.contiguous(memory_format=torch.channels_last))
        else:
            export_network_plain(network, probe, onnx)
            ort_session = session(onnx)
            self.network = lambda batch: tuple(torch.from_numpy(a) for a in ort_session.run(
                None, {"images": batch.contiguous().numpy()}))
        with torch.no_grad():
            images, _ = self.ssd.transform([probe[0]])
            self.anchors = self.ssd.anchor_generator(images, list(self.ssd.backbone(images.tensors).values()))

    @torch.no_grad()
    def __call__(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """Images of the same size, batch 1 as timed: (3, H, W) in [0, 1] -> torchvision's detections."""
        original = [tuple(image.shape[-2:]) for image in images]
        batch, _ = self.ssd.transform(images)
        cls_logits, bbox_regression = self.network(batch.tensors)
        outputs = {"cls_logits": cls_logits, "bbox_regression": bbox_regression}
        found = self.ssd.postprocess_detections(outputs, self.anchors * len(images), batch.image_sizes)
        return [{**d, "labels": d["labels"] - 1}
                for d in self.ssd.transform.postprocess(found, batch.image_sizes, original)]


def export_network_plain(network: nn.Module, example: torch.Tensor, path: Path) -> None:
    """``network`` (a batch -> two tensors) as an ONNX graph with a fixed input shape, opset 17."""
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice and tracer chatter
        warnings.simplefilter("ignore")
        torch.onnx.export(network, (example,), str(path), input_names=["images"], opset_version=17, dynamo=False)


def onnx_detector(checkpoint, model: nn.Module, side: tuple[int, int], path: Path) -> OnnxDetector:
    """The slim model as `retinaslim export` writes it (fp32, fixed input ``side``) to ``path``, in onnxruntime."""
    fixed = LeanDetector(model, input_size=side)
    export_network(fixed, path, opset=17, dynamic_batch=False)
    write_metadata(path, export_metadata(checkpoint.arch, checkpoint.arch_options, checkpoint.classes,
                                         checkpoint.image_size, checkpoint.image_size, fixed))
    return OnnxDetector(path)


def distilled_run(name: str, best: Path, image_size: int) -> dict:
    """A slim student trained elsewhere on human + machine labels (e.g. distill.py's student_default), as a row's
    run: its arch, epochs, best epoch and validation AP from the training's results.csv beside the checkpoint,
    and its training minutes (the last row's ``time``). Raises SystemExit naming the file on a checkpoint that
    is not a slim student at ``image_size`` or has no results.csv beside it."""
    checkpoint = load_checkpoint(best)
    if checkpoint.arch not in SLIM or checkpoint.image_size != image_size:
        sys.exit(f"--distilled {name}={best}: a {checkpoint.arch} checkpoint at {checkpoint.image_size} px; the table "
                 f"compares slim students ({', '.join(SLIM)}) at --image-size {image_size}")
    log = best.parent / "results.csv"
    if not log.exists():
        sys.exit(f"--distilled {name}={best}: no results.csv beside it (its training log gives the row's epochs "
                 "and minutes)")
    with log.open() as f:
        history = list(csv.DictReader(f))
    best_row = max(history, key=lambda row: float(row["ap"]))
    return {"arch": checkpoint.arch, "labels": "human + machine", "lr": None, "lr_runs": {}, "best": str(best),
            "epochs": int(history[-1]["epoch"]), "best_epoch": int(best_row["epoch"]), "val_ap": float(best_row["ap"]),
            "train_min": round(float(history[-1]["time"]) / 60, 2), "train_min_all_lrs": None}


def score_and_time(kept: dict[str, dict], yolo: dict | None, test: Path, args) -> dict[str, dict]:
    """Every row's test AP (one pycocotools evaluation each) and latencies (one interleaved timing run).
    ``kept``: row name -> run (train_runs' kept runs, keyed by arch, and distilled_run's, keyed by name)."""
    truth = load_coco(test)
    image = Transform().apply(read_image(truth.image_path(truth.images[0])), args.image_size)
    side = tuple(-(-s // 32) * 32 for s in image.shape[1:])
    rows, calls = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, run in kept.items():
            arch = run["arch"]
            checkpoint = load_checkpoint(Path(run["best"]))
            model = checkpoint.build().eval()
            classes = ClassMap.from_categories(checkpoint.classes)
            evaluation, _ = evaluate_on_coco(model, truth, classes, checkpoint.image_size, torch.device("cpu"),
                                             batch_size=8, workers=args.workers)
            detector = inference_copy(model, arch)
            calls[(name, "torch")] = lambda d=detector: d([image])
            if arch in SLIM:
                onnx = onnx_detector(checkpoint, model, side, Path(tmp) / f"{len(calls)}.onnx")
                calls[(name, "onnx")] = lambda d=onnx: d([image])
            elif arch in SSD:
                onnx = SsdSplit(model, onnx=Path(tmp) / f"{len(calls)}.onnx")
                calls[(name, "onnx")] = lambda d=onnx: d([image])
            rows[name] = {"arch": arch, "labels": run.get("labels", "human"), "ap": evaluation.metrics["ap"] or 0.0, "ap50": evaluation.metrics["ap50"] or 0.0,
                          "per_class_ap": evaluation.per_class_ap, "per_class_ap50": evaluation.per_class_ap_at(0.5),
                          "per_class_ap75": evaluation.per_class_ap_at(0.75),
                          "params": sum(p.numel() for p in model.parameters()),
                          "macs": sum(count_macs(model, args.image_size, None if arch in SLIM else
                                                 lambda m=model: m([image])).values()), "epochs": run["epochs"],
                          "train_min": run["train_min"],
                          "train_min_all_lrs": run["train_min_all_lrs"], "lr": run["lr"], "lr_runs": run["lr_runs"],
                          "best_epoch": run["best_epoch"], "val_ap": run["val_ap"]}
        if yolo is not None:
            rows[YOLO], calls[(YOLO, "torch")], calls[(YOLO, "onnx")] = score_and_time_yolo(yolo, truth, image, side,
                                                                                            args, Path(tmp))
        torch.set_num_threads(args.threads)  # Ultralytics sets torch to 1 thread when it trains or loads a model
        with torch.no_grad():  # as LeanDetector's forward and Ultralytics' predict run
            timings = measure(calls, args.latency_runs, 3)
    for name, row in rows.items():
        row["latency_ms"] = round(median_ms(timings[(name, "torch")]), 2)
        row["latency_ms_onnx"] = round(median_ms(timings[(name, "onnx")]), 2) if (name, "onnx") in timings else None
    return rows


def plot(path: Path, rows: dict[str, dict], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.ticker import NullFormatter, ScalarFormatter

    figure, axes = plt.subplots(figsize=(7, 4.5))
    latencies = [row["latency_ms"] for row in rows.values()]
    for name, row in sorted(rows.items(), key=lambda item: item[1]["ap"]):
        axes.scatter(row["latency_ms"], row["ap"], color="C0" if row["arch"] in SLIM else "C3",
                     marker="o" if row["labels"] == "human" else "*")
        above = sum(1 for other in rows.values() if other["ap"] > row["ap"] and abs(other["ap"] - row["ap"]) < 0.03
                    and abs(other["latency_ms"] / row["latency_ms"] - 1) < 0.2)  # a close neighbour: move the label
        axes.annotate(name, (row["latency_ms"], row["ap"]), fontsize=7, xytext=(5, 4 - 11 * above),
                      textcoords="offset points")
    axes.set(xlabel="end-to-end latency, batch 1, CPU (ms)", ylabel="COCO AP (test)")
    axes.set_title(title, fontsize=10)
    axes.set_xscale("log")
    axes.set_xlim(min(latencies) / 1.3, max(latencies) * 3)  # room for the labels right of the points
    axes.xaxis.set_major_formatter(ScalarFormatter())
    axes.xaxis.set_minor_formatter(NullFormatter())
    axes.set_xticks(sorted({round(v) for v in latencies}))
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=90)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="working folder (resumable)")
    parser.add_argument("--bccd", type=Path, metavar="DIR", help="Pascal VOC BCCD folder; default: synthetic data")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of the script")
    parser.add_argument("--labeled", type=int, help="human-labelled images (default: distill.py's preset)")
    parser.add_argument("--val", type=int, help="synthetic validation and test images (default: distill.py's)")
    parser.add_argument("--size", type=int, help="synthetic image size in pixels (default: distill.py's)")
    parser.add_argument("--image-size", type=int, default=320, help="every model's input (longer side, pixels)")
    parser.add_argument("--epochs", type=int, default=40, help="every model's training epochs (default 40)")
    parser.add_argument("--model-epochs", default="", metavar="MODEL=N,...",
                        help="other epochs for chosen models, e.g. slim-s=120,yolov8n=64: about the same CPU "
                             "minutes each instead of the same epochs")
    parser.add_argument("--batch-size", type=int, default=TRAIN_DEFAULTS["student"]["batch_size"])
    parser.add_argument("--peer-lrs", default="1e-3,1e-2", help="learning rates tried for each peer, comma-separated")
    parser.add_argument("--slim-lrs", help="learning rates tried for each slim student, comma-separated "
                                           "(default: the student's own, config.py)")
    parser.add_argument("--models", default=",".join(SLIM + PEERS + (YOLO,)),
                        help="models to train and compare, comma-separated (default: all; yolov8n needs Ultralytics)")
    parser.add_argument("--distilled", action="append", default=[], metavar="NAME=CHECKPOINT",
                        help="also score and time a slim student trained elsewhere on human + machine labels (e.g. "
                             "distill.py's runs/student_default/best.pt, at --image-size), as row NAME; repeatable. "
                             "Not trained here, and not counted for the target (human labels only)")
    parser.add_argument("--latency-runs", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results-json", type=Path, help="write the `peers` object here, e.g. docs/results.json")
    parser.add_argument("--plot", type=Path, help="AP against latency PNG (default docs/img/peers_<dataset>.png "
                        "with --results-json, else OUT/peers.png)")
    args = parser.parse_args()
    preset = PRESETS[("bccd_quick" if args.quick else "bccd") if args.bccd else ("quick" if args.quick else "full")]
    args.labeled = args.labeled or (100 if args.bccd and not args.quick else preset["labeled"])
    args.val, args.size = args.val or preset.get("val"), args.size or preset.get("size")
    args.peer_lrs = [float(v) for v in args.peer_lrs.split(",")]
    args.slim_lrs = [float(v) for v in args.slim_lrs.split(",")] if args.slim_lrs else None
    args.models = args.models.split(",")
    unknown = set(args.models) - set(SLIM + PEERS + (YOLO,))
    if unknown:
        parser.error(f"--models: unknown {sorted(unknown)}; choose from {', '.join(SLIM + PEERS + (YOLO,))}")
    try:
        args.model_epochs = {model: int(n) for model, n in (item.split("=") for item in args.model_epochs.split(",")
                                                             if item)}
    except ValueError:
        parser.error(f"--model-epochs: expected MODEL=N,... with whole numbers, got {args.model_epochs!r}")
    if set(args.model_epochs) - set(args.models) or min(args.model_epochs.values(), default=1) < 1:
        parser.error(f"--model-epochs: each MODEL must be one of --models and each N at least 1, got "
                     f"{args.model_epochs}")
    try:
        args.distilled = {name: Path(best) for name, best in (item.split("=", 1) for item in args.distilled)}
    except ValueError:
        parser.error(f"--distilled: expected NAME=CHECKPOINT, got {args.distilled}")
    taken = set(args.distilled) & set(SLIM + PEERS + (YOLO,))
    if taken or not all(best.is_file() for best in args.distilled.values()):
        parser.error(f"--distilled: each NAME must differ from the models' names and each CHECKPOINT must be a file, "
                     f"got {args.distilled}")
    if args.quick:
        args.epochs, args.image_size, args.latency_runs, args.workers = 1, 96, 3, 0
    dataset = "bccd" if args.bccd else "synthetic"
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    args.threads = torch.get_num_threads()  # every model is timed with torch's default thread count

    labeled, val, test, sizes = prepare_data(args, out)
    kept = train_runs(args, out, labeled, val)
    for name, best in args.distilled.items():
        kept[name] = distilled_run(name, best, args.image_size)
    yolo = train_yolo(args, out, labeled, val) if YOLO in args.models else None
    rows = score_and_time(kept, yolo, test, args)
    setup = {"dataset": dataset, "machine": machine(), "cpu_count": os.cpu_count(), "threads": args.threads,
             "torch": torch.__version__, "torchvision": torchvision.__version__, "python": platform.python_version(),
             "date": date.today().isoformat(), "epochs": args.epochs, "model_epochs": args.model_epochs,
             "image_size": args.image_size,
             "batch_size": args.batch_size, "peer_lrs": args.peer_lrs, "slim_lrs": args.slim_lrs, "latency_runs": args.latency_runs, **sizes,
             "command": "python benchmarks/peers.py " + " ".join(sys.argv[1:])}

    schedule = f"{args.epochs} epochs each" if not args.model_epochs else "epochs per model (the table's column)"
    print(f"\npeers on {dataset}: {schedule}, {args.image_size} px, human labels only; test split; "
          f"latency end to end, batch 1, {setup['threads']} threads, {setup['machine']}")
    print("| model | labels | AP | AP50 | latency ms | ONNX ms | params | GMACs | epochs | train min | lr (val AP per lr) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for arch, r in sorted(rows.items(), key=lambda item: item[1]["latency_ms"]):
        lrs = ", ".join(f"{n.split('@lr')[1].split('@')[0] if '@lr' in n else 'default'}: {ap:.3f}"
                        for n, ap in r["lr_runs"].items())
        onnx = f"{r['latency_ms_onnx']:.1f}" if r["latency_ms_onnx"] is not None else "-"
        recipe = (f"{r['lr']:g} ({lrs})" if r["lr"] else "Ultralytics' own" if r["arch"] == YOLO else
                  "its own run (human + machine labels)")
        print(f"| {arch} | {r['labels']} | {r['ap']:.3f} | {r['ap50']:.3f} | {r['latency_ms']:.1f} | {onnx} | {r['params']:,} | "
              f"{r['macs'] / 1e9:.2f} | {r['epochs']} | {r['train_min']:.1f} | {recipe} |")
    peers = [p for p in (*PEERS, YOLO) if p in rows]
    met = []
    for slim in [m for m in SLIM if m in rows]:
        short = [p for p in peers if not (rows[slim]["ap"] >= rows[p]["ap"] - 0.005
                                          and 2 * rows[slim]["latency_ms"] <= rows[p]["latency_ms"])]
        met += [slim] if not short else []
        print(f"{slim}: " + ("no peer to compare with" if not peers else "within 0.5 AP point of every peer at <= half its latency" if not short else
                             "short of " + ", ".join(f"{p} (AP {rows[p]['ap']:.3f}, {rows[p]['latency_ms']:.1f} ms)"
                                                      for p in short)))
    verdict = ("not checked: no peer among --models" if not peers else
               "HOLDS (" + ", ".join(met) + ")" if met else "NOT MET")
    met = met if peers else []
    print(f"target (one slim model within 0.5 AP point of every peer at <= half of each one's latency): {verdict}")
    setup["target_met_by"] = met
    write_json(out / "peers.json", {"setup": setup, "models": rows})

    plot_path = args.plot or (Path(f"docs/img/peers_{dataset}.png") if args.results_json else out / "peers.png")
    plot(plot_path, rows, f"{dataset}: {schedule.split(' (')[0]}, {args.image_size} px, human labels"
                          + (" (star: human + machine)" if args.distilled else ""))
    print(f"plot: {plot_path}")
    if args.results_json is not None:
        merged = json.loads(args.results_json.read_text()) if args.results_json.exists() else {}
        merged.setdefault("peers", {})[dataset] = rows
        merged.setdefault("peers_setup", {})[dataset] = setup
        write_json(args.results_json, merged)


if __name__ == "__main__":
    main()
