"""Training: mixing of human and machine labels, loss weights, resume after kill -9, DDP on CPU, outputs."""

import csv
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from torchvision.models.detection import retinanet_resnet50_fpn

from retinaslim.config import TRAIN_DEFAULTS
from retinaslim.data.dataset import MixedBatchSampler
from retinaslim.errors import UserError
from retinaslim.models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from retinaslim.models.registry import build_model
from retinaslim.stages.synth import SynthConfig, synth
from retinaslim.stages.train import TrainConfig, initialise, read_init, train
from tests.conftest import LogLines


def test_mixed_batches_hold_the_requested_share_of_machine_images():
    sampler = MixedBatchSampler(num_human=30, num_machine=100, batch_size=10, pseudo_ratio=0.4, seed=1)
    batches = [[i for i, epoch in batch] for batch in sampler]
    assert {epoch for batch in sampler for _, epoch in batch} == {0}
    assert len(batches) == len(sampler) == 5  # 30 human images, 6 per batch
    for batch in batches:
        assert sum(i >= 30 for i in batch) == 4 and sum(i < 30 for i in batch) == 6
    assert sorted(i for b in batches for i in b if i < 30) == list(range(30))  # every human image once
    machine = [i for b in batches for i in b if i >= 30]
    assert len(set(machine)) == len(machine)  # without replacement
    sampler.set_epoch(2)
    assert [[i for i, _ in b] for b in sampler] != batches  # a new order each epoch ...
    assert {epoch for batch in sampler for _, epoch in batch} == {2}
    sampler.set_epoch(0)
    assert [[i for i, _ in b] for b in sampler] == batches  # ... that depends only on (seed, epoch)
    # DDP: 5 batches over 2 ranks, 3 each (every rank steps as often), the first batch again as the padding
    samplers = [MixedBatchSampler(30, 100, 10, 0.4, seed=1, rank=r, world_size=2) for r in (0, 1)]
    ranks = [[[i for i, _ in b] for b in sampler] for sampler in samplers]
    assert [len(r) for r in ranks] == [len(sampler) for sampler in samplers] == [3, 3]
    assert sorted(map(tuple, ranks[0] + ranks[1])) == sorted(map(tuple, batches + batches[:1]))
    # fewer batches than ranks: each rank still gets one
    assert [len(list(MixedBatchSampler(4, 0, 10, 0.4, rank=r, world_size=3))) for r in (0, 1, 2)] == [1, 1, 1]


def test_a_batch_holds_batch_size_images_whatever_the_ratio():
    for batch_size, ratio, machine in [(2, 0.8, 1), (16, 0.99, 15), (16, 0.4, 6), (3, 0.1, 1)]:
        batches = [[i for i, _ in b] for b in MixedBatchSampler(30, 50, batch_size, ratio, seed=0)]
        assert {len(b) for b in batches[:-1]} == {batch_size}
        assert all(sum(i >= 30 for i in b) == machine for b in batches)


def test_batches_hold_one_orientation():
    portrait_human = [i % 3 == 0 for i in range(30)]  # 10 portrait, 20 landscape
    portrait_machine = [i % 2 == 0 for i in range(20)]
    sampler = MixedBatchSampler(30, 20, batch_size=6, pseudo_ratio=0.5, seed=3,
                                portrait_human=portrait_human, portrait_machine=portrait_machine)
    batches = [[i for i, _ in b] for b in sampler]
    assert len(batches) == len(sampler) == 4 + 7  # ceil(10 / 3) + ceil(20 / 3)
    assert sorted(i for b in batches for i in b if i < 30) == list(range(30))
    for batch in batches:
        kinds = {portrait_human[i] if i < 30 else portrait_machine[i - 30] for i in batch}
        assert len(kinds) == 1, batch


def test_no_machine_images_is_plain_batching():
    batches = [[i for i, _ in b] for b in MixedBatchSampler(num_human=10, num_machine=0, batch_size=4, pseudo_ratio=0.4)]
    assert [len(b) for b in batches] == [4, 4, 2] and sorted(sum(batches, [])) == list(range(10))


@pytest.mark.parametrize("assigner", ["iou", "tal"])
def test_pseudo_weight_scales_an_images_loss(assigner):
    model = build_model("slim-s", num_classes=1, image_size=64)
    model.assigner = assigner
    image = [torch.rand(3, 64, 64)]
    target = {"boxes": torch.tensor([[8.0, 8.0, 40.0, 30.0]]), "labels": torch.tensor([0])}
    full = model(image, [{**target, "weight": torch.tensor(1.0)}])
    half = model(image, [{**target, "weight": torch.tensor(0.5)}])
    plain = model(image, [target])
    for k in full:
        assert torch.allclose(half[k], 0.5 * full[k]) and torch.allclose(plain[k], full[k])


