"""Ablation: from RetinaNet-ResNet18 to the slim student, one design rule at a time.

    python benchmarks/ablation.py --out bench/ablation [--epochs 20] [--train-size 160] [--runs 30]

Each row applies one more rule of SEED-NOTES.md to the row above:
  0  torchvision RetinaNet, ResNet18-FPN (P3-P7, 256 channels, 4 x 3x3 convs per head, 9 anchors)
  1  + SNet backbone: ShuffleNetV2 stages with 5x5 depthwise convs (64/128/256, 3/6/3 units) after a
       ResNet stem (7x7 conv, max-pool)
  2  + dilated stem: a dilated 3x3 conv and a depthwise-separable conv replace the 7x7 + max-pool
  3  + slim FPN: C3-C5 only, 96 channels, depthwise 3x3 output convs (6 anchors per location)
  4  + 1x1 heads: 2 x 1x1 convs of 128 per branch                       (= slim-m, BatchNorm)
  5  + fewer channels: stem 16, stages 48/96/192 (2/3/2), FPN 64, heads 64  (= slim-s, BatchNorm)
  6  GroupNorm instead of BatchNorm                                      (= slim-s, GroupNorm)
  7  slim-s (bn) with a ReLU after every conv (the ReLUs the design leaves out, put back)
Every row: params, MACs and end-to-end latency at --image-size (lean inference path, batch 1, medians
of --runs calls interleaved over the rows), and AP after training on the same synthetic cards
(--num-train labelled, --num-val validation images at --train-size px, --epochs, AdamW --lr, batch 16,
light augmentation, RetinaNet's IoU assignment (`--assign iou`), seed 0: the settings the table was made with). One run per row: run-to-run noise of AP is a few points.
The default --lr 3e-3 suits the slim rows (4-7); rows 0-3 diverged or jumped there: train them with
--lr 3e-4 (the teacher's default; best for row 0) or 1e-3 (best for row 3) into another --out
(docs/results.md, Ablation).
Rows already trained in OUT are reused (delete OUT/<row> to retrain), so rerunning re-measures speed only. Prints a markdown table and
writes OUT/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch
from torch import nn
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelP6P7

from retinaslim.core.atomic import write_json
from retinaslim.engine.timing import measure, median_ms
from retinaslim.models.anchors import DEFAULT_ANCHORS, anchor_generator
from retinaslim.models.common import IgnoreAwareRetinaNet, configure, scaled_anchor_generator
from retinaslim.models.lean import LeanDetector
from retinaslim.models.macs import count_macs
from retinaslim.models.registry import build_model, register
from retinaslim.models.student import SlimBackbone, dilated_stem, slim_fpn, slim_head, snet_stages
from retinaslim.stages.synth import SynthConfig, synth
from retinaslim.stages.train import TrainConfig, train

WIDE = {"stem": 24, "widths": (64, 128, 256), "repeats": (3, 6, 3), "fpn": 96, "head": 128}


def resnet_stem(channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, channels, 7, 2, 3, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
                         nn.MaxPool2d(3, 2, 1))


def wide_fpn(in_channels: list[int]) -> FeaturePyramidNetwork:
    """RetinaNet's FPN: 256 channels, dense 3x3 outputs, P6 and P7 from P5."""
    return FeaturePyramidNetwork(in_channels, 256, extra_blocks=LastLevelP6P7(256, 256))


def _variant(num_classes: int, image_size: int, *, stem: str, fpn: str, head: str):
    s = WIDE
    stem_module = resnet_stem(s["stem"]) if stem == "resnet" else dilated_stem(s["stem"], "bn")
    stages = snet_stages(s["stem"], s["widths"], s["repeats"], "bn")
    if fpn == "wide":
        backbone = SlimBackbone(stem_module, stages, wide_fpn(list(s["widths"])), 256)
        anchors = scaled_anchor_generator(image_size)
    else:
        backbone = SlimBackbone(stem_module, stages, slim_fpn(list(s["widths"]), s["fpn"]), s["fpn"])
        anchors = anchor_generator(image_size, DEFAULT_ANCHORS)
    per_location = anchors.num_anchors_per_location()[0]
    if head == "stock":
        head_module = RetinaNetHead(backbone.out_channels, per_location, num_classes)
    else:
        head_module = slim_head(backbone.out_channels, per_location, num_classes, s["head"], 2, "bn")
    return configure(IgnoreAwareRetinaNet(backbone, num_classes, anchor_generator=anchors, head=head_module))


def _with_every_relu(model: nn.Module) -> nn.Module:
    """Append a ReLU to every conv + norm pair that has none (depthwise convs, unit outputs' partners)."""
    for module in model.modules():
        if isinstance(module, nn.Sequential) and len(module) == 2 and isinstance(module[0], nn.Conv2d) \
                and isinstance(module[1], (nn.BatchNorm2d, nn.GroupNorm)):
            module.append(nn.ReLU(inplace=True))
    return model


