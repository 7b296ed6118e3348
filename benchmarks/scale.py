"""The whole pipeline at 10,000 and 100,000 images: wall time, images/s, peak memory, output sizes, kill and resume.

    python benchmarks/scale.py --out bench/scale [--sizes 10000,100000] [--image-size 64] [--results-json docs/results.json]

1. Data: `retinaslim synth --workers 2` draws the largest size of unlabelled 64 px images (one ID-card kind)
   plus 1,000 labelled and 200 validation images; its own images/s is recorded. A smaller size is the first N
   of those images (a text file of paths, and their hidden truth as a COCO file).
2. Labeller: a slim-s student trained on the labelled images (train-student, --epochs as given), so that the
   forwards do not hide the machinery. The ResNet50 teacher's own images/s on this CPU is measured apart
   (pseudo-label of 400 images with an untrained teacher: speed does not depend on the weights) and its 100k
   time extrapolated.
3. At each size, each real command in its own process, watched every 0.2 s: wall seconds and the peak RSS of
   the whole process tree (the command and its DataLoader workers; RSS summed, so pages shared after fork
   count once per process, an upper bound), and the size of every output file:
   - pseudo_label: the slim labeller, pseudo-label's defaults (six transforms, WBF, batch 8, 2 workers);
   - filter: the default rule (precision on the validation set, which runs the labeller on it) with
     --review-out and --report; filter_fixed (0.2), filter_instances and filter_f1 likewise with --report;
   - train_student: --iterations as given, human labels + filter_fixed's output (every machine image kept);
   - show: --max 200 of the raw pseudo.json, worst first (HTML);
   - eval: the labeller on the N images' hidden truth (pycocotools AP over N images).
4. At the largest size, pseudo-label and filter are killed with SIGKILL at half their measured time, then
   rerun (pseudo-label with --resume; filter has nothing to resume: its outputs are written atomically, so
   the killed run left no file); the outputs must equal the uninterrupted run's byte for byte.
5. Pure forward speed: the labeller's forwards alone (decoded images in memory, the same six transforms and
   batch 8) against pseudo-label's images/s: the share of time the machinery adds.

Every step is recorded in OUT/results.json as it finishes and skipped when the script is rerun, so a killed
benchmark continues. The table and the `scale` object (--results-json) are written at the end.
`--stages eval,show` measures only those stages (data and labeller as above; no kill test or speeds) and
replaces only their entries in an existing `scale` object, each marked with its own date and command. A
stage already recorded in OUT/results.json is not measured again: delete its entries there (or use a new
--out) to measure it anew.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from retinaslim.core.atomic import write_json
from retinaslim.core.tta import make_transforms
from retinaslim.data.images import read_image
from retinaslim.models.checkpoint import load_checkpoint
from retinaslim.models.lean import LeanDetector
from retinaslim.models.predict import detect
from retinaslim.config import PSEUDO_SCALES

PAGE = os.sysconf("SC_PAGE_SIZE")
CLI = [str(Path(sys.executable).parent / "retinaslim")]


def tree_memory(root: int) -> tuple[int, int, int]:
    """Bytes of (RSS summed, PSS summed) over ``root`` and all its descendants, and ``root``'s own RSS (/proc).

    RSS counts a page shared by several processes (a DataLoader worker's copy-on-write view of its parent's
    heap after fork) once per process; PSS (proportional set size) divides it among them, so PSS summed is
    the memory the tree really holds."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    rss = pss = own = 0
    todo = [root]
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            with open(f"/proc/{pid}/statm") as f:
                pages = int(f.read().split()[1]) * PAGE
        except (OSError, IndexError, ValueError):
            continue  # the process ended
        rss += pages
        own = pages if pid == root else own
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:  # Linux 4.14+
                pss += next(int(line.split()[1]) * 1024 for line in f if line.startswith("Pss:"))
        except (OSError, IndexError, ValueError, StopIteration):
            pss += pages  # unreadable: counted as RSS (an upper bound)
    return rss, pss, own


