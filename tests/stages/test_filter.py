"""filter: each rule on hand-made machine labels where the right answer is known."""

import json

import pytest
import torch

from retinaslim.config import FILTER_SCORE_THRESH
from retinaslim.core.detections import Detections
from retinaslim.engine.thresholds import KEEP_NONE, ClassScores, instances_thresholds
from retinaslim.errors import UserError
from retinaslim.models.registry import build_model
from retinaslim.stages.filter import FilterConfig, filter_labels, parse_class_thresholds

CATEGORIES = [{"id": 1, "name": "id_card"}, {"id": 2, "name": "passport"}]


def ann(i, image_id, score, box=(10, 10, 40, 25), category_id=1, agreement=6):
    return {"id": i, "image_id": image_id, "category_id": category_id, "bbox": list(box), "area": box[2] * box[3],
            "iscrowd": 0, "score": score, "agreement": agreement}


@pytest.fixture
def pseudo(tmp_path):
    images = [{"id": i, "file_name": f"img{i}.jpg", "width": 100, "height": 100} for i in (1, 2, 3, 4)]
    annotations = [
        ann(1, 1, 0.9), ann(2, 1, 0.6, category_id=2), ann(3, 1, 0.3),             # image 1: one doubtful box
        ann(4, 2, 0.8, agreement=1), ann(5, 2, 0.7, box=(0, 0, 3, 30)),            # low agreement; 3 px wide
        ann(6, 3, 0.95, box=(0, 0, 95, 95)), ann(7, 3, 0.55, box=(0, 0, 60, 10)),  # huge; aspect 6
        ann(8, 4, 0.1),                                                              # only a weak box
    ]
    path = tmp_path / "pseudo.json"
    info = {"teacher": "t.pt", "score_floor": 0.05, "transforms": ["scale1"], "fusion": "wbf", "image_size": 100}
    path.write_text(json.dumps({"info": info, "images": images, "annotations": annotations, "categories": CATEGORIES}))
    return path


def kept_ids(path):
    data = json.loads(path.read_text())
    return sorted(a["id"] for a in data["annotations"] if not a["iscrowd"]), sorted(im["id"] for im in data["images"])


def test_fixed_threshold_per_class_and_recorded_rules(pseudo, tmp_path):
    out = tmp_path / "f.json"
    result = filter_labels(FilterConfig(pseudo, out, score_thresh={"passport": 0.65}))
    assert FILTER_SCORE_THRESH == 0.2
    assert kept_ids(out) == ([1, 3, 4, 5, 6, 7], [1, 2, 3, 4])  # id_card keeps the 0.2 default (8 at 0.1 goes); passport 0.6 < 0.65
    assert result.thresholds == {"id_card": 0.2, "passport": 0.65}
    assert result.num_boxes_in == {"id_card": 7, "passport": 1} and result.num_boxes_kept == {"id_card": 6, "passport": 0}
    assert result.num_empty_images == 1
    info = json.loads(out.read_text())["info"]["filter"]
    assert info["thresholds"] == {"id_card": 0.2, "passport": 0.65} and info["threshold_rule"] == "fixed"
    assert sum(h["boxes_in"] for h in result.histogram) == 8 and sum(h["boxes_kept"] for h in result.histogram) == 6


def test_agreement_geometry_and_max_per_image(pseudo, tmp_path):
    out = tmp_path / "f.json"
    result = filter_labels(FilterConfig(pseudo, out, score_thresh=0.5, min_agreement=2, min_size=5,
                                        max_size_frac=0.5, aspect_range=(0.3, 3.0), max_per_image=1))
    assert kept_ids(out)[0] == [1]  # 2 and 1: max 1 per image; 4 agreement; 5 small; 6 huge; 7 aspect
    removed = {r.rule: r.boxes_removed for r in result.rules}
    assert removed["agreement"]["id_card"] == 1 and removed["geometry"]["id_card"] == 3
    assert removed["max_per_image"] == {"id_card": 0, "passport": 1}


def test_ambiguous_images_drop_or_ignore_and_empty_images(pseudo, tmp_path):
    dropped = filter_labels(FilterConfig(pseudo, tmp_path / "d.json", score_thresh=0.5, ambiguous="drop",
                                         ambiguous_low=0.2, keep_empty=False))
    assert kept_ids(tmp_path / "d.json") == ([4, 5, 6, 7], [2, 3])  # image 1 is doubtful, image 4 empty
    assert {r.rule: r.images_removed for r in dropped.rules} == {
        "geometry": 0, "agreement": 0, "threshold": 0, "max_per_image": 0, "ambiguous": 1, "empty images": 1,
        "labels unreliable on every class": 0}
    filter_labels(FilterConfig(pseudo, tmp_path / "i.json", score_thresh=0.5, ambiguous="ignore", ambiguous_low=0.2))
    data = json.loads((tmp_path / "i.json").read_text())
    assert [(a["id"], a["iscrowd"]) for a in data["annotations"] if a["image_id"] == 1] == [(1, 0), (2, 0), (3, 1)]


