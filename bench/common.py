"""What the step and pipeline benchmarks share: header, tables, verdicts, medians, child env, project copy."""

from __future__ import annotations

import argparse
import importlib.metadata
import math
import os
import platform
import shutil
import statistics
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
# What a run of the pipeline needs; tests/conftest.py copies the same for the tests.
PROJECT_FILES = ("stages", "mnist_early_stopping", "params.yaml", "dvc.yaml")


def versions() -> str:
    """Installed TensorFlow, Keras, PyTorch, DVC and Python versions (without importing them)."""
    parts = []
    for name in ("tensorflow", "keras", "torch", "dvc"):
        try:
            parts.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            parts.append(f"{name} (not installed)")
    return ", ".join(parts) + f", Python {platform.python_version()}"


def machine() -> str:
    """CPU model from /proc/cpuinfo and the core count."""
    model = platform.processor() or "unknown CPU"
    try:
        names = [ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name")]
        model = names[0].split(":", 1)[1].strip() if names else model
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores"


def header(title: str) -> list[str]:
    """Title, date, machine, load and versions lines."""
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return [
        title,
        f"date:     {datetime.now().astimezone():%Y-%m-%d %H:%M %Z}",
        f"machine:  {machine()}; load average at the start {load}",
        f"versions: {versions()}",
    ]


def table(rows: list[tuple[str, ...]], head: tuple[str, ...]) -> str:
    """A plain-text table: first column left-aligned, the others right-aligned."""
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]

    def line(row: tuple[str, ...]) -> str:
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        return "  ".join(cells).rstrip()

    return "\n".join([line(head), "  ".join("-" * w for w in widths), *(line(r) for r in rows)])


def verdict(value: float, target: float, at_least: bool) -> str:
    """PASS or MISS against a target (n/a when not measured)."""
    if math.isnan(value):
        return "n/a"
    return "PASS" if (value >= target if at_least else value <= target) else "MISS"


def median_of(results: list[dict[str, Any]], key: str) -> float:
    """Median of one measurement over the runs that produced it (nan if none did)."""
    values = [r[key] for r in results if key in r]
    return statistics.median(values) if values else math.nan


def child_env(**extra: str) -> dict[str, str]:
    """Environment for benchmark children: quiet TensorFlow, unbuffered output, no DVC analytics.

    This interpreter's bin directory goes first on PATH, so that `dvc` and the
    stages' `python` are the ones of the environment running the bench.
    """
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1", DVC_NO_ANALYTICS="1", PATH=path)
    return {**env, **extra}


def add_project_option(parser: argparse.ArgumentParser) -> None:
    """The --project option: the project directory to benchmark (default: this checkout)."""
    parser.add_argument(
        "--project",
        type=lambda s: Path(s).resolve(),
        default=ROOT,
        metavar="DIR",
        help="project root holding params.yaml (and data/split for step) (default: this checkout)",
    )


def copy_project(source: Path, dest: Path, names: tuple[str, ...] = PROJECT_FILES) -> None:
    """Copy the project's code and pipeline files from `source` into `dest`."""
    for name in names:
        src = source / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dest / name)


def overridden(path: Path, overrides: Sequence[str]) -> dict[str, Any]:
    """A params.yaml's content with SECTION.KEY=VALUE overrides (VALUE in YAML) applied."""
    raw = yaml.safe_load(path.read_text())
    for item in overrides:
        key, _, value = item.partition("=")
        section, _, field = key.partition(".")
        if field not in raw.get(section, {}):
            raise SystemExit(f"bench: --set {item}: params.yaml has no key {key}")
        raw[section][field] = yaml.safe_load(value)
    return raw