@pytest.mark.parametrize("arch, assigner", [("slim-s", "iou"), ("retinanet_resnet50_fpn_v2", "iou"),  # l1, giou
                                             ("slim-s", "tal"), ("retinanet_resnet50_fpn_v2", "tal")])
def test_box_weights_scale_each_boxs_terms(arch, assigner):
    torch.manual_seed(0)
    model = build_model(arch, num_classes=2, image_size=64)
    model.assigner = assigner
    image = [torch.rand(3, 64, 64)]
    target = {"boxes": torch.tensor([[8.0, 8.0, 40.0, 30.0], [30.0, 34.0, 60.0, 62.0]]), "labels": torch.tensor([0, 1])}
    plain = model(image, [target])
    ones = model(image, [{**target, "box_weights": torch.tensor([1.0, 1.0])}])
    zeros = model(image, [{**target, "box_weights": torch.tensor([0.0, 0.0])}])
    half = model(image, [{**target, "box_weights": torch.tensor([0.5, 0.5])}])
    second = model(image, [{**target, "box_weights": torch.tensor([0.0, 1.0])}])
    alone = model(image, [{**target, "box_weights": torch.tensor([1.0, 0.0])}])
    for k in plain:  # weight 1 is torchvision's own loss
        assert torch.allclose(ones[k], plain[k], rtol=1e-5), k
    assert zeros["bbox_regression"] == 0 and torch.allclose(half["bbox_regression"], 0.5 * plain["bbox_regression"])
    assert torch.allclose(second["bbox_regression"] + alone["bbox_regression"], plain["bbox_regression"])
    # classification: the background anchors' part stays, the boxes' part scales with their weight
    background = zeros["classification"]
    assert 0 < background < plain["classification"]
    assert torch.allclose(half["classification"] - background, 0.5 * (plain["classification"] - background), rtol=1e-5)


@pytest.mark.parametrize("arch, assigner", [("slim-s", "iou"), ("retinanet_resnet50_fpn_v2", "iou"),
                                             ("slim-s", "tal"), ("retinanet_resnet50_fpn_v2", "tal")])
def test_a_class_outside_the_class_mask_takes_no_loss_anywhere(arch, assigner):
    """A machine image whose teacher filter did not trust on class 1: class 1's logits get no gradient at any
    anchor (neither object nor background), class 0 trains exactly as without the mask."""
    torch.manual_seed(0)
    model = build_model(arch, num_classes=2, image_size=64)
    model.assigner = assigner
    image = [torch.rand(3, 64, 64)]
    target = {"boxes": torch.tensor([[8.0, 8.0, 40.0, 30.0]]), "labels": torch.tensor([0]), "weight": torch.tensor(1.0)}
    logits = model.head.classification_head.cls_logits  # conv whose output channels are (anchor, class) pairs
    num_anchors = logits.out_channels // 2

    def class_grads(extra):
        model.zero_grad()
        loss = model(image, [{**target, **extra}])
        (loss["classification"] + loss["bbox_regression"]).backward()
        grad = logits.weight.grad.view(num_anchors, 2, -1)
        return {k: v.detach() for k, v in loss.items()}, grad[:, 0].clone(), grad[:, 1].clone()

    plain, plain_0, plain_1 = class_grads({})
    masked, masked_0, masked_1 = class_grads({"class_mask": torch.tensor([True, False])})
    everything, _, _ = class_grads({"class_mask": torch.tensor([True, True])})
    assert plain_1.abs().sum() > 0 and masked_1.abs().sum() == 0  # class 1 was background; now it is nothing
    assert torch.allclose(masked_0, plain_0, atol=1e-7)
    assert masked["bbox_regression"] == pytest.approx(float(plain["bbox_regression"]), rel=1e-6)
    assert 0 < masked["classification"] < plain["classification"]
    for k in plain:  # a mask of every class is no mask
        assert torch.allclose(everything[k], plain[k], rtol=1e-5), k