def test_instances_rule_on_hand_made_scores():
    scores = {0: torch.tensor([0.5, 0.9, 0.7, 0.8, 0.6]), 1: torch.tensor([0.4]), 2: torch.tensor([0.9])}
    # class 0: 1.5 human boxes per labelled image x 2 unlabelled images = 3 -> the 3rd best score, 0.7
    # class 1: wants 2 but has 1 -> the floor; class 2: no human boxes -> keeps none
    thresholds = instances_thresholds(scores, {0: 1.5, 1: 1.0}, num_unlabeled=2, floor=0.05)
    assert thresholds[0] == pytest.approx(0.7) and thresholds[1] == 0.05 and thresholds[2] > 1


def test_auto_instances_end_to_end(pseudo, tmp_path):
    labeled = tmp_path / "labeled.json"
    images = [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 100}, {"id": 2, "file_name": "b.jpg", "width": 100, "height": 100}]
    annotations = [ann(i, 1 + i % 2, 1.0) for i in range(1, 4)] + [ann(4, 1, 1.0, category_id=2)]
    for a in annotations:
        a.pop("score"), a.pop("agreement")
    labeled.write_text(json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES}))
    # id_card: 3 boxes / 2 images x 4 unlabelled images = 6 -> 6th best id_card score (0.3); passport: 2 wanted, 1 there
    result = filter_labels(FilterConfig(pseudo, tmp_path / "f.json", auto_thresh="instances", labeled=labeled))
    assert result.thresholds == pytest.approx({"id_card": 0.3, "passport": 0.05})
    assert result.num_boxes_kept == {"id_card": 6, "passport": 1}


def test_truth_metrics_and_review_file(pseudo, tmp_path):
    truth = tmp_path / "truth.json"
    images = [{"id": 10 + i, "file_name": f"img{i}.jpg", "width": 100, "height": 100} for i in (1, 2, 3, 4)]
    truth.write_text(json.dumps({"images": images, "categories": CATEGORIES,
                                 "annotations": [{**ann(1, 11, 1.0), "score": 1.0}, {**ann(2, 14, 1.0), "score": 1.0}]}))
    result = filter_labels(FilterConfig(pseudo, tmp_path / "f.json", score_thresh=0.5, truth=truth,
                                        review_out=tmp_path / "review.json", review_count=2))
    before, after = result.truth_metrics["before"], result.truth_metrics["after"]
    assert before["boxes"] == 8 and before["recall"] == 1.0 and before["precision"] == pytest.approx(2 / 8)
    assert after["boxes"] == 6 and after["recall"] == 0.5 and after["precision"] == pytest.approx(1 / 6)
    # per class: the truth has two id_cards and no passport; the one passport box is wrong
    assert before["per_class"] == {"id_card": {"boxes": 7, "precision": pytest.approx(2 / 7), "recall": 1.0},
                                   "passport": {"boxes": 1, "precision": 0.0, "recall": None}}
    assert after["per_class"] == {"id_card": {"boxes": 5, "precision": pytest.approx(1 / 5), "recall": 0.5},
                                  "passport": {"boxes": 1, "precision": 0.0, "recall": None}}
    # image 4 (its truth box, and only a 0.1 machine box) dropped as empty: its object still counts as missed,
    # over the same images as AP
    dropped = filter_labels(FilterConfig(pseudo, tmp_path / "g.json", score_thresh=0.5, truth=truth, keep_empty=False))
    assert dropped.num_images_out == 3 and dropped.truth_metrics["after"]["recall"] == 0.5
    tasks = json.loads((tmp_path / "review.json").read_text())
    assert [t["meta"]["rank"] for t in tasks] == [1]  # room for 2, but only image 1 holds a box in [0.2, 0.5)
    assert tasks[0]["data"]["image"].endswith("img1.jpg")
    # at 0.85 images 1-3 hold doubtful boxes (doubt 2.0, 1.76, 1.53); image 4's 0.1 is below `ambiguous_low`
    filter_labels(FilterConfig(pseudo, tmp_path / "g.json", score_thresh=0.85, review_out=tmp_path / "review.json",
                               review_count=2))
    tasks = json.loads((tmp_path / "review.json").read_text())
    assert [t["meta"]["rank"] for t in tasks] == [1, 2] and [t["meta"]["doubt"] for t in tasks] == pytest.approx(
        [3 - 0.85 / 0.85, 2 - 0.2 / 0.85], abs=1e-3)
    first = tasks[0]["predictions"][0]["result"][0]
    assert first["type"] == "rectanglelabels" and 0 <= first["value"]["x"] <= 100 and first["value"]["rectanglelabels"]
    assert (tmp_path / "review.coco.json").is_file()


