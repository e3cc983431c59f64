"""The DVC workflow end to end, through the real `dvc` CLI, on tiny generated data.

One project copy (its own git repo) is shared by the tests of this module, which
run in file order: each builds on the state the previous one left.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import copy_project, write_params
from tests.tiny_mnist import write_mirror

pytestmark = pytest.mark.slow
STAGES = ["download", "split", "train", "evaluate", "plots"]
COPIED = ("stages", "mnist_early_stopping", "params.yaml", "dvc.yaml", ".gitignore", ".dvcignore")


class Repo:
    """A git + DVC project copy and the environment to drive it."""

    def __init__(self, path: Path, env: dict[str, str]) -> None:
        self.path, self.env = path, env

    def run(self, *args: str, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run a command in the repo; output (stdout and stderr together) in .stdout."""
        result = subprocess.run(
            args, cwd=self.path, env=env or self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, timeout=900,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}")
        return result

    def repro(self, *args: str, env: dict[str, str] | None = None) -> list[str]:
        """`dvc repro`; return the stages that ran, in order."""
        out = self.run("dvc", "repro", *args, env=env).stdout
        return re.findall(r"Running stage '([\w-]+)'", out)

    def commit(self, message: str) -> None:
        self.run("git", "add", "-A")
        self.run("git", "commit", "-q", "-m", message)

    def metrics(self, name: str) -> dict:
        return json.loads((self.path / f"metrics/{name}.json").read_text())


def declared_outputs(dvc_yaml: Path) -> list[str]:
    """Every path declared as outs, metrics or plots of a stage."""
    stages = yaml.safe_load(dvc_yaml.read_text())["stages"]
    paths = []
    for stage in stages.values():
        for key in ("outs", "metrics", "plots"):
            for entry in stage.get(key, []):
                paths.append(next(iter(entry)) if isinstance(entry, dict) else entry)
    return paths


def tool_env(mirror: Path, digests: Path) -> dict[str, str]:
    """Environment in which `dvc` and the stages' `python` are this interpreter's."""
    bin_dir = str(Path(sys.executable).parent)
    env = dict(os.environ, MNIST_MIRROR=str(mirror), MNIST_DIGESTS=str(digests), TF_CPP_MIN_LOG_LEVEL="2")
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    env.update(
        GIT_AUTHOR_NAME="test", GIT_AUTHOR_EMAIL="test@example.com",
        GIT_COMMITTER_NAME="test", GIT_COMMITTER_EMAIL="test@example.com", DVC_NO_ANALYTICS="1",
    )
    env.pop("PYTHONPATH", None)
    return env


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    """A fresh git + DVC repo holding the project with tiny params."""
    base = tmp_path_factory.mktemp("pipeline")
    mirror = base / "mirror"
    digests = write_mirror(mirror)
    path = copy_project(base / "project", COPIED)
    r = Repo(path, tool_env(mirror, digests))
    r.run("git", "init", "-q", "-b", "main")
    r.run("dvc", "init", "-q")
    for option in ("core.autostage true", "core.analytics false", "core.check_update false"):
        r.run("dvc", "config", *option.split())
    r.commit("project")
    return r


