"""The Python API: one function per command with the command's options, and one default for each option.

A default lives in the stage's ``*Config`` (or, for training, in ``TRAIN_DEFAULTS`` by role); the CLI and
the API restate it in their signatures, so these tests resolve every command with only its required
inputs through all three and fail on any option whose default drifted.
"""

import ast
import dataclasses
import importlib
import inspect
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main
import yaml

import retinaslim
import retinaslim.stages
from retinaslim.cli import app
from tests.conftest import assert_user_error, run_cli

PACKAGE = Path(retinaslim.__file__).parent
NOT_IN_API = {"init", "demo"}  # init writes the workspace file; demo is the pipeline, not a stage
CLI_ONLY = {"human_only", "per_layer"}  # the workspace's machine labels; a table the CLI draws
KEYWORDS = {"format_": "format"}  # CLI parameter -> API keyword, where Python needs another name


def _function(command: str):
    return getattr(retinaslim, "evaluate" if command == "eval" else command.replace("-", "_"))


def _commands() -> dict:
    return {name: command for name, command in typer.main.get_command(app).commands.items() if name not in NOT_IN_API}


def test_import_retinaslim_is_light():
    """The functions import their stage when called: ``import retinaslim`` does not load torch."""
    code = "import sys, retinaslim; print(sorted({'torch', 'torchvision', 'retinaslim.stages'} & set(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={**os.environ, "PYTHONPATH": str(PACKAGE.parent)}).stdout
    assert loaded.strip() == "[]"


def test_every_command_is_a_function_with_the_commands_options():
    for name, command in _commands().items():
        keywords = set(inspect.signature(_function(name)).parameters) - {"reporter"}
        options = {KEYWORDS.get(p.name, p.name) for p in command.params} - CLI_ONLY
        assert options == keywords, (name, sorted(options ^ keywords))


class _Stop(Exception):
    """Raised by a stand-in stage once it has the configuration it was given."""


def _cases(d: Path) -> dict:
    """command -> (module and name of the stage function, CLI args, API call, the Config's own defaults)."""
    from retinaslim.stages.convert import ConvertConfig
    from retinaslim.stages.evaluate import EvalConfig
    from retinaslim.stages.export import ExportConfig
    from retinaslim.stages.filter import FilterConfig
    from retinaslim.stages.import_teacher import ImportTeacherConfig
    from retinaslim.stages.predict import PredictConfig
    from retinaslim.stages.profile import ProfileConfig
    from retinaslim.stages.pseudo_label import PseudoLabelConfig
    from retinaslim.stages.show import ShowConfig
    from retinaslim.stages.synth import SynthConfig
    from retinaslim.stages.train import TrainConfig

    lab, val, out, w, src = d / "labeled.json", d / "val.json", d / "out", d / "w.pt", d / "images"
    data = {"labeled": lab, "val": val, "out": out}
    arch = "retinanet_resnet50_fpn"
    return {
        "synth": ("synth.synth", ["synth", out], lambda: retinaslim.synth(out), SynthConfig(out=out)),
        "train-teacher": ("train.train", ["train-teacher", "--labeled", lab, "--val", val, "--out", out],
                          lambda: retinaslim.train_teacher(**data), TrainConfig(role="teacher", **data)),
        "train-student": ("train.train", ["train-student", "--labeled", lab, "--val", val, "--out", out],
                          lambda: retinaslim.train_student(**data), TrainConfig(role="student", **data)),
        "import-teacher": ("import_teacher.import_teacher",
                           ["import-teacher", w, "--arch", arch, "--classes", "a,b", "--out", out],
                           lambda: retinaslim.import_teacher(w, arch=arch, classes=["a", "b"], out=out),
                           ImportTeacherConfig(w, arch, ["a", "b"], out)),
        "pseudo-label": ("pseudo_label.pseudo_label", ["pseudo-label", src, "--teacher", w, "--out", out],
                         lambda: retinaslim.pseudo_label(src, teacher=w, out=out), PseudoLabelConfig(src, [w], out)),
        "filter": ("filter.filter_labels", ["filter", lab, "--out", out], lambda: retinaslim.filter(lab, out=out),
                   FilterConfig(lab, out)),
        "eval": ("evaluate.evaluate", ["eval", "--weights", w, "--data", val],
                 lambda: retinaslim.evaluate(w, data=val), EvalConfig([w], val)),
        "profile": ("profile.profile", ["profile"], lambda: retinaslim.profile(), ProfileConfig()),
        "convert": ("convert.convert", ["convert", src, "--from", "voc", "--to", "coco", "--out", out],
                    lambda: retinaslim.convert(src, from_format="voc", to_format="coco", out=out),
                    ConvertConfig(src, "voc", "coco", out)),
        "predict": ("predict.predict", ["predict", src, "--weights", w], lambda: retinaslim.predict(src, weights=w),
                    PredictConfig(w, [src])),
        "show": ("show.show", ["show", lab, "--out", out], lambda: retinaslim.show(lab, out=out), ShowConfig(lab, out)),
        "export": ("export.export", ["export", "--weights", w], lambda: retinaslim.export(w), ExportConfig(w)),
    }


def _differences(config, expected) -> dict:
    return {f.name: (getattr(config, f.name), getattr(expected, f.name)) for f in dataclasses.fields(expected)
            if getattr(config, f.name) != getattr(expected, f.name)}


