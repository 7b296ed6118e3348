"""Benchmark pseudo-label: machine-label quality per fusion method, speed, and memory.

    python benchmarks/pseudo_label.py --out bench/pseudo [--teacher T.pt]

1. Data: `retinaslim synth` (labelled, unlabelled with hidden truth, val).
2. Teacher: trained here on the labelled images unless --teacher is given.
3. Quality: the teacher runs once per transform on every unlabelled image; the machine labels of
   single-pass, flip + NMS and all six transforms with nms / vote / wbf are scored against the hidden
   truth (pycocotools AP; precision and recall at IoU 0.5 for boxes scoring >= the filter's default 0.5).
4. Speed: the pseudo-label stage end to end at batch 1 and batch 8 (images/s; share of time outside
   the teacher's forwards).
5. Memory: peak RSS of the stage on 1,000 and 5,000 images (a small labeller model, so that this part
   measures the pipeline, not the teacher).
Prints tables and writes OUT/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
from torchvision.ops import box_iou

from retinaslim.config import FILTER_SCORE_THRESH, TRAIN_DEFAULTS
from retinaslim.core.fusion import fuse
from retinaslim.core.tta import make_transforms
from retinaslim.data.coco import ClassMap, coco_metrics, detections_to_annotations, image_targets, load_coco
from retinaslim.data.images import read_image
from retinaslim.models.checkpoint import load_checkpoint
from retinaslim.models.lean import LeanDetector
from retinaslim.models.predict import detect
from retinaslim.models.registry import list_archs
from retinaslim.stages.pseudo_label import PseudoLabelConfig, pseudo_label
from retinaslim.stages.synth import SynthConfig, synth
from retinaslim.stages.train import TrainConfig, train


def precision_recall(truth, predictions_per_image, classes, score_thresh):
    """Precision and recall at IoU 0.5 of same-class boxes scoring >= score_thresh (greedy matching)."""
    num_tp = num_pred = num_true = 0
    for image in truth.images:
        boxes, labels = image_targets(truth, image, classes)
        dets = predictions_per_image[image["id"]]
        dets = dets[dets.scores >= score_thresh]
        num_true, num_pred = num_true + len(boxes), num_pred + len(dets)
        matched = torch.zeros(len(boxes), dtype=torch.bool)
        if len(boxes) and len(dets):
            ious = box_iou(dets.boxes, boxes)
            for i in torch.argsort(dets.scores, descending=True).tolist():
                candidates = (ious[i] >= 0.5) & ~matched & (labels == dets.labels[i])
                if candidates.any():
                    matched[int(torch.argmax(ious[i] * candidates))] = True
        num_tp += int(matched.sum())
    return num_tp / max(1, num_pred), num_tp / max(1, num_true)


def quality(teacher_path: Path, truth_path: Path, unlabeled: Path) -> list[dict]:
    checkpoint = load_checkpoint(teacher_path)
    detector = LeanDetector(checkpoint.build())
    truth = load_coco(truth_path, unlabeled.parent)
    classes = ClassMap.from_categories(checkpoint.classes)
    transforms = make_transforms((0.75, 1.0, 1.25), hflip=True)
    names = [t.name for t in transforms]
    raw = {}  # image id -> detections per transform
    started = time.perf_counter()
    for image in truth.images:
        raw[image["id"]] = detect(detector, [read_image(truth.image_path(image))], checkpoint.image_size, transforms,
                                  torch.device("cpu"))[0]
    print(f"teacher forwards: {len(truth.images)} images x {len(transforms)} transforms in {time.perf_counter() - started:.0f} s")
    variants = {
        "single pass (scale 1)": ([names.index("scale1")], None),
        "scale 1 + flip, nms": ([names.index("scale1"), names.index("scale1+hflip")], "nms"),
        "6 transforms, nms": (list(range(6)), "nms"),
        "6 transforms, vote": (list(range(6)), "vote"),
        "6 transforms, wbf (default)": (list(range(6)), "wbf"),
    }
    rows = []
    for name, (chosen, method) in variants.items():
        fused = {i: (d[chosen[0]] if method is None else fuse([d[k] for k in chosen], method)) for i, d in raw.items()}
        results = [ann for image in truth.images for ann in
                   detections_to_annotations(fused[image["id"]], image["id"], classes, image["width"], image["height"])]
        metrics = coco_metrics(truth, results)
        precision, recall = precision_recall(truth, fused, classes, FILTER_SCORE_THRESH)
        rows.append({"labels": name, "ap": metrics["ap"], "ap50": metrics["ap50"], "ap75": metrics["ap75"],
                     "precision@0.5": precision, "recall@0.5": recall})
    return rows


def speed(teacher_path: Path, unlabeled: Path, out: Path) -> list[dict]:
    rows = []
    for batch_size in (1, 8):
        result = pseudo_label(PseudoLabelConfig(unlabeled, teacher_path, out / f"speed_b{batch_size}.json",
                                                batch_size=batch_size, workers=2, device="cpu"))
        t = result.timings
        rows.append({"batch": batch_size, "images": result.num_images, "seconds": result.seconds,
                     "images/s": result.num_images / result.seconds, "forward s": t.forward,
                     "decode wait s": t.data, "fusion s": t.fusion,
                     "outside forward %": 100 * (result.seconds - t.forward) / result.seconds})
    return rows


MEMORY_CHILD = """
import resource, sys
from pathlib import Path
from retinaslim.stages.pseudo_label import PseudoLabelConfig, pseudo_label
r = pseudo_label(PseudoLabelConfig(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), batch_size=8, workers=2, device="cpu"))
print(r.num_images, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def memory(labeller: Path, out: Path) -> list[dict]:
    rows = []
    for count in (1000, 5000):
        data = synth(SynthConfig(out / f"mem{count}", num_labeled=1, num_unlabeled=count, num_val=1, size=128, seed=7,
                                 overwrite=True))
        done = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(data.out / "unlabeled"), str(labeller),
                               str(out / f"mem{count}.json")], capture_output=True, text=True, check=True)
        num_images, max_rss_kb = map(int, done.stdout.split())
        rows.append({"images": num_images, "peak RSS MB (main process)": max_rss_kb / 1024})
    return rows


