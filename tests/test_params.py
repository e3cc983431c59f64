"""params.yaml validation: a bad value exits 2 with one line naming the key, the value and what is allowed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from mnist_early_stopping.pipeline import params
from mnist_early_stopping.pipeline.params import SECTIONS, DownloadParams, SplitParams, TrainParams
from mnist_early_stopping.pipeline.stage import StageError
from tests.conftest import TinyMirror, committed_params, run_stage, stage_env, write_params

Raw = dict[str, Any]


def default_raw() -> Raw:
    return yaml.safe_load(committed_params())


def test_default_params_parse(committed_params_file: Path) -> None:
    parsed = params.load(*SECTIONS, path=committed_params_file)
    assert [type(p) for p in parsed] == list(SECTIONS.values())
    download, split, model, train, evaluate, plots = parsed
    assert isinstance(download, DownloadParams) and download.mirrors and download.retries >= 1
    assert (split.validation_size, split.method, split.seed) == (5000, "head", 42)  # the tutorial's
    assert (model.conv_filters, model.conv_kernel_size, model.dense_units) == ((16, 36), 5, (128,))
    assert isinstance(train, TrainParams)
    assert (train.learning_rate, train.batch_size, train.eval_every) == (1e-4, 64, 100)
    assert (train.patience, train.max_iterations, train.monitor) == (1000, 10000, "validation_accuracy")
    # Every further rule and the schedule are off by default: the tutorial's run.
    assert (split.train_size, split.label_noise) == (None, 0.0)
    assert (train.start_from, train.baseline, train.stop_at, train.divergence) == (None, None, None, None)
    assert (train.lr_schedule, train.lr_factor, train.lr_patience, train.lr_min) == ("constant", None, None, None)


def test_the_options_parse_when_set(tmp_path: Path) -> None:
    raw = default_raw()
    raw["split"].update(train_size=2000, label_noise=0.4)
    raw["train"].update(start_from=500, baseline=0.9, stop_at=0.99, divergence=0.5, lr_schedule="plateau",
                        lr_factor=0.5, lr_patience=300, lr_min=1e-6)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    split, train = params.load("split", "train", path=path)
    assert (split.train_size, split.label_noise) == (2000, 0.4)
    assert (train.start_from, train.baseline, train.stop_at, train.divergence) == (500, 0.9, 0.99, 0.5)
    assert (train.lr_schedule, train.lr_factor, train.lr_patience, train.lr_min) == ("plateau", 0.5, 300, 1e-6)


def test_sections_are_frozen(committed_params_file: Path) -> None:
    (split,) = params.load("split", path=committed_params_file)
    with pytest.raises(AttributeError):
        split.seed = 1  # type: ignore[misc]


def test_returns_the_sections_asked_for_in_that_order(committed_params_file: Path) -> None:
    train, split = params.load("train", "split", path=committed_params_file)
    assert isinstance(train, TrainParams) and isinstance(split, SplitParams)


def set_key(section: str, key: str, value: Any) -> Callable[[Raw], None]:
    def edit(raw: Raw) -> None:
        raw[section][key] = value

    return edit


def remove(section: str, key: str | None = None) -> Callable[[Raw], None]:
    def edit(raw: Raw) -> None:
        if key is None:
            del raw[section]
        else:
            del raw[section][key]

    return edit


def add_section(name: str) -> Callable[[Raw], None]:
    def edit(raw: Raw) -> None:
        raw[name] = {"x": 1}

    return edit


def set_keys(section: str, **values: Any) -> Callable[[Raw], None]:
    def edit(raw: Raw) -> None:
        raw[section].update(values)

    return edit


INT_SEED = "an integer between 0 and 2147483647"
FILTERS = "a list of 1 to 4 integers, each between 1 and 1024"
URLS = "a non-empty list of http(s):// or file:// URLs"

CASES: list[tuple[str, Callable[[Raw], None], str]] = [
    ("unknown-key", set_key("split", "sede", 1),
     "params.yaml: unknown key split.sede; allowed keys: validation_size, method, seed, train_size, label_noise"),
    ("unknown-section", add_section("trian"),
     "params.yaml: unknown section trian; allowed sections: download, split, model, train, evaluate, plots"),
    ("missing-key", remove("split", "seed"),
     f"params.yaml: missing key split.seed, which must be {INT_SEED}"),
    ("missing-section", remove("plots"),
     "params.yaml: missing section plots, which must have the keys dpi"),
    ("section-not-mapping", lambda raw: raw.update(split=5),
     "params.yaml: split must be a mapping of keys to values, got 5"),
    ("empty-section", lambda raw: raw.update(evaluate=None),
     "params.yaml: evaluate must be a mapping of keys to values, got None"),
    ("string-for-int", set_key("split", "validation_size", "5000"),
     "params.yaml: split.validation_size must be an integer between 1 and 59999, got '5000'"),
    ("bool-for-int", set_key("train", "batch_size", True),
     "params.yaml: train.batch_size must be an integer between 1 and 65536, got True"),
    ("float-for-int", set_key("train", "batch_size", 64.0),
     "params.yaml: train.batch_size must be an integer between 1 and 65536, got 64.0"),
    ("bool-for-float", set_key("download", "timeout_seconds", False),
     "params.yaml: download.timeout_seconds must be a number greater than 0.0 and at most 3600.0, got False"),
    ("string-for-float", set_key("train", "learning_rate", "1e-4 per step"),
     "params.yaml: train.learning_rate must be a number greater than 0.0 and at most 1.0, got '1e-4 per step'"),
    ("below-range", set_key("split", "validation_size", -5),
     "params.yaml: split.validation_size must be an integer between 1 and 59999, got -5"),
    ("above-range", set_key("split", "validation_size", 60000),
     "params.yaml: split.validation_size must be an integer between 1 and 59999, got 60000"),
    ("open-lower-bound", set_key("train", "learning_rate", 0),
     "params.yaml: train.learning_rate must be a number greater than 0.0 and at most 1.0, got 0"),
    ("not-a-number", set_key("train", "min_delta", float("nan")),
     "params.yaml: train.min_delta must be a number at least 0.0 and at most 1000000000.0, got nan"),
    ("bad-choice", set_key("split", "method", "random"),
     "params.yaml: split.method must be one of head, shuffle, stratified, got 'random'"),
    ("choice-wrong-case", set_key("train", "monitor", "Validation_Loss"),
     "params.yaml: train.monitor must be one of validation_accuracy, validation_loss, got 'Validation_Loss'"),
    ("list-bad-item", set_key("model", "conv_filters", [16, "x"]),
     f"params.yaml: model.conv_filters must be {FILTERS}, got [16, 'x']"),
    ("list-item-out-of-range", set_key("model", "conv_filters", [16, 0]),
     f"params.yaml: model.conv_filters must be {FILTERS}, got [16, 0]"),
    ("list-too-long", set_key("model", "conv_filters", [8, 8, 8, 8, 8]),
     f"params.yaml: model.conv_filters must be {FILTERS}, got [8, 8, 8, 8, 8]"),
    ("list-empty", set_key("model", "conv_filters", []),
     f"params.yaml: model.conv_filters must be {FILTERS}, got []"),
    ("scalar-for-list", set_key("model", "conv_filters", 16),
     f"params.yaml: model.conv_filters must be {FILTERS}, got 16"),
    ("bool-in-list", set_key("model", "dense_units", [True]),
     "params.yaml: model.dense_units must be a list of 0 to 4 integers, each between 1 and 8192, got [True]"),
    ("bad-url", set_key("download", "mirrors", ["ftp://example.org/mnist/"]),
     f"params.yaml: download.mirrors must be {URLS}, got ['ftp://example.org/mnist/']"),
    ("no-urls", set_key("download", "mirrors", []),
     f"params.yaml: download.mirrors must be {URLS}, got []"),
    ("url-not-list", set_key("download", "mirrors", "https://example.org/"),
     f"params.yaml: download.mirrors must be {URLS}, got 'https://example.org/'"),
    ("zero-min-rate", set_key("download", "min_rate_bytes_per_second", 0),
     "params.yaml: download.min_rate_bytes_per_second must be a number greater than 0.0 and at most"
     " 1000000000.0, got 0"),
    ("string-min-rate-window", set_key("download", "min_rate_window_seconds", "20 s"),
     "params.yaml: download.min_rate_window_seconds must be a number greater than 0.0 and at most 3600.0,"
     " got '20 s'"),
    ("missing-digest-table", remove("download", "files"),
     "params.yaml: missing key download.files, which must be a mapping of each of train-images-idx3-ubyte,"
     " train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (and nothing else) to"
     " {size: N, sha256: <64 hex digits>}"),
    ("path-in-digest-table", set_key("download", "files", {"../x": {"size": 1, "sha256": "a" * 64}}),
     "params.yaml: download.files: unknown file name '../x'; it must be a mapping of each of"
     " train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte"
     " (and nothing else) to {size: N, sha256: <64 hex digits>}"),
    ("inconsistent", set_key("train", "eval_every", 20000),
     "params.yaml: train.eval_every must be at most train.max_iterations (10000), got 20000"),
    ("null-not-allowed", set_key("train", "patience", None),
     "params.yaml: train.patience must be an integer between 1 and 10000000, got None"),
    ("nullable-bad-value", set_key("train", "start_from", "soon"),
     "params.yaml: train.start_from must be an integer between 1 and 10000000, or null (off), got 'soon'"),
    ("noise-out-of-range", set_key("split", "label_noise", 1.0),
     "params.yaml: split.label_noise must be a number at least 0.0 and at most 0.99, got 1.0"),
    ("start-from-beyond-the-end", set_key("train", "start_from", 10001),
     "params.yaml: train.start_from must be at most train.max_iterations (10000), got 10001: no evaluation"
     " would count"),
    ("accuracy-threshold-above-1", set_key("train", "stop_at", 1.5),
     "params.yaml: train.stop_at must be at most 1 for validation_accuracy, got 1.5: it is an accuracy (0 to 1)"),
    ("accuracy-divergence-0", set_key("train", "divergence", 0),
     "params.yaml: train.divergence 0 can never be undercut by an accuracy (0 to 1); set it above 0 or to null"),
    ("baseline-unbeatable", set_keys("train", baseline=0.995, min_delta=0.005),
     "params.yaml: train.baseline 0.995 can never be beaten by more than train.min_delta (0.005) with an"
     " accuracy (0 to 1); lower it or set it to null"),
    ("loss-baseline-unbeatable", set_keys("train", monitor="validation_loss", baseline=0),
     "params.yaml: train.baseline 0.0 can never be beaten by more than train.min_delta (0.0) with a loss"
     " (at least 0); lower it or set it to null"),
    ("divergence-not-worse-than-stop-at", set_keys("train", stop_at=0.9, divergence=0.95),
     "params.yaml: train.divergence (0.95) must be below train.stop_at (0.9) for validation_accuracy"),
    ("loss-divergence-not-worse", set_keys("train", monitor="validation_loss", stop_at=0.1, divergence=0.05),
     "params.yaml: train.divergence (0.05) must be above train.stop_at (0.1) for validation_loss"),
    ("plateau-key-with-constant", set_key("train", "lr_factor", 0.5),
     "params.yaml: train.lr_factor is set (0.5) but train.lr_schedule is constant; set it to null, or"
     " train.lr_schedule to plateau"),
    ("plateau-without-factor", set_keys("train", lr_schedule="plateau", lr_patience=300),
     "params.yaml: train.lr_factor must be set when train.lr_schedule is plateau, got null"),
    ("plateau-factor-1", set_keys("train", lr_schedule="plateau", lr_factor=1.0, lr_patience=300),
     "params.yaml: train.lr_factor must be below 1, got 1.0"),
    ("plateau-patience-not-below", set_keys("train", lr_schedule="plateau", lr_factor=0.5, lr_patience=1000),
     "params.yaml: train.lr_patience must be below train.patience (1000), got 1000: early stopping would stop"
     " before the rate is ever reduced"),
    ("plateau-floor-not-below", set_keys("train", lr_schedule="plateau", lr_factor=0.5, lr_patience=300,
                                         lr_min=0.0001),
     "params.yaml: train.lr_min must be below train.learning_rate (0.0001), got 0.0001: the rate could never be"
     " reduced"),
    ("cosine-without-warmup", set_key("train", "lr_schedule", "cosine"),
     "params.yaml: train.lr_warmup must be set when train.lr_schedule is cosine, got null"),
    ("warmup-with-plateau", set_keys("train", lr_schedule="plateau", lr_factor=0.5, lr_patience=300, lr_warmup=10),
     "params.yaml: train.lr_warmup is set (10) but train.lr_schedule is plateau; set it to null, or"
     " train.lr_schedule to cosine"),
    ("floor-with-constant", set_key("train", "lr_min", 0.00001),
     "params.yaml: train.lr_min is set (1e-05) but train.lr_schedule is constant; set it to null, or"
     " train.lr_schedule to plateau or cosine"),
    ("warmup-beyond-the-end", set_keys("train", lr_schedule="cosine", lr_warmup=10000),
     "params.yaml: train.lr_warmup must be below train.max_iterations (10000), got 10000"),
    ("unknown-schedule", set_key("train", "lr_schedule", "one_cycle"),
     "params.yaml: train.lr_schedule must be one of constant, plateau, cosine, got 'one_cycle'"),
]


def load_error(capsys: pytest.CaptureFixture[str], *sections: str) -> str:
    """Run params.load, expect exit status 2, and return its single stderr line."""
    with pytest.raises(StageError) as failed:
        params.load(*sections)
    assert failed.value.code == 2
    assert capsys.readouterr() == ("", ""), "nothing printed: the stage's entry point prints the error"
    assert "\n" not in str(failed.value)
    return str(failed.value)


@pytest.mark.parametrize(("edit", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_params_exit_2_with_one_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    edit: Callable[[Raw], None],
    message: str,
) -> None:
    raw = default_raw()
    edit(raw)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    monkeypatch.chdir(tmp_path)
    assert load_error(capsys, "split") == message


def test_every_section_is_checked_whichever_is_asked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = default_raw()
    raw["plots"]["dpi"] = 5
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(tmp_path)
    message = "params.yaml: plots.dpi must be an integer between 30 and 600, got 5"
    assert load_error(capsys, "split") == message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("split: [unclosed\n", "params.yaml: not valid YAML at line 2, column 1: expected ',' or ']'"),
        ("split:\n  seed: 1\n   method: head\n", "params.yaml: not valid YAML at line 3, column 10: mapping"),
        ("- a\n- b\n", "params.yaml: must be a mapping of sections, got ['a', 'b']"),
        ("", "params.yaml: must be a mapping of sections, got None"),
    ],
    ids=["unclosed", "indentation", "list", "empty"],
)
def test_unreadable_file(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    text: str,
    message: str,
) -> None:
    (tmp_path / "params.yaml").write_text(text)
    monkeypatch.chdir(tmp_path)
    assert load_error(capsys, "split").startswith(message)


def test_missing_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_error(capsys, "split") == "params.yaml: not found; run the stage from the project root"


BAD_PARAM_PROBE = """
import contextlib, io, json, runpy, sys
results = {}
for stage in sys.argv[1:]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            runpy.run_module("stages." + stage, run_name="__main__")
            code = 0
        except SystemExit as e:
            code = e.code
    results[stage] = [code, err.getvalue(), "tensorflow" in sys.modules, "keras" in sys.modules]
