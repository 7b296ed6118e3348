"""export: the ONNX graph's detections match PyTorch's (gn and bn, an image without detections, dynamic batch);
predict with the .onnx file gives the .pt file's predictions; int8 reports AP and latency; refusals."""

import json
import math

import onnx
import pytest
import torch
from PIL import Image

from retinaslim.errors import UserError
from retinaslim.models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from retinaslim.models.lean import LeanDetector
from retinaslim.models.onnx import METADATA_KEY, OnnxDetector
from retinaslim.models.registry import build_model
from retinaslim.stages.export import ExportConfig, export, match_detections, parity_images
from retinaslim.stages.predict import PredictConfig, predict
from tests.conftest import assert_user_error, run_cli

CLASSES = [{"id": 4, "name": "card"}, {"id": 9, "name": "note"}]


def _random_checkpoint(path, norm, image_size=96):
    """An untrained slim-s whose scores depend on the image: class weights of std 1 (not 0.01) and, for bn,
    BatchNorm statistics of the parity images (as training leaves them). The class prior is then shifted
    so that the blank parity image scores 0.03 at most, below the 0.05 threshold, and the scenes score
    above it: the comparison covers many detections and an image without any."""
    torch.manual_seed(0)
    model = build_model("slim-s", len(CLASSES), image_size, norm=norm)
    torch.nn.init.normal_(model.head.classification_head.cls_logits.weight, std=1.0)
    images = parity_images([], image_size, 8)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (model.transform.image_mean, model.transform.image_std))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.reset_running_stats()
                module.momentum = None  # a plain average over the batch below
        model.train().head(list(model.backbone((torch.stack(images[:8]) - mean) / std).values()))
        detector = LeanDetector(model.eval())
        blank_max = detector.raw(detector.batch([images[-2]]))[0].max()
    model.head.classification_head.cls_logits.bias.data += math.log(0.03 / 0.97) - blank_max
    save_checkpoint(path, Checkpoint("slim-s", {"norm": norm}, CLASSES, image_size, model=model.state_dict()))
    return path


@pytest.mark.parametrize("norm, opset, dynamic_batch", [("gn", 17, False), ("bn", 13, True)])
def test_export_matches_pytorch_including_an_empty_image(norm, opset, dynamic_batch, tmp_path):
    weights = _random_checkpoint(tmp_path / f"{norm}.pt", norm)
    result = export(ExportConfig(weights, out=tmp_path / f"{norm}.onnx", opset=opset, dynamic_batch=dynamic_batch))
    parity = result.parity
    assert parity.num_images == 10 and parity.num_empty_images == 1  # 8 synthetic scenes, the blank image, a 4:3 crop
    assert parity.passed and parity.num_reference >= 20
    assert parity.max_box_diff_px < 0.01 and parity.max_score_diff < 1e-4
    assert result.input_size == (96, 96) and result.opset == opset
    graph = onnx.load(result.out).graph
    assert (graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch") == dynamic_batch
    ops = {n.op_type for n in graph.node}
    assert "BatchNormalization" not in ops  # folded into the convolutions
    assert ("InstanceNormalization" in ops) == (norm == "gn")  # GroupNorm before opset 18

    stored = json.loads({p.key: p.value for p in onnx.load(result.out).metadata_props}[METADATA_KEY])
    assert stored["classes"] == CLASSES and stored["arch_options"] == {"norm": norm}
    assert stored["input_size"] == [96, 96] and stored["train_image_size"] == stored["image_size"] == 96
    assert stored["score_thresh"] == 0.05

    detector = OnnxDetector(result.out)
    assert detector.static_batch != dynamic_batch
    images = [torch.rand(3, 96, 96), torch.rand(3, 64, 96)]
    one_call = detector(images)  # one session run with a dynamic batch, one per image with a static one
    one_by_one = [detector([image])[0] for image in images]
    assert match_detections(one_by_one, one_call).passed


def test_predict_with_onnx_equals_predict_with_pt(labeller, one_card_set, tmp_path):
    folder = one_card_set.files["labeled"].parent / "labeled"
    checkpoint = load_checkpoint(labeller)
    assert export(ExportConfig(labeller, out=tmp_path / "m.onnx", calibration=folder)).parity.passed

    # the .onnx file gives the .pt file's boxes, scores and COCO category ids on every image
    by_weights = {}
    for weights in (labeller, tmp_path / "m.onnx"):
        out = tmp_path / f"{weights.suffix[1:]}.json"
        predict(PredictConfig(weights, [folder], out, score_thresh=0.05))
        by_weights[weights.suffix] = json.loads(out.read_text())
    pt, ox = by_weights[".pt"], by_weights[".onnx"]
    assert pt["images"] == ox["images"] and pt["categories"] == ox["categories"] == checkpoint.classes

    def per_image(data):  # COCO annotations -> detections per image, boxes xyxy, labels = category ids
        def detections(anns):
            return {"boxes": torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]).view(-1, 4),
                    "scores": torch.tensor([a["score"] for a in anns]), "labels": torch.tensor([a["category_id"] for a in anns])}
        return [detections([a for a in data["annotations"] if a["image_id"] == im["id"]]) for im in data["images"]]

    same = match_detections(per_image(pt), per_image(ox))
    assert same.num_reference == len(pt["annotations"]) >= 8 and same.passed
    # COCO files keep x and width to 0.01 px: boxes a hair apart may round a step apart in each, so x + w by two
    assert same.max_box_diff_px < 0.0201 and same.max_score_diff < 1e-4