def table(title: str, rows: list[dict]) -> None:
    print(f"\n{title}")
    keys = list(rows[0])
    print(" | ".join(f"{k:>14}" for k in keys))
    for row in rows:
        print(" | ".join(f"{v:>14.3f}" if isinstance(v, float) else f"{v!s:>14}" for v in row.values()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench/pseudo"))
    parser.add_argument("--teacher", type=Path, help="use this teacher instead of training one")
    parser.add_argument("--arch", default=TRAIN_DEFAULTS["teacher"]["arch"],
                        help="architecture of the teacher trained here (any registered one can label images)")
    parser.add_argument("--lr", type=float, help="learning rate for the teacher trained here (default: its role's)")
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--labeled", type=int, default=300)
    parser.add_argument("--unlabeled", type=int, default=300)
    parser.add_argument("--teacher-epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.perf_counter()
    data = synth(SynthConfig(args.out / "data", num_labeled=args.labeled, num_unlabeled=args.unlabeled, num_val=100,
                             size=args.size, seed=args.seed, overwrite=True))
    teacher = args.teacher
    if teacher is None:
        role = "teacher" if args.arch in list_archs("teacher") else "student"
        options = {**TRAIN_DEFAULTS[role], "arch": args.arch, "image_size": args.size, "epochs": args.teacher_epochs}
        if args.lr:
            options["lr"] = args.lr
        result = train(TrainConfig(role=role, labeled=data.files["labeled"], val=data.files["val"],
                                   out=args.out / "teacher", workers=2, seed=args.seed, **options))
        teacher = result.best
        print(f"teacher ({args.arch}): val AP {result.best_metrics['ap']:.3f} AP50 {result.best_metrics['ap50']:.3f} "
              f"after {args.teacher_epochs} epochs, {result.seconds / 60:.1f} min")
    labeller_options = {**TRAIN_DEFAULTS["student"], "image_size": 128, "epochs": 1}
    labeller = train(TrainConfig(role="student", labeled=data.files["labeled"], val=data.files["val"],
                                 out=args.out / "labeller", seed=args.seed, **labeller_options)).best

    report = {
        "setup": {"machine": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                  "threads": torch.get_num_threads(), "torch": torch.__version__, "image_size": args.size,
                  "labeled": args.labeled, "unlabeled": args.unlabeled, "seed": args.seed,
                  "teacher": str(teacher), "teacher_arch": load_checkpoint(teacher).arch,
                  "teacher_metrics": load_checkpoint(teacher).metrics},
        "quality": quality(teacher, data.files["unlabeled"], data.out / "unlabeled"),
        "speed": speed(teacher, data.out / "unlabeled", args.out),
        "memory": memory(labeller, args.out),
    }
    report["setup"]["seconds"] = time.perf_counter() - started
    table("machine labels vs hidden truth", report["quality"])
    table("speed (pseudo-label stage, CPU, 2 decode workers)", report["speed"])
    table("memory", report["memory"])
    (args.out / "results.json").write_text(json.dumps(report, indent=1))
    print(f"\nsaved to {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