def test_bad_options(pseudo, tmp_path):
    with pytest.raises(UserError, match="unknown class 'visa'"):
        filter_labels(FilterConfig(pseudo, tmp_path / "f.json", score_thresh=parse_class_thresholds("visa=0.3")))
    with pytest.raises(UserError, match="needs `labeled`"):
        filter_labels(FilterConfig(pseudo, tmp_path / "f.json", auto_thresh="instances"))
    with pytest.raises(UserError, match="both set the threshold"):
        filter_labels(FilterConfig(pseudo, tmp_path / "f.json", score_thresh=0.5, auto_thresh="instances", labeled=pseudo))
    with pytest.raises(UserError, match="expected a number"):
        parse_class_thresholds("id_card:0.5")
    with pytest.raises(UserError, match="`review_count` 0 must be at least 1"):
        filter_labels(FilterConfig(pseudo, tmp_path / "f.json", review_out=tmp_path / "r.json", review_count=0))
    with pytest.raises(UserError, match="`max_per_image` -1 must be at least 1"):
        filter_labels(FilterConfig(pseudo, tmp_path / "f.json", max_per_image=-1))
    with pytest.raises(UserError, match="`min_agreement` 0 must be at least 1"):
        filter_labels(FilterConfig(pseudo, tmp_path / "f.json", min_agreement=0))


def test_ignore_regions_of_the_input_pass_through_uncounted(pseudo, tmp_path):
    """Filtering a file that already holds ignore regions: they stay ignore regions and are not counted as kept."""
    filter_labels(FilterConfig(pseudo, tmp_path / "i.json", score_thresh=0.5, ambiguous="ignore", ambiguous_low=0.2))
    again = filter_labels(FilterConfig(tmp_path / "i.json", tmp_path / "again.json", score_thresh=0.2))
    crowd = [a["id"] for a in json.loads((tmp_path / "again.json").read_text())["annotations"] if a["iscrowd"]]
    assert crowd == [3]  # image 1's 0.3 box, an ignore region since the first pass
    assert again.num_boxes_kept == {"id_card": 5, "passport": 1}  # 1, 4, 5, 6, 7 and 2; not 3


@pytest.mark.parametrize("assigner", ["iou", "tal"])
def test_ignore_regions_give_no_classification_loss(assigner):
    model = build_model("slim-s", num_classes=1, image_size=64)
    model.assigner = assigner
    model.head.classification_head.cls_logits.bias.data.zero_()  # p = 0.5 everywhere: background costs loss
    image = [torch.rand(3, 64, 64)]
    no_boxes = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    plain = model(image, [no_boxes])["classification"]
    # Anchors near the border reach outside the image; a region around it all covers every anchor.
    ignored = model(image, [{**no_boxes, "ignore": torch.tensor([[-200.0, -200.0, 264.0, 264.0]])}])["classification"]
    assert plain > 1 and ignored == 0
    half = model(image, [{**no_boxes, "ignore": torch.tensor([[-200.0, -200.0, 264.0, 32.0]])}])["classification"]
    assert 0.3 * plain < half < 0.7 * plain


def test_auto_precision_calibrates_on_human_labels(one_card_set, labeller, tmp_path):
    from retinaslim.stages.pseudo_label import PseudoLabelConfig, pseudo_label

    labeled = one_card_set.files["labeled"]
    pseudo_label(PseudoLabelConfig(one_card_set.out / "labeled", labeller, tmp_path / "p.json", batch_size=4))
    result = filter_labels(FilterConfig(tmp_path / "p.json", tmp_path / "f.json", auto_thresh="precision",
                                        calib=labeled, target_precision=0.9))
    assert [c.class_name for c in result.calibration] == ["id_card", "bank_card", "passport"]
    for c in result.calibration:
        assert not c.reached or (c.precision >= 0.9 and 0 < c.threshold <= 1 and 0 < c.recall <= 1)
        assert result.thresholds[c.class_name] == pytest.approx(c.threshold)
    assert any(c.reached for c in result.calibration)
    assert json.loads((tmp_path / "f.json").read_text())["info"]["filter"]["target_precision"] == 0.9


