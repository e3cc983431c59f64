"""Stage phase timings ($MNIST_TIMINGS) and the modules hidden while TensorFlow loads."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from mnist_early_stopping.pipeline import timings
from mnist_early_stopping.pipeline.tf_runtime import hidden_modules


@pytest.fixture(autouse=True)
def fresh_phases(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(timings, "_seconds", {})
    monkeypatch.setattr(timings, "_counts", {})
    monkeypatch.setattr(timings, "_nested", [])


def test_nested_phases_count_each_second_once() -> None:
    with timings.phase("outer"):
        time.sleep(0.05)
        with timings.phase("inner"):
            time.sleep(0.1)
    with timings.phase("inner"):
        time.sleep(0.02)
    got = timings.phases()
    assert list(got) == ["inner", "outer"]
    assert got["inner"]["count"] == 2 and got["outer"]["count"] == 1
    assert 0.12 <= got["inner"]["seconds"] < 0.5
    assert 0.05 <= got["outer"]["seconds"] < 0.1, "the inner phase's time is not the outer's"


def test_a_phase_that_raises_is_still_counted() -> None:
    with pytest.raises(ValueError), timings.phase("failing"):
        raise ValueError("boom")
    assert timings.phases()["failing"]["count"] == 1


def test_write_appends_one_line_per_stage_only_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "timings.jsonl"
    monkeypatch.delenv(timings.TIMINGS_ENV, raising=False)
    timings.add("work", 1.5)
    timings.write("split")
    assert not target.exists()
    monkeypatch.setenv(timings.TIMINGS_ENV, str(target))
    timings.write("split")
    timings.write("train")
    records = [json.loads(line) for line in target.read_text().splitlines()]
    assert [r["stage"] for r in records] == ["split", "train"]
    assert records[0]["phases"] == {"work": {"seconds": 1.5, "count": 1}}
    assert records[0]["pid"] == os.getpid()
    assert records[0]["started"] <= records[0]["ended"] <= time.time()


def test_an_unwritable_timings_file_is_one_line_not_a_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(timings.TIMINGS_ENV, str(tmp_path / "missing-dir" / "timings.jsonl"))
    timings.write("plots")
    err = capsys.readouterr().err
    assert err.startswith("plots: could not append timings to $MNIST_TIMINGS") and err.count("\n") == 1


def test_hidden_modules_fail_to_import_inside_and_import_after(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "optional_extra_for_test.py").write_text("VALUE = 7\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with hidden_modules(("optional_extra_for_test", "json")):
        with pytest.raises(ImportError):
            import optional_extra_for_test  # noqa: F401
        import json as already_imported  # imported before: not hidden

        assert already_imported is json
    import optional_extra_for_test

    assert optional_extra_for_test.VALUE == 7
    del sys.modules["optional_extra_for_test"]
