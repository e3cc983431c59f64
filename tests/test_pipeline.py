"""The DVC workflow end to end, through the real `dvc` CLI, on tiny generated data.

The workflow's states are module-scoped fixtures, each built once on a copy of
the one before (a git + DVC project copy in a temp dir) and read-only from then
on: the baseline run, patience edited to 40, that committed with a stratified
split, and three states built on that one. A test whose step builds a state
checks what the fixture recorded of it; a test that changes a state works on its
own copy (`own_copy`: the directory with its .git and DVC cache), so every test
passes alone, in any order.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

from mnist_early_stopping.pipeline.layout import CURVES
from tests.conftest import ROOT, copy_project, read_curves, write_params
from tests.tiny_mnist import write_mirror

pytestmark = pytest.mark.slow
STAGES = ["check_params", "download", "split", "train", "evaluate", "plots", "export"]
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


def assert_ran_in_order(ran: list[str], expected: list[str]) -> None:
    """Exactly the expected stages ran, each after the stages it depends on.

    plots and export may swap; check_params depends on nothing and nothing on it.
    """
    assert sorted(ran) == sorted(expected), ran
    order = [s for s in STAGES if s in expected]
    for stage in ran:
        earlier = order[: order.index(stage)]
        unordered = ("check_params", "plots", "export")
        assert all(ran.index(e) < ran.index(stage) for e in earlier if e not in unordered), ran


def declared_outputs(dvc_yaml: Path) -> list[str]:
    """Every path declared as outs, metrics or plots of a stage."""
    stages = yaml.safe_load(dvc_yaml.read_text())["stages"]
    paths = []
    for stage in stages.values():
        for key in ("outs", "metrics", "plots"):
            for entry in stage.get(key, []):
                paths.append(next(iter(entry)) if isinstance(entry, dict) else entry)
    return paths


def tool_env(mirror: Path) -> dict[str, str]:
    """Environment in which `dvc` and the stages' `python` are this interpreter's."""
    bin_dir = str(Path(sys.executable).parent)
    env = dict(os.environ, MNIST_MIRROR=str(mirror), TF_CPP_MIN_LOG_LEVEL="2")
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    env.update(
        GIT_AUTHOR_NAME="test", GIT_AUTHOR_EMAIL="test@example.com",
        GIT_COMMITTER_NAME="test", GIT_COMMITTER_EMAIL="test@example.com", DVC_NO_ANALYTICS="1",
    )
    env.pop("PYTHONPATH", None)
    return env


def new_repo(base: Path) -> Repo:
    """A fresh git + DVC repo holding the project with tiny params, in base/project (the mirror beside)."""
    mirror = base / "mirror"
    write_mirror(mirror)  # the data set whose digests copy_project puts in download.files
    path = copy_project(base / "project", COPIED)
    r = Repo(path, tool_env(mirror))
    r.run("git", "init", "-q", "-b", "main")
    r.run("dvc", "init", "-q")
    for option in ("core.autostage true", "core.analytics false", "core.check_update false"):
        r.run("dvc", "config", *option.split())
    shutil.copytree(ROOT / ".dvc/plots", path / ".dvc/plots")  # the plot templates dvc.yaml names
    r.commit("project")
    return r


def own_copy(repo: Repo, base: Path) -> Repo:
    """A copy of the repo in base/repo: workspace, git history and DVC cache (run-cache included).

    DVC finds it as the original was (`dvc status`: up to date); the mirror is shared, read-only.
    """
    shutil.copytree(repo.path, base / "repo", symlinks=True)
    return Repo(base / "repo", repo.env)


@dataclass(frozen=True)
class Baseline:
    """The first `dvc repro` of a fresh repo, committed as "baseline run"."""

    repo: Repo
    ran: list[str]  # the stages it ran, in order
    timings: Path  # $MNIST_TIMINGS of that run, outside the project: no stage's output


@dataclass(frozen=True)
class Step:
    """A repo after one step of the workflow, with what the step's commands printed."""

    repo: Repo
    ran: list[str]
    out: str = ""


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> Baseline:
    repo = new_repo(tmp_path_factory.mktemp("pipeline"))
    timings = repo.path.parent / "timings.jsonl"
    ran = repo.repro(env={**repo.env, "MNIST_TIMINGS": str(timings)})
    repo.commit("baseline run")
    return Baseline(repo, ran, timings)


