"""pseudo-label: transforms and fusion end to end, skipped files, journal, kill -9 and resume, shards."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import retinaslim.stages.pseudo_label as pseudo_label_module
from retinaslim.core.progress import Reporter
from retinaslim.errors import UserError
from retinaslim.stages.pseudo_label import PseudoLabelConfig, pseudo_label
from retinaslim.stages.synth import SynthConfig, synth


@pytest.fixture(scope="module")
def unlabeled(tmp_path_factory):
    data = synth(SynthConfig(tmp_path_factory.mktemp("unl"), num_labeled=1, num_unlabeled=40, num_val=1, size=128, seed=3))
    return data.out / "unlabeled"


def config(unlabeled, labeller, out, **kw):
    return PseudoLabelConfig(unlabeled, labeller, out, score_floor=0.0, batch_size=4, **kw)


def test_output_has_scores_agreement_and_every_image(unlabeled, labeller, tmp_path):
    result = pseudo_label(config(unlabeled, labeller, tmp_path / "p.json", rot90=True))
    data = json.loads((tmp_path / "p.json").read_text())
    assert result.merged and result.num_images == 40 == len(data["images"])
    assert len(data["info"]["transforms"]) == 3 * 2 * 3
    assert result.num_boxes == len(data["annotations"]) > 0
    assert [a["id"] for a in data["annotations"]] == list(range(1, result.num_boxes + 1))
    assert all(1 <= a["agreement"] <= 18 and 0 <= a["score"] <= 1 for a in data["annotations"])
    assert max(a["agreement"] for a in data["annotations"]) > 1
    assert not list(tmp_path.glob("*.journal"))  # the journal goes once the output is complete


def test_sizes_are_factors_of_the_longer_side_or_shorter_sides_in_pixels(unlabeled, labeller, tmp_path):
    images = sorted(unlabeled.iterdir())[:2]
    listing = tmp_path / "two.txt"
    listing.write_text("\n".join(map(str, images)))
    result = pseudo_label(config(listing, labeller, tmp_path / "p.json", short_sides=(96,), hflip=False))
    assert result.transforms == ["short96"]  # short sides replace the default scales
    result = pseudo_label(config(listing, labeller, tmp_path / "q.json", scales=(1.0,), short_sides=(96,), hflip=False))
    assert result.transforms == ["scale1", "short96"]
    with pytest.raises(UserError, match="for shorter sides in pixels .* use `short_sides`"):
        pseudo_label(config(listing, labeller, tmp_path / "r.json", scales=(800.0,)))
    with pytest.raises(UserError, match="both empty"):
        pseudo_label(config(listing, labeller, tmp_path / "r.json", scales=()))
    with pytest.raises(UserError, match="`batch_size` 0 must be at least 1"):
        pseudo_label(PseudoLabelConfig(listing, labeller, tmp_path / "r.json", batch_size=0))


def test_unreadable_files_are_skipped_counted_and_listed(unlabeled, labeller, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for name in sorted(os.listdir(unlabeled))[:3]:
        (folder / name).write_bytes((unlabeled / name).read_bytes())
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.png").write_text("not an image")
    (folder / "cut.jpg").write_bytes((unlabeled / sorted(os.listdir(unlabeled))[0]).read_bytes()[:300])
    result = pseudo_label(config(folder, labeller, tmp_path / "p.json"))
    assert result.num_images == 3
    assert sorted(os.path.basename(s["file"]) for s in result.skipped) == ["cut.jpg", "empty.jpg", "text.png"]
    data = json.loads((tmp_path / "p.json").read_text())
    assert len(data["skipped"]) == 3 and all(s["reason"] for s in data["skipped"])


def run_cli_process(*args):
    return subprocess.Popen([sys.executable, "-m", "retinaslim", "pseudo-label", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def journal_lines(path):
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_kill_9_then_resume_equals_uninterrupted_run(unlabeled, labeller, tmp_path):
    common = ["--teacher", labeller, "--score-floor", 0.0, "--batch-size", 2, "--workers", 0]
    reference = tmp_path / "reference.json"
    assert run_cli_process(unlabeled, *common, "--out", reference).wait() == 0
    for kill_after in (2, 15):  # journal lines (header + batches) written before the kill: early and late
        out = tmp_path / f"killed{kill_after}.json"
        journal = out.with_name(out.name + ".journal")
        process = run_cli_process(unlabeled, *common, "--out", out)
        while journal_lines(journal) < kill_after and process.poll() is None:
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
        assert process.wait() == -signal.SIGKILL, "finished before it could be killed"
        assert not out.exists() and journal.exists()
        refused = run_cli_process(unlabeled, *common, "--out", out)
        assert refused.wait() == 1 and b"--resume" in refused.stderr.read()
        resumed = run_cli_process(unlabeled, *common, "--out", out, "--resume")
        stdout = resumed.stdout.read().decode()
        assert resumed.wait() == 0, resumed.stderr.read()
        assert "resumed" in stdout
        assert out.read_bytes() == reference.read_bytes()
        assert not journal.exists()


def test_resume_refuses_a_journal_made_with_other_settings(unlabeled, labeller, tmp_path):
    out = tmp_path / "p.json"
    journal = out.with_name("p.json.journal")
    journal.write_text(json.dumps({"header": {"fusion": "nms"}}) + "\n" + json.dumps({"batch": 0, "images": []}) + "\n")
    with pytest.raises(UserError, match="different settings .*fusion"):
        pseudo_label(config(unlabeled, labeller, out, resume=True))


def test_resume_leaves_an_output_finished_with_the_same_settings_as_it_is(unlabeled, labeller, tmp_path):
    out = tmp_path / "p.json"
    first = pseudo_label(config(unlabeled, labeller, out))
    made = out.stat().st_mtime_ns
    again = pseudo_label(config(unlabeled, labeller, out, resume=True))  # e.g. a workspace's second pass was cut
    assert out.stat().st_mtime_ns == made and again.merged
    assert (again.num_images, again.num_boxes, again.num_images_resumed, again.num_images_this_run) == (
        first.num_images, first.num_boxes, first.num_images, 0)
    # other settings: labelled again, as without the output
    other = pseudo_label(config(unlabeled, labeller, out, resume=True, hflip=False))
    assert out.stat().st_mtime_ns != made and other.num_images_this_run == 40 and len(other.transforms) == 3


def test_shards_merge_into_the_single_process_output(unlabeled, labeller, tmp_path):
    pseudo_label(config(unlabeled, labeller, tmp_path / "one.json"))
    first = pseudo_label(config(unlabeled, labeller, tmp_path / "sharded.json", shard=(1, 3)))
    assert not first.merged and not (tmp_path / "sharded.json").exists()
    assert not pseudo_label(config(unlabeled, labeller, tmp_path / "sharded.json", shard=(0, 3))).merged
    last = pseudo_label(config(unlabeled, labeller, tmp_path / "sharded.json", shard=(2, 3)))
    assert last.merged and last.num_images == 40
    assert (tmp_path / "sharded.json").read_bytes() == (tmp_path / "one.json").read_bytes()
    assert not list(tmp_path.glob("*.journal")) and not list(tmp_path.glob("*.merging"))
    with pytest.raises(UserError, match="`shard` 3/3"):
        pseudo_label(config(unlabeled, labeller, tmp_path / "x.json", shard=(3, 3)))


class Lines(Reporter):
    def __init__(self):
        self.lines = []

    def log(self, message):
        self.lines.append(message)


def test_a_stopped_merge_leaves_no_lock_and_the_next_resume_merges(unlabeled, labeller, tmp_path, monkeypatch):
    out = tmp_path / "sharded.json"
    assert not pseudo_label(config(unlabeled, labeller, out, shard=(0, 2))).merged

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(pseudo_label_module, "_write_output", stopped)
        with pytest.raises(KeyboardInterrupt):
            pseudo_label(config(unlabeled, labeller, out, shard=(1, 2)))
    assert not out.exists() and not list(tmp_path.glob("*.merging")) and len(list(tmp_path.glob("*.journal"))) == 2
    again = pseudo_label(config(unlabeled, labeller, out, shard=(1, 2), resume=True))
    assert again.merged and again.num_images == 40 and again.num_images_this_run == 0
    assert not list(tmp_path.glob("*.journal")) and not list(tmp_path.glob("*.merging"))


def test_a_finished_shard_leaves_another_shards_journal_as_it_is(unlabeled, labeller, tmp_path):
    out = tmp_path / "sharded.json"
    pseudo_label(config(unlabeled, labeller, out, shard=(0, 2)))
    other = tmp_path / "sharded.json.shard1-of-2.journal"  # shard 1 part-way through writing a batch's line
    header = (tmp_path / "sharded.json.shard0-of-2.journal").read_bytes().split(b"\n")[0]
    other.write_bytes(header + b'\n{"batch": 1, "images": [{"ind')
    before = other.read_bytes()
    assert not pseudo_label(config(unlabeled, labeller, out, shard=(0, 2), resume=True)).merged
    assert other.read_bytes() == before


def test_a_lock_left_by_a_killed_merge_is_named_with_what_to_do(unlabeled, labeller, tmp_path):
    out = tmp_path / "sharded.json"
    pseudo_label(config(unlabeled, labeller, out, shard=(0, 2)))
    (tmp_path / "sharded.json.merging").touch()  # what a kill -9 during the merge leaves
    reporter = Lines()
    assert not pseudo_label(config(unlabeled, labeller, out, shard=(1, 2)), reporter).merged
    assert any("sharded.json.merging exists" in line and "delete" in line for line in reporter.lines)
    (tmp_path / "sharded.json.merging").unlink()
    assert pseudo_label(config(unlabeled, labeller, out, shard=(1, 2), resume=True)).merged and out.is_file()


def test_torchrun_two_cpu_processes(unlabeled, labeller, tmp_path):
    pseudo_label(config(unlabeled, labeller, tmp_path / "one.json"))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29517",
               "-m", "retinaslim", "pseudo-label", unlabeled, "--teacher", labeller, "--out", tmp_path / "ddp.json",
               "--score-floor", "0.0", "--batch-size", "4", "--workers", "0", "--device", "cpu"]
    # As many threads per process as this process uses: float sums, hence boxes, then match exactly.
    done = subprocess.run(list(map(str, command)), capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())})
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "ddp.json").read_bytes() == (tmp_path / "one.json").read_bytes()


def test_several_teachers_fuse_into_one_ensemble(unlabeled, labeller, tmp_path):
    import dataclasses
    import shutil

    from retinaslim.models.checkpoint import load_checkpoint, save_checkpoint
    from retinaslim.stages.filter import FilterConfig, filter_labels

    twin = shutil.copy(labeller, tmp_path / "twin.pt")
    one = pseudo_label(config(unlabeled, labeller, tmp_path / "one.json"))
    two = pseudo_label(config(unlabeled, [labeller, twin], tmp_path / "two.json"))
    a, b = (json.loads(p.read_text()) for p in (one.out, two.out))
    assert b["info"]["teacher"] == [str(labeller), str(twin)] and b["info"]["image_size"] == [128, 128]
    # the same model twice: the same fused boxes and scores, every box found by twice as many (model, transform) pairs
    assert two.num_boxes == one.num_boxes > 0
    for x, y in zip(a["annotations"], b["annotations"]):
        assert x["bbox"] == pytest.approx(y["bbox"], abs=0.02) and x["score"] == pytest.approx(y["score"], abs=1e-4)
        assert y["agreement"] == 2 * x["agreement"]
    # filter's validation thresholds run both teachers, as pseudo-label did
    val = unlabeled.parent / "val.json"
    one_f = filter_labels(FilterConfig(one.out, tmp_path / "one.f.json", calib=val))
    two_f = filter_labels(FilterConfig(two.out, tmp_path / "two.f.json", calib=val))
    assert [c.threshold for c in one_f.calibration] == pytest.approx([c.threshold for c in two_f.calibration], abs=1e-4)
    named = filter_labels(FilterConfig(two.out, tmp_path / "named.f.json", calib=val, teacher=[labeller, twin]))
    assert [c.threshold for c in named.calibration] == [c.threshold for c in two_f.calibration]
    other = load_checkpoint(labeller)
    save_checkpoint(tmp_path / "other.pt", dataclasses.replace(other, classes=[{"id": 1, "name": "passport"}]))
    with pytest.raises(UserError, match=r"other\.pt: its classes \(passport\) differ from .*labeller.*'s \(id_card, bank_card, passport\)"):
        pseudo_label(config(unlabeled, [labeller, tmp_path / "other.pt"], tmp_path / "bad.json"))
    with pytest.raises(UserError, match=r"made by 2 teacher\(s\), 1 given"):
        filter_labels(FilterConfig(two.out, tmp_path / "bad.f.json", calib=val, teacher=labeller))
