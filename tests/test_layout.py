"""dvc.yaml against the code: code deps equal each stage's import closure; every path is the layout's."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mnist_early_stopping.pipeline import layout
from mnist_early_stopping.pipeline.deps import import_closure, imported_modules
from tests.conftest import ROOT

CODE_DIRS = ("stages/", "mnist_early_stopping/")
STAGES = ("check_params", "download", "split", "train", "evaluate", "plots", "export")


def declared_stages(text: str | None = None) -> dict[str, dict]:
    """The `stages:` mapping of dvc.yaml (or of the given text)."""
    return yaml.safe_load(text if text is not None else (ROOT / "dvc.yaml").read_text())["stages"]


def entry_path(entry: str | dict) -> str:
    """The path of a deps/outs/metrics entry, plain or with options."""
    return entry if isinstance(entry, str) else next(iter(entry))


def code_deps(stage: dict) -> list[str]:
    """The stage's deps that are project code."""
    return sorted(d for d in map(entry_path, stage.get("deps", [])) if d.startswith(CODE_DIRS))


def closure_mismatches(stages: dict[str, dict]) -> list[str]:
    """One line per stage whose code deps differ from its import closure."""
    problems = []
    for name, stage in stages.items():
        declared, actual = set(code_deps(stage)), set(import_closure(f"stages.{name}"))
        if declared != actual:
            problems.append(
                f"{name}: missing {sorted(actual - declared)}, not imported {sorted(declared - actual)}"
            )
    return problems


def test_every_stage_runs_its_own_module() -> None:
    stages = declared_stages()
    assert sorted(stages) == sorted(STAGES)
    for name, stage in stages.items():
        assert stage["cmd"] == f"python -m stages.{name}"


def test_code_deps_are_each_stages_import_closure() -> None:
    assert closure_mismatches(declared_stages()) == []


def test_a_dep_removed_from_dvc_yaml_is_caught() -> None:
    text = (ROOT / "dvc.yaml").read_text()
    removed = "      - mnist_early_stopping/training/early_stopping.py\n"
    assert removed in text
    problems = closure_mismatches(declared_stages(text.replace(removed, "", 1)))
    assert problems == ["train: missing ['mnist_early_stopping/training/early_stopping.py'], not imported []"]


def test_no_stage_imports_another_stage() -> None:
    for name in STAGES:
        imports = imported_modules((ROOT / "stages" / f"{name}.py").read_text())
        assert not [m for m in imports if m.startswith("stages")], name


def test_closure_follows_lazy_imports_and_skips_type_checking_ones() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from mnist_early_stopping.training import engine\n"
        "def f():\n    from mnist_early_stopping.serving import network\n"
        "import mnist_early_stopping.pipeline.layout as layout\n"
    )
    found = imported_modules(source)
    assert {"mnist_early_stopping.serving.network", "mnist_early_stopping.pipeline.layout"} <= found
    assert "mnist_early_stopping.training.engine" not in found


def test_evaluate_needs_neither_the_model_code_nor_keras() -> None:
    closure = import_closure("stages.evaluate")
    assert "mnist_early_stopping/training/model.py" not in closure
    assert "mnist_early_stopping/training/engine.py" not in closure


def layout_paths() -> set[str]:
    """Every path the layout module names, as dvc.yaml would write it."""
    paths = {str(v) for v in vars(layout).values() if isinstance(v, Path)}
    return paths | {str(layout.split_path(s)) for s in layout.SPLITS} | {str(layout.curve_path(c)) for c in layout.CURVES}


@pytest.mark.parametrize("section", ["deps", "outs", "metrics", "plots"])
def test_every_data_path_in_dvc_yaml_is_the_layouts(section: str) -> None:
    known = layout_paths()
    for name, stage in declared_stages().items():
        for entry in stage.get(section, []):
            path = entry_path(entry)
            if not path.startswith(CODE_DIRS):
                assert path in known, f"{name}.{section}: {path} is not a path of mnist_early_stopping/pipeline/layout.py"