def test_class_scores_choose_per_class_on_hand_made_validation_images():
    scores = ClassScores(2)
    truth = torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]])
    # image 1: class 0 found at 0.9, a wrong class-0 box at 0.6, class 1 found at 0.3
    scores.add(Detections(torch.tensor([[0.0, 0, 10, 10], [50, 50, 60, 60], [20, 20, 30, 30]]),
                          torch.tensor([0.9, 0.6, 0.3]), torch.tensor([0, 0, 1])), truth, torch.tensor([0, 1]))
    # image 2: class 0 found at 0.5, nothing of class 1 (its box missed)
    scores.add(Detections(torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([0.5]), torch.tensor([0])),
               truth, torch.tensor([0, 1]))
    f1 = scores.choose(["a", "b"], "f1", 0.95)
    # class 0: cuts 0.9 (P 1, R 1/2), 0.6 (1/2, 1/2), 0.5 (2/3, 1) -> F1 0.67, 0.5, 0.8: 0.5
    assert (f1[0].threshold, f1[0].precision, f1[0].recall, f1[0].reached) == pytest.approx((0.5, 2 / 3, 1.0, True))
    assert (f1[1].threshold, f1[1].precision, f1[1].recall) == pytest.approx((0.3, 1.0, 0.5))
    precise = scores.choose(["a", "b"], "precision", 0.9)
    assert [c.threshold for c in precise] == pytest.approx([0.9, 0.3])
    empty = ClassScores(1)
    empty.add(Detections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64)), truth[:1], torch.tensor([0]))
    assert not empty.choose(["a"], "f1", 0.95)[0].reached and empty.choose(["a"], "f1", 0.95)[0].threshold == KEEP_NONE
    with pytest.raises(UserError, match="instances"):
        scores.choose(["a", "b"], "instances", 0.95)
    # one card found, below nine wrong boxes: best F1 2 / (10 + 1) = 0.18 < RELIABLE_F1, so f1 distrusts the class;
    # precision 0.95 is never reached, so the precision rule finds no threshold either
    weak = ClassScores(1)
    wrong = torch.tensor([[50.0 + 3 * i, 50, 60 + 3 * i, 60] for i in range(9)])
    weak.add(Detections(torch.cat([wrong, truth[:1]]), torch.linspace(0.9, 0.4, 10), torch.zeros(10, dtype=torch.int64)),
             truth[:1], torch.tensor([0]))
    [distrusted] = weak.choose(["a"], "f1", 0.95)
    assert distrusted.reached and not distrusted.reliable and distrusted.f1 == pytest.approx(2 / 11)
    assert distrusted.threshold == pytest.approx(0.4)
    [unreached] = weak.choose(["a"], "precision", 0.95)
    assert not unreached.reached and not unreached.reliable and unreached.threshold == KEEP_NONE
    assert all(c.reliable for c in f1 + precise)
    # AP over COCO's IoU thresholds: exact boxes count at every one; a box of IoU 0.62 at 0.5, 0.55 and 0.6 only
    assert scores.ap(0) == pytest.approx(scores.ap50(0)) and scores.ap50(0) > 0
    loose = ClassScores(1)
    loose.add(Detections(torch.tensor([[0.0, 0, 10, 6.2]]), torch.tensor([0.8]), torch.tensor([0])), truth[:1], torch.tensor([0]))
    assert loose.ap50(0) == pytest.approx(1.0) and loose.ap(0) == pytest.approx(0.3)


def test_a_validation_set_makes_the_default_rule_precision_and_f1_beats_fixed_on_f1(one_card_set, labeller, tmp_path):
    from retinaslim.stages.pseudo_label import PseudoLabelConfig, pseudo_label

    labeled = one_card_set.files["labeled"]
    pseudo_label(PseudoLabelConfig(one_card_set.out / "labeled", labeller, tmp_path / "p.json", batch_size=4))
    chosen = filter_labels(FilterConfig(tmp_path / "p.json", tmp_path / "f.json", calib=labeled))
    rules = json.loads((tmp_path / "f.json").read_text())["info"]["filter"]
    assert rules["threshold_rule"] == "precision" and rules["target_precision"] == 0.95
    assert [c.class_name for c in chosen.calibration] == ["id_card", "bank_card", "passport"]
    explicit = filter_labels(FilterConfig(tmp_path / "p.json", tmp_path / "e.json", auto_thresh="precision", calib=labeled))
    assert chosen.thresholds == explicit.thresholds
    assert any(c.reliable for c in chosen.calibration), "the labeller finds cards on its own training images"
    for c in chosen.calibration:  # a class that never reaches 0.95 is unreliable: none of its boxes are kept
        assert chosen.thresholds[c.class_name] == pytest.approx(c.threshold if c.reliable else KEEP_NONE)
        assert c.reliable == c.reached and (not c.reliable or c.precision >= 0.95)
    assert rules["unreliable_classes"] == [c.class_name for c in chosen.calibration if not c.reliable]
    # f1: its thresholds give machine labels with at least the F1 of the fixed default on the same images
    tuned = filter_labels(FilterConfig(tmp_path / "p.json", tmp_path / "g.json", auto_thresh="f1", calib=labeled,
                                       truth=labeled))
    plain = filter_labels(FilterConfig(tmp_path / "p.json", tmp_path / "h.json", truth=labeled))
    assert json.loads((tmp_path / "h.json").read_text())["info"]["filter"]["threshold_rule"] == "fixed"
    assert set(plain.thresholds.values()) == {FILTER_SCORE_THRESH}

    def f1(m):
        return 2 * m["precision"] * m["recall"] / max(1e-9, m["precision"] + m["recall"])

    assert f1(tuned.truth_metrics["after"]) >= f1(plain.truth_metrics["after"]) - 1e-6
    # a threshold given by hand wins over the validation set
    by_hand = filter_labels(FilterConfig(tmp_path / "p.json", tmp_path / "i.json", calib=labeled, score_thresh=0.5))
    assert set(by_hand.thresholds.values()) == {0.5} and not by_hand.calibration


