"""Reliability: a killed run's leftovers go, a wrong file type at an output is replaced or refused, outputs
are written all or none, and every failure is one line with exit 1 (run time) or 2 (bad input)."""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import yaml

from mnist_early_stopping.data import splits as data
from mnist_early_stopping.evaluation import evaluate as evaluation
from mnist_early_stopping.evaluation import figures
from mnist_early_stopping.pipeline import atomic
from mnist_early_stopping.pipeline.digests import sha256_file, sha256_tree
from mnist_early_stopping.pipeline.stage import StageError
from tests.conftest import ROOT, TinyMirror, copy_project, run_stage, stage_env, staged_project, write_params
from tests.test_plots import write_inputs
from tests.tiny_mnist import write_mirror

# Files of the user's beside the outputs: never touched.
USER_FILES = ("notes.txt", ".hidden_user_file", ".test.json.backup", ".test.json.abc.tmp")


def one_line(stderr: str) -> str:
    """The only line of stderr (asserting there is exactly one)."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def plant_user_files(directory: Path) -> None:
    for name in USER_FILES:
        (directory / name).write_text("mine")


def assert_user_files_kept(directory: Path) -> None:
    for name in USER_FILES:
        assert (directory / name).read_text() == "mine", name


# --- Leftovers of a killed run ---------------------------------------------------------------------------


def test_write_atomic_removes_what_a_killed_write_of_the_same_file_left(tmp_path: Path) -> None:
    target = tmp_path / "metrics/test.json"
    target.parent.mkdir()
    plant_user_files(target.parent)
    killed = [target.parent / ".test.json.k1ll3d_0.tmp", target.parent / ".test.json.zz9x8w7v.tmp"]
    for path in killed:
        path.write_text("half")
    other = target.parent / ".train.json.k1ll3d_0.tmp"  # another output's: removed when that one is written
    other.write_text("half")

    atomic.write_json(target, {"accuracy": 1.0})

    assert json.loads(target.read_text()) == {"accuracy": 1.0}
    assert not any(p.exists() for p in killed)
    assert other.exists()
    assert_user_files_kept(target.parent)


def test_replace_dir_removes_a_killed_runs_temporary_and_old_directories(tmp_path: Path) -> None:
    models = tmp_path / "models"
    (models / ".final.abc12345.tmp/variables").mkdir(parents=True)  # a whole SavedModel, half written
    (models / ".final.abc12345.tmp/saved_model.pb").write_bytes(b"half")
    (models / ".final.old").mkdir()  # killed between the two renames
    (models / ".final.old/saved_model.pb").write_bytes(b"old")
    (models / ".final.backup").mkdir()  # the user's
    plant_user_files(models)

    with atomic.replace_dir(models / "final") as tmp:
        (tmp / "saved_model.pb").write_bytes(b"new")

    assert (models / "final/saved_model.pb").read_bytes() == b"new"
    assert sorted(p.name for p in models.iterdir() if p.name.startswith(".final")) == [".final.backup"]
    assert_user_files_kept(models)


def test_the_fixed_keras_temporary_names_are_cleared_before_use(tmp_path: Path) -> None:
    (tmp_path / ".best.tmp.keras").mkdir()  # a killed save; a directory, so Keras could not overwrite it
    (tmp_path / ".best.tmp.weights.h5").write_bytes(b"half")
    (tmp_path / ".final.tmp.keras").write_bytes(b"half")  # final.keras's: removed when that one is written
    plant_user_files(tmp_path)

    assert atomic.keras_temp(tmp_path / "best.keras", ".keras") == tmp_path / ".best.tmp.keras"
    assert atomic.keras_temp(tmp_path / "best.weights.h5", ".weights.h5") == tmp_path / ".best.tmp.weights.h5"

    assert not (tmp_path / ".best.tmp.keras").exists() and not (tmp_path / ".best.tmp.weights.h5").exists()
    assert (tmp_path / ".final.tmp.keras").exists()
    assert_user_files_kept(tmp_path)


@pytest.mark.slow
def test_the_trainer_saves_over_a_killed_saves_leftovers(tmp_path: Path) -> None:
    pytest.importorskip("tensorflow")
    from tests.test_trainer import make_trainer

    runner = make_trainer(tmp_path / "checkpoints")
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints/.best.weights.npz.abcd1234.tmp").write_bytes(b"half")
    (tmp_path / "models/.best.tmp.keras").mkdir(parents=True)
    plant_user_files(tmp_path / "models")

    runner.save_initial()
    runner.save_best()
    runner.save_keras(tmp_path / "models/best.keras")

    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["best.weights.npz"]
    assert (tmp_path / "models/best.keras").is_file() and not (tmp_path / "models/.best.tmp.keras").exists()
    assert_user_files_kept(tmp_path / "models")


# --- A wrong file type where an output goes ---------------------------------------------------------------


def test_replace_dir_replaces_a_file_and_leaves_nothing_behind(tmp_path: Path) -> None:
    (tmp_path / "plots").write_text("a file where the directory goes")
    for _ in range(2):  # the second run too: nothing hidden was left to trip over
        with atomic.replace_dir(tmp_path / "plots") as tmp:
            (tmp / "a.png").write_bytes(b"png")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["plots"]
        assert [p.name for p in (tmp_path / "plots").iterdir()] == ["a.png"]


@pytest.mark.parametrize("inside", [(), (".test.json.k1ll3d_0.tmp", ".per_class.json.old")])
def test_write_atomic_replaces_a_directory_that_holds_nothing_of_anyones(tmp_path: Path, inside: tuple) -> None:
    target = tmp_path / "metrics/test.json"
    target.mkdir(parents=True)
    for name in inside:
        (target / name).write_text("a leftover of ours")
    atomic.write_json(target, [1])
    assert json.loads(target.read_text()) == [1]


def test_write_atomic_refuses_a_directory_of_the_users_and_leaves_it_alone(tmp_path: Path) -> None:
    target = tmp_path / "metrics/test.json"
    target.mkdir(parents=True)
    (target / "mine.txt").write_text("mine")
    with pytest.raises(atomic.OutputError) as refused:
        atomic.write_json(target, [1])
    message = str(refused.value)
    assert "\n" not in message and str(target) in message and "mine.txt" in message and "move it" in message
    assert (target / "mine.txt").read_text() == "mine"
    assert sorted(p.name for p in target.parent.iterdir()) == ["test.json"]


def test_a_file_where_a_folder_of_outputs_goes_is_named(tmp_path: Path) -> None:
    (tmp_path / "metrics").write_text("a file")
    with pytest.raises(atomic.OutputError, match=r"^cannot write .*metrics/test.json: .*metrics is a file"):
        atomic.write_json(tmp_path / "metrics/test.json", [1])


# --- All or none ------------------------------------------------------------------------------------------


def test_write_files_refuses_before_writing_any(tmp_path: Path) -> None:
    first, second, third = tmp_path / "a.csv", tmp_path / "b.json", tmp_path / "c.json"
    for path in (first, second):
        path.write_text("old")
    third.mkdir()
    (third / "mine.txt").write_text("mine")
    with pytest.raises(atomic.OutputError, match="c.json is a directory"):
        atomic.write_files({first: b"new", second: b"new", third: b"new"})
    assert first.read_text() == second.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv", "b.json", "c.json"]


def test_write_files_replaces_none_when_a_write_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = [tmp_path / f"{name}.json" for name in "abc"]
    for path in paths:
        path.write_text("old")
    real_fsync, calls = os.fsync, []

    def fsync(fd: int) -> None:  # the disk fills up while the third file is written
        calls.append(fd)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(atomic.OutputError, match=r"^cannot write .*c.json: No space left on device"):
        atomic.write_files({path: b"new" for path in paths})
    assert [p.read_text() for p in paths] == ["old"] * 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.json", "c.json"]


# How HDF5 and TensorFlow word a full disk: no OSError, the reason somewhere in the text.
LIBRARY_FULL_DISK = "Can't write data (file write failed: errno = 28, error message = 'No space left on device')"


def test_writes_to_names_the_path_whatever_library_reports_the_full_disk(tmp_path: Path) -> None:
    target = tmp_path / "models/best"
    for error in (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), RuntimeError(LIBRARY_FULL_DISK)):
        with pytest.raises(atomic.OutputError) as failed, atomic.writes_to(target):
            raise error
        assert str(failed.value) == (
            f"cannot write {target}: No space left on device; check the free space and the permissions of "
            f"{target.parent}, then run again"
        )
    for other in (ValueError("not a write"), atomic.OutputError("already one line; No space left on device")):
        with pytest.raises(type(other)) as passed, atomic.writes_to(target):
            raise other
        assert passed.value is other


def test_replace_dir_turns_a_librarys_full_disk_into_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(atomic.OutputError, match=r"^cannot write .*models/best: No space left on device; "):
        with atomic.replace_dir(tmp_path / "models/best") as tmp:
            (tmp / "saved_model.pb").write_bytes(b"half")
            raise RuntimeError(LIBRARY_FULL_DISK)
    assert list((tmp_path / "models").iterdir()) == []


def test_run_main_names_the_file_of_a_full_disk_no_helper_caught(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from mnist_early_stopping.pipeline.stage import run_main

    monkeypatch.delenv("MNIST_DEBUG", raising=False)
    def main() -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "metrics/live/metrics.json")

    assert run_main("demo", main) == 1
    assert one_line(capsys.readouterr().err) == (
        "demo: cannot write metrics/live/metrics.json: No space left on device; free some space, then run again"
    )

    def reads() -> None:  # not a write: reported as what it is
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), "data/split/test.npz")

    assert run_main("demo", reads) == 1
    assert one_line(capsys.readouterr().err).startswith("demo: unexpected error: FileNotFoundError: ")


def fake_probabilities(images: np.ndarray) -> np.ndarray:
    """What a network that reads the label from the first pixel predicts."""
    return np.eye(10, dtype=np.float32)[images[:, 0, 0]] * 0.9 + 0.01


def write_fake_run(project: Path) -> None:
    """Splits whose first pixel is the label, best-network files, and a train.json that fake_network matches."""
    for name, n in (("validation", 30), ("test", 40)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        images = np.zeros((n, 28, 28), np.uint8)
        images[:, 0, 0] = labels
        path = project / f"data/split/{name}.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.npz_bytes(images, labels))
        if name == "validation":
            loss = float(evaluation.cross_entropy(labels.astype(np.int64), fake_probabilities(images)).mean())
    (project / "models/best/variables").mkdir(parents=True, exist_ok=True)
    (project / "models/best/variables/variables.index").write_bytes(b"weights")
    (project / "models/best.keras").write_bytes(b"archive")
    (project / "metrics").mkdir(exist_ok=True)
    metrics = {
        "best_validation_accuracy": 1.0, "best_iteration": 20, "stopped_iteration": 40, "best_validation_loss": loss,
        "best_network_sha256": {
            "savedmodel": sha256_tree(project / "models/best/variables"),
            "keras": sha256_file(project / "models/best.keras"),
        },
    }
    (project / "metrics/train.json").write_text(json.dumps(metrics))


def fake_network(path: Path, batch_size: int) -> Any:
    """A network that reads the label from the first pixel (no TensorFlow)."""
    return fake_probabilities


def test_evaluate_writes_nothing_unless_every_output_can_be_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(evaluation, "load_stage_network", fake_network)
    write_fake_run(tmp_path)
    for name in ("predictions.csv", "per_class.json"):
        (tmp_path / "metrics" / name).write_text("old")
    (tmp_path / "metrics/test.json").mkdir()
    (tmp_path / "metrics/test.json/mine.txt").write_text("mine")

    with pytest.raises(atomic.OutputError, match=r"^metrics/test.json is a directory.*mine.txt.*move it"):
        evaluation.evaluate(16)
    assert (tmp_path / "metrics/predictions.csv").read_text() == "old"
    assert (tmp_path / "metrics/per_class.json").read_text() == "old"

    (tmp_path / "metrics/test.json/mine.txt").unlink()  # moved away, as the message says: the next run works
    evaluation.evaluate(16)
    assert json.loads((tmp_path / "metrics/test.json").read_text())["best"]["accuracy"] == 1.0
    assert (tmp_path / "metrics/predictions.csv").read_text().startswith("actual,predicted,confidence\n0,0,")
    assert set(json.loads((tmp_path / "metrics/per_class.json").read_text())) == {"best", "final"}


# --- One line, exit 1 or 2 --------------------------------------------------------------------------------


def write_split(project: Path, content: bytes) -> Path:
    path = project / "data/split/test.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def only_images() -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, images=np.zeros((3, 28, 28), np.uint8))
    return buffer.getvalue()


def good_split() -> bytes:
    labels = (np.arange(20) % 10).astype(np.uint8)
    return data.npz_bytes(np.zeros((20, 28, 28), np.uint8), labels)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (lambda: good_split()[:300], "is truncated or corrupt"),
        (lambda: good_split()[:-30], "is truncated or corrupt"),
        (lambda: b"", "is not an .npz archive"),
        (lambda: b"not a zip file at all", "is not an .npz archive"),
        (lambda: only_images(), "has no array labels"),
        (lambda: data.npz_bytes(np.zeros((3, 28, 28), np.float32), np.zeros(3, np.uint8)), "not uint8 (N, 28, 28)"),
    ],
)
def test_a_bad_split_file_is_named_with_what_to_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: Any, problem: str
) -> None:
    monkeypatch.chdir(tmp_path)
    write_split(tmp_path, content())
    with pytest.raises(StageError) as failed:
        data.load_split("test")
    message = str(failed.value)
    assert failed.value.code == 1 and message.startswith("data/split/test.npz ") and problem in message, message
    assert message.endswith("; re-run the split stage: dvc repro split") and "\n" not in message


TRAIN_JSON_CASES = [
    ("{not json", "metrics/train.json is not valid JSON"),
    ("[1, 2]", "metrics/train.json is not a JSON object"),
    ('{"best_validation_accuracy": 1.0, "stopped_iteration": 40}', "metrics/train.json has no key best_iteration"),
    ('{"best_validation_accuracy": 1.0, "best_iteration": "20", "stopped_iteration": 40}',
     "metrics/train.json: best_iteration is '20', not a number"),
]


@pytest.mark.parametrize(("text", "problem"), TRAIN_JSON_CASES)
def test_evaluate_names_the_broken_train_json_and_its_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, problem: str
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(evaluation, "load_stage_network", fake_network)
    write_fake_run(tmp_path)
    (tmp_path / "metrics/train.json").write_text(text)
    with pytest.raises(StageError) as failed:
        evaluation.evaluate(16)
    message = str(failed.value)
    assert message.startswith(problem) and message.endswith("re-run the train stage: dvc repro train")
    assert not (tmp_path / "metrics/test.json").exists()


@pytest.mark.parametrize(("text", "problem"), TRAIN_JSON_CASES)
def test_plots_names_the_broken_train_json_and_its_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, problem: str
) -> None:
    monkeypatch.chdir(tmp_path)
    write_inputs(tmp_path)
    if "best_iteration" not in problem:
        (tmp_path / "metrics/train.json").write_text(text)
    else:  # plots reads the iterations only
        (tmp_path / "metrics/train.json").write_text(text.replace('"best_validation_accuracy": 1.0, ', ""))
    with pytest.raises(StageError) as failed:
        figures.load_inputs()
    message = str(failed.value)
    assert message.startswith(problem) and message.endswith("re-run the train stage: dvc repro train")


def test_run_main_turns_an_unexpected_error_into_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from mnist_early_stopping.pipeline.stage import run_main

    def main() -> None:
        raise RuntimeError("no such thing\nand pages more")

    monkeypatch.delenv("MNIST_DEBUG", raising=False)
    assert run_main("demo", main) == 1
    assert one_line(capsys.readouterr().err) == (
        "demo: unexpected error: RuntimeError: no such thing (set MNIST_DEBUG=1 for the traceback)"
    )
    monkeypatch.setenv("MNIST_DEBUG", "1")
    assert run_main("demo", main) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):") and "and pages more" in err and "in main" in err


def test_run_main_prints_a_stage_error_after_the_stage_name_with_its_status(capsys: pytest.CaptureFixture[str]) -> None:
    from mnist_early_stopping.pipeline.stage import StageError, run_main, say

    def interrupted() -> None:
        raise KeyboardInterrupt

    def refuses() -> None:
        raise atomic.OutputError("plots is in the way; move it")

    def bad_input() -> None:
        raise StageError("x must be positive", code=2)

    def stopped() -> None:
        say("a note")
        raise StageError("interrupted at iteration 60", code=130)

    def mirrors() -> None:
        raise StageError("could not get a file:\n  m1: refused\nevery mirror failed")

    with pytest.raises(KeyboardInterrupt):
        run_main("demo", interrupted)
    assert run_main("demo", lambda: None) == 0
    assert run_main("demo", refuses) == 1
    assert one_line(capsys.readouterr().err) == "demo: plots is in the way; move it"
    assert run_main("demo", bad_input) == 2
    assert one_line(capsys.readouterr().err) == "demo: x must be positive"
    assert run_main("demo", stopped) == 130
    assert capsys.readouterr() == ("demo: a note\n", "demo: interrupted at iteration 60\n")
    assert run_main("demo", mirrors) == 1  # indented details keep their place
    assert capsys.readouterr().err == "demo: could not get a file:\n  m1: refused\ndemo: every mirror failed\n"
    say("outside a stage")
    assert capsys.readouterr().out == "outside a stage\n"


def test_every_stage_runs_through_run_main() -> None:
    for path in sorted((ROOT / "stages").glob("[!_]*.py")):
        tail = path.read_text().split('if __name__ == "__main__":')[-1]
        assert tail.strip() == f'raise SystemExit(run_main("{path.stem}", main))', path.name


def tree_state(root: Path) -> dict[str, tuple[int, int] | None]:
    """Every path under `root`, with a file's size and modification time (Python's bytecode caches aside)."""
    paths = [p for p in sorted(root.rglob("*")) if "__pycache__" not in p.parts]
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else None for p in paths}


@pytest.mark.slow
def test_every_stage_answers_help_and_refuses_any_other_argument(project: Path, tiny_mirror: TinyMirror) -> None:
    env = stage_env(tiny_mirror)
    pipeline = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    before = tree_state(project)
    for stage, entry in pipeline.items():
        shown = subprocess.run([sys.executable, "-m", f"stages.{stage}", "--help"], cwd=project, env=env,
                               capture_output=True, text=True, timeout=120)
        assert shown.returncode == 0 and shown.stderr == "", (stage, shown.stderr)
        assert shown.stdout.startswith(f"usage: python -m stages.{stage}"), shown.stdout
        params_line = next(line for line in shown.stdout.splitlines() if line.startswith("params:"))
        for section in entry.get("params", []):
            name = section if isinstance(section, str) else "all of params.yaml"
            assert name in params_line, (stage, params_line)
        outputs = [next(iter(o)) if isinstance(o, dict) else o for k in ("outs", "metrics", "plots") for o in entry.get(k, [])]
        assert all(out in shown.stdout for out in outputs), (stage, shown.stdout)
        refused = subprocess.run([sys.executable, "-m", f"stages.{stage}", "--max-iterations", "5"], cwd=project,
                                 env=env, capture_output=True, text=True, timeout=120)
        assert refused.returncode == 2 and refused.stdout == "", (stage, refused.stdout)
        assert refused.stderr.splitlines() == [
            f"{stage}: unknown argument '--max-iterations': a stage takes no arguments (its settings are in "
            f"params.yaml); see python -m stages.{stage} --help"
        ]
    assert tree_state(project) == before, "--help or a refused argument touched the project"


@pytest.fixture
def restore_signals() -> Iterator[None]:
    """Put back the SIGINT and SIGTERM handlers that an in-process training replaces."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.mark.slow