@pytest.fixture(scope="module")
def patience_40(baseline: Baseline, tmp_path_factory: pytest.TempPathFactory) -> Step:
    """The baseline with train.patience edited to 40 and reproduced, not committed.

    out: `dvc status --json` between the edit and `dvc repro`.
    """
    repo = own_copy(baseline.repo, tmp_path_factory.mktemp("patience_40"))
    write_params(repo.path, {"train": {"patience": 40}})
    status = repo.run("dvc", "status", "--json").stdout
    return Step(repo, repo.repro(), status)


@pytest.fixture(scope="module")
def stratified(patience_40: Step, tmp_path_factory: pytest.TempPathFactory) -> Step:
    """Patience 40 committed, then split.method stratified reproduced and committed."""
    repo = own_copy(patience_40.repo, tmp_path_factory.mktemp("stratified"))
    repo.commit("patience 40")
    write_params(repo.path, {"split": {"method": "stratified"}})
    ran = repo.repro()
    repo.commit("stratified split")
    return Step(repo, ran)


def train_outputs(repo: Repo) -> dict[str, str]:
    """Digests of everything the train stage writes."""
    return file_digests(repo.path, ["models", "metrics/train.json", "metrics/live", "metrics/curves.json"])


@dataclass(frozen=True)
class BackTo40:
    """Patience 30 reproduced (ran), then 40 again (out); train's outputs before and after."""

    repo: Repo
    ran: list[str]
    out: str
    before: dict[str, str]
    after: dict[str, str]


@pytest.fixture(scope="module")
def back_to_40(stratified: Step, tmp_path_factory: pytest.TempPathFactory) -> BackTo40:
    """The stratified state after patience 30 and back to 40: both in the run-cache."""
    repo = own_copy(stratified.repo, tmp_path_factory.mktemp("back_to_40"))
    before = train_outputs(repo)
    write_params(repo.path, {"train": {"patience": 30}})
    ran = repo.repro()
    write_params(repo.path, {"train": {"patience": 40}})
    started = time.monotonic()
    out = repo.run("dvc", "repro").stdout
    print(f"patience 30 -> 40 (already run): dvc repro took {time.monotonic() - started:.1f} s")
    return BackTo40(repo, ran, out, before, train_outputs(repo))


@pytest.fixture(scope="module")
def resumed(stratified: Step, tmp_path_factory: pytest.TempPathFactory) -> Step:
    """The stratified state with patience 50 (never run before): `dvc repro` killed once a checkpoint is saved.

    out: the next `dvc repro`.
    """
    repo = own_copy(stratified.repo, tmp_path_factory.mktemp("resumed"))
    write_params(repo.path, {"train": {"patience": 50}})
    kill_group_after_checkpoint(repo, start_killable(repo, "dvc", "repro"))
    return Step(repo, [], repo.run("dvc", "repro").stdout)


@pytest.fixture(scope="module")
def experiments(stratified: Step, tmp_path_factory: pytest.TempPathFactory) -> Step:
    """The stratified state with experiments patience 60 (run) and 20, 80 (queued).

    out: the last `dvc queue status`.
    """
    repo = own_copy(stratified.repo, tmp_path_factory.mktemp("experiments"))
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
    return Step(repo, [], status)