def test_classes_the_teacher_finds_unreliably_on_validation_give_ignore_regions(pseudo, tmp_path, monkeypatch, capsys):
    from retinaslim.engine.thresholds import Calibration
    from retinaslim.stages import filter as filter_stage

    def calibrate(found):
        monkeypatch.setattr(filter_stage, "_calibrate", lambda *args: (found, {}))

    # id_card found reliably (threshold 0.5); passport's best F1 0.2: its box (0.6, image 1) becomes an ignore region
    calibrate([Calibration("id_card", 0.5, 0.8, 0.8, True, True), Calibration("passport", 0.3, 0.2, 0.2, True, False)])
    result = filter_labels(FilterConfig(pseudo, tmp_path / "f.json", calib=pseudo))
    data = json.loads((tmp_path / "f.json").read_text())
    assert data["info"]["filter"]["unreliable_classes"] == ["passport"]
    assert [(a["id"], a["iscrowd"]) for a in data["annotations"] if a["image_id"] == 1] == [(1, 0), (2, 1)]
    assert result.num_boxes_kept["passport"] == 0 and result.num_ignore_regions == 1
    # every class unreliable: nothing to teach, no machine image is kept
    calibrate([Calibration("id_card", 0.5, 0.1, 0.1, True, False), Calibration("passport", 1.0, 0, 0, False, False)])
    result = filter_labels(FilterConfig(pseudo, tmp_path / "g.json", calib=pseudo))
    assert result.num_images_out == 0 and json.loads((tmp_path / "g.json").read_text())["images"] == []
    assert (result.threshold_rule, result.target_precision) == ("precision", 0.95)  # what the warning names
    assert result.rules[-1].images_removed == 4
    # the command's warning names the student's own labels among the unreliable ones when it made some of them
    from retinaslim.cli.filter import _render
    for by_student in (False, True):
        result.labelled_by_student = by_student
        _render(result, None)
        said = " ".join("".join(capsys.readouterr()).split())
        assert "unreliable on every class" in said and "no threshold reaches precision 0.95 there" in said
        assert said.count("keeps none") == 2 and "1.000" not in said  # the threshold of a class that keeps nothing
        assert ("the human-only student's own ensemble among them" in said) is by_student
    # a class the validation images hold no box of is said to be unchecked, not to have missed the target
    result.calibration[1].num_val_boxes = 0
    _render(result, None)
    said = " ".join("".join(capsys.readouterr()).split())
    assert "passport: the validation images hold no box of it, so the labels of" in said
    assert "no threshold reaches" not in said
    assert "unreliable on every class" in said and "Train the teacher longer" in said  # id_card was checked
    # every class unchecked: the advice is to label validation images, not to train the teacher longer
    result.calibration[0].num_val_boxes = 0
    _render(result, None)
    said = " ".join("".join(capsys.readouterr()).split())
    assert "the machine labels are unchecked on every class" in said and "Label some validation images" in said
    assert "Train the teacher longer" not in said and "own ensemble among them" not in said


def test_calibration_counts_each_class_validation_boxes():
    from retinaslim.core.detections import Detections
    from retinaslim.engine.thresholds import ClassScores

    scores = ClassScores(2)  # one image: a true id_card (label 0) found at 0.9; no passport box on it
    scores.add(Detections(torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([0.9]), torch.tensor([0])),
               torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([0]))
    found = scores.choose(["id_card", "passport"], "precision", 0.95)
    assert [(c.num_val_boxes, c.reached) for c in found] == [(1, True), (0, False)]


def test_average_precision_is_the_area_under_the_monotone_precision_recall_curve():
    from retinaslim.core.matching import average_precision

    # ranked: hit, miss, hit, of 3 true boxes: precision 1, 1/2, 2/3 -> made monotone 1, 2/3, 2/3; AP (1 + 2/3) / 3
    scores, hits = torch.tensor([0.7, 0.9, 0.8]), torch.tensor([True, True, False])
    assert average_precision(scores, hits, 3) == pytest.approx((1 + 2 / 3) / 3)
    assert average_precision(scores, hits, 0) == 0.0 and average_precision(torch.zeros(0), hits[:0], 2) == 0.0
    assert average_precision(scores, torch.tensor([True, True, True]), 3) == pytest.approx(1.0)