@pytest.mark.parametrize("broken", ["full disk under the weights", "read-only checkpoints"])
def test_a_checkpoint_directory_that_cannot_be_written_is_one_line(
    broken: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restore_signals: None
) -> None:
    # In-process, with the OS error injected: chmod does not stop root, who may run the tests.
    tf = pytest.importorskip("tensorflow")
    import keras  # noqa: F401  (as the stage imports it, before the training module)

    from mnist_early_stopping.training import loop as training
    from tests.test_trainer import MODEL, TRAIN, tiny_data

    monkeypatch.chdir(tmp_path)
    for name, (images, labels) in zip(("train", "validation"), tiny_data()):
        (tmp_path / "data/split").mkdir(parents=True, exist_ok=True)
        (tmp_path / f"data/split/{name}.npz").write_bytes(data.npz_bytes(images, labels))

    def full(*args: Any, **kwargs: Any) -> None:  # as TensorFlow's checkpoint writer reports it
        raise tf.errors.ResourceExhaustedError(
            None, None, "checkpoints/train/x/ckpt-40_temp/part-00000-of-00001.data-00000-of-00001.tempstate1; "
            "No space left on device")

    def read_only(*args: Any, **kwargs: Any) -> None:
        raise tf.errors.PermissionDeniedError(None, None, "checkpoints/train/x/ckpt-40_temp; Permission denied")

    monkeypatch.setattr(tf.train.Checkpoint, "write", full if broken.startswith("full") else read_only)
    reason = "No space left on device" if broken.startswith("full") else "Permission denied"
    with pytest.raises(StageError) as failed:
        training.train(MODEL, TRAIN)
    entry = next(p for p in (tmp_path / "checkpoints/train").iterdir() if p.is_dir())
    assert str(failed.value) == (
        f"cannot write checkpoints/train/{entry.name}: {reason}; check the free space and the permissions of "
        "checkpoints/train, then run again"
    )