def file_digests(root: Path, names: list[str]) -> dict[str, str]:
    """SHA-256 of every file under the given paths."""
    digests = {}
    for name in names:
        for f in sorted([root / name] if (root / name).is_file() else (root / name).rglob("*")):
            if f.is_file():
                digests[str(f.relative_to(root))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return digests


def test_repro_runs_every_stage_in_order_and_creates_every_output(baseline: Baseline):
    repo, timings_file = baseline.repo, baseline.timings
    assert_ran_in_order(baseline.ran, STAGES)
    for out in declared_outputs(repo.path / "dvc.yaml"):
        assert (repo.path / out).exists(), f"{out} was not created"
    assert (repo.path / "dvc.lock").is_file()
    # $MNIST_TIMINGS: one record per stage process, in the order they ran, with the phases the bench reads.
    records = [json.loads(line) for line in timings_file.read_text().splitlines()]
    assert [r["stage"] for r in records] == STAGES
    for r in records:
        assert r["started"] <= r["ended"], r
        assert sum(p["seconds"] for p in r["phases"].values()) <= r["ended"] - r["started"] + 0.05, r
    phases = {r["stage"]: r["phases"] for r in records}
    loop = ("import tensorflow", "trace graphs", "train steps", "validation", "loop: other work", "write networks")
    assert set(loop) <= set(phases["train"]), phases["train"]
    iterations = repo.metrics("train")["iterations"]
    eval_every = yaml.safe_load((repo.path / "params.yaml").read_text())["train"]["eval_every"]
    assert phases["train"]["train steps"]["count"] == phases["train"]["validation"]["count"] == iterations // eval_every
    assert {"import tensorflow", "load networks", "predict"} <= set(phases["evaluate"]), phases["evaluate"]


def test_second_repro_runs_nothing(baseline: Baseline, tmp_path: Path):
    repo = own_copy(baseline.repo, tmp_path)
    assert repo.repro() == []
    assert "up to date" in repo.run("dvc", "status").stdout


def test_changing_only_the_mirror_reruns_nothing(baseline: Baseline, tmp_path: Path):
    repo = own_copy(baseline.repo, tmp_path)
    plain = tmp_path / "plain-mirror"
    write_mirror(plain, gzipped=False)  # the same data set, decompressed
    env = dict(repo.env, MNIST_MIRROR=plain.as_uri())
    assert repo.repro(env=env) == []
    # Even a forced download from the other mirror yields identical files: nothing downstream re-runs.
    assert repo.repro("--force", "--single-item", "download", env=env) == ["download"]
    assert repo.repro(env=env) == []


def test_switching_the_data_set_reruns_everything_and_switching_back_restores(baseline: Baseline, tmp_path: Path):
    repo = own_copy(baseline.repo, tmp_path)
    outputs = ["data", "models", "metrics", "plots"]
    before, original = file_digests(repo.path, outputs), (repo.path / "params.yaml").read_text()
    other = tmp_path / "other-mirror"
    files = write_mirror(other, seed=1)  # another data set in MNIST's format: other digests
    write_params(repo.path, {"download": {"files": files}})
    env = dict(repo.env, MNIST_MIRROR=str(other))
    assert "download" in json.loads(repo.run("dvc", "status", "--json", env=env).stdout)
    assert_ran_in_order(repo.repro(env=env), STAGES)
    for name, digest in files.items():
        assert hashlib.sha256((repo.path / "data/raw" / name).read_bytes()).hexdigest() == digest["sha256"]
    # Back to the first data set: every stage comes back from the run-cache, nothing is downloaded.
    (repo.path / "params.yaml").write_text(original)
    out = repo.run("dvc", "repro").stdout
    assert re.findall(r"Running stage '([\w-]+)'", out) == ["check_params"], out  # no outputs, no run-cache
    for stage in STAGES[1:]:
        assert f"Stage '{stage}' is cached - skipping run" in out, out
    assert file_digests(repo.path, outputs) == before
    assert "up to date" in repo.run("dvc", "status").stdout


def test_metrics_show_lists_data_train_and_test(baseline: Baseline):
    repo = baseline.repo
    shown = json.loads(repo.run("dvc", "metrics", "show", "--json").stdout)
    files = next(iter(shown.values()))["data"]
    assert {"metrics/data.json", "metrics/train.json", "metrics/test.json"} <= set(files)
    train = files["metrics/train.json"]["data"]
    assert train["stop_reason"] == "patience" and train["best_iteration"] < train["stopped_iteration"]
    data = files["metrics/data.json"]["data"]
    counts = {name: sum(data[name]["class_counts"][str(c)] for c in range(10)) for name in ("train", "validation")}
    assert counts == {"train": data["train"]["size"], "validation": data["validation"]["size"]}
    live = files["metrics/live/metrics.json"]["data"]
    assert live["step"] == train["stopped_iteration"]


def test_editing_patience_reruns_exactly_train_evaluate_plots(patience_40: Step):
    status = patience_40.out  # `dvc status --json` once patience was edited to 40
    # Only train's own params changed (and the file check_params tracks whole);
    # evaluate and plots follow once train's outputs change.
    assert set(json.loads(status)) == {"check_params", "train"}
    assert_ran_in_order(patience_40.ran, ["check_params", "train", "evaluate", "plots", "export"])


def test_metrics_diff_against_the_committed_baseline(patience_40: Step, tmp_path: Path):
    repo = own_copy(patience_40.repo, tmp_path)
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


def test_changing_a_split_param_reruns_split_and_after_never_download(stratified: Step):
    assert_ran_in_order(stratified.ran, ["check_params", "split", "train", "evaluate", "plots", "export"])


def test_plots_show_renders_curves_confusion_matrix_and_images(stratified: Step, tmp_path: Path):
    repo = own_copy(stratified.repo, tmp_path)
    repo.run("dvc", "plots", "show")
    html = (repo.path / "dvc_plots/index.html").read_text()
    # Top-down: the two charts of the curves against the iteration, the confusion matrix, the figures.
    ids = re.findall(r'<div id = "([^"]+)">', html)
    assert ids == ["Accuracy", "Loss", "metrics_predictions_csv"], ids
    for field in (*CURVES, '"actual"', '"predicted"', '"iteration"'):
        assert field in html
    images = re.findall(r'<img src="static/workspace_plots_(\w+)\.png">', html)
    assert images == ["0_training_curves", "confusion_matrix", "conv1_filters", "conv2_filters",
                      "misclassified", "test_images"], images
    assert html.index('<div id = "metrics_predictions_csv">') < html.index("<img"), "the charts come first"
    for name in images:
        assert (repo.path / f"dvc_plots/static/workspace_plots_{name}.png").stat().st_size > 1000


def test_bad_param_fails_with_the_error_line_then_the_outputs_come_back(stratified: Step, tmp_path: Path):
    repo = own_copy(stratified.repo, tmp_path)
    outputs = ["metrics", "models", "plots", "data/split"]
    before, lock = file_digests(repo.path, outputs), (repo.path / "dvc.lock").read_bytes()
    original = (repo.path / "params.yaml").read_text()
    write_params(repo.path, {"train": {"patience": -5}})
    # `dvc repro train`: a whole `dvc repro` stops at check_params, before train starts.
    result = repo.run("dvc", "repro", "train", check=False)
    assert result.returncode != 0
    assert "params.yaml: train.patience must be an integer between 1 and 10000000, got -5" in result.stdout
    assert (repo.path / "dvc.lock").read_bytes() == lock, "a failed run must not touch dvc.lock"
    # DVC removed train's outputs before running it; once the param is fixed,
    # the run-cache brings every one of them back without training.
    assert not (repo.path / "models/best").exists()
    (repo.path / "params.yaml").write_text(original)
    out = repo.run("dvc", "repro").stdout
    assert "Running stage" not in out and "Stage 'train' is cached - skipping run" in out, out
    assert file_digests(repo.path, outputs) == before
    assert "up to date" in repo.run("dvc", "status").stdout


def test_going_back_to_earlier_params_restores_from_the_run_cache(back_to_40: BackTo40):
    repo, out, first = back_to_40.repo, back_to_40.out, back_to_40.before
    assert_ran_in_order(back_to_40.ran, ["check_params", "train", "evaluate", "plots", "export"])
    # check_params has no outputs, so no run-cache entry: it runs (in well under a second).
    assert re.findall(r"Running stage '([\w-]+)'", out) == ["check_params"], out
    for stage in ("train", "evaluate", "plots", "export"):
        assert f"Stage '{stage}' is cached - skipping run" in out
    assert back_to_40.after == first, "the run-cache must restore the first run's outputs byte for byte"
    assert "up to date" in repo.run("dvc", "status").stdout


def test_an_experiment_already_run_restores_without_training(back_to_40: BackTo40, tmp_path: Path):
    repo = own_copy(back_to_40.repo, tmp_path)
    out = repo.run("dvc", "exp", "run", "-S", "train.patience=30").stdout
    assert "Running stage 'train'" not in out and "Stage 'train' is cached" in out, out
    repo.run("git", "checkout", "--", "params.yaml")
    repo.run("dvc", "checkout")


def start_killable(repo: Repo, *args: str) -> subprocess.Popen:
    """A command in its own process group, so it can be killed with its children (the stage)."""
    return subprocess.Popen(args, cwd=repo.path, env=repo.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def kill_group_after_checkpoint(repo: Repo, proc: subprocess.Popen) -> None:
    """SIGKILL the command and its stage as soon as a resumable checkpoint is on disk."""
    wait_for_checkpoint(repo, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


def test_a_killed_run_resumes_from_its_checkpoint_under_dvc(resumed: Step):
    repo, out = resumed.repo, resumed.out  # patience 50, never run before: nothing in the run-cache
    assert "train: resuming from the checkpoint at iteration" in out, out
    assert not (repo.path / "checkpoints").exists(), "no checkpoint is left after a successful run"
    curve = read_curves(repo.path)
    steps = [int(r["iteration"]) for r in curve]
    assert steps == list(range(20, repo.metrics("train")["stopped_iteration"] + 1, 20)), "one row per evaluation"


def entry_dirs(project: Path) -> list[Path]:
    """The checkpoint store's entries (one per unfinished training)."""
    return sorted(p for p in (project / "checkpoints/train").glob("*") if p.is_dir())


def test_a_killed_forced_run_comes_back_and_its_checkpoint_does_not_pile_up(resumed: Step, tmp_path: Path):
    repo = own_copy(resumed.repo, tmp_path)
    before = train_outputs(repo)
    kill_group_after_checkpoint(repo, start_killable(repo, "dvc", "repro", "-f", "-s", "train"))
    out = repo.run("dvc", "repro").stdout
    assert "Stage 'train' is cached - skipping run" in out, out
    assert train_outputs(repo) == before
    # The run-cache gave the result; the killed run's entry stays, one of the few
    # unfinished ones the store keeps (tests/test_checkpoints.py: the newest
    # KEEP_UNFINISHED), and a finished training leaves nothing of its own.
    killed = entry_dirs(repo.path)
    assert len(killed) == 1
    write_params(repo.path, {"train": {"patience": 70}})
    out = repo.run("dvc", "repro").stdout
    assert "not resuming the unfinished training" in out and "patience: 50 -> 70" in out, out
    assert entry_dirs(repo.path) == killed
    repo.run("git", "checkout", "--", "params.yaml")
    assert repo.repro() == ["check_params"]  # patience 40 again: restored from the run-cache


def test_experiment_run_and_queue(experiments: Step):
    repo, status = experiments.repo, experiments.out
    assert "Failed" not in status, status
    assert "patience" in repo.run(*EXP_SHOW_COLUMNS, env=dict(repo.env, COLUMNS="120")).stdout
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
        train = metrics["metrics/train.json"]["data"]
        if train["stop_reason"] == "patience":  # evaluations every 20 iterations, patience a multiple of 20
            assert train["stopped_iteration"] - train["best_iteration"] == patience
        else:
            assert (train["stop_reason"], train["stopped_iteration"]) == ("max_iterations", 400)
        best = metrics["metrics/test.json"]["data"]["best"]
        assert best["accuracy"] == best["correct"] / best["total"] and best["accuracy"] > 0.5


EXP_SHOW_COLUMNS = (
    "dvc", "exp", "show", "--no-pager", "--drop", ".*", "--keep",
    "Experiment|train.patience|best_iteration|stopped_iteration|best.accuracy|final.accuracy",
    "--sort-by", "best.accuracy", "--sort-order", "desc",
)


def test_exp_show_with_the_documented_columns_fits_a_terminal(experiments: Step):
    repo = experiments.repo
    env = dict(repo.env, COLUMNS="120")
    table = repo.run(*EXP_SHOW_COLUMNS, env=env).stdout
    lines = [line for line in table.splitlines() if line.strip()]
    assert max(len(line) for line in lines) <= 120, table
    for column in ("train.patience", "best_iteration", "stopped_iteration", "best.accuracy", "final.accuracy"):
        assert column in table, table
    assert "…" not in table.replace("Experiment", ""), table


def test_remote_push_clone_pull_then_nothing_to_run(stratified: Step, tmp_path: Path):
    repo = own_copy(stratified.repo, tmp_path)
    remote = tmp_path / "remote"
    repo.run("dvc", "remote", "add", "-d", "shared", str(remote))
    repo.commit("add a DVC remote")
    repo.run("dvc", "push", "--run-cache")
    clone = tmp_path / "clone"
    repo.run("git", "clone", "-q", str(repo.path), str(clone))
    other = Repo(clone, dict(repo.env, MNIST_MIRROR=str(tmp_path / "nowhere")))
    other.run("dvc", "pull", "--run-cache")
    assert other.repro() == [], "a pulled clone should have nothing to run"
    assert (clone / "models/best/saved_model.pb").is_file()
    runs = sorted(p.name for p in (clone / ".dvc/cache/runs").glob("*/*"))
    assert runs == sorted(p.name for p in (repo.path / ".dvc/cache/runs").glob("*/*")), "the run history came along"
    # dvc gc keeps what the workspace uses.
    other.run("dvc", "gc", "--workspace", "--force")
    assert other.repro() == []


def test_a_fresh_clone_shows_the_committed_figures_with_plots_diff(stratified: Step, tmp_path: Path):
    repo = stratified.repo
    clone = tmp_path / "fresh"
    repo.run("git", "clone", "-q", str(repo.path), str(clone))
    other = Repo(clone, repo.env)
    out = other.run("dvc", "plots", "diff", "HEAD").stdout
    assert "failed to load" not in out, out
    html = (clone / "dvc_plots/index.html").read_text()
    assert '<img src="static/HEAD_plots_test_images.png">' in html, html[:2000]


def test_the_best_network_is_a_model_artifact(stratified: Step, tmp_path: Path):
    repo = own_copy(stratified.repo, tmp_path)
    listed = repo.run("dvc", "ls", "--dvc-only", str(repo.path), "models").stdout
    assert "best" in listed
    pipeline = yaml.safe_load((repo.path / "dvc.yaml").read_text())
    (name, artifact), = pipeline["artifacts"].items()
    assert artifact["type"] == "model" and artifact["path"] == "models/best"
    # GTO (installed with DVC) registers versions of it as Git tags; `dvc artifacts get` finds them.
    repo.run("gto", "register", name, "--version", "v1.0.0")
    repo.run("gto", "assign", name, "--version", "v1.0.0", "--stage", "prod")
    shown = repo.run("gto", "show").stdout
    assert name in shown and "v1.0.0" in shown
    out = tmp_path / "got"
    repo.run("dvc", "artifacts", "get", str(repo.path), name, "--out", str(out))
    assert (out / "saved_model.pb").is_file()
    by_stage = tmp_path / "prod"
    repo.run("dvc", "artifacts", "get", str(repo.path), name, "--stage", "prod", "--out", str(by_stage))
    assert (by_stage / "saved_model.pb").read_bytes() == (repo.path / "models/best/saved_model.pb").read_bytes()
    assert f"{name}@v1.0.0" in repo.run("git", "tag").stdout


def run_cache_entries(repo: Repo) -> list[str]:
    """The run-cache's records (one file per stage run DVC saved)."""
    runs = repo.path / ".dvc/cache/runs"
    return sorted(str(p.relative_to(runs)) for p in runs.rglob("*") if p.is_file()) if runs.exists() else []


def wait_for_checkpoint(repo: Repo, proc: subprocess.Popen) -> None:
    """Return once the running training has saved a resumable checkpoint (it is then mid-run)."""
    deadline = time.monotonic() + 300
    while not list((repo.path / "checkpoints/train").glob("*/ckpt-*.json")):
        assert proc.poll() is None, "the run finished before it could be caught mid-run"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)


def edit_param(repo: Repo) -> str:
    write_params(repo.path, {"train": {"patience": 310}})
    return "train: params.yaml changed while training (train.patience: 300 -> 310); nothing recorded"


def edit_code(repo: Repo) -> str:
    with (repo.path / "mnist_early_stopping/training/early_stopping.py").open("a") as f:
        f.write("# edited while training\n")
    return "train: mnist_early_stopping/training/early_stopping.py changed while training; nothing recorded"


def edit_data(repo: Repo) -> str:
    with (repo.path / "data/split/train.npz").open("ab") as f:
        f.write(b"\0")
    return "train: data/split/train.npz changed while training; nothing recorded"


@pytest.mark.parametrize("edit", [edit_param, edit_code, edit_data], ids=["param", "code", "data"])
def test_an_input_edited_while_training_is_not_recorded(baseline: Baseline, tmp_path: Path, edit):
    repo = own_copy(baseline.repo, tmp_path)
    write_params(repo.path, {"train": {"patience": 300}})  # never run: dvc repro trains
    assert repo.repro("--single-item", "check_params") == ["check_params"]  # it sees all of params.yaml
    lock, runs = (repo.path / "dvc.lock").read_text(), run_cache_entries(repo)
    proc = subprocess.Popen(["dvc", "repro"], cwd=repo.path, env=repo.env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    wait_for_checkpoint(repo, proc)
    expected = edit(repo)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode != 0, out
    assert expected in out, out
    assert "Running stage 'evaluate'" not in out, out
    assert (repo.path / "dvc.lock").read_text() == lock, "dvc.lock recorded the run"
    assert run_cache_entries(repo) == runs, "the run-cache recorded the run"
    assert "train" in json.loads(repo.run("dvc", "status", "--json").stdout), "dvc status says train is up to date"
    if edit is edit_param:
        # The edit undone: the finished training's checkpoint completes the stage without training again.
        write_params(repo.path, {"train": {"patience": 300}})
        out = repo.run("dvc", "repro").stdout
        assert "train: resuming from the checkpoint at iteration" in out, out
        assert "Iter: " not in out, "it trained again"
        assert "up to date" in repo.run("dvc", "status").stdout


def stage_processes(under: Path, stage: str) -> list[int]:
    """Pids of `python -m stages.<stage>` processes whose working directory is inside `under`."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            cwd = Path(os.readlink(proc / "cwd"))
        except (OSError, ValueError):
            continue
        if f"stages.{stage}".encode() in cmdline and cwd.is_relative_to(under):
            pids.append(int(proc.name))
    return pids


def wait_for_queue(repo: Repo) -> str:
    """`dvc queue status` once nothing is queued or running."""
    deadline = time.monotonic() + 600
    while re.search(r"\b(Queued|Running)\b", status := repo.run("dvc", "queue", "status").stdout):
        assert time.monotonic() < deadline, f"queued experiments did not finish:\n{status}"
        time.sleep(1)
    return status


def comparable_result(repo: Repo) -> dict:
    """What a training yields, less how long it took and where it resumed.

    train.json without timings or the network files' digests (a .keras file records
    when it was saved, and a resumed process orders the SavedModel's variables its
    own way), the curves, the initial, best and final conv kernels, test.json and
    the predictions.
    """
    skip = ("wall_seconds", "iterations_per_second", "resumed_from_iteration", "best_network_sha256")
    train = {k: v for k, v in repo.metrics("train").items() if k not in skip}
    with np.load(repo.path / "models/kernels.npz") as kernels:
        weights = {name: kernels[name].tolist() for name in kernels.files}
    return {"train": train, "curves": read_curves(repo.path), "kernels": weights, "test": repo.metrics("test"),
            "predictions": (repo.path / "metrics/predictions.csv").read_text()}


def start_queue(repo: Repo) -> None:
    """`dvc queue start`, returning once the worker is started rather than when it stops.

    The worker it starts inherits the command's output: read through a pipe, the
    command would seem to last until the queue is empty.
    """
    subprocess.run(["dvc", "queue", "start"], cwd=repo.path, env=repo.env, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=True, timeout=120)


def test_a_killed_queued_experiment_resumes_when_queued_again(baseline: Baseline, tmp_path: Path):
    uninterrupted = own_copy(baseline.repo, tmp_path / "uninterrupted")
    write_params(uninterrupted.path, {"train": {"patience": 90}})
    uninterrupted.repro()

    repo = own_copy(baseline.repo, tmp_path / "queued")
    repo.run("dvc", "exp", "run", "--queue", "-n", "killed", "-S", "train.patience=90")
    start_queue(repo)
    # Once the experiment's training (in a copy under .dvc/tmp/exps) has saved a checkpoint in the
    # workspace's store, kill it as the kernel's out-of-memory killer would.
    copies, store = repo.path / ".dvc/tmp/exps", repo.path / "checkpoints/train"
    deadline = time.monotonic() + 300
    while not ((pids := stage_processes(copies, "train")) and list(store.glob("*/ckpt-*.json"))):
        assert time.monotonic() < deadline, repo.run("dvc", "queue", "status").stdout
        time.sleep(0.01)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    status = wait_for_queue(repo)
    assert re.search(r"killed\s.*Failed", status), status
    assert entry_dirs(repo.path), "the killed experiment's checkpoints went with its copy"

    repo.run("dvc", "exp", "run", "--queue", "-n", "resumed", "-S", "train.patience=90")
    start_queue(repo)
    status = wait_for_queue(repo)
    assert re.search(r"resumed\s.*Success", status), status
    log = repo.run("dvc", "queue", "logs", "resumed").stdout
    assert "train: resuming from the checkpoint at iteration" in log, log
    assert not entry_dirs(repo.path), "the finished run's entry is removed"
    repo.run("dvc", "exp", "apply", "resumed")
    assert comparable_result(repo) == comparable_result(uninterrupted)


def test_an_unknown_key_in_any_section_or_an_unknown_section_fails_dvc_repro(baseline: Baseline, tmp_path: Path):
    repo = own_copy(baseline.repo, tmp_path)
    params_file = repo.path / "params.yaml"
    original = params_file.read_text()
    sections = list(yaml.safe_load(original))
    for section in [*sections, None]:
        params = yaml.safe_load(original)
        if section is None:
            params["trian"] = {"patience": 40}
            expected = "unknown section trian"
        else:
            params[section]["weight_decay"] = 0.01
            expected = f"unknown key {section}.weight_decay"
        params_file.write_text(yaml.safe_dump(params, sort_keys=False))
        result = repo.run("dvc", "repro", check=False)
        assert result.returncode != 0, result.stdout
        assert f"params.yaml: {expected}; allowed" in result.stdout, result.stdout
        if section is None:  # caught by check_params alone: no other stage tracks the new section
            assert re.findall(r"Running stage '([\w-]+)'", result.stdout) == ["check_params"], result.stdout
    params_file.write_text(original)
    assert repo.repro() == []  # failed runs recorded nothing: what is recorded is what the params say again
    assert "up to date" in repo.run("dvc", "status").stdout


def test_provenance_flags_changed_code_or_params_not_what_dvc_rewrites(baseline: Baseline, tmp_path: Path):
    from mnist_early_stopping.serving.network import read_provenance

    repo = own_copy(baseline.repo, tmp_path)  # everything committed, the git-tracked metrics and plots included
    commit = repo.run("git", "rev-parse", "HEAD").stdout.strip()
    # DVC removes train's git-tracked metrics before running it: the work tree differs, the run's inputs do not.
    assert repo.repro("--force", "--single-item", "train") == ["train"]
    record = read_provenance(repo.path / "models/best")
    assert record is not None and (record["commit"], record["uncommitted_changes"]) == (commit, False)
    write_params(repo.path, {"train": {"patience": 60}})
    assert "train" in repo.repro("--single-item", "train")
    record = read_provenance(repo.path / "models/best")
    assert record is not None and record["uncommitted_changes"] is True