def test_a_student_better_than_the_teacher_makes_its_classes_unreliable(one_card_set, labeller, tmp_path, monkeypatch):
    import dataclasses

    from retinaslim.models.checkpoint import load_checkpoint, save_checkpoint
    from retinaslim.stages.pseudo_label import PseudoLabelConfig, pseudo_label

    trained = load_checkpoint(labeller)
    torch.manual_seed(0)
    untrained = build_model(trained.arch, len(trained.classes), trained.image_size, **trained.arch_options)
    weak = tmp_path / "weak.pt"
    save_checkpoint(weak, dataclasses.replace(trained, model=untrained.state_dict()))
    images, labeled = one_card_set.out / "labeled", one_card_set.files["labeled"]
    seen = {a["category_id"] for a in json.loads(labeled.read_text())["annotations"]}
    present = [c["name"] for c in trained.classes if c["id"] in seen]  # classes with truth on the validation images

    # a teacher that has learnt nothing, a student that has: every class with truth is left to the student
    pseudo_label(PseudoLabelConfig(images, weak, tmp_path / "weak.json", batch_size=4))
    result = filter_labels(FilterConfig(tmp_path / "weak.json", tmp_path / "wf.json", calib=labeled, student=labeller))
    for c in result.calibration:
        if c.class_name in present:
            assert c.student_ap50 > 0.3 > c.teacher_ap50 and c.below_student and not c.reliable
            assert result.num_boxes_kept[c.class_name] == 0
    # the trained model as teacher and the untrained one as student: nothing changes against the run without it
    pseudo_label(PseudoLabelConfig(images, labeller, tmp_path / "good.json", batch_size=4))
    alone = filter_labels(FilterConfig(tmp_path / "good.json", tmp_path / "a.json", calib=labeled))
    compared = filter_labels(FilterConfig(tmp_path / "good.json", tmp_path / "c.json", calib=labeled, student=weak))
    assert compared.thresholds == alone.thresholds and compared.num_boxes_kept == alone.num_boxes_kept
    assert all(not c.below_student for c in compared.calibration)
    assert not result.labelled_by_student and not compared.labelled_by_student
    # the student compared with its own labels (self-training): the filter knows the labels are the student's
    own = filter_labels(FilterConfig(tmp_path / "good.json", tmp_path / "o.json", calib=labeled, student=labeller))
    assert own.labelled_by_student
    assert any(c.teacher_ap50 > 0.3 for c in compared.calibration if c.class_name in present)
    with pytest.raises(UserError, match="`student` is compared with the teacher"):
        filter_labels(FilterConfig(tmp_path / "good.json", tmp_path / "x.json", score_thresh=0.5, student=weak))
    # a class the teacher labels reliably (precision 1.0 at 0.5) but the student finds better is not trained on
    from retinaslim.engine import thresholds

    def scores(hits_at_50, tight):
        """Three boxes scored 0.9, 0.5, 0.2: true positives at IoU 0.5 as given, and at every IoU up to 0.95 if
        ``tight``, else only at 0.5."""
        found = ClassScores(len(trained.classes))
        hits = torch.tensor(hits_at_50)[:, None].repeat(1, len(thresholds.COCO_IOUS))
        if not tight:
            hits[:, 1:] = False
        for k in range(len(trained.classes)):
            found.scores[k], found.hits[k], found.num_true[k] = [torch.tensor([0.9, 0.5, 0.2])], [hits], 3
        return found

    crafted = {"calibrate": scores([True, True, False], tight=True), "student": scores([True, True, True], tight=True)}
    monkeypatch.setattr(thresholds, "_labeller_scores", lambda *args, **kwargs: crafted[args[-1]])
    result = filter_labels(FilterConfig(tmp_path / "good.json", tmp_path / "m.json", calib=labeled, student=weak))
    for c in result.calibration:
        assert c.reached and c.threshold == pytest.approx(0.5) and c.precision == 1.0  # the precision rule alone keeps them
        assert (c.teacher_ap50, c.student_ap50) == (pytest.approx(2 / 3), pytest.approx(1.0)) and not c.reliable
        assert (c.teacher_ap, c.student_ap) == (pytest.approx(2 / 3), pytest.approx(1.0))
    assert sum(result.num_boxes_kept.values()) == 0
    # AP50 alone would keep the teacher's boxes (2/3 against 1/3): its boxes are loose, the student's tight
    crafted = {"calibrate": scores([True, True, False], tight=False), "student": scores([True, False, False], tight=True)}
    result = filter_labels(FilterConfig(tmp_path / "good.json", tmp_path / "n.json", calib=labeled, student=weak))
    for c in result.calibration:
        assert (c.teacher_ap50, c.student_ap50) == (pytest.approx(2 / 3), pytest.approx(1 / 3))
        assert (c.teacher_ap, c.student_ap) == (pytest.approx(2 / 3 / 10), pytest.approx(1 / 3))
        assert c.below_student and not c.reliable
    assert sum(result.num_boxes_kept.values()) == 0