ROWS = [
    ("0 RetinaNet ResNet18-FPN", "retinanet_resnet18_fpn", {}),
    ("1 + SNet backbone", "ablation-snet", {}),
    ("2 + dilated stem", "ablation-stem", {}),
    ("3 + slim FPN", "ablation-fpn", {}),
    ("4 + 1x1 heads (slim-m)", "slim-m", {"norm": "bn"}),
    ("5 + fewer channels (slim-s)", "slim-s", {"norm": "bn"}),
    ("6 GroupNorm (slim-s gn)", "slim-s", {"norm": "gn"}),
    ("7 slim-s + every ReLU", "ablation-relu", {}),
]


def _register_variants() -> None:
    register("ablation-snet", role="ablation")(lambda num_classes, image_size: _variant(num_classes, image_size, stem="resnet", fpn="wide", head="stock"))
    register("ablation-stem", role="ablation")(lambda num_classes, image_size: _variant(num_classes, image_size, stem="dilated", fpn="wide", head="stock"))
    register("ablation-fpn", role="ablation")(lambda num_classes, image_size: _variant(num_classes, image_size, stem="dilated", fpn="slim", head="stock"))
    register("ablation-relu", role="ablation")(lambda num_classes, image_size: _with_every_relu(build_model("slim-s", num_classes, image_size, norm="bn")))


def latencies(models: dict[str, nn.Module], image_size: int, runs: int, rounds: int = 3) -> dict[str, float]:
    """Median end-to-end ms per model at batch 1 (lean path), interleaved over ``rounds``."""
    image = [torch.rand(3, image_size, image_size)]
    calls = {name: (lambda d=LeanDetector(model): d(image)) for name, model in models.items()}
    return {name: median_ms(m) for name, m in measure(calls, runs, 3, rounds).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench/ablation"))
    parser.add_argument("--image-size", type=int, default=320, help="for params, MACs and latency")
    parser.add_argument("--train-size", type=int, default=160, help="image size of the AP training runs")
    parser.add_argument("--num-train", type=int, default=240)
    parser.add_argument("--num-val", type=int, default=80)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--rows", default="", help="comma-separated row numbers to run (default: all)")
    parser.add_argument("--skip-training", action="store_true", help="speed and size only; AP of rows not trained yet is left out")
    args = parser.parse_args()
    _register_variants()
    rows = [r for r in ROWS if not args.rows or r[0].split()[0] in args.rows.split(",")]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; latency at {args.image_size} px, batch 1, median of {args.runs} runs; "
          f"AP after {args.epochs} epochs on {args.num_train} synthetic images at {args.train_size} px")

    data_dir = args.out / "data"
    if not (data_dir / "labeled.json").exists() and not args.skip_training:
        synth(SynthConfig(data_dir, num_labeled=args.num_train, num_unlabeled=0, num_val=args.num_val, size=args.train_size, seed=0))
    results = {}
    for name, arch, options in rows:
        run = args.out / name.split()[0]
        done = run / "row.json"
        if done.exists():
            results[name] = json.loads(done.read_text())
        elif args.skip_training:
            results[name] = {"ap": None, "ap50": None, "train_minutes": None, "lr": None}
            continue
        else:
            started = time.perf_counter()
            resume = run / "last.pt" if (run / "last.pt").exists() else None  # a killed row goes on where it stopped
            trained = train(None if resume else TrainConfig(role="student", labeled=data_dir / "labeled.json", val=data_dir / "val.json", out=run,
                                        arch=arch, arch_options=dict(options), image_size=args.train_size, batch_size=16,
                                        epochs=args.epochs, optimizer="adamw", lr=args.lr, weight_decay=1e-4,
                                        augment="light", assign="iou", workers=2), resume=resume)
            results[name] = {"ap": trained.best_metrics.get("ap", 0.0), "ap50": trained.best_metrics.get("ap50", 0.0),
                             "train_minutes": (time.perf_counter() - started) / 60, "lr": args.lr}
            write_json(done, results[name])
        print(f"{name}: AP {results[name]['ap']:.3f}", flush=True)

    # Timed after training (which reuses finished rows), so a rerun on an idle machine re-measures speed only.
    models = {name: build_model(arch, 1, args.image_size, **options).eval() for name, arch, options in rows}
    speed = latencies(models, args.image_size, args.runs)
    for name, model in models.items():
        results[name].update(params=sum(p.numel() for p in model.parameters()), latency_ms=speed[name],
                             macs=sum(count_macs(model, args.image_size).values()))

    print("\n| row | params M | GMACs | latency ms | AP | AP50 | lr | train min |\n|---|---|---|---|---|---|---|---|")
    def cell(value, digits):
        return "-" if value is None else f"{value:.{digits}f}"

    def lr_cell(value):  # rows trained before lr was recorded show "-"
        return "-" if value is None else f"{value:g}"

    for name, r in results.items():
        print(f"| {name} | {r['params'] / 1e6:.3f} | {r['macs'] / 1e9:.3f} | {r['latency_ms']:.1f} | {cell(r['ap'], 3)} | "
              f"{cell(r['ap50'], 3)} | {lr_cell(r.get('lr'))} | {cell(r['train_minutes'], 1)} |")
    write_json(args.out / "results.json", results)
    print(f"saved {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