def test_machine_labels_carry_no_loss_for_the_classes_filter_left_out(tiny_cards, tmp_path, monkeypatch):
    import json

    from retinaslim.data.coco import ClassMap, load_coco, machine_class_mask
    from retinaslim.data.dataset import DetectionDataset

    machine = json.loads((tiny_cards.out / "unlabeled.truth.json").read_text())
    (tmp_path / "unlabeled").symlink_to(tiny_cards.out / "unlabeled")
    path = tmp_path / "machine.json"
    names = [c["name"] for c in sorted(machine["categories"], key=lambda c: c["id"])]
    for info, expected in [({}, None), ({"filter": {"unreliable_classes": []}}, None),
                           ({"filter": {"unreliable_classes": [names[1]]}}, [n != names[1] for n in names])]:
        path.write_text(json.dumps({**machine, "info": info}))
        coco = load_coco(path)
        classes = ClassMap.from_categories(coco.categories)
        mask, note = machine_class_mask(coco, classes)
        assert (mask if mask is None else mask.tolist()) == expected
        assert (note is None) == (expected is None)
        item = DetectionDataset(coco, classes, 64, "none", machine=True, class_mask=mask)[0][1]
        assert ("class_mask" in item) == (expected is not None)
    assert names[1] in note and "from the human labels only" in note
    path.write_text(json.dumps({**machine, "info": {"filter": {"unreliable_classes": names[1]}}}))
    with pytest.raises(UserError, match=r"machine\.json: info\.filter\.unreliable_classes must be a list of class names"):
        machine_class_mask(load_coco(path), classes)
    # train-student says so, and its machine images carry the mask (the human ones none)
    import retinaslim.stages.train as train_stage

    masks = []

    class Recording(DetectionDataset):
        def __getitem__(self, key):
            item = super().__getitem__(key)
            masks.append((self.machine, item[1].get("class_mask")))
            return item

    monkeypatch.setattr(train_stage, "DetectionDataset", Recording)
    path.write_text(json.dumps({**machine, "info": {"filter": {"unreliable_classes": [names[1]]}}}))
    reporter = LogLines()
    train(TrainConfig(role="student", labeled=tiny_cards.files["labeled"], val=tiny_cards.files["val"],
                      out=tmp_path / "run", pseudo=path, image_size=64, epochs=1, workers=0), reporter)
    assert any(f"carry no loss for {names[1]}" in line for line in reporter.lines)
    assert {machine for machine, _ in masks} == {True, False}
    assert all(mask is None if not machine else mask.tolist() == [n != names[1] for n in names] for machine, mask in masks)


def cli(*args):
    return [sys.executable, "-m", "retinaslim", *map(str, args)]


def rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_kill_9_then_resume_finishes_the_same_run(tiny_cards, tmp_path):
    data = tiny_cards.files
    common = ["--labeled", data["labeled"], "--val", data["val"], "--pseudo", tiny_cards.out / "unlabeled.truth.json",
              "--image-size", 64, "--batch-size", 2, "--epochs", 3, "--workers", 0, "--arch", "slim-s"]
    reference = subprocess.run(cli("train-student", *common, "--out", tmp_path / "whole"), capture_output=True, text=True)
    assert reference.returncode == 0, reference.stderr
    killed = subprocess.Popen(cli("train-student", *common, "--out", tmp_path / "killed"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    csv_path = tmp_path / "killed" / "results.csv"
    while killed.poll() is None and not (csv_path.exists() and len(rows(csv_path)) >= 1):
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL, "finished before it could be killed"
    assert load_checkpoint(tmp_path / "killed" / "last.pt").epoch == 1
    resumed = subprocess.run(cli("train-student", "--resume", tmp_path / "killed" / "last.pt"), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    final = load_checkpoint(tmp_path / "killed" / "last.pt")
    assert final.epoch == 3 and load_checkpoint(tmp_path / "killed" / "best.pt").classes
    # the student's anchors (fitted or default) live in the checkpoint, so it rebuilds with them
    assert final.arch_options["anchors"] == load_checkpoint(tmp_path / "whole" / "best.pt").arch_options["anchors"]
    assert final.build().anchor_generator.num_anchors_per_location() == [6, 6, 6]
    whole, again = rows(tmp_path / "whole" / "results.csv"), rows(tmp_path / "killed" / "results.csv")
    assert [r["epoch"] for r in again] == ["1", "2", "3"]
    # training seconds so far: epoch 2's row holds epoch 1's time plus its own; a clock restarted at the resume
    # would put it near epoch 1's (same setup, one epoch) instead of about one epoch above it (epoch 3's step
    # also pays the resumed process's first results.png, matplotlib's import included, so compare loosely: on a CPU
    # shared with a benchmark epoch 3 once took 5x epoch 2)
    times = [float(r["time"]) for r in again]
    assert 0 < times[0] < times[1] < times[2] and times[1] - times[0] > 0.1 * (times[2] - times[1])
    for a, b in zip(whole, again, strict=True):  # same data order, same RNG: the same numbers
        assert abs(float(a["loss"]) - float(b["loss"])) < 1e-4 and a["machine_images"] == b["machine_images"]


def test_run_folder_outputs_and_mixing_log(tiny_cards, tmp_path):
    data = tiny_cards.files
    done = subprocess.run(cli("train-student", "--labeled", data["labeled"], "--val", data["val"],
                              "--pseudo", tiny_cards.out / "unlabeled.truth.json", "--pseudo-ratio", 0.5,
                              "--pseudo-weight", 0.5, "--image-size", 64, "--batch-size", 4, "--epochs", 2,
                              "--workers", 0, "--augment", "strong", "--out", tmp_path / "run"),
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (f"training on human labels {data['labeled']} + machine labels {tiny_cards.out / 'unlabeled.truth.json'} "
            "(50% of each batch, loss weight 0.5)") in " ".join(done.stdout.split())
    history = rows(tmp_path / "run" / "results.csv")
    assert len(history) == 2
    for row in history:  # 8 human images, 2 per batch of 4 -> 4 batches with 2 machine images each
        assert (int(row["human_images"]), int(row["machine_images"])) == (8, 8)
        assert int(row["machine_boxes"]) > 0 and 0 <= float(row["data_wait"]) < 1
    assert (tmp_path / "run" / "results.png").read_bytes()[:4] == b"\x89PNG"
    assert load_checkpoint(tmp_path / "run" / "best.pt").training_state is None  # small: weights only
    assert load_checkpoint(tmp_path / "run" / "last.pt").training_state["step"] == 8


def test_iterations_replace_epochs(tiny_cards, tmp_path):
    data = tiny_cards.files
    done = subprocess.run(cli("train-student", "--labeled", data["labeled"], "--val", data["val"], "--image-size", 64,
                              "--batch-size", 4, "--iterations", 5, "--workers", 0, "--out", tmp_path / "run"),
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    history = rows(tmp_path / "run" / "results.csv")
    assert [int(r["step"]) for r in history] == [2, 4, 5]  # 2 steps per epoch, stopped at 5


def test_the_default_schedule_has_a_floor_on_steps_and_given_epochs_do_not(tiny_cards, tmp_path, monkeypatch):
    from retinaslim.config import STUDENT_MIN_ITERATIONS, TEACHER_MIN_ITERATIONS
    from retinaslim.stages import train as stage

    saved = []  # (file, epoch) of every checkpoint written
    write = stage.save_checkpoint
    monkeypatch.setattr(stage, "save_checkpoint", lambda path, c: (saved.append((path.name, c.epoch)), write(path, c)))

    data = tiny_cards.files
    paths = dict(labeled=data["labeled"], val=data["val"], out=tmp_path / "x")
    assert TrainConfig(role="student", **paths).min_iterations == STUDENT_MIN_ITERATIONS == 2000
    assert TrainConfig(role="student", **paths).epochs == TRAIN_DEFAULTS["student"]["epochs"]
    assert TrainConfig(role="student", epochs=60, **paths).min_iterations == 0  # a schedule the user chose
    assert TrainConfig(role="student", iterations=60, **paths).min_iterations == 0
    assert TrainConfig(role="teacher", **paths).min_iterations == TEACHER_MIN_ITERATIONS == 1000
    assert TrainConfig(role="teacher", epochs=12, **paths).min_iterations == 0
    with pytest.raises(UserError, match="`min_iterations` -1"):
        TrainConfig(role="student", min_iterations=-1, **paths)
    # a run saved before the floor existed resumes with the schedule it started with
    old = Checkpoint("slim-s", {}, [], 64, train_args={"role": "student", **paths, "epochs": 60, "iterations": None})
    assert TrainConfig.from_checkpoint(old, tmp_path / "last.pt").min_iterations == 0
    # a floor above the epochs' steps lengthens the run to it, in whole epochs, says so, and validates about as often
    # as the epochs asked for (here once), and in each of the last 10 (whole-image) epochs
    reporter = LogLines()
    monkeypatch.setattr(stage, "CHECKPOINT_INTERVAL_S", 0)  # last.pt after every epoch, validated or not
    config = TrainConfig(role="student", epochs=1, min_iterations=30, image_size=64, batch_size=4, workers=0,
                         device="cpu", **{**paths, "out": tmp_path / "run"})
    result = train(config, reporter)
    history = rows(tmp_path / "run" / "results.csv")
    assert [int(r["epoch"]) for r in history] == list(range(6, 16)) and int(history[-1]["step"]) == 30
    assert result.best_epoch >= 6 and load_checkpoint(tmp_path / "run" / "last.pt").epoch == 15
    assert ("schedule: 1 epoch of 2 steps = 2 steps, below the default schedule's floor: training 30 steps (15 epochs, "
            "validated every 15 epochs and in each of the last 10, about as often as --epochs 1 would be); --epochs or --iterations "
            "set the schedule exactly") in reporter.lines
    assert any(line.startswith("epoch 1/15  loss") and line.endswith("(validated every 15 epochs)") for line in reporter.lines)
    assert [epoch for name, epoch in saved if name == "last.pt"] == list(range(1, 16))
    assert set(load_checkpoint(tmp_path / "run" / "last.pt").training_state["ema"]) == {"updates"}  # EMA weights: once
    monkeypatch.setattr(stage, "CHECKPOINT_INTERVAL_S", 600)
    saved.clear()
    # a schedule given in steps is exact, and validated the same way: 50 steps are 25 epochs of 2, validated
    # about as often as the 3 epochs asked for (every 9th) and in each of the last 10
    reporter = LogLines()
    train(TrainConfig(role="student", epochs=3, iterations=50, image_size=64, batch_size=4, workers=0, device="cpu",
                      **{**paths, "out": tmp_path / "steps"}), reporter)
    history = rows(tmp_path / "steps" / "results.csv")
    assert [int(r["epoch"]) for r in history] == [9, *range(16, 26)] and int(history[-1]["step"]) == 50
    # last.pt with each validation, not after the epochs between (a teacher's is 0.5 GB): under 600 s apart here
    assert [epoch for name, epoch in saved if name == "last.pt"] == [9, *range(16, 26)]
    assert ("schedule: 50 steps = 25 epochs of 2 steps, validated every 9 epochs and in each of the last 10, about as "
            "often as --epochs 3 would be") in reporter.lines


def test_a_last_pt_written_between_validations_resumes_to_the_same_run(tiny_cards, tmp_path, monkeypatch):
    """The 10-minute interval writes last.pt at an epoch that was not validated: --resume from it ends as the
    uninterrupted run did (losses, AP, the EMA's update count) and its clock counts the seconds before the stop."""
    from retinaslim.stages import train as stage

    data = tiny_cards.files

    def config(name):  # 24 steps = 12 epochs of 2, validated in each of the last 10 (3-12)
        return TrainConfig(role="student", epochs=1, iterations=24, image_size=64, batch_size=4, workers=0,
                           device="cpu", labeled=data["labeled"], val=data["val"], out=tmp_path / name)

    train(config("whole"), LogLines())
    write = stage.save_checkpoint

    def stop_after_epoch_2(path, checkpoint):
        write(path, checkpoint)
        if path.name == "last.pt" and checkpoint.epoch == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(stage, "CHECKPOINT_INTERVAL_S", 0)
    monkeypatch.setattr(stage, "save_checkpoint", stop_after_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train(config("run"), LogLines())
    stopped = load_checkpoint(tmp_path / "run" / "last.pt")
    assert stopped.epoch == 2 and stopped.metrics == {} and not (tmp_path / "run" / "results.csv").exists()
    assert stopped.training_state["seconds"] > 0
    stopped.training_state["seconds"] = 1000.0  # the resumed run's clock goes on from the seconds last.pt keeps
    write(tmp_path / "run" / "last.pt", stopped)
    monkeypatch.setattr(stage, "save_checkpoint", write)
    resumed = train(None, LogLines(), resume=tmp_path / "run" / "last.pt")
    whole, run = rows(tmp_path / "whole" / "results.csv"), rows(tmp_path / "run" / "results.csv")
    assert [r["epoch"] for r in whole] == [r["epoch"] for r in run] == [str(e) for e in range(3, 13)]
    for a, b in zip(whole, run, strict=True):
        assert abs(float(a["loss"]) - float(b["loss"])) < 1e-4 and abs(float(a["ap"]) - float(b["ap"])) < 1e-3
    assert 1000 < float(run[0]["time"]) < float(run[-1]["time"]) <= 1000 + resumed.seconds
    ema = [load_checkpoint(tmp_path / name / "last.pt").training_state["ema"] for name in ("whole", "run")]
    assert ema[0] == ema[1] == {"updates": 24}


def test_a_kill_between_last_pt_and_best_pt_resumes_and_writes_best_pt(tiny_cards, tmp_path, monkeypatch):
    """last.pt is written before best.pt, so a kill between the two (here at the run's first validation, where
    best.pt did not exist yet) leaves a run that resumes; the resume writes best.pt from last.pt before it trains,
    and the run ends with the uninterrupted run's best.pt. A kill before results.csv's write: the resume writes it."""
    from retinaslim.stages import train as stage

    data = tiny_cards.files

    def config(name):  # 24 steps = 12 epochs of 2, validated in each of the last 10 (3-12)
        return TrainConfig(role="student", epochs=1, iterations=24, image_size=64, batch_size=4, workers=0,
                           device="cpu", labeled=data["labeled"], val=data["val"], out=tmp_path / name)

    whole = train(config("whole"), LogLines())
    write = stage.save_checkpoint

    def stop(after_epoch, before_epoch):
        def save(path, checkpoint):
            if path.name == "last.pt" and checkpoint.epoch == before_epoch:
                raise KeyboardInterrupt
            write(path, checkpoint)
            if path.name == "last.pt" and checkpoint.epoch == after_epoch:
                raise KeyboardInterrupt
        return save

    monkeypatch.setattr(stage, "save_checkpoint", stop(after_epoch=3, before_epoch=None))
    with pytest.raises(KeyboardInterrupt):
        train(config("run"), LogLines())
    last = load_checkpoint(tmp_path / "run" / "last.pt")
    assert last.epoch == last.training_state["best_epoch"] == 3 and not (tmp_path / "run" / "best.pt").exists()
    monkeypatch.setattr(stage, "save_checkpoint", stop(after_epoch=None, before_epoch=4))
    with pytest.raises(KeyboardInterrupt):
        train(None, LogLines(), resume=tmp_path / "run" / "last.pt")
    best = load_checkpoint(tmp_path / "run" / "best.pt")  # written by the resume, from last.pt
    assert best.epoch == 3 and best.training_state is None and best.metrics == last.metrics and best.metrics["ap"] >= 0
    assert all(torch.equal(best.model[k], last.model[k]) for k in last.model)
    monkeypatch.setattr(stage, "save_checkpoint", write)
    resumed = train(None, LogLines(), resume=tmp_path / "run" / "last.pt")
    best = [load_checkpoint(tmp_path / name / "best.pt") for name in ("whole", "run")]
    assert resumed.best_epoch == whole.best_epoch == best[0].epoch == best[1].epoch and best[0].metrics == best[1].metrics
    assert all(torch.equal(best[0].model[k], best[1].model[k]) for k in best[0].model)
    # killed after the last epoch's last.pt: the resume trains nothing and writes results.csv's last row
    monkeypatch.setattr(stage, "save_checkpoint", stop(after_epoch=12, before_epoch=None))
    with pytest.raises(KeyboardInterrupt):
        train(config("final"), LogLines())
    assert [r["epoch"] for r in rows(tmp_path / "final" / "results.csv")] == [str(e) for e in range(3, 12)]
    monkeypatch.setattr(stage, "save_checkpoint", write)
    # ... in the folder that holds last.pt: the run was moved, and its recorded `out` now holds another run
    (tmp_path / "final").rename(tmp_path / "moved")
    (tmp_path / "final").mkdir()
    plotted = (tmp_path / "moved" / "results.png").stat().st_mtime_ns
    train(None, LogLines(), resume=tmp_path / "moved" / "last.pt")
    assert not any((tmp_path / "final").iterdir())
    assert (tmp_path / "moved" / "results.png").stat().st_mtime_ns != plotted  # drawn again with the last row
    for a, b in zip(rows(tmp_path / "whole" / "results.csv"), rows(tmp_path / "moved" / "results.csv"), strict=True):
        assert (a["epoch"], a["loss"], a["ap"]) == (b["epoch"], b["loss"], b["ap"])  # epochs 3-12


def test_ddp_two_cpu_processes(tiny_cards, tmp_path):
    data = tiny_cards.files
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29518",
               "-m", "retinaslim", "train-student", "--labeled", data["labeled"], "--val", data["val"],
               "--image-size", 64, "--batch-size", 2, "--epochs", 2, "--workers", 0, "--device", "cpu",
               "--out", tmp_path / "ddp"]
    done = subprocess.run(list(map(str, command)), capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    history = rows(tmp_path / "ddp" / "results.csv")
    assert len(history) == 2
    # 8 labelled images in batches of 2 -> 4 batches per epoch, 2 per process; rank 0 logs its own share
    assert [int(r["step"]) for r in history] == [2, 4] and all(int(r["human_images"]) == 4 for r in history)
    assert load_checkpoint(tmp_path / "ddp" / "last.pt").epoch == 2
    assert done.stdout.count("saved to") == 1  # only rank 0 reports


def test_init_starts_from_the_files_weights_exactly(tmp_path):
    data = synth(SynthConfig(tmp_path / "data", num_labeled=2, num_unlabeled=0, num_val=1, size=48, seed=2,
                             classes=("id_card",))).files
    torch.manual_seed(0)
    coco_like = retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=5).state_dict()
    init = tmp_path / "ddp.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in coco_like.items()}}, init)  # as DDP users save
    config = TrainConfig(role="teacher", labeled=data["labeled"], val=data["val"], out=tmp_path / "run",
                         **{**TRAIN_DEFAULTS["teacher"], "image_size": 32, "batch_size": 2, "epochs": 1, "lr": 0.0,
                            "augment": "none", "workers": 0}, init=str(init))
    reporter = LogLines()
    train(config, reporter)

    # lr 0: after a training step the raw weights are still the starting weights, bit for bit
    raw = load_checkpoint(tmp_path / "run" / "last.pt").training_state["raw_model"]
    parameters = [n for n, _ in build_model("retinanet_resnet50_fpn", 1, 32).named_parameters()]
    assert len(parameters) > 100
    for name in parameters:
        if "cls_logits" in name:  # 5 classes in the file, 1 in the data
            assert raw[name].shape != coco_like[name].shape
        else:
            assert torch.equal(raw[name], coco_like[name]), name
    num_loaded = sum("cls_logits" not in k and not k.endswith("num_batches_tracked") for k in coco_like)
    assert f"init: {num_loaded} tensors from {init}" in reporter.lines
    assert ("init: re-initialised, as they do not fit: head.classification_head.cls_logits.weight (file 45x256x3x3, "
            "model 9x256x3x3), head.classification_head.cls_logits.bias (file 45, model 9)") in reporter.lines
    assert not any("unused" in line for line in reporter.lines)
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["init"] == str(init)
    # the teacher's anchors were fitted to the human boxes (P3-P7, 3 sizes x 3 ratios), logged and stored
    anchors = load_checkpoint(tmp_path / "run" / "best.pt").arch_options["anchors"]
    assert [len(level) for level in anchors["scales"]] == [3] * 5 and len(anchors["ratios"]) == 3
    assert any(line.startswith("anchors fitted to ") and "P3-P7" in line for line in reporter.lines)
    # and how many of each class's boxes those anchors cover, as its own line
    assert any(re.fullmatch(r"(warning: )?boxes with an anchor of IoU >= 0.5 at 32 px: id_card \d+%.*", line)
               for line in reporter.lines)


def test_resume_ignores_init(tiny_cards, tmp_path):
    model = build_model("slim-s", num_classes=3, image_size=64)
    init = tmp_path / "start.pth"
    torch.save(model.state_dict(), init)
    config = TrainConfig(role="student", labeled=tiny_cards.files["labeled"], val=tiny_cards.files["val"],
                         out=tmp_path / "run", **{**TRAIN_DEFAULTS["student"], "image_size": 64, "batch_size": 8,
                                                  "epochs": 2, "workers": 0}, init=str(init))
    first = LogLines(stop=1)
    with pytest.raises(KeyboardInterrupt):
        train(config, first)
    assert any(line.startswith("init: ") for line in first.lines)
    init.unlink()  # the resumed run's weights are in last.pt: --init is not read again
    resumed = LogLines()
    train(None, resumed, resume=tmp_path / "run" / "last.pt")
    assert load_checkpoint(tmp_path / "run" / "last.pt").epoch == 2
    assert not any(line.startswith("init:") for line in resumed.lines)


def test_init_from_a_checkpoint_with_other_classes_reinitialises_the_class_head(tmp_path):
    categories = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    model = build_model("slim-s", num_classes=2, image_size=64)
    save_checkpoint(tmp_path / "a_b.pt", Checkpoint("slim-s", {}, categories, 64, model=model.state_dict()))
    for other, expected in ((categories, []), (categories[::-1], ["init: re-initialised, as they do not fit: "
                                                                 "head.classification_head.cls_logits.weight (classes differ), "
                                                                 "head.classification_head.cls_logits.bias (classes differ)"])):
        reporter = LogLines()
        fresh = build_model("slim-s", num_classes=2, image_size=64)
        initialise(fresh, read_init(str(tmp_path / "a_b.pt"), "slim-s"), "slim-s", other, reporter)
        assert [line for line in reporter.lines if "re-initialised" in line] == expected
        state = fresh.state_dict()
        assert all(torch.equal(state[k], v) for k, v in model.state_dict().items() if "cls_logits" not in k)


def test_init_and_pretrained_together_are_refused(tiny_cards, tmp_path):
    config = TrainConfig(role="teacher", labeled=tiny_cards.files["labeled"], val=tiny_cards.files["val"],
                         out=tmp_path / "run", **TRAIN_DEFAULTS["teacher"], init="coco", pretrained=True)
    with pytest.raises(UserError, match="`init` coco and `pretrained` both choose the starting weights"):
        train(config)


def test_score_weighted_machine_boxes_carry_their_scores_through_augmentation(tiny_cards, tmp_path):
    import json

    from retinaslim.data.coco import ClassMap, load_coco
    from retinaslim.data.dataset import DetectionDataset

    machine = json.loads((tiny_cards.out / "unlabeled.truth.json").read_text())
    for k, a in enumerate(machine["annotations"]):
        a["score"] = round(0.3 + 0.6 * (k % 7) / 6, 3)
    path = tmp_path / "machine.json"
    path.write_text(json.dumps(machine))
    (tmp_path / "unlabeled").symlink_to(tiny_cards.out / "unlabeled")
    coco = load_coco(path)
    classes = ClassMap.from_categories(coco.categories)
    plain = DetectionDataset(coco, classes, 64, "strong", machine=True, seed=3)
    weighted = DetectionDataset(coco, classes, 64, "strong", machine=True, score_weights=True, seed=3)
    exact = DetectionDataset(coco, classes, 64, "none", machine=True, score_weights=True)
    for index in range(len(coco.images)):  # without augmentation every box keeps its own score, in order
        scores = [a["score"] for a in coco.annotations_per_image[coco.images[index]["id"]]]
        assert exact[index][1]["box_weights"].tolist() == pytest.approx(scores)
    seen = 0
    for index in range(len(coco.images)):
        (image, a), (same, b) = plain[(index, 1)], weighted[(index, 1)]
        assert torch.equal(image, same) and torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["labels"], b["labels"])
        assert "box_weights" not in a and len(b["box_weights"]) == len(b["boxes"])
        scores = {round(x["score"], 3) for x in coco.annotations_per_image[coco.images[index]["id"]]}
        assert {round(float(w), 3) for w in b["box_weights"]} <= scores
        seen += len(b["boxes"])
    assert seen > 0
    del machine["annotations"][0]["score"]
    path.write_text(json.dumps(machine))
    with pytest.raises(UserError, match=r"machine\.json: annotation .* has no score"):
        train(TrainConfig(role="student", labeled=tiny_cards.files["labeled"], val=tiny_cards.files["val"],
                          out=tmp_path / "run", pseudo=path, pseudo_box_weight="score", image_size=64, epochs=1,
                          workers=0))
    with pytest.raises(UserError, match=r"`pseudo_box_weight` 'soft': choose none or score"):
        TrainConfig(role="student", labeled=path, val=path, out=tmp_path, pseudo_box_weight="soft")
    with pytest.raises(UserError, match=r"`batch_size` 1 leaves no room for machine images"):
        train(TrainConfig(role="student", labeled=tiny_cards.files["labeled"], val=tiny_cards.files["val"],
                          out=tmp_path / "run", pseudo=path, batch_size=1, image_size=64, epochs=1, workers=0))


def test_student_logs_each_classs_anchor_coverage_under_its_own_name(tiny_cards, tmp_path):
    # Two classes whose category ids run against their names (dot 3, card 7): some of the cards' boxes are covered
    # by the fitted anchors, the 2 px dots never are; a mix-up between ids and labels would swap the two shares.
    import json
    coco = json.loads(tiny_cards.files["labeled"].read_text())
    cards = [{**a, "category_id": 7} for a in coco["annotations"]]
    dots = [{"id": 10_000 + i, "image_id": image["id"], "category_id": 3, "bbox": [40, 40, 2, 2], "area": 4, "iscrowd": 0}
            for i, image in enumerate(coco["images"])]
    coco |= {"categories": [{"id": 7, "name": "card"}, {"id": 3, "name": "dot"}], "annotations": cards + dots}
    path = tiny_cards.files["labeled"].parent / "card_and_dot.json"
    path.write_text(json.dumps(coco))
    reporter = LogLines()
    train(TrainConfig(role="student", labeled=path, val=path, out=tmp_path / "run", image_size=96, batch_size=4,
                      iterations=1, workers=0), reporter)
    line = next(line for line in reporter.lines if "boxes with an anchor of IoU >= 0.5 at 96 px" in line)
    shares = dict(re.findall(r"(card|dot) (\d+)%", line.split(";")[0]))
    assert int(shares["card"]) > 0 and shares["dot"] == "0", line  # 17% here: the dots also took anchor sizes
    assert line.startswith("warning:") and "dot" in line.split(";")[1]