def test_several_pseudo_label_outputs_give_each_class_the_labels_with_the_higher_validation_ap(pseudo, tmp_path, monkeypatch):
    from retinaslim.engine.thresholds import Calibration
    from retinaslim.stages import filter as filter_stage

    from PIL import Image

    for i in (1, 2, 3, 4):  # the validation set here is the machine labels' own images, which must exist
        Image.new("RGB", (100, 100)).save(tmp_path / f"img{i}.jpg")
    # the student's own labels of the same images (another file, its own annotation ids): boxes at other places
    data = json.loads(pseudo.read_text())
    own = tmp_path / "own" / "pseudo-student.json"
    own.parent.mkdir()
    data["images"] = [{**im, "file_name": f"../{im['file_name']}"} for im in data["images"]]  # the same files
    data["annotations"] = [ann(100, 1, 0.9, box=(50, 50, 20, 20)), ann(101, 1, 0.8, box=(5, 60, 30, 30), category_id=2),
                           ann(102, 4, 0.7, box=(60, 5, 30, 30), category_id=2)]
    data["info"] = {**data["info"], "teacher": "s.pt"}
    own.write_text(json.dumps(data))
    # validation AP: the teacher's labels win id_card (0.6 vs 0.4), the student's win passport (0.5 vs 0.1)
    aps = {"t.pt": {"id_card": 0.6, "passport": 0.1}, "s.pt": {"id_card": 0.4, "passport": 0.5}}

    def calibrated(stream, classes, calib, teacher, *args, **kwargs):
        return [Calibration(n, 0.5, 0.95, 0.5, True, True, teacher_ap=aps["+".join(map(str, teacher))][n])
                for n in classes.names]

    monkeypatch.setattr(filter_stage, "validation_thresholds", calibrated)
    out = tmp_path / "f.json"
    result = filter_labels(FilterConfig([pseudo, own], out, calib=pseudo))
    assert [(c.class_name, c.source) for c in result.calibration] == [("id_card", str(pseudo)), ("passport", str(own))]
    written = json.loads(out.read_text())
    # id_card: the teacher's boxes >= 0.5 (1, 4, 5, 6, 7 of images 1-3); passport: the student's (images 1 and 4)
    boxes = sorted((a["image_id"], a["category_id"], tuple(a["bbox"])) for a in written["annotations"])
    assert boxes == [(1, 1, (10, 10, 40, 25)), (1, 2, (5, 60, 30, 30)), (2, 1, (0, 0, 3, 30)), (2, 1, (10, 10, 40, 25)),
                     (3, 1, (0, 0, 60, 10)), (3, 1, (0, 0, 95, 95)), (4, 2, (60, 5, 30, 30))]
    assert len({a["id"] for a in written["annotations"]}) == len(written["annotations"])  # numbered anew
    assert result.num_boxes_in == {"id_card": 7, "passport": 2} and result.num_boxes_kept == {"id_card": 5, "passport": 2}
    assert written["info"]["filter"]["labels_from"] == {"id_card": str(pseudo), "passport": str(own)}
    assert result.source_ap == {str(pseudo): aps["t.pt"], str(own): aps["s.pt"]}
    assert [im["file_name"] for im in written["images"]] == [f"img{i}.jpg" for i in (1, 2, 3, 4)]
    # a file that numbers its classes and images otherwise (import-teacher numbers classes 1..K): the same boxes,
    # under the first file's ids
    renumbered = tmp_path / "own" / "renumbered.json"
    cat_ids = {1: 7, 2: 9}
    renumbered.write_text(json.dumps({
        **data, "categories": [{"id": 7, "name": "id_card"}, {"id": 9, "name": "passport"}],
        "images": [{**im, "id": im["id"] + 100} for im in data["images"]],
        "annotations": [{**a, "image_id": a["image_id"] + 100, "category_id": cat_ids[a["category_id"]]}
                        for a in data["annotations"]]}))
    filter_labels(FilterConfig([pseudo, renumbered], tmp_path / "r.json", calib=pseudo))
    written = json.loads((tmp_path / "r.json").read_text())
    assert sorted((a["image_id"], a["category_id"], tuple(a["bbox"])) for a in written["annotations"]) == boxes
    # the order of the files does not change the choice; a tie goes to the first
    again = filter_labels(FilterConfig([own, pseudo], tmp_path / "g.json", calib=pseudo))
    assert [c.source for c in again.calibration] == [str(pseudo), str(own)]
    aps["s.pt"]["id_card"] = 0.6
    tie = filter_labels(FilterConfig([own, pseudo], tmp_path / "h.json", calib=pseudo))
    assert tie.calibration[0].source == str(own)
    # three files, as a workspace writes them: both models fused (its info lists both) win passport, the teacher id_card
    aps["s.pt"]["id_card"] = 0.4
    data["info"] = {**data["info"], "teacher": ["t.pt", "s.pt"]}
    data["annotations"] = [ann(200, 2, 0.9, box=(20, 20, 30, 30), category_id=2)]
    joint = tmp_path / "own" / "pseudo-joint.json"
    joint.write_text(json.dumps(data))
    aps["t.pt+s.pt"] = {"id_card": 0.5, "passport": 0.7}
    three = filter_labels(FilterConfig([pseudo, own, joint], tmp_path / "j.json", calib=pseudo))
    assert [(c.class_name, c.source) for c in three.calibration] == [("id_card", str(pseudo)), ("passport", str(joint))]
    assert three.source_ap == {str(pseudo): aps["t.pt"], str(own): aps["s.pt"], str(joint): aps["t.pt+s.pt"]}
    written = json.loads((tmp_path / "j.json").read_text())
    assert sorted((a["image_id"], tuple(a["bbox"])) for a in written["annotations"] if a["category_id"] == 2) == [
        (2, (20, 20, 30, 30))]  # the passports are the fused file's, the student's own are not written