# --- Through the real stages ------------------------------------------------------------------------------


@pytest.fixture
def plots_project(tmp_path: Path) -> Path:
    """A project copy with small hand-made inputs for the plots stage."""
    project = copy_project(tmp_path / "project")
    write_inputs(project)
    return project


@pytest.mark.slow
def test_plots_stage_replaces_a_plots_file_and_clears_a_killed_runs_leftovers(plots_project: Path) -> None:
    env = dict(os.environ, PYTHONPATH="")
    (plots_project / "plots").write_text("a file where the figures go")
    (plots_project / ".plots.k1ll3d_0.tmp").mkdir()
    (plots_project / ".plots.k1ll3d_0.tmp/test_images.png").write_bytes(b"half")
    plant_user_files(plots_project)
    for _ in range(2):  # and again: nothing left behind that the next run trips over
        run_stage(plots_project, "plots", env)
        assert (plots_project / "plots/confusion_matrix.png").is_file()
        assert [p.name for p in plots_project.iterdir() if p.name.startswith(".plots")] == []
    assert_user_files_kept(plots_project)


@pytest.mark.slow
def test_an_unexpected_error_in_a_stage_is_one_line_unless_debugging(plots_project: Path) -> None:
    env = dict(os.environ, PYTHONPATH="")
    env.pop("MNIST_DEBUG", None)
    run_stage(plots_project, "plots", env)
    before = {p.name: p.read_bytes() for p in (plots_project / "plots").iterdir()}
    # Kernels of the wrong shape: nothing checks for that, so it is an error nobody foresaw.
    flat = {f"conv1_{version}": np.zeros(3) for version in ("initial", "best", "final")}
    np.savez(plots_project / "models/kernels.npz", **flat)
    failed = run_stage(plots_project, "plots", env, check=False)
    assert failed.returncode == 1
    line = one_line(failed.stderr)
    assert line.startswith("plots: unexpected error: ValueError: ") and line.endswith(
        "(set MNIST_DEBUG=1 for the traceback)"
    )
    assert {p.name: p.read_bytes() for p in (plots_project / "plots").iterdir()} == before
    assert [p.name for p in plots_project.iterdir() if p.name.startswith(".plots")] == []
    debugged = run_stage(plots_project, "plots", {**env, "MNIST_DEBUG": "1"}, check=False)
    assert debugged.returncode == 1 and "Traceback (most recent call last):" in debugged.stderr