def top_level_curves(pipeline: dict) -> list[tuple[str, str | None]]:
    """(file, field) of each curve the top-level `plots:` draws, once per mention."""
    drawn: list[tuple[str, str | None]] = []
    for entry in pipeline.get("plots", []):
        name, spec = (entry, None) if isinstance(entry, str) else next(iter(entry.items()))
        y = (spec or {}).get("y")
        if isinstance(y, dict):
            for path, fields in y.items():
                drawn += [(path, f) for f in ([fields] if isinstance(fields, str) else fields)]
        else:  # a plot named by its file: the field given, or the one DVC infers
            drawn.append((name, y))
    return drawn


def test_top_level_metrics_are_the_layouts() -> None:
    pipeline = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    assert set(pipeline["metrics"]) <= layout_paths()


def test_each_curve_is_drawn_once_at_the_top_level_and_by_no_stage() -> None:
    pipeline = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    drawn = top_level_curves(pipeline)
    files = {path for path, _ in drawn}
    assert files <= layout_paths(), f"not paths of mnist_early_stopping/pipeline/layout.py: {files}"
    assert sorted(field or "" for _, field in drawn) == sorted(layout.CURVES), "each curve once"
    # DVC draws a stage's `plots:` besides the top-level charts: a file in both would be drawn twice,
    # so no stage has the curves among its plots, DVCLive's TSVs included.
    stage_plots = [entry_path(e) for stage in pipeline["stages"].values() for e in stage.get("plots", [])]
    for path in [*files, str(layout.LIVE_CURVES_DIR)]:
        assert not [p for p in stage_plots if path == p or path.startswith(p + "/")], f"{path} is a stage's plot"
    # The table is a git-tracked metric of train (an uncached plain output would cost train its run-cache);
    # DVCLive's TSVs are a cached output of train.
    train = pipeline["stages"]["train"]
    assert {str(layout.CURVES_TABLE): {"cache": False}} in train["metrics"]
    assert str(layout.LIVE_CURVES_DIR) in train["outs"]


# The library's packages and what each may import: the boundaries a change
# must respect. `pipeline` is the ground every stage stands on; evaluation
# loads networks through `serving`, never through the training code.
ALLOWED_IMPORTS = {
    "pipeline": set(),
    "data": {"pipeline"},
    "training": {"pipeline", "data"},
    "serving": {"pipeline", "data"},  # the TFLite export is checked on the test split
    "evaluation": {"pipeline", "data", "serving"},
}


def package_imports() -> dict[str, set[str]]:
    """For each library package, the other library packages its modules import."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / "mnist_early_stopping").glob("*/*.py")):
        package = path.parent.name
        for module in imported_modules(path.read_text(encoding="utf-8")):
            parts = module.split(".")
            if parts[0] == "mnist_early_stopping" and len(parts) > 1 and parts[1] != package:
                found.setdefault(package, set()).add(parts[1])
    return found


def test_the_library_is_the_packages_named_and_nothing_loose() -> None:
    library = ROOT / "mnist_early_stopping"
    assert sorted(p.name for p in library.iterdir() if p.is_dir() and p.name != "__pycache__") == sorted(ALLOWED_IMPORTS)
    assert sorted(p.name for p in library.glob("*.py")) == ["__init__.py"]


def test_packages_import_only_across_their_boundaries() -> None:
    crossings = {
        package: sorted(imported - ALLOWED_IMPORTS[package]) for package, imported in package_imports().items()
    }
    assert {package: bad for package, bad in crossings.items() if bad} == {}


def test_evaluate_and_plots_stay_out_of_training() -> None:
    evaluate, plots = import_closure("stages.evaluate"), import_closure("stages.plots")
    assert not [p for p in evaluate if p.startswith("mnist_early_stopping/training/")]
    assert not [p for p in plots if p.startswith(("mnist_early_stopping/training/", "mnist_early_stopping/serving/"))]
