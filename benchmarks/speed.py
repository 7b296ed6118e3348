"""Benchmark inference speed, size and memory of the students against the teacher and the light peers.

    python benchmarks/speed.py [--image-size 320] [--runs 60] [--json bench/speed.json]

Every model is untrained (speed does not depend on the weights, except through how many boxes reach
NMS), at batch 1 on a square image, on the CPU with torch's default thread count:
- params, MACs (retinaslim.models.macs), checkpoint size (the retinaslim checkpoint format; a plain
  state dict for ssdlite);
- network latency (normalised tensor -> raw head outputs) and end-to-end latency (image in [0, 1] ->
  boxes, scores, labels) in two post-processing regimes: "quiet", score threshold 1.0 (nothing
  survives: pre- and post-processing at their cheapest) and "busy", score threshold 0.0 (every anchor
  is a candidate: top 1000 per level, then NMS: the worst case). A trained detector sits in between;
- retinaslim's models run through its lean inference path (models.lean: BatchNorm folded, channels-
  last, cached anchors, one batched decode and NMS); torchvision's ssdlite320_mobilenet_v3_large gets
  the same BatchNorm folding and channels-last, and its own pre/post-processing. For the student the
  torchvision generic path (model(images)) is timed too, for comparison;
- the students also run in onnxruntime (CPU, as many intra-op threads as torch): the graph `retinaslim
  export` writes (models.onnx: the network, fp32) for the network and end to end (quiet; the decode is
  the same torch code), and its int8 copy (static QDQ quantisation calibrated on 8 random images:
  speed only) for the network;
- timings are medians over --runs calls after --warmup calls, interleaved across models in --rounds
  rounds so that a busy machine slows every model alike;
- peak RSS (a fresh process per measurement) of inference and of one training step at batch 32, for
  the students and the teacher.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import onnxruntime as ort
import torch
import torchvision

from retinaslim.engine.timing import measure, median_ms
from retinaslim.models.checkpoint import Checkpoint, save_checkpoint
from retinaslim.models.lean import LeanDetector, fold_batchnorm
from retinaslim.models.macs import count_macs
from retinaslim.models.onnx import OnnxDetector, export_metadata, export_network, quantize_int8, write_metadata
from retinaslim.models.registry import build_model

STUDENTS = [("slim-s", {"norm": "gn"}), ("slim-s", {"norm": "bn"}), ("slim-m", {"norm": "gn"}), ("slim-m", {"norm": "bn"})]
PEERS = [("retinanet_shufflenet_v2_fpn", {}), ("retinanet_mobilenet_v2_fpn", {}), ("retinanet_resnet18_fpn", {}),
         ("ssdlite320_mobilenet_v3_large", {}), ("retinanet_resnet50_fpn", {})]
TEACHER = "retinanet_resnet50_fpn"
STUDENT = "slim-s"  # the default student, by which the targets are judged
RSS_MODELS = ["slim-s", "slim-m", TEACHER]


def label(arch: str, options: dict) -> str:
    return f"{arch} ({options['norm']})" if "norm" in options else arch


class Runner:
    """One model's timed calls: network, end to end (quiet / busy) and, for the student, torchvision's path."""

    def __init__(self, arch: str, options: dict, image_size: int):
        self.image = torch.rand(3, image_size, image_size)
        if arch.startswith("ssdlite"):
            model = torchvision.models.detection.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=2)
            self.model = fold_batchnorm(model.eval()).to(memory_format=torch.channels_last)
            self.batch = self.model.transform([self.image])[0].tensors.contiguous(memory_format=torch.channels_last)
            self.size_mb = self._state_dict_mb(model)
            self.params = sum(p.numel() for p in model.parameters())
            self.macs = sum(count_macs(model, image_size).values())
            self.calls = {"network": lambda: self.model.head(list(self.model.backbone(self.batch).values())),
                          "quiet": self._ssd(1.0), "busy": self._ssd(0.0)}
            return
        model = build_model(arch, 1, image_size, **options).eval()
        self.params = sum(p.numel() for p in model.parameters())
        self.macs = sum(count_macs(model, image_size).values())
        with tempfile.TemporaryDirectory() as tmp:
            save_checkpoint(Path(tmp) / "w.pt", Checkpoint(arch, options, [{"id": 1, "name": "card"}], image_size,
                                                            model=model.state_dict()))
            self.size_mb = (Path(tmp) / "w.pt").stat().st_size / 1e6
        self.detector = LeanDetector(model)
        self.batch = self.detector.batch([self.image])
        self.calls = {"network": lambda: self.detector.raw(self.batch), "quiet": self._lean(1.0), "busy": self._lean(0.0)}
        if arch == STUDENT:
            self.model = model
            self.calls["torchvision"] = lambda: self.model([self.image])
        if arch.startswith("slim"):
            self._onnx(arch, options, model, image_size)

    def _onnx(self, arch: str, options: dict, model, image_size: int) -> None:
        """onnxruntime sessions on the exported graph (fp32) and its int8 copy; the files are only needed to load them."""
        side = self.batch.shape[-1]
        fixed = LeanDetector(model, input_size=(side, side))
        with tempfile.TemporaryDirectory() as tmp:
            fp32, int8 = Path(tmp) / "m.onnx", Path(tmp) / "m.int8.onnx"
            export_network(fixed, fp32, opset=17, dynamic_batch=False)
            metadata = export_metadata(arch, options, [{"id": 1, "name": "card"}], image_size, image_size, fixed)
            write_metadata(fp32, metadata)
            quantize_int8(fp32, int8, [fixed.batch([torch.rand(3, side, side)]).contiguous().numpy() for _ in range(8)])
            write_metadata(int8, metadata | {"int8": True})
            self.onnx, self.int8 = OnnxDetector(fp32), OnnxDetector(int8)
        self.calls |= {"onnx_network": lambda: self.onnx.raw(self.batch), "onnx_quiet": self._ort(1.0),
                       "int8_network": lambda: self.int8.raw(self.batch)}

    @staticmethod
    def _state_dict_mb(model) -> float:
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)
        return buffer.tell() / 1e6

    def _lean(self, score_thresh: float):
        def call():
            self.detector.score_thresh = score_thresh
            return self.detector([self.image])
        return call

    def _ort(self, score_thresh: float):
        def call():
            self.onnx.score_thresh = score_thresh
            return self.onnx([self.image])
        return call

    def _ssd(self, score_thresh: float):
        def call():
            self.model.score_thresh = score_thresh
            return self.model([self.image])
        return call


def time_models(runners: dict[str, Runner], runs: int, warmup: int, rounds: int) -> dict[str, dict[str, float]]:
    """Median ms per (model, call), the calls of all models interleaved round by round."""
    calls = {(name, c): call for name, runner in runners.items() for c, call in runner.calls.items()}
    timings: dict[str, dict[str, float]] = {name: {} for name in runners}
    for (name, c), measurement in measure(calls, runs, warmup, rounds).items():
        timings[name][c] = median_ms(measurement)
    return timings


def rss_child(arch: str, mode: str, image_size: int) -> None:
    """Runs in a fresh process: prints its peak RSS (MB) after imports only, inference, or one training step at batch 32."""
    model = build_model(arch, 1, image_size)
    if mode == "import":
        pass
    elif mode == "infer":
        detector = LeanDetector(model.eval())
        with torch.inference_mode():
            for _ in range(10):
                detector([torch.rand(3, image_size, image_size)])
    else:
        model.train()
        images = [torch.rand(3, image_size, image_size) for _ in range(32)]
        targets = [{"boxes": torch.tensor([[40.0, 60, 200, 160]]), "labels": torch.tensor([0])} for _ in images]
        losses = model(images, targets)
        sum(losses.values()).backward()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def peak_rss(arch: str, mode: str, image_size: int) -> float:
    out = subprocess.run([sys.executable, __file__, "--rss-child", arch, mode, "--image-size", str(image_size)],
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=320)
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls before each round's timed ones")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-rss", action="store_true")
    parser.add_argument("--json", type=Path, default=Path("bench/speed.json"))
    parser.add_argument("--rss-child", nargs=2, metavar=("ARCH", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        rss_child(*args.rss_child, args.image_size)
        return

    setup = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
             "torch": torch.__version__, "onnxruntime": ort.__version__, "image_size": args.image_size, "batch": 1, "runs": args.runs, "rounds": args.rounds}
    print(f"machine: {setup['machine']}, {setup['cpus']} CPUs, torch {setup['torch']}, {setup['threads']} threads; "
          f"{args.image_size} x {args.image_size}, batch 1, median of {args.runs} runs per call in {args.rounds} interleaved rounds")
    started = time.perf_counter()
    runners = {label(a, o): Runner(a, o, args.image_size) for a, o in STUDENTS + PEERS}
    timings = time_models(runners, args.runs, args.warmup, args.rounds)
    teacher_ms = timings[TEACHER]["quiet"]
    rows = {}
    for name, runner in runners.items():
        t = timings[name]
        rows[name] = {"params": runner.params, "macs": runner.macs, "size_mb": round(runner.size_mb, 3),
                      "network_ms": round(t["network"], 2), "latency_ms": round(t["quiet"], 2), "busy_ms": round(t["busy"], 2),
                      "pre_post_share": round(1 - t["network"] / t["quiet"], 3),
                      "busy_pre_post_share": round(1 - t["network"] / t["busy"], 3),
                      "teacher_speedup": round(teacher_ms / t["quiet"], 1), "fps": round(1000 / t["quiet"], 1)}
        if "torchvision" in t:
            rows[name]["torchvision_path_ms"] = round(t["torchvision"], 2)
        if "onnx_network" in t:
            rows[name] |= {"ort_network_ms": round(t["onnx_network"], 2), "ort_latency_ms": round(t["onnx_quiet"], 2),
                           "ort_int8_network_ms": round(t["int8_network"], 2)}
    print("\n| model | params M | GMACs | checkpoint MB | network ms | end-to-end ms (quiet / busy) | pre+post share "
          "(quiet / busy) | FPS | x teacher |\n|---|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['params'] / 1e6:.3f} | {r['macs'] / 1e9:.3f} | {r['size_mb']:.2f} | {r['network_ms']:.1f} | "
              f"{r['latency_ms']:.1f} / {r['busy_ms']:.1f} | {r['pre_post_share']:.0%} / {r['busy_pre_post_share']:.0%} | "
              f"{r['fps']:.0f} | {r['teacher_speedup']:.1f} |")
    student_name = label(STUDENT, dict(STUDENTS[0][1]))
    student = rows[student_name]
    if "torchvision_path_ms" in student:
        print(f"\n{student_name} through torchvision's generic path (model(images)): {student['torchvision_path_ms']:.1f} ms "
              f"vs lean {student['latency_ms']:.1f} ms")

    print(f"\nonnxruntime {ort.__version__} (CPU, {setup['threads']} threads) next to PyTorch, ms\n"
          "| model | network: PyTorch | network: ORT fp32 | network: ORT int8 | end-to-end quiet: PyTorch | end-to-end quiet: ORT fp32 |"
          "\n|---|---|---|---|---|---|")
    for name, r in rows.items():
        if "ort_network_ms" in r:
            print(f"| {name} | {r['network_ms']:.1f} | {r['ort_network_ms']:.1f} | {r['ort_int8_network_ms']:.1f} | "
                  f"{r['latency_ms']:.1f} | {r['ort_latency_ms']:.1f} |")

    rss = {}
    if not args.skip_rss:
        for arch in RSS_MODELS:
            rss[arch] = {mode: round(peak_rss(arch, mode, args.image_size), 1) for mode in ("infer", "train")}
        imports = round(peak_rss(STUDENT, "import", args.image_size), 1)
        print(f"\npeak RSS of the interpreter after its imports and building slim-s, nothing run: {imports:.0f} MB")
        print("| model | peak RSS inference MB | peak RSS training step, batch 32, MB |\n|---|---|---|")
        for arch, r in rss.items():
            print(f"| {arch} | {r['infer']:.0f} | {r['train']:.0f} |")

    peers = [n for n in rows if not n.startswith("slim") and n != TEACHER]
    checks = {
        f"{student_name} <= 1/25 of the teacher's latency": student["latency_ms"] * 25 <= teacher_ms,
        f"{student_name} <= 1/2 of ssdlite320's": student["latency_ms"] * 2 <= rows["ssdlite320_mobilenet_v3_large"]["latency_ms"],
        f"{student_name} below every baseline": all(student["latency_ms"] < rows[p]["latency_ms"] for p in peers),
        "pre+post <= 25% of end to end (quiet)": student["pre_post_share"] <= 0.25,
        "pre+post <= 25% of end to end (busy)": student["busy_pre_post_share"] <= 0.25,
        "<= 0.5 M params, <= 0.5 GMACs, checkpoint <= 2.5 MB": student["params"] <= 5e5 and student["macs"] <= 5e8
        and student["size_mb"] <= 2.5,
    }
    print()
    for check, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {check}")
    print(f"\nbenchmark wall time {time.perf_counter() - started:.0f} s")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"setup": setup, "models": rows, "rss_mb": rss, "rss_imports_mb": imports if rss else None, "checks": checks}, indent=1))
    print(f"saved {args.json}")


if __name__ == "__main__":
    main()