def file_digests(root: Path, names: list[str]) -> dict[str, str]:
    """SHA-256 of every file under the given paths."""
    digests = {}
    for name in names:
        for f in sorted([root / name] if (root / name).is_file() else (root / name).rglob("*")):
            if f.is_file():
                digests[str(f.relative_to(root))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return digests


def test_repro_runs_every_stage_in_order_and_creates_every_output(repo: Repo):
    assert repo.repro() == STAGES
    for out in declared_outputs(repo.path / "dvc.yaml"):
        assert (repo.path / out).exists(), f"{out} was not created"
    assert (repo.path / "dvc.lock").is_file()
    repo.commit("baseline run")


def test_second_repro_runs_nothing(repo: Repo):
    assert repo.repro() == []
    assert "up to date" in repo.run("dvc", "status").stdout


def test_changing_only_the_mirror_reruns_nothing(repo: Repo, tmp_path: Path):
    plain = tmp_path / "plain-mirror"
    digests = write_mirror(plain, gzipped=False)
    env = dict(repo.env, MNIST_MIRROR=plain.as_uri(), MNIST_DIGESTS=str(digests))
    assert repo.repro(env=env) == []
    # Even a forced download from the other mirror yields identical files: nothing downstream re-runs.
    assert repo.repro("--force", "--single-item", "download", env=env) == ["download"]
    assert repo.repro(env=env) == []


def test_metrics_show_lists_data_train_and_test(repo: Repo):
    shown = json.loads(repo.run("dvc", "metrics", "show", "--json").stdout)
    files = next(iter(shown.values()))["data"]
    assert {"metrics/data.json", "metrics/train.json", "metrics/test.json"} <= set(files)
    train = files["metrics/train.json"]["data"]
    assert train["stop_reason"] == "patience" and train["best_iteration"] < train["stopped_iteration"]


def test_editing_patience_reruns_exactly_train_evaluate_plots(repo: Repo):
    write_params(repo.path, {"train": {"patience": 40}})
    status = repo.run("dvc", "status", "--json").stdout
    # Only train's own params changed; evaluate and plots follow once train's outputs change.
    assert set(json.loads(status)) == {"train"}
    assert repo.repro() == ["train", "evaluate", "plots"]


def test_metrics_diff_against_the_committed_baseline(repo: Repo):
    diff = json.loads(repo.run("dvc", "metrics", "diff", "--json").stdout)
    assert "metrics/train.json" in diff
    assert "stopped_iteration" in diff["metrics/train.json"]
    change = diff["metrics/train.json"]["stopped_iteration"]
    assert change["old"] != change["new"]
    table = repo.run("dvc", "metrics", "diff").stdout
    assert "stopped_iteration" in table
    repo.run("dvc", "plots", "diff")
    assert "validation_accuracy" in (repo.path / "dvc_plots/index.html").read_text()
    repo.commit("patience 40")


def test_changing_a_split_param_reruns_split_and_after_never_download(repo: Repo):
    write_params(repo.path, {"split": {"method": "stratified"}})
    assert repo.repro() == ["split", "train", "evaluate", "plots"]
    repo.commit("stratified split")


def test_plots_show_renders_curves_confusion_matrix_and_images(repo: Repo):
    repo.run("dvc", "plots", "show")
    html = (repo.path / "dvc_plots/index.html").read_text()
    for plot_id in ("Accuracy", "Loss", "Confusion-Matrix"):
        assert f'<div id = "{plot_id}">' in html
    for field in ("train_batch_accuracy", "validation_accuracy", "train_batch_loss", "validation_loss",
                  '"actual"', '"predicted"'):
        assert field in html
    for name in ("test_images", "misclassified", "confusion_matrix", "training_curves", "conv1_filters",
                 "conv2_filters"):
        assert f'<img src="static/workspace_plots_{name}.png">' in html
        assert (repo.path / f"dvc_plots/static/workspace_plots_{name}.png").stat().st_size > 1000


def test_bad_param_fails_with_the_error_line_and_keeps_outputs(repo: Repo):
    kept = ["dvc.lock", "metrics", "models", "plots", "data/split"]
    before = file_digests(repo.path, kept)
    original = (repo.path / "params.yaml").read_text()
    write_params(repo.path, {"train": {"patience": -5}})
    result = repo.run("dvc", "repro", check=False)
    assert result.returncode != 0
    assert "params.yaml: train.patience must be an integer between 1 and 10000000, got -5" in result.stdout
    (repo.path / "params.yaml").write_text(original)
    assert file_digests(repo.path, kept) == before
    assert repo.repro() == [], "the failed run disturbed the pipeline state"


def test_experiment_run_and_queue(repo: Repo):
    repo.run("dvc", "exp", "run", "-S", "train.patience=60")
    repo.run("dvc", "exp", "run", "--queue", "-S", "train.patience=20,80")  # a sweep of two
    repo.run("dvc", "queue", "start")
    deadline = time.monotonic() + 600
    while True:
        status = repo.run("dvc", "queue", "status").stdout
        if not re.search(r"\b(Queued|Running)\b", status):
            break
        assert time.monotonic() < deadline, f"queued experiments did not finish:\n{status}"
        time.sleep(2)
    assert "Failed" not in status, status
    assert "patience" in repo.run("dvc", "exp", "show").stdout
    shown = json.loads(repo.run("dvc", "exp", "show", "--json").stdout)
    by_patience = {}
    for commit in shown:
        for exp in commit.get("experiments") or []:
            for rev in exp["revs"]:
                data = rev["data"]
                by_patience[data["params"]["params.yaml"]["data"]["train"]["patience"]] = data
    assert {60, 20, 80} <= set(by_patience), sorted(by_patience)
    for patience in (60, 20, 80):
        metrics = by_patience[patience]["metrics"]
        assert metrics["metrics/train.json"]["data"]["stop_reason"] in ("patience", "max_iterations")
        assert 0.0 <= metrics["metrics/test.json"]["data"]["best"]["accuracy"] <= 1.0


def test_remote_push_clone_pull_then_nothing_to_run(repo: Repo, tmp_path: Path):
    remote = tmp_path / "remote"
    repo.run("dvc", "remote", "add", "-d", "shared", str(remote))
    repo.commit("add a DVC remote")
    repo.run("dvc", "push")
    clone = tmp_path / "clone"
    repo.run("git", "clone", "-q", str(repo.path), str(clone))
    other = Repo(clone, dict(repo.env, MNIST_MIRROR=str(tmp_path / "nowhere")))
    other.run("dvc", "pull")
    assert other.repro() == [], "a pulled clone should have nothing to run"
    assert (clone / "models/best/saved_model.pb").is_file()
    # dvc gc keeps what the workspace uses.
    other.run("dvc", "gc", "--workspace", "--force")
    assert other.repro() == []