def measure(cmd: list[str], log: Path, kill_after: float | None = None) -> dict:
    """Run ``cmd`` (output to ``log``), sampling its process tree's memory every 0.2 s; SIGKILL it after
    ``kill_after`` seconds if given. -> seconds, peak_rss_mb (summed over the tree), peak_pss_mb (summed),
    peak_main_rss_mb (the command's own process), returncode, killed."""
    print("$", " ".join(map(str, cmd)), flush=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen([str(c) for c in cmd], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        peak, killed = [0, 0, 0], False
        while proc.poll() is None:
            peak = [max(a, b) for a, b in zip(peak, tree_memory(proc.pid))]
            if kill_after is not None and time.perf_counter() - started >= kill_after:
                os.killpg(proc.pid, signal.SIGKILL)
                killed = True
                proc.wait()
                break
            time.sleep(0.2)
    seconds = time.perf_counter() - started
    if proc.returncode != 0 and not killed:
        sys.exit(f"failed ({proc.returncode}): {' '.join(map(str, cmd))}\n{log.read_text()[-3000:]}")
    rss, pss, own = (round(v / 2**20, 1) for v in peak)
    return {"seconds": round(seconds, 2), "peak_rss_mb": rss, "peak_pss_mb": pss, "peak_main_rss_mb": own, "killed": killed,
            "date": time.strftime("%Y-%m-%d")}


def sizes_mb(*paths: Path) -> dict[str, float]:
    return {p.name: round(p.stat().st_size / 2**20, 3) for p in paths if p.exists()}


class Results:
    """OUT/results.json, written after every step; a step already in it is not run again."""

    def __init__(self, path: Path):
        self.path = path
        self.data = json.loads(path.read_text()) if path.exists() else {}

    def step(self, key: str, run) -> dict:
        if key not in self.data:
            self.data[key] = run()
            write_json(self.path, self.data)
        return self.data[key]


def subset(truth: dict, count: int, out: Path, data: Path) -> None:
    """The first ``count`` images of the unlabelled truth, file names rebased to ``out``'s folder."""
    images = truth["images"][:count]
    ids = {im["id"] for im in images}
    rebase = os.path.relpath(data, out.parent)
    write_json(out, {**truth, "images": [{**im, "file_name": f"{rebase}/{im['file_name']}"} for im in images],
                     "annotations": [a for a in truth["annotations"] if a["image_id"] in ids]})


def forward_speed(labeller: Path, paths: list[Path], batch_size: int = 8) -> tuple[float, float]:
    """Images/s of the labeller's forwards alone (decoded images in memory, pseudo-label's six transforms),
    and the milliseconds decoding one of those images took (in this process, one after another)."""
    checkpoint = load_checkpoint(labeller)
    detector = LeanDetector(checkpoint.build())
    transforms = make_transforms(PSEUDO_SCALES, hflip=True)
    started = time.perf_counter()
    images = [read_image(p) for p in paths]
    decode_ms = (time.perf_counter() - started) * 1000 / len(paths)
    detect(detector, images[:batch_size], checkpoint.image_size, transforms, torch.device("cpu"))  # warm-up
    started = time.perf_counter()
    for i in range(0, len(images), batch_size):
        detect(detector, images[i:i + batch_size], checkpoint.image_size, transforms, torch.device("cpu"))
    return len(images) / (time.perf_counter() - started), decode_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--sizes", default="10000,100000", help="numbers of unlabelled images, comma-separated")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--labeller-epochs", type=int, default=15)
    parser.add_argument("--iterations", type=int, default=300, help="train-student iterations at every size")
    parser.add_argument("--prepare", action="store_true", help="only draw the data and train the labeller")
    parser.add_argument("--stages", default=",".join(STAGES), help="stages to measure, comma-separated (default: all)")
    parser.add_argument("--results-json", type=Path, help="also write its `scale` object, e.g. docs/results.json")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    wanted = [stage for stage in STAGES if stage in args.stages.split(",")]
    unknown = set(args.stages.split(",")) - set(STAGES)
    if unknown or not wanted:
        parser.error(f"--stages: unknown {sorted(unknown)}; choose from {', '.join(STAGES)}")
    out, data = args.out, args.out / "data"
    results = Results(out / "results.json")
    torch.set_num_threads(2)

    results.step("setup", lambda: {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                                   "python": platform.python_version(), "torch": torch.__version__,
                                   "date": time.strftime("%Y-%m-%d"), "sizes": sizes, "image_size": args.image_size})

    def make_data() -> dict:
        run = measure(CLI + ["synth", data, "--labeled", 1000, "--val", 200, "--unlabeled", sizes[-1], "--size",
                             args.image_size, "--classes", "id_card", "--workers", 2, "--overwrite"], out / "logs" / "synth.log")
        run["images_per_s"] = round((sizes[-1] + 1200) / run["seconds"], 1)
        return run
    results.step("synth", make_data)

    labeller = out / "labeller" / "best.pt"
    results.step("labeller", lambda: measure(
        CLI + ["train-student", "--labeled", data / "labeled.json", "--val", data / "val.json", "--arch", "slim-s",
               "--image-size", args.image_size, "--epochs", args.labeller_epochs, "--out", out / "labeller",
               "--device", "cpu", "--workers", 2], out / "logs" / "labeller.log"))
    if args.prepare:
        return

    truth = None
    for n in sizes:
        folder = out / f"n{n}"
        listing, truth_n = folder / "images.txt", folder / "truth.json"
        if not truth_n.exists():
            truth = truth or json.loads((data / "unlabeled.truth.json").read_text())
            folder.mkdir(parents=True, exist_ok=True)
            listing.write_text("".join(f"{(data / im['file_name']).resolve()}\n" for im in truth["images"][:n]))
            subset(truth, n, truth_n, data)
        pseudo = folder / "pseudo.json"
        def step(name: str, cmd: list) -> dict:
            if name not in wanted:
                return {}
            return results.step(f"{n}/{name}", lambda: measure(cmd, out / "logs" / f"{n}_{name}.log"))

        run = step("pseudo_label", CLI + ["pseudo-label", listing, "--teacher", labeller, "--out", pseudo,
                                          "--device", "cpu", "--workers", 2])
        run.setdefault("outputs", sizes_mb(pseudo))
        filters = {
            "filter": ["--calib", data / "val.json", "--review-out", folder / "review.json"],
            "filter_fixed": ["--score-thresh", 0.2],
            "filter_instances": ["--auto-thresh", "instances", "--labeled", data / "labeled.json"],
            "filter_f1": ["--auto-thresh", "f1", "--calib", data / "val.json"],
        }
        for name, options in filters.items():
            run = step(name, CLI + ["filter", pseudo, "--out", folder / f"{name}.json", "--report",
                                    folder / f"{name}_report.json", "--device", "cpu", "--workers", 2] + options)
            reviews = (folder / "review.json", folder / "review.coco.json") if name == "filter" else ()
            run.setdefault("outputs", sizes_mb(folder / f"{name}.json", folder / f"{name}_report.json", *reviews))
        run = step("train_student", CLI + ["train-student", "--labeled", data / "labeled.json", "--val", data / "val.json",
                                           "--pseudo", folder / "filter_fixed.json", "--arch", "slim-s", "--image-size",
                                           args.image_size, "--iterations", args.iterations, "--out", folder / "student",
                                           "--device", "cpu", "--workers", 2])
        run.setdefault("outputs", sizes_mb(folder / "student" / "last.pt", folder / "student" / "best.pt"))
        run = step("show", CLI + ["show", pseudo, "--out", folder / "show.html", "--max", 200])
        run.setdefault("outputs", sizes_mb(folder / "show.html"))
        run = step("eval", CLI + ["eval", "--weights", labeller, "--data", truth_n, "--device", "cpu", "--workers", 2,
                                  "--json", folder / "eval.json"])
        run.setdefault("outputs", sizes_mb(folder / "eval.json"))
        write_json(results.path, results.data)

    if wanted != list(STAGES):
        report_stages(results.data, sizes, wanted, args.results_json)
        return

    # Kill -9 at half way, resume, compare bytes (largest size).
    n = sizes[-1]
    folder = out / f"n{n}"

    def kill_and_resume() -> dict:
        report = {}
        half = results.data[f"{n}/pseudo_label"]["seconds"] / 2
        killed_out = folder / "pseudo_killed.json"
        cmd = CLI + ["pseudo-label", folder / "images.txt", "--teacher", labeller, "--out", killed_out,
                     "--device", "cpu", "--workers", 2, "--resume"]
        first = measure(cmd, out / "logs" / "pseudo_killed.log", kill_after=half)
        resumed = measure(cmd, out / "logs" / "pseudo_resumed.log")
        report["pseudo_label"] = {"killed_at_s": first["seconds"], "was_killed": first["killed"],
                                  "resume_seconds": resumed["seconds"], "resume_peak_rss_mb": resumed["peak_rss_mb"],
                                  "identical": killed_out.read_bytes() == (folder / "pseudo.json").read_bytes()}
        half = results.data[f"{n}/filter"]["seconds"] / 2
        killed_out = folder / "filter_killed.json"
        cmd = CLI + ["filter", folder / "pseudo.json", "--out", killed_out, "--calib", data / "val.json",
                     "--device", "cpu", "--workers", 2]
        first = measure(cmd, out / "logs" / "filter_killed.log", kill_after=half)
        left = killed_out.exists()
        rerun = measure(cmd, out / "logs" / "filter_rerun.log")
        report["filter"] = {"killed_at_s": first["seconds"], "was_killed": first["killed"], "left_a_file": left,
                            "rerun_seconds": rerun["seconds"],
                            "identical": killed_out.read_bytes() == (folder / "filter.json").read_bytes()}
        return report
    results.step("kill_resume", kill_and_resume)

    def speeds() -> dict:
        listing = (folder / "images.txt").read_text().split()[:800]
        slim, decode_ms = forward_speed(labeller, [Path(p) for p in listing])
        teacher = out / "teacher" / "last.pt"
        if not teacher.exists():
            measure(CLI + ["train-teacher", "--labeled", data / "labeled.json", "--val", data / "val.json",
                           "--image-size", args.image_size, "--iterations", 1, "--out", out / "teacher",
                           "--device", "cpu", "--workers", 0], out / "logs" / "teacher.log")
        few = folder / "teacher_images.txt"
        few.write_text("".join(f"{p}\n" for p in listing[:400]))
        run = measure(CLI + ["pseudo-label", few, "--teacher", teacher, "--out", folder / "teacher_pseudo.json",
                             "--device", "cpu", "--workers", 2], out / "logs" / "teacher_pseudo.log")
        return {"labeller_forward_images_per_s": round(slim, 1), "decode_ms_per_image": round(decode_ms, 3),
                "teacher_images_per_s": round(400 / run["seconds"], 2),
                "teacher_hours_100k_cpu": round(100_000 / (400 / run["seconds"]) / 3600, 1)}
    results.step("speeds", speeds)
    report(results.data, sizes, out, args.results_json)


STAGES = ("pseudo_label", "filter", "filter_fixed", "filter_instances", "filter_f1", "train_student", "show", "eval")


def pseudo_label_timings(log: Path) -> dict[str, float]:
    """The seconds pseudo-label's summary table reports: waiting for decoded images, forwards, fusion."""
    text = log.read_text()
    found = {}
    for name in ("decode wait s", "forward s", "fusion s"):
        match = re.search(re.escape(name) + r"\s*[│|]\s*([\d,.]+)", text)
        found[name[:-2]] = float(match.group(1).replace(",", "")) if match else 0.0
    return found


def stage_table(data: dict, sizes: list[int], measured: list[str]) -> dict[str, dict]:
    """Print the table of the ``measured`` stages; -> their entries of the `scale` object."""
    small, large = sizes[0], sizes[-1]
    print(f"\nsynth: {data['synth']['images_per_s']} images/s (2 workers)")
    print(f"| stage | s {small} | s {large} | s/image ratio | peak RSS MB {small} | peak RSS MB {large} | RSS ratio "
          f"| PSS ratio | command's own RSS ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    stages = {}
    for stage in measured:
        a, b = data[f"{small}/{stage}"], data[f"{large}/{stage}"]
        per_image = b["seconds"] / a["seconds"] * (small / large if stage != "train_student" else 1)
        stages[stage] = {"seconds_10k": a["seconds"], "seconds_100k": b["seconds"], "peak_rss_mb_10k": a["peak_rss_mb"],
                         "peak_rss_mb_100k": b["peak_rss_mb"], "images_per_s_10k": round(small / a["seconds"], 1),
                         "images_per_s_100k": round(large / b["seconds"], 1), "time_ratio": round(per_image, 3),
                         "rss_ratio": round(b["peak_rss_mb"] / a["peak_rss_mb"], 3),
                         "outputs_mb_10k": a.get("outputs", {}), "outputs_mb_100k": b.get("outputs", {})}
        ratios = {}
        for key in ("peak_pss_mb", "peak_main_rss_mb"):  # recorded since the eval rerun of 2026-11-30
            if key in a and key in b:
                stages[stage] |= {f"{key}_10k": a[key], f"{key}_100k": b[key]}
                ratios[key] = round(b[key] / a[key], 3)
        stages[stage] |= {"pss_ratio": ratios.get("peak_pss_mb"), "main_rss_ratio": ratios.get("peak_main_rss_mb")}
        shown = [f"{ratios[k]:.2f}" if k in ratios else "-" for k in ("peak_pss_mb", "peak_main_rss_mb")]
        print(f"| {stage} | {a['seconds']:.0f} | {b['seconds']:.0f} | {per_image:.2f} | {a['peak_rss_mb']:.0f} | "
              f"{b['peak_rss_mb']:.0f} | {b['peak_rss_mb'] / a['peak_rss_mb']:.2f} | {' | '.join(shown)} |")
    return stages


def report_stages(data: dict, sizes: list[int], measured: list[str], results_json: Path | None) -> None:
    """A run of some stages: their rows, and only their entries replaced in results_json's `scale`."""
    stages = stage_table(data, sizes, measured)
    if results_json is not None:
        merged = json.loads(results_json.read_text()) if results_json.exists() else {}
        if "scale" not in merged:
            sys.exit(f"{results_json}: no `scale` object to update; run every stage first")
        command = "python benchmarks/scale.py " + " ".join(sys.argv[1:])
        for stage, entry in stages.items():
            measured_on = " and ".join(sorted({data.get(f"{n}/{stage}", {}).get("date", data["setup"]["date"]) for n in sizes}))
            merged["scale"]["stages"][stage] = {**entry, "rerun": {"date": measured_on, "command": command}}
        write_json(results_json, merged)


def report(data: dict, sizes: list[int], out: Path, results_json: Path | None) -> None:
    small, large = sizes[0], sizes[-1]
    stages = stage_table(data, sizes, list(STAGES))
    kill, speeds = data["kill_resume"], data["speeds"]
    pseudo_speed = large / data[f"{large}/pseudo_label"]["seconds"]
    share = pseudo_speed / speeds["labeller_forward_images_per_s"]
    parts = pseudo_label_timings(out / "logs" / f"{large}_pseudo_label.log")
    wall = data[f"{large}/pseudo_label"]["seconds"]
    parts["rest (start-up, journal, output)"] = wall - sum(parts.values())
    print(f"pseudo-label at {large}, where the {wall:.0f} s went: "
          + ", ".join(f"{name} {seconds:.0f} s ({seconds / wall:.1%})" for name, seconds in parts.items()))
    print(f"\nkill -9 at half way, then resume: pseudo-label identical {kill['pseudo_label']['identical']}, "
          f"filter identical {kill['filter']['identical']} (left a file: {kill['filter']['left_a_file']})")
    print(f"pseudo-label at {large}: {pseudo_speed:.1f} images/s = {share:.0%} of the labeller's pure forward speed "
          f"({speeds['labeller_forward_images_per_s']} images/s); decoding an image alone: "
          f"{speeds.get('decode_ms_per_image', '?')} ms against {1000 / speeds['labeller_forward_images_per_s']:.2f} ms of forwards")
    print(f"ResNet50 teacher: {speeds['teacher_images_per_s']} images/s on this CPU -> "
          f"{speeds['teacher_hours_100k_cpu']} h for 100k images")
    scale = {"images": large, "resume_identical": kill["pseudo_label"]["identical"] and kill["filter"]["identical"],
             "stages": stages, "kill_resume": kill, "speeds": {**speeds, "pseudo_label_share_of_forward": round(share, 3)},
             "pseudo_label_seconds_100k": {name: round(seconds, 1) for name, seconds in parts.items()},
             "synth_images_per_s": data["synth"]["images_per_s"], "setup": data["setup"],
             "command": "python benchmarks/scale.py " + " ".join(sys.argv[1:])}
    if results_json is not None:
        merged = json.loads(results_json.read_text()) if results_json.exists() else {}
        merged["scale"] = scale
        write_json(results_json, merged)


if __name__ == "__main__":
    main()