def test_cli_api_and_config_resolve_the_same_defaults(tmp_path, monkeypatch):
    """Every option of every command, left out, resolves to the Config's default through the CLI and the API."""
    monkeypatch.chdir(tmp_path)  # no workspace file: nothing but the options
    cases = _cases(tmp_path)
    assert set(cases) == set(_commands())  # a new command needs its case here
    drift = {}  # command -> {field: (resolved, Config default)}
    for command, (stage, args, call, expected) in cases.items():
        module, name = stage.split(".")
        seen = []

        def stand_in(config, *args, **kwargs):
            seen.append(config)
            raise _Stop

        monkeypatch.setattr(importlib.import_module(f"retinaslim.stages.{module}"), name, stand_in)
        result = run_cli(*args)
        assert isinstance(result.exception, _Stop), (command, result.stdout, result.stderr)
        with pytest.raises(_Stop):
            call()
        cli, python = seen
        for side, config in (("CLI", cli), ("API", python)):
            if _differences(config, expected):
                drift[f"{command} {side}"] = _differences(config, expected)
    assert not drift, f"defaults that differ from the Config's (resolved, Config): {drift}"


def test_train_student_from_python_writes_the_cli_configuration(tiny_cards, tmp_path, monkeypatch):
    """The acceptance check of issue 20: the same options give the same config.yaml from the shell and from Python."""
    monkeypatch.chdir(tmp_path)
    files = tiny_cards.files
    small = {"image_size": 64, "workers": 0, "assign": "iou"}  # speed, and one non-default to pass through both
    result = run_cli("train-student", "--labeled", files["labeled"], "--val", files["val"], "--out", tmp_path / "cli",
                     "--epochs", 1, "--image-size", 64, "--workers", 0, "--assign", "iou")
    assert result.exit_code == 0, result.stdout + result.stderr
    trained = retinaslim.train_student(labeled=files["labeled"], val=files["val"], out=tmp_path / "api", epochs=1, **small)
    assert trained.out == tmp_path / "api" and trained.best.is_file()
    cli, python = (yaml.safe_load((tmp_path / run / "config.yaml").read_text()) for run in ("cli", "api"))
    assert (cli.pop("out"), python.pop("out")) == (str(tmp_path / "cli"), str(tmp_path / "api"))
    assert python == cli
    assert cli["epochs"] == 1 and cli["assign"] == "iou" and cli["fit_anchors"] is True and "anchors" in cli["arch_options"]  # fitted, as the CLI says


def test_results_and_functions_are_documented():
    for name in retinaslim.__all__:
        obj = getattr(retinaslim, name)
        if inspect.isfunction(obj):
            doc = inspect.getdoc(obj) or ""
            assert all(part in doc for part in ("Args:" if inspect.signature(obj).parameters else "", "Returns:", "Raises:")), name
    for module in pkgutil.iter_modules(retinaslim.stages.__path__):
        if module.name == "demo":  # not an API function; the demo documents its own result
            continue
        for name, cls in vars(importlib.import_module(f"retinaslim.stages.{module.name}")).items():
            if name.endswith(("Result", "Report")) and dataclasses.is_dataclass(cls) and cls.__module__.startswith("retinaslim"):
                # a dataclass without a docstring gets its signature as __doc__
                assert cls.__doc__ and not cls.__doc__.startswith(f"{name}("), f"{cls.__module__}.{name} has no docstring"


def _configs() -> dict:
    found = {}
    for module in pkgutil.iter_modules(retinaslim.stages.__path__):
        for name, cls in vars(importlib.import_module(f"retinaslim.stages.{module.name}")).items():
            if name.endswith("Config") and dataclasses.is_dataclass(cls):
                found[name] = cls
    return found


def _has_default(f: dataclasses.Field) -> bool:
    return f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING


def test_configs_take_options_by_keyword_only():
    """Inputs and outputs may come in order; every option is a keyword, at every call site."""
    configs = _configs()
    for name, cls in configs.items():
        options = [f.name for f in dataclasses.fields(cls) if not f.kw_only and _has_default(f) and f.name != "out"]
        assert not options, f"{name}: {options} may be passed in order; make them KW_ONLY"
    roots = [PACKAGE, PACKAGE.parent / "tests", PACKAGE.parent / "benchmarks"]
    for path in (p for root in roots for p in root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in configs:
                cls = configs[node.func.id]
                required = [f for f in dataclasses.fields(cls) if not f.kw_only and (not _has_default(f) or f.name == "out")]
                assert len(node.args) <= len(required), \
                    f"{path}:{node.lineno}: {node.func.id} with {len(node.args)} positional arguments; pass options by keyword"


def test_errors_name_the_keyword_in_python_and_the_flag_in_the_shell(tiny_cards, tmp_path):
    labeled, out = tiny_cards.files["labeled"], tmp_path / "f.json"
    with pytest.raises(retinaslim.UserError, match=r"^`score_thresh` 1.5 must be in \[0, 1\]$"):
        retinaslim.filter(labeled, out=out, score_thresh=1.5)
    assert_user_error(run_cli("filter", labeled, "--out", out, "--score-thresh", 1.5),
                      "--score-thresh 1.5 must be in [0, 1]")
    # a field named otherwise than the keyword (SynthConfig.num_labeled is synth(labeled=...), --labeled)
    with pytest.raises(retinaslim.UserError, match="^`labeled` and `val` must be at least 1, `unlabeled` at least 0$"):
        retinaslim.synth(tmp_path / "s", labeled=0)
    assert_user_error(run_cli("synth", tmp_path / "s", "--labeled", 0), "--labeled and --val must be at least 1")
    # a command's argument is shown as the CLI's help names it
    assert_user_error(run_cli("filter", labeled, "--out", labeled), f"--out {labeled}: the output would overwrite the "
                      f"input PSEUDO {labeled}; choose another --out")
