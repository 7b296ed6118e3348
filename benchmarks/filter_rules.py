"""Which threshold rule makes the best student? Students trained on the same machine labels, filtered by each rule.

    python benchmarks/filter_rules.py --run bench/distill --test bench/distill/test/val.json --size 128 --epochs 12

RUN is a benchmarks/distill.py folder: its human labels (data/labeled.json, data/val.json), its machine labels
for the unlabelled pool (labels/ensemble.json, the teacher's default ensemble) with their hidden truth
(data/unlabeled.truth.json), and the teacher's ensemble on the validation images (labels/val_ensemble.json,
`retinaslim pseudo-label` of the validation images with that teacher). The teacher's weights are not needed:
a rule that chooses thresholds on the validation set reads them from val_ensemble.json, exactly what
`filter --auto-thresh f1|precision --calib data/val.json` computes by running the teacher.

Rules (each a per-class score threshold for `retinaslim filter`):
- default: filter's fixed threshold (config.FILTER_SCORE_THRESH);
- f1: per class, the threshold of the best F1 (IoU 0.5) on the validation images;
- precision: per class, the lowest threshold reaching precision 0.95 on the validation images;
- precision_ignore: the same thresholds, and boxes scored from 0.2 up to them become ignore regions
  (`--ambiguous ignore`), so that objects the teacher saw but was unsure of are not learnt as background.

For each rule: filter (scored against the hidden truth), train-student on human + filtered machine labels
(train-student's defaults, --epochs and --image-size as given), then one `retinaslim eval` of every student and
the human-only student on TEST. The table puts what the validation images predicted (precision, recall per
class) next to what the pool's hidden truth shows, and each student's test AP. Steps are recorded in OUT/steps
and skipped when rerun (distill.py's machinery), so a killed run continues. Results: OUT/results.json (and
`filter_rules.NAME` of --results-json, e.g. docs/results.json).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from distill import Step, run_step  # benchmarks/ is the script's folder, first on sys.path
from retinaslim.config import FILTER_SCORE_THRESH, FILTER_TARGET_PRECISION
from retinaslim.core.atomic import write_json
from retinaslim.core.detections import Detections
from retinaslim.data.coco import annotation_boxes, image_targets, load_coco
from retinaslim.engine.thresholds import ClassScores

RULES = ("default", "f1", "precision", "precision_ignore")
OPTIONS = {"precision_ignore": ["--ambiguous", "ignore"]}  # extra filter options per rule


def validation_choice(run: Path, rule: str) -> list[dict]:
    """Per class: the threshold ``rule`` picks from the teacher's ensemble on the validation images, and the
    precision/recall it predicts there."""
    val = load_coco(run / "data" / "val.json")
    preds = load_coco(run / "labels" / "val_ensemble.json")
    by_name = {Path(im["file_name"]).name: im for im in val.images}
    names = val.classes.names
    to_label = {c["id"]: names.index(c["name"]) for c in preds.categories}
    scores = ClassScores(len(names))
    for image in preds.images:
        anns = preds.annotations_per_image[image["id"]]
        dets = Detections(annotation_boxes(anns), torch.tensor([a["score"] for a in anns], dtype=torch.float32),
                          torch.tensor([to_label[a["category_id"]] for a in anns], dtype=torch.int64))
        boxes, labels = image_targets(val, by_name[Path(image["file_name"]).name], val.classes)
        scores.add(dets, boxes, labels)
    if rule == "default":
        fixed = torch.tensor(FILTER_SCORE_THRESH)
        out = []
        for k, name in enumerate(names):
            s, hits = torch.cat(scores.scores[k]), torch.cat(scores.hits[k])[:, 0]  # true positives at IoU 0.5
            kept = s >= fixed
            tp = int(hits[kept].sum())
            out.append({"class": name, "threshold": FILTER_SCORE_THRESH, "precision": tp / max(1, int(kept.sum())),
                        "recall": tp / max(1, scores.num_true[k])})
        return out
    return [{"class": c.class_name, "threshold": c.threshold, "precision": c.precision, "recall": c.recall}
            for c in scores.choose(names, rule, FILTER_TARGET_PRECISION)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="a benchmarks/distill.py folder (see above)")
    parser.add_argument("--test", type=Path, required=True, help="COCO file the students are scored on")
    parser.add_argument("--out", type=Path, help="default RUN/rules")
    parser.add_argument("--size", type=int, required=True, help="students' --image-size (the run's)")
    parser.add_argument("--epochs", type=int, required=True, help="students' --epochs (the run's)")
    parser.add_argument("--rules", default=",".join(RULES))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--results-json", type=Path, help="also merge the result into this file's `filter_rules` object")
    parser.add_argument("--name", help="its key there (e.g. synthetic, bccd); default RUN's folder name")
    args = parser.parse_args()
    out = args.out or args.run / "rules"
    data, labels = args.run / "data", args.run / "labels"
    rules = args.rules.split(",")
    if any(r not in RULES for r in rules):
        parser.error(f"--rules: choose among {', '.join(RULES)}")
    common = ["--labeled", data / "labeled.json", "--val", data / "val.json", "--epochs", args.epochs,
              "--image-size", args.size, "--workers", args.workers, "--seed", 0]
    records: dict[str, dict] = {}

    def run(step: Step) -> None:
        records[step.name] = run_step(step, out, any(r["ran"] for r in records.values()))

    def student(name: str, extra: list) -> None:
        target = out / "runs" / name
        run(Step(name, ["train-student", *common, "--out", target, *extra], ["train-student", "--resume", target / "last.pt"],
                 target / "last.pt"))

    student("student_human", ["--human-only"])
    chosen = {}
    for rule in rules:
        chosen[rule] = validation_choice(args.run, rule.removesuffix("_ignore"))
        thresholds = ",".join(f"{c['class']}={c['threshold']:.5f}" for c in chosen[rule])
        filtered = out / f"filtered_{rule}.json"
        run(Step(f"filter_{rule}", ["filter", labels / "ensemble.json", "--out", filtered, "--score-thresh", thresholds,
                                    "--truth", data / "unlabeled.truth.json", "--report", out / f"filter_{rule}.report.json",
                                    *OPTIONS.get(rule, [])]))
        student(f"student_{rule}", ["--pseudo", filtered])
    names = ["student_human", *(f"student_{r}" for r in rules)]
    run(Step("eval", ["eval", *(a for n in names for a in ("--weights", out / "runs" / n / "best.pt")), "--data", args.test,
                      "--latency-runs", 3, "--json", out / "eval.json", "--workers", args.workers], summary=True))

    reports = {Path(r["weights"]).parent.name: r for r in json.loads((out / "eval.json").read_text())}
    result = {"command": " ".join(["python", *sys.argv]), "human_only_ap": reports["student_human"]["ap"], "rules": {}}
    print(f"human-only student: test AP {result['human_only_ap']:.3f}\n")
    print("| rule | student test AP | per class: threshold, validation P / R -> pool P / R (boxes) |")
    print("| --- | --- | --- |")
    for rule in rules:
        truth = json.loads((out / f"filter_{rule}.report.json").read_text())["truth_metrics"]["after"]
        per_class = []
        for c in chosen[rule]:
            pool = truth["per_class"].get(c["class"], {})
            per_class.append(c | {"pool_precision": pool.get("precision"), "pool_recall": pool.get("recall"),
                                  "pool_boxes": pool.get("boxes")})
        result["rules"][rule] = {"student_ap": reports[f"student_{rule}"]["ap"], "student_ap50": reports[f"student_{rule}"]["ap50"],
                                 "pool": {k: truth[k] for k in ("boxes", "precision", "recall", "ap")}, "per_class": per_class}
        cells = "; ".join(f"{c['class']} {c['threshold']:.2f}, {c['precision']:.2f} / {c['recall']:.2f} -> "
                          f"{c['pool_precision'] or 0:.2f} / {c['pool_recall'] or 0:.2f} ({c['pool_boxes']})" for c in per_class)
        print(f"| {rule} | {result['rules'][rule]['student_ap']:.3f} | {cells} |")
    write_json(out / "results.json", result)
    if args.results_json:
        merged = json.loads(args.results_json.read_text()) if args.results_json.is_file() else {}
        merged.setdefault("filter_rules", {})[args.name or args.run.name] = result
        write_json(args.results_json, merged)


if __name__ == "__main__":
    main()
