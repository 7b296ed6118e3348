"""Benchmark filter: machine-label precision/recall/AP against the hidden truth for each threshold rule.

    python benchmarks/filter.py --data bench/pseudo/data --pseudo bench/pseudo/speed_b8.json --out bench/filter

Reads a `retinaslim synth` folder (labeled.json, val.json, unlabeled.truth.json) and a pseudo.json made
from its unlabelled images (e.g. by benchmarks/pseudo_label.py), and scores: no filter (every box above
pseudo-label's floor), fixed 0.5, auto instances (Data Distillation), auto precision 0.95 (calibrated on
val.json with the teacher that pseudo.json names). Prints a table and writes OUT/results.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from retinaslim.stages.filter import FilterConfig, filter_labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="a retinaslim synth folder")
    parser.add_argument("--pseudo", type=Path, required=True, help="pseudo-label output for DATA/unlabeled")
    parser.add_argument("--out", type=Path, default=Path("bench/filter"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    truth = args.data / "unlabeled.truth.json"
    variants = {
        "no filter": {"score_thresh": 0.0},
        "fixed 0.5": {"score_thresh": 0.5},
        "auto instances": {"auto_thresh": "instances", "labeled": args.data / "labeled.json"},
        "auto precision 0.95": {"auto_thresh": "precision", "calib": args.data / "val.json", "target_precision": 0.95},
    }
    rows = []
    for name, options in variants.items():
        started = time.perf_counter()
        out = args.out / f"{name.replace(' ', '_')}.json"
        result = filter_labels(FilterConfig(args.pseudo, out, truth=truth, workers=2, **options))
        after = result.truth_metrics["after"]
        rows.append({"rule": name, "thresholds": result.thresholds, "boxes": after["boxes"],
                     "precision": after["precision"], "recall": after["recall"], "ap": after["ap"], "ap50": after["ap50"],
                     "seconds": time.perf_counter() - started})
    print(f"{'rule':<22} {'boxes':>7} {'precision':>9} {'recall':>7} {'AP':>6} {'AP50':>6}  thresholds")
    for r in rows:
        thresholds = ", ".join(f"{k} {v:.2f}" for k, v in r["thresholds"].items())
        print(f"{r['rule']:<22} {r['boxes']:>7} {r['precision']:>9.3f} {r['recall']:>7.3f} {r['ap']:>6.3f} {r['ap50']:>6.3f}  {thresholds}")
    (args.out / "results.json").write_text(json.dumps(rows, indent=1))
    print(f"saved to {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