@pytest.mark.slow
def test_split_stage_errors_are_one_line_with_exit_1_or_2(
    project: Path, tiny_mirror: TinyMirror
) -> None:
    env = stage_env(tiny_mirror)
    (project / "data").mkdir()
    (project / "data/raw").write_text("a file where the MNIST files go")
    failed = run_stage(project, "split", env, check=False)
    assert failed.returncode == 1
    assert one_line(failed.stderr) == (
        "split: data/raw is a file, not the download stage's directory of MNIST files; "
        "move it elsewhere, then run `dvc repro download`"
    )

    (project / "data/raw").unlink()
    write_mirror(project / "data/raw", gzipped=False)  # 600 training images
    write_params(project, {"split": {"validation_size": 600}})
    failed = run_stage(project, "split", env, check=False)
    assert failed.returncode == 2
    assert one_line(failed.stderr) == (
        "split: split.validation_size 600 leaves no training images out of 600; set it below 600 in params.yaml"
    )

    write_params(project, {"split": {"validation_size": 100}})
    (project / "metrics/data.json").mkdir(parents=True)
    (project / "metrics/data.json/mine.txt").write_text("mine")
    failed = run_stage(project, "split", env, check=False)
    assert failed.returncode == 1
    assert one_line(failed.stderr).startswith("split: metrics/data.json is a directory")
    assert not (project / "data/split").exists() or not any((project / "data/split").iterdir())


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a chmod 0o500 directory; the in-process test "
                    "test_a_checkpoint_directory_that_cannot_be_written_is_one_line injects the error instead")