def test_several_pseudo_label_outputs_must_label_the_same_images_and_need_the_validation_set(pseudo, tmp_path):
    from PIL import Image

    for i in (1, 2, 3, 4):
        Image.new("RGB", (100, 100)).save(tmp_path / f"img{i}.jpg")
    data = json.loads(pseudo.read_text())
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**data, "images": [{**im, "file_name": f"x{im['id']}.jpg"} for im in data["images"]]}))
    fewer = tmp_path / "fewer.json"
    fewer.write_text(json.dumps({**data, "images": data["images"][:3],
                                 "annotations": [a for a in data["annotations"] if a["image_id"] < 4]}))
    with pytest.raises(UserError, match="need the f1 or precision rule|needs the f1 or precision rule"):
        filter_labels(FilterConfig([pseudo, other], tmp_path / "a.json", score_thresh=0.5))
    with pytest.raises(UserError, match="`teacher` names the labellers of one"):
        filter_labels(FilterConfig([pseudo, other], tmp_path / "a.json", calib=pseudo, teacher=[tmp_path / "t.pt"]))
    from retinaslim.stages import filter as filter_stage
    from retinaslim.engine.thresholds import Calibration

    for bad, message in [(other, "image x1.jpg where .* has img1.jpg"), (fewer, "hold different numbers of images")]:
        with pytest.MonkeyPatch.context() as m:
            m.setattr(filter_stage, "validation_thresholds", lambda stream, classes, *a, **k: [
                Calibration(n, 0.5, 1.0, 1.0, True, True, teacher_ap=0.5 if stream.path == bad else 0.1)
                for n in classes.names])
            with pytest.raises(UserError, match=message):
                filter_labels(FilterConfig([pseudo, bad], tmp_path / "b.json", calib=pseudo))
    assert not (tmp_path / "b.json").exists()  # nothing written on a refusal


def test_validation_thresholds_see_only_boxes_above_the_files_score_floor_and_count_undecodable_images(
        one_card_set, labeller, tmp_path):
    """pseudo-label cut its boxes at the score floor: the validation run must cut there too (or a threshold below
    the floor describes boxes the file cannot hold); an image that cannot be decoded counts its objects as missed."""
    import shutil

    from retinaslim.stages.pseudo_label import PseudoLabelConfig, pseudo_label

    images, labeled = one_card_set.out / "labeled", one_card_set.files["labeled"]
    low, high = tmp_path / "low.json", tmp_path / "high.json"
    pseudo_label(PseudoLabelConfig(images, labeller, low, batch_size=4, score_floor=0.0))
    pseudo_label(PseudoLabelConfig(images, labeller, high, batch_size=4, score_floor=0.1))
    # precision 0 is reached by the lowest score seen: the floor bounds it from below
    at_low = filter_labels(FilterConfig(low, tmp_path / "a.json", calib=labeled, target_precision=0.0))
    at_high = filter_labels(FilterConfig(high, tmp_path / "b.json", calib=labeled, target_precision=0.0))
    assert min(c.threshold for c in at_low.calibration if c.reached) < 0.1
    assert all(c.threshold >= 0.1 for c in at_high.calibration if c.reached)
    assert any(c.reached for c in at_high.calibration)
    # one validation image corrupted: its objects count as missed (recall drops), and the run says so
    copy = tmp_path / "calib"
    shutil.copytree(one_card_set.out / "labeled", copy / "labeled")
    data = json.loads(labeled.read_text())
    (copy / data["images"][0]["file_name"]).write_bytes(b"not an image")
    (copy / "labeled.json").write_text(json.dumps(data))
    from retinaslim.core.progress import Reporter

    logged = []

    class Recorder(Reporter):
        def log(self, message):
            logged.append(message)

    broken = filter_labels(FilterConfig(low, tmp_path / "c.json", calib=copy / "labeled.json", target_precision=0.0),
                           Recorder())
    assert any("1 image(s) could not be decoded" in line for line in logged)
    recall = {c.class_name: c.recall for c in at_low.calibration if c.reached}
    assert any(c.recall < recall[c.class_name] for c in broken.calibration if c.class_name in recall)