print(json.dumps(results))
"""


@pytest.mark.slow
def test_stages_reject_bad_params_before_importing_tensorflow(
    project: Path, tiny_mirror: TinyMirror
) -> None:
    write_params(project, {"train": {"patience": 0}})
    env = stage_env(tiny_mirror)
    message = "params.yaml: train.patience must be an integer between 1 and 10000000, got 0\n"
    result = run_stage(project, "train", env, check=False)
    assert (result.returncode, result.stderr, result.stdout) == (2, f"train: {message}", "")
    stages = ["download", "split", "train", "evaluate", "plots"]
    probe = subprocess.run(
        [sys.executable, "-c", BAD_PARAM_PROBE, *stages],
        cwd=project, env=env, capture_output=True, text=True, timeout=120,
    )
    assert probe.returncode == 0, probe.stderr
    results = json.loads(probe.stdout.splitlines()[-1])
    for stage in stages:
        assert results[stage] == [2, f"{stage}: {message}", False, False], stage


@pytest.mark.parametrize("text,value", [("1e-4", 1e-4), ("1e-05", 1e-5), ("1.0e-3", 1e-3), (".5", 0.5), ("2E-3", 2e-3)])
def test_numbers_as_users_and_dvc_write_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, value: float) -> None:
    source = committed_params()
    path = tmp_path / "params.yaml"
    path.write_text(source.replace("learning_rate: 0.0001", f"learning_rate: {text}"))
    monkeypatch.chdir(tmp_path)
    (train,) = params.load("train")
    assert train.learning_rate == value


def test_a_duplicated_key_is_an_error_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    source = committed_params()
    (tmp_path / "params.yaml").write_text(source.replace("  patience: 1000\n", "  patience: 1000\n  patience: 500\n"))
    monkeypatch.chdir(tmp_path)
    line = load_error(capsys, "train")
    assert line.startswith("params.yaml: key 'patience' appears twice (again at line"), line