def test_train_stage_with_a_read_only_checkpoint_directory(project: Path, tiny_mirror: TinyMirror) -> None:
    env = stage_env(tiny_mirror)
    run_stage(project, "download", env)
    run_stage(project, "split", env)
    checkpoints = project / "checkpoints/train"
    checkpoints.mkdir(parents=True)
    checkpoints.chmod(0o500)
    try:
        failed = run_stage(project, "train", env, check=False)
    finally:
        checkpoints.chmod(0o700)
    assert failed.returncode == 1
    line = one_line(failed.stderr)
    assert line.startswith("train: cannot write checkpoints/train/") and "Permission denied" in line, line


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A tiny project trained over what killed runs left in models/, and wrong types at two outputs."""
    project, env = staged_project(tmp_path_factory.mktemp("reliability"), ("download", "split"))
    models = project / "models"
    (models / ".final.abc12345.tmp/variables").mkdir(parents=True)
    (models / ".final.abc12345.tmp/saved_model.pb").write_bytes(b"half")
    (models / ".initial.old").mkdir()
    (models / ".best.tmp.keras").mkdir()
    (models / ".kernels.npz.k1ll3d_0.tmp").write_bytes(b"half")
    (models / "best").write_text("a file where the SavedModel directory goes")
    (models / "final.keras").mkdir()  # an empty directory where the .keras file goes
    plant_user_files(models)
    run_stage(project, "train", env)
    return project, env


@pytest.mark.slow
def test_train_stage_clears_leftovers_and_replaces_wrong_types(trained: tuple[Path, dict[str, str]]) -> None:
    project, _ = trained
    models = project / "models"
    assert (models / "best/saved_model.pb").is_file() and (models / "final.keras").is_file()
    hidden = sorted(p.name for p in models.iterdir() if p.name.startswith("."))
    assert hidden == sorted(n for n in USER_FILES if n.startswith("."))
    assert_user_files_kept(models)


@pytest.mark.slow
def test_evaluate_stage_refuses_a_users_directory_at_test_json_and_writes_nothing(
    trained: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    source, env = trained
    project = tmp_path / "project"
    shutil.copytree(source, project)
    for name in ("predictions.csv", "per_class.json"):
        (project / "metrics" / name).write_text("old")
    (project / "metrics/test.json").mkdir()
    (project / "metrics/test.json/mine.txt").write_text("mine")
    failed = run_stage(project, "evaluate", env, check=False)
    assert failed.returncode == 1
    assert one_line(failed.stderr) == (
        "evaluate: metrics/test.json is a directory, where this stage writes a file, and it holds mine.txt; "
        "move it elsewhere, then run again"
    )
    assert (project / "metrics/predictions.csv").read_text() == "old"
    assert (project / "metrics/per_class.json").read_text() == "old"
    assert (project / "metrics/test.json/mine.txt").read_text() == "mine"

    (project / "metrics/test.json/mine.txt").unlink()  # an empty directory is simply replaced
    run_stage(project, "evaluate", env)
    metrics = json.loads((project / "metrics/test.json").read_text())
    assert set(metrics) == {"best", "final", "untrained", "restore_check"}
    assert (project / "metrics/predictions.csv").read_text().startswith("actual,predicted,confidence\n")
