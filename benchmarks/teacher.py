"""Choose train-teacher's defaults by held-out AP: candidate recipes side by side on the same data.

    python benchmarks/teacher.py --out bench/teacher_synth --synth --size 128 --iterations 300
    python benchmarks/teacher.py --out bench/teacher_bccd --bccd ../shared/data/bccd --size 256 --iterations 300

Every candidate trains the ResNet50 RetinaNet on the same human labels for the same number of optimiser
steps (batch 8) and is scored on images it never trained on: the validation images pick the best epoch
and the test images (BCCD's own test split; for synthetic data a separate seeded draw) give the number
the table reports. The human-only student (train-student's defaults, same labels, same steps budget in
epochs) is trained beside them as the bar the teacher must clear. Each run resumes from its last.pt
after a kill; finished runs are skipped. Results: OUT/results.json and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import torch

from retinaslim.config import TRAIN_DEFAULTS
from retinaslim.core.atomic import write_json
from retinaslim.data.coco import ClassMap, load_coco
from retinaslim.engine.inference import evaluate_on_coco
from retinaslim.models.checkpoint import load_checkpoint
from retinaslim.models.registry import build_model
from retinaslim.stages.convert import ConvertConfig, convert
from retinaslim.stages.synth import SynthConfig, synth
from retinaslim.stages.train import TrainConfig, train

# name -> overrides of TRAIN_DEFAULTS["teacher"] (the first is whatever config.py holds now).
CANDIDATES = {
    "default": {},
    # the teacher before its anchors were fitted: torchvision's 32-512 px scaled by image_size / 512
    "scaled_anchors": {"fit_anchors": False},
    "v1_adamw_3e-4": {"arch": "retinanet_resnet50_fpn", "optimizer": "adamw", "lr": 3e-4},
    "v2_adamw_3e-4": {"arch": "retinanet_resnet50_fpn_v2", "optimizer": "adamw", "lr": 3e-4},
    "v2_adamw_1e-4": {"arch": "retinanet_resnet50_fpn_v2", "optimizer": "adamw", "lr": 1e-4},
    "v1_adamw_1e-3": {"arch": "retinanet_resnet50_fpn", "optimizer": "adamw", "lr": 1e-3},
    "v2_adamw_1e-3": {"arch": "retinanet_resnet50_fpn_v2", "optimizer": "adamw", "lr": 1e-3},
    "v1_sgd_0.01": {"arch": "retinanet_resnet50_fpn", "optimizer": "sgd", "lr": 0.01},
    "v2_sgd_0.01": {"arch": "retinanet_resnet50_fpn_v2", "optimizer": "sgd", "lr": 0.01},
    "v2_sgd_0.02": {"arch": "retinanet_resnet50_fpn_v2", "optimizer": "sgd", "lr": 0.02},
    "v2_sgd_0.01_strong": {"arch": "retinanet_resnet50_fpn_v2", "optimizer": "sgd", "lr": 0.01, "augment": "strong"},
    "v2_adamw_3e-4_strong": {"arch": "retinanet_resnet50_fpn_v2", "optimizer": "adamw", "lr": 3e-4, "augment": "strong"},
}


def _subset(coco_path: Path, out: Path, num: int, seed: int) -> tuple[Path, Path | None]:
    """A seeded draw of ``num`` images of a COCO file (the rest go to a second file, if any remain)."""
    data = json.loads(coco_path.read_text())
    images = sorted(data["images"], key=lambda im: im["id"])
    random.Random(seed).shuffle(images)
    picked, rest = images[:num], images[num:]
    paths = []
    for name, chosen in (("labeled", picked), ("rest", rest)):
        ids = {im["id"] for im in chosen}
        path = out / f"{name}.json"
        write_json(path, {**data, "images": chosen, "annotations": [a for a in data["annotations"] if a["image_id"] in ids]})
        paths.append(path)
    return paths[0], paths[1] if rest else None


def prepare(args) -> dict[str, Path]:
    """COCO files for labelled, val and test images."""
    data = args.out / "data"
    if args.bccd:
        files = {}
        for split in ("train", "val", "test"):
            files[split] = data / f"{split}.json"
            if not files[split].exists():
                convert(ConvertConfig(src=args.bccd, from_format="voc", to_format="coco", out=files[split], split=split))
        labeled, _ = _subset(files["train"], data, args.labeled, args.seed)
        return {"labeled": labeled, "val": files["val"], "test": files["test"]}
    if not (data / "labeled.json").exists():
        synth(SynthConfig(data, num_labeled=args.labeled, num_unlabeled=0, num_val=args.val, size=args.size,
                          seed=args.seed, classes=tuple(args.classes.split(",")), distractors=args.distractors,
                          overwrite=True))
    test = args.out / "test"
    if not (test / "val.json").exists():  # a second seeded draw: images no run trains or selects on
        synth(SynthConfig(test, num_labeled=1, num_unlabeled=0, num_val=args.val, size=args.size,
                          seed=args.seed + 1000, classes=tuple(args.classes.split(",")), distractors=args.distractors,
                          overwrite=True))
    return {"labeled": data / "labeled.json", "val": data / "val.json", "test": test / "val.json"}


def run_one(name: str, role: str, overrides: dict, files: dict[str, Path], args) -> dict:
    out = args.out / "runs" / name
    options = {**TRAIN_DEFAULTS[role], "image_size": args.size, **overrides}
    if role == "teacher":
        options["iterations"] = args.iterations
    else:  # the student trains --student-epochs exactly (without the default schedule's floor on steps)
        options["epochs"] = args.student_epochs
    last = out / "last.pt"
    done = out / "done.json"
    if done.exists():
        return json.loads(done.read_text())
    print(f"== {name}: {options}", flush=True)
    config = TrainConfig(role=role, labeled=files["labeled"], val=files["val"], out=out, workers=args.workers,
                         seed=args.seed, **options)
    result = train(config, resume=last if last.exists() else None)  # a resumed run takes its config from last.pt
    checkpoint = load_checkpoint(result.best)
    model = build_model(checkpoint.arch, len(checkpoint.classes), checkpoint.image_size, **checkpoint.arch_options)
    model.load_state_dict(checkpoint.model)
    model.eval()
    test = load_coco(files["test"])
    evaluation, _ = evaluate_on_coco(model, test, ClassMap.from_categories(checkpoint.classes),
                                     checkpoint.image_size, torch.device("cpu"))
    metrics = evaluation.as_floats()
    history = result.history
    record = {"name": name, "role": role, "options": options, "best_epoch": result.best_epoch,
              "val_ap_best": result.best_metrics["ap"], "val_ap_last": history[-1]["ap"],
              "test_ap": metrics["ap"], "test_ap50": metrics["ap50"], "train_min": history[-1]["time"] / 60,
              "steps": history[-1]["step"]}
    write_json(done, record)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--synth", action="store_true", help="retinaslim synth data (three card classes)")
    source.add_argument("--bccd", type=Path, help="the BCCD folder (Pascal VOC with train/val/test lists)")
    parser.add_argument("--classes", default="id_card,bank_card,passport", help="synthetic: card kinds")
    parser.add_argument("--distractors", action=argparse.BooleanOptionalAction, default=True,
                        help="synthetic: card-like objects that are not cards")
    parser.add_argument("--size", type=int, default=128, help="training and evaluation size (longer side, px)")
    parser.add_argument("--labeled", type=int, default=200, help="human-labelled training images")
    parser.add_argument("--val", type=int, default=100, help="synthetic: validation and test images each")
    parser.add_argument("--iterations", type=int, default=300, help="teacher optimiser steps (batch 8)")
    parser.add_argument("--student-epochs", type=int, default=TRAIN_DEFAULTS["student"]["epochs"])
    parser.add_argument("--candidates", default=",".join(CANDIDATES), help="comma-separated names of CANDIDATES")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    files = prepare(args)
    records = [run_one("student_human", "student", {}, files, args)]
    for name in args.candidates.split(","):
        records.append(run_one(name, "teacher", CANDIDATES[name], files, args))
        write_json(args.out / "results.json", {"args": {k: str(v) for k, v in vars(args).items()}, "runs": records})
    print("| run | options | val AP (best / last) | test AP | test AP50 | steps | train min |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in records:
        o = r["options"]
        what = f"{o['arch']} {o['optimizer']} {o['lr']:g} {o['augment']}" + (" scaled anchors" if o.get("fit_anchors") is False else "")
        print(f"| {r['name']} | {what} | {r['val_ap_best']:.3f} / {r['val_ap_last']:.3f} | {r['test_ap']:.3f} | "
              f"{r['test_ap50']:.3f} | {r['steps']} | {r['train_min']:.1f} |")


if __name__ == "__main__":
    main()
