"""What a stage started from, checked again before it exits 0.

DVC hashes a stage's params, code and data after its command exits, so an
input edited while the stage runs would be recorded (in dvc.lock and the
run-cache) with outputs made from the old one. Each stage therefore notes,
when it starts, the params sections it reads, its code and its input files
(the `params` and `deps` of its entry in dvc.yaml), and refuses to exit 0 if
any of them changed meanwhile: DVC then records nothing of the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mnist_early_stopping.pipeline.digests import sha256_file, sha256_tree
from mnist_early_stopping.pipeline.layout import PARAMS_FILE
from mnist_early_stopping.pipeline.stage import StageError

DVC_FILE = Path("dvc.yaml")
MISSING = "missing"


@dataclass(frozen=True)
class Inputs:
    """A stage's inputs at one moment: params values by section, and a digest per dependency."""

    stage: str
    params: dict[str, Any]
    files: dict[str, str]


def entry(stage: str) -> dict[str, list[str]] | None:
    """The params, deps and outputs (outs, metrics, plots) dvc.yaml declares for `stage`, by name; None if none."""
    try:
        found = yaml.safe_load(DVC_FILE.read_text(encoding="utf-8"))["stages"][stage]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None  # not run as a stage of this pipeline
    name = lambda item: item if isinstance(item, str) else next(iter(item))  # noqa: E731
    return {
        "params": [name(p) for p in found.get("params", [])],
        "deps": [name(d) for d in found.get("deps", [])],
        "outputs": [name(o) for key in ("outs", "metrics", "plots") for o in found.get(key, [])],
    }


def declared(stage: str) -> tuple[list[str], list[str]] | None:
    """The params sections (all of params.yaml as "") and deps dvc.yaml declares for `stage`, if it does."""
    found = entry(stage)
    if found is None:
        return None  # nothing to compare with
    return ["" if p == str(PARAMS_FILE) else p for p in found["params"]], found["deps"]


def _digest(path: Path) -> str:
    try:
        return sha256_tree(path) if path.is_dir() else sha256_file(path)
    except FileNotFoundError:
        return MISSING


def _params(sections: list[str]) -> dict[str, Any]:
    from mnist_early_stopping.pipeline.params import ParamsLoader  # numbers read as DVC writes them

    try:
        with PARAMS_FILE.open(encoding="utf-8") as f:
            raw = yaml.load(f, Loader=ParamsLoader)  # noqa: S506 (a SafeLoader)
    except (OSError, yaml.YAMLError, ValueError):
        raw = MISSING
    if not isinstance(raw, dict):
        return {section: MISSING for section in sections}
    return {section: raw if section == "" else raw.get(section, MISSING) for section in sections}


def take(stage: str) -> Inputs | None:
    """The stage's inputs now, or None when dvc.yaml does not declare the stage."""
    found = declared(stage)
    if found is None:
        return None
    sections, deps = found
    return Inputs(stage, _params(sections), {dep: _digest(Path(dep)) for dep in deps})


def _leaves(value: Any, prefix: str) -> dict[str, Any]:
    if isinstance(value, dict):
        leaves: dict[str, Any] = {}
        for key, item in value.items():
            leaves.update(_leaves(item, f"{prefix}.{key}" if prefix else str(key)))
        return leaves
    return {prefix: value}


def params_changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """`key: old -> new` for every params value that differs (`(none)` where a key is absent)."""
    old, new = _leaves(before, ""), _leaves(after, "")
    return [
        f"{key}: {old.get(key, '(none)')!r} -> {new.get(key, '(none)')!r}".replace("'(none)'", "(none)")
        for key in sorted(set(old) | set(new), key=str)
        if old.get(key, "(none)") != new.get(key, "(none)")
    ]


def changes(started: Inputs) -> tuple[list[str], list[str]]:
    """The inputs that changed since `started` (params.yaml, files), and the params values that did."""
    now = take(started.stage)
    if now is None:
        return [str(DVC_FILE)], []
    diffs = params_changes(started.params, now.params)
    names = [str(PARAMS_FILE)] if diffs else []
    names += [dep for dep in started.files if now.files.get(dep) != started.files[dep]]
    names += [dep for dep in now.files if dep not in started.files]
    return names, diffs


def verify(started: Inputs | None) -> None:
    """Raise a StageError if an input changed since `started` (None: nothing to check)."""
    if started is None:
        return
    names, diffs = changes(started)
    if names:
        doing = "training" if started.stage == "train" else "the stage ran"
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        values = "; ".join(diffs[:3]) + (f"; and {len(diffs) - 3} more" if len(diffs) > 3 else "")
        raise StageError(
            f"{shown} changed while {doing}{f' ({values})' if values else ''}; nothing recorded, "
            "run dvc repro again"
        )
