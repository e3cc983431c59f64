"""Shared fixtures: a project copy in a temp dir, and tiny generated MNIST mirrors."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from mnist_early_stopping.pipeline.layout import CURVES, CURVES_TABLE, curve_path
from tests.tiny_mnist import tiny_digests, write_mirror

ROOT = Path(__file__).resolve().parent.parent
# Params small enough that the whole pipeline runs in seconds on tiny data,
# whose digests replace MNIST's: what write_mirror(dir) writes is what download verifies.
TINY_PARAMS = {
    "download": {"retries": 1, "backoff_seconds": 0.0, "timeout_seconds": 5, "files": tiny_digests()},
    "split": {"validation_size": 100},
    "model": {"conv_filters": [4, 8], "dense_units": [16]},
    "train": {
        "learning_rate": 0.002, "batch_size": 32, "max_iterations": 400, "eval_every": 20,
        "patience": 100, "checkpoint_every": 40,
    },
    "evaluate": {"batch_size": 64},
    "plots": {"dpi": 40},
}


def write_params(project: Path, overrides: dict) -> None:
    """Merge section-wise overrides into the project's params.yaml."""
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for section, values in overrides.items():
        params[section].update(values)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


TinyMirror = tuple[Path, dict[str, dict[str, int | str]]]


@pytest.fixture
def tiny_mirror(tmp_path: Path) -> TinyMirror:
    """(mirror directory of gzipped tiny MNIST, its digest table: TINY_PARAMS' download.files)."""
    mirror = tmp_path / "mirror"
    return mirror, write_mirror(mirror)


def keys(text: str) -> object:
    """The sections and keys of a params.yaml text, without the values."""
    raw = yaml.safe_load(text)
    return {s: sorted(v) if isinstance(v, dict) else None for s, v in raw.items()} if isinstance(raw, dict) else None


@functools.cache
def committed_params() -> str:
    """The tests' defaults: params.yaml as committed (`git show HEAD:params.yaml`), never the values
    `dvc exp run -S` or an edit left in the workspace's file. The workspace's file where its keys differ
    from the commit's (a key being added or removed, not yet committed) or where there is no git checkout.
    """
    workspace = (ROOT / "params.yaml").read_text()
    try:
        shown = subprocess.run(["git", "show", "HEAD:params.yaml"], cwd=ROOT, capture_output=True, text=True,
                               timeout=60)
    except OSError:
        return workspace
    if shown.returncode != 0 or keys(shown.stdout) != keys(workspace):
        return workspace
    return shown.stdout


def params_with(section: str, **values: Any) -> Any:
    """One params section as the stages parse it: the committed defaults with `values` replaced.

    Tests build params this way, so a key added to a section needs no test edit.
    """
    from mnist_early_stopping.pipeline import params

    raw = {**yaml.safe_load(committed_params())[section], **values}
    return params.parse_section(section, raw, params.SECTIONS[section])


@pytest.fixture(scope="session")
def committed_params_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A params.yaml holding the committed defaults, outside the workspace."""
    path = tmp_path_factory.mktemp("committed") / "params.yaml"
    path.write_text(committed_params())
    return path


def copy_project(dest: Path, names: tuple[str, ...] = ("stages", "mnist_early_stopping", "params.yaml", "dvc.yaml")) -> Path:
    """Copy the project's code and pipeline files into `dest`, with TINY_PARAMS applied."""
    dest.mkdir(parents=True)
    for name in names:
        src = ROOT / name
        if name == "params.yaml":
            (dest / name).write_text(committed_params())
        elif src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dest / name)
    write_params(dest, TINY_PARAMS)
    return dest


@pytest.fixture
def project(tmp_path: Path, tiny_mirror: TinyMirror) -> Path:
    """A copy of the project's code and params in a temp dir, set up for tiny data."""
    return copy_project(tmp_path / "project")


def stage_env(tiny_mirror: TinyMirror) -> dict[str, str]:
    """Environment for running stages against a tiny mirror (in a project copy, which has its digests)."""
    mirror, _ = tiny_mirror
    env = dict(os.environ, MNIST_MIRROR=str(mirror))
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["PYTHONPATH"] = ""  # stages are imported from the project copy (the cwd)
    return env


def staged_project(base: Path, stages: tuple[str, ...]) -> tuple[Path, dict[str, str]]:
    """A tiny project copy in base/project (its mirror in base/mirror) after running `stages`, and their env."""
    mirror = base / "mirror"
    env = stage_env((mirror, write_mirror(mirror)))
    project = copy_project(base / "project")
    for stage in stages:
        run_stage(project, stage, env)
    return project, env


@pytest.fixture
def prepared(project: Path, tiny_mirror) -> tuple[Path, dict[str, str]]:
    """A project copy whose data is downloaded and split, and its stage environment."""
    env = stage_env(tiny_mirror)
    run_stage(project, "download", env)
    run_stage(project, "split", env)
    return project, env


def run_stage(project: Path, stage: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess:
    """Run `python -m stages.<stage>` in the project copy."""
    result = subprocess.run(
        [sys.executable, "-m", f"stages.{stage}"], cwd=project, env=env,
        capture_output=True, text=True, timeout=600,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"stage {stage} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def read_curves(project: Path) -> list[dict[str, str]]:
    """The training curves DVCLive wrote, as rows {"iteration": ..., curve: ...} of strings, one per evaluation."""
    columns: dict[str, list[str]] = {}
    steps: list[str] | None = None
    for name in CURVES:
        lines = (project / curve_path(name)).read_text().splitlines()
        assert lines[0].split("\t") == ["step", name], f"{curve_path(name)}: header {lines[0]!r}"
        rows = [line.split("\t") for line in lines[1:]]
        if steps is not None:
            assert [r[0] for r in rows] == steps, f"{curve_path(name)} has other steps"
        steps = [r[0] for r in rows]
        columns[name] = [r[1] for r in rows]
    assert steps is not None
    rows = [{"iteration": s, **{n: columns[n][i] for n in CURVES}} for i, s in enumerate(steps)]
    # The same numbers, in the same order, in the one table the top-level charts draw.
    # (With a schedule, the table has the learning rate too, checked against its own TSV by its tests.)
    table = [{k: v for k, v in row.items() if k != "learning_rate"}
             for row in json.loads((project / CURVES_TABLE).read_text())]
    assert table == [{k: int(v) if k == "iteration" else float(v) for k, v in r.items()} for r in rows], CURVES_TABLE
    return rows