def test_int8_reports_ap_and_latency(labeller, one_card_set, tmp_path):
    labels = one_card_set.files["labeled"]
    result = export(ExportConfig(labeller, out=tmp_path / "m.onnx", int8=True, calibration=labels, num_calibration=8,
                                 latency_runs=3))
    q = result.int8
    assert q.out == tmp_path / "m.int8.onnx" and q.out.is_file() and q.num_calibration_images == 8
    assert q.val == labels
    found = {m.name: m for m in q.measurements}
    assert list(found) == ["pytorch", "onnx fp32", "onnx int8"]
    assert found["onnx fp32"].ap == pytest.approx(found["pytorch"].ap, abs=1e-3)  # parity carries over to AP
    assert found["pytorch"].ap50 > 0.3
    # int8 keeps the accuracy (measured: AP 1.0 for pytorch, fp32 and int8 on these images)
    assert found["onnx int8"].ap50 >= found["onnx fp32"].ap50 - 0.1 and found["onnx int8"].ap >= found["onnx fp32"].ap - 0.15
    assert all(m.network_ms > 0 and m.end_to_end_ms > 0 for m in q.measurements)
    nodes = {n.op_type for n in onnx.load(q.out).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= nodes
    int8 = OnnxDetector(q.out)
    assert int8.metadata["int8"] is True and int8.metadata["classes"] == load_checkpoint(labeller).classes


def test_bad_requests_give_one_line_errors(labeller, tmp_path):
    assert_user_error(run_cli("export", "--weights", tmp_path / "none.pt"), "none.pt", "not found")
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert_user_error(run_cli("export", "--weights", labeller, "--out", blocker / "m.onnx"), "cannot write")
    assert not list(tmp_path.glob("**/*.onnx*"))
    assert_user_error(run_cli("export", "--weights", labeller, "--opset", 11, "--out", tmp_path / "m.onnx"),
                      "--opset 11", "13 to 20")
    assert_user_error(run_cli("export", "--weights", labeller, "--out", tmp_path / "m.pt"), "expected a .onnx")
    assert_user_error(run_cli("export", "--weights", labeller, "--int8"), "--int8 needs calibration images")
    assert_user_error(run_cli("export", "--weights", labeller, "--format", "tflite"), "only onnx")
    assert_user_error(run_cli("export", "--weights", labeller, "--val", tmp_path / "v.json"), "use it with --int8")
    for name in ("num_parity_images", "num_calibration"):  # set from Python only: 0 divided by zero in the sampling
        with pytest.raises(UserError, match=f"`{name}` 0 must be at least 1"):
            export(ExportConfig(labeller, out=tmp_path / "m.onnx", **{name: 0}))

    image = tmp_path / "image.png"
    Image.new("RGB", (96, 96)).save(image)
    assert_user_error(run_cli("predict", image, "--weights", tmp_path / "none.onnx"), "none.onnx", "not found")
    (tmp_path / "junk.onnx").write_bytes(b"not a graph")
    assert_user_error(run_cli("predict", image, "--weights", tmp_path / "junk.onnx"), "junk.onnx", "cannot load")
    foreign = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])]), opset_imports=[onnx.helper.make_opsetid("", 17)])
    onnx.save(foreign, tmp_path / "foreign.onnx")
    assert_user_error(run_cli("predict", image, "--weights", tmp_path / "foreign.onnx"), "not a retinaslim ONNX export")

    result = run_cli("export", "--weights", labeller, "--image-size", 64, "--out", tmp_path / "small.onnx")
    assert result.exit_code == 0, result.stderr
    assert "parity OK" in result.stdout and f"saved to {tmp_path / 'small.onnx'}" in result.stdout
    assert_user_error(run_cli("predict", image, "--weights", tmp_path / "small.onnx", "--image-size", 128,
                              "--out", tmp_path / "p.json"), "does not fit", "64 x 64")


def test_eval_of_the_onnx_file_matches_eval_of_the_checkpoint(labeller, one_card_set, tmp_path):
    from retinaslim.stages.evaluate import EvalConfig, evaluate

    onnx_file = tmp_path / "m.onnx"
    export(ExportConfig(labeller, out=onnx_file))
    pt, ox = evaluate(EvalConfig([labeller, onnx_file], one_card_set.files["labeled"], device="cpu", workers=0,
                                 latency_runs=3, warmup_runs=1)).reports
    assert pt.ap50 > 0.3 and ox.ap == pytest.approx(pt.ap, abs=1e-3) and ox.ap50 == pytest.approx(pt.ap50, abs=1e-3)
    assert (ox.arch, ox.params, ox.macs, ox.image_size) == (pt.arch, pt.params, pt.macs, pt.image_size)
    assert ox.size_mb == onnx_file.stat().st_size / 1e6 and ox.device == "cpu" and ox.latency_ms > 0
    with pytest.raises(UserError, match="does not fit the model's fixed"):
        evaluate(EvalConfig([onnx_file], one_card_set.files["labeled"], image_size=256, workers=0, latency_runs=1))
