"""predict: images and folders in, a loadable COCO file out whose boxes find the objects; drawings; refusals."""

import json

import pytest
import torch
from PIL import Image
from torchvision.ops import box_iou

from retinaslim.data.coco import coco_metrics, load_coco
from retinaslim.data.draw import class_colour
from retinaslim.errors import UserError
from retinaslim.models.checkpoint import load_checkpoint
from retinaslim.stages.predict import PredictConfig, predict
from tests.conftest import assert_user_error, run_cli


def test_predictions_find_the_cards_and_are_drawn(labeller, one_card_set, tmp_path):
    truth = load_coco(one_card_set.files["labeled"])
    folder = truth.image_path(truth.images[0]).parent
    broken = tmp_path / "in" / "broken.jpg"
    broken.parent.mkdir()
    broken.write_bytes(b"not a jpeg")
    single = truth.image_path(truth.images[0])  # also inside the folder: predicted once
    result = predict(PredictConfig(labeller, [folder, broken, single], tmp_path / "out" / "preds.json",
                                   draw=tmp_path / "drawn", score_thresh=0.05))

    preds = load_coco(tmp_path / "out" / "preds.json")  # file names resolve against the output's folder
    assert result.num_images == len(preds.images) == len(truth.images)
    assert result.skipped == [{"file": str(broken.absolute()), "reason": result.skipped[0]["reason"]}]
    assert "cannot decode" in result.skipped[0]["reason"]
    assert all(preds.image_path(im).resolve().is_file() for im in preds.images)
    assert all(a["score"] >= 0.05 for anns in preds.annotations_per_image.values() for a in anns)

    # scored against the truth: the same AP50 as training's own validation on these images recorded
    by_name = {truth.image_path(im).resolve(): im["id"] for im in truth.images}
    ids = {im["id"]: by_name[preds.image_path(im).resolve()] for im in preds.images}
    results = [{**a, "image_id": ids[a["image_id"]]} for anns in preds.annotations_per_image.values() for a in anns]
    recorded = load_checkpoint(labeller).metrics["ap50"]
    assert coco_metrics(truth, results)["ap50"] == pytest.approx(recorded, abs=0.01) and recorded > 0.3

    # drawings: same size as the image; the best box's left edge (dashed: a machine label) in its class colour
    first = preds.images[0]
    # drawings keep the images' folders below the folder all inputs share
    drawn_path, = (tmp_path / "drawn").rglob(f"labeled/{first['file_name'].rsplit('/', 1)[-1]}")
    drawn = Image.open(drawn_path).convert("RGB")
    assert drawn.size == (first["width"], first["height"])
    best = max(preds.annotations_per_image[first["id"]], key=lambda a: a["score"])
    x, y, _, h = (round(v) for v in best["bbox"])
    colour = class_colour(preds.classes.label(best["category_id"]))

    def share_in_colour(picture):  # of the pixels along the box's left edge
        pixels = [picture.getpixel((x, row)) for row in range(y, y + h)]
        return sum(max(abs(p - c) for p, c in zip(px, colour)) < 40 for px in pixels) / len(pixels)

    assert share_in_colour(drawn) > 0.4  # dashes cover 6 of every 10 pixels
    assert share_in_colour(Image.open(preds.image_path(first)).convert("RGB")) < 0.1


def _xyxy(annotations) -> torch.Tensor:
    return torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in annotations)]).view(-1, 4)


def test_tta_fuses_the_transforms_and_bad_requests_are_refused(labeller, one_card_set, tmp_path):
    truth = load_coco(one_card_set.files["labeled"])
    image = truth.images[0]
    path = one_card_set.files["labeled"].parent / image["file_name"]
    result = run_cli("predict", path, "--weights", labeller, "--out", tmp_path / "p.json", "--tta",
                     "--score-thresh", 0.05, "--workers", 0)
    assert result.exit_code == 0, result.stderr
    assert f"saved to {tmp_path / 'p.json'}" in result.stdout
    data = json.loads((tmp_path / "p.json").read_text())
    assert len(data["info"]["transforms"]) == 6 and data["annotations"]
    assert all(1 <= a["agreement"] <= 6 for a in data["annotations"])

    # The card is found by most of the six transforms, and their boxes are fused into one: the best box
    # carries that agreement, sits on the true box, and no other box of its class overlaps it as a duplicate.
    plain = predict(PredictConfig(labeller, [path], tmp_path / "plain.json", score_thresh=0.05, workers=0))
    assert plain.transforms == ["scale1"]
    single = json.loads((tmp_path / "plain.json").read_text())["annotations"]
    fused = sorted(data["annotations"], key=lambda a: -a["score"])
    best = fused[0]
    (truth_box,) = truth.annotations_per_image[image["id"]]
    # measured: agreement 4 of 6, IoU 0.86 with the truth, closest same-class box 0.49
    assert best["agreement"] >= 3 and best["category_id"] == truth_box["category_id"]
    assert box_iou(_xyxy([best]), _xyxy([truth_box])).item() > 0.7  # mapped back to the original pixels
    same_class = [a for a in fused[1:] if a["category_id"] == best["category_id"]]
    assert not same_class or box_iou(_xyxy([best]), _xyxy(same_class)).max().item() < 0.55  # WBF's threshold
    assert len(fused) < len(single)  # six transforms' boxes fused: fewer, not six times more

    with pytest.raises(UserError, match=r"model\.h5: not found \(expected a checkpoint\)"):
        predict(PredictConfig(tmp_path / "model.h5", [path], tmp_path / "p.json"))
    (tmp_path / "model.h5").write_bytes(b"HDF")
    with pytest.raises(UserError, match=r"model\.h5: not a PyTorch checkpoint"):
        predict(PredictConfig(tmp_path / "model.h5", [path], tmp_path / "p.json"))
    (tmp_path / "teacher.pth").write_bytes(labeller.read_bytes())  # a checkpoint by another name (import-teacher --out)
    assert predict(PredictConfig(tmp_path / "teacher.pth", [path], tmp_path / "q.json", device="cpu")).num_images == 1
    assert_user_error(run_cli("predict", tmp_path / "nowhere", "--weights", labeller, "--out", tmp_path / "p.json"),
                      "nowhere", "no such folder")
    assert_user_error(run_cli("predict", path, "--weights", labeller, "--out", tmp_path / "p.txt"), "expected a .json")
