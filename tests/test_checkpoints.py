"""The checkpoint store and the stage input check: file logic only, no TensorFlow."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from mnist_early_stopping.pipeline import run_inputs
from mnist_early_stopping.pipeline.layout import CHECKPOINT_DIR
from mnist_early_stopping.pipeline.stage import StageError
from mnist_early_stopping.pipeline.workspace_lock import hold
from mnist_early_stopping.training import checkpoints


class FakeCheckpoint:
    """Writes the two files a tf.train.Checkpoint writes for a prefix."""

    def write(self, file_prefix: str) -> str:
        Path(file_prefix + ".index").write_bytes(b"index of " + file_prefix.encode())
        Path(file_prefix + ".data-00000-of-00001").write_bytes(b"data of " + file_prefix.encode())
        return file_prefix


def test_a_queued_copy_uses_the_main_workspaces_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    main = tmp_path / "repo"
    copy = main / ".dvc/tmp/exps/tmpab12cd"
    copy.mkdir(parents=True)
    monkeypatch.chdir(main)
    assert checkpoints.store_dir(main) == (CHECKPOINT_DIR, None)
    store, note = checkpoints.store_dir(copy)
    assert store == copy / CHECKPOINT_DIR and note is not None and "no dvc.yaml" in note  # not a DVC project
    (main / "dvc.yaml").write_text("stages: {}\n")
    assert checkpoints.store_dir(copy) == (main.resolve() / CHECKPOINT_DIR, None)


def test_entries_are_bound_to_their_manifest(tmp_path: Path) -> None:
    entry = checkpoints.Entry(tmp_path, {"train": {"seed": 1}})
    other = checkpoints.Entry(tmp_path, {"train": {"seed": 2}})
    assert entry.path != other.path
    assert not entry.is_ours()
    entry.start_fresh()
    assert entry.is_ours()
    (entry.path / checkpoints.MANIFEST).write_text("")  # damaged
    assert not entry.is_ours()


def test_only_intact_checkpoints_of_this_manifest_are_offered(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for iteration in (40, 80, 120):
        checkpoints.save(FakeCheckpoint(), tmp_path, iteration, "ours", keep=3)
    assert list(checkpoints.intact(tmp_path, "ours")) == [tmp_path / f"ckpt-{i}" for i in (120, 80, 40)]
    assert list(checkpoints.intact(tmp_path, "another run")) == []
    assert capsys.readouterr().out.count("written by a run with other inputs") == 3

    (tmp_path / "ckpt-120.index").write_bytes(b"")  # zero bytes
    (tmp_path / "ckpt-80.json").write_bytes(b"")  # a torn record
    assert list(checkpoints.intact(tmp_path, "ours")) == [tmp_path / "ckpt-40"]
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"ignoring the checkpoint at iteration 120 in {tmp_path}: ckpt-120.index is damaged",
        f"ignoring the damaged checkpoint record {tmp_path / 'ckpt-80.json'} (JSONDecodeError)",
    ]


def test_saving_keeps_the_newest_checkpoints_and_nothing_else_of_older_ones(tmp_path: Path) -> None:
    (tmp_path / "ckpt-10_temp").mkdir()  # what a killed write leaves
    for iteration in (20, 40, 60, 80):
        checkpoints.save(FakeCheckpoint(), tmp_path, iteration, "ours", keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"ckpt-{i}{suffix}" for i in (60, 80) for suffix in (".index", ".data-00000-of-00001", ".json")
    )


def test_the_store_keeps_the_newest_unfinished_entries_and_none_in_training(tmp_path: Path) -> None:
    entries = [checkpoints.Entry(tmp_path, {"train": {"seed": seed}}) for seed in range(6)]
    for age, entry in enumerate(entries):
        entry.start_fresh()
        os.utime(entry.path, ns=(age * 10**9, age * 10**9))  # entries[5] is the newest
    keep = entries[5].path
    with hold(entries[0].lock, "a training"):  # the oldest is in training right now
        removed = checkpoints.prune(tmp_path, keep)
    assert removed == [entries[1].path]
    assert sorted(p for p in tmp_path.iterdir() if p.is_dir()) == sorted(
        e.path for e in (entries[0], *entries[2:])
    )


def test_a_second_holder_of_an_entry_is_refused_in_one_line(tmp_path: Path) -> None:
    entry = checkpoints.Entry(tmp_path, {"train": {"seed": 1}})
    with entry.held(), pytest.raises(StageError) as refused, entry.held():
        pass
    assert "another training with the same params, data and code is running" in str(refused.value)


def test_best_weights_are_checked_against_the_digest_recorded_when_saved(tmp_path: Path) -> None:
    path = tmp_path / "best.weights.npz"
    arrays = [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(3, np.float32)]
    digest = checkpoints.write_weights(path, arrays)
    assert checkpoints.weights_problem(path, digest, 2) is None
    assert [a.tolist() for a in checkpoints.read_weights(path)] == [a.tolist() for a in arrays]
    other = checkpoints.write_weights(tmp_path / "other.weights.npz", [arrays[1], arrays[0]])
    os.replace(tmp_path / "other.weights.npz", path)  # another network's file put in its place
    assert checkpoints.weights_problem(path, digest, 2) == "is not the file saved as the best (damaged or replaced)"
    assert checkpoints.weights_problem(path, other, 3) == "does not hold 3 arrays"
    path.write_bytes(b"")
    assert "damaged or replaced" in (checkpoints.weights_problem(path, digest, 2) or "")


DVC_YAML = """stages:
  train:
    cmd: python -m stages.train
    deps:
      - code.py
      - data
    params:
      - train
  everything:
    cmd: python -m stages.everything
    params:
      - params.yaml:
"""


@pytest.fixture
def stage_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dvc.yaml").write_text(DVC_YAML)
    (tmp_path / "params.yaml").write_text("train:\n  learning_rate: 1e-4\n  seed: 1\nplots:\n  dpi: 100\n")
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data/train.npz").write_bytes(b"images")
    return tmp_path


def test_a_stage_whose_inputs_stayed_the_same_passes(stage_dir: Path) -> None:
    started = run_inputs.take("train")
    (stage_dir / "params.yaml").write_text("train:\n  learning_rate: 1e-4\n  seed: 1\nplots:\n  dpi: 200\n")
    run_inputs.verify(started)  # another stage's section: not this stage's input
    assert run_inputs.take("not declared") is None
    run_inputs.verify(None)


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda d: (d / "params.yaml").write_text("train:\n  learning_rate: 2e-4\n  seed: 1\n"),
         "params.yaml changed while training (train.learning_rate: 0.0001 -> 0.0002); nothing recorded, "
         "run dvc repro again"),
        (lambda d: (d / "params.yaml").write_text("train:\n  learning_rate: 1e-4\n  seed: 1\n  sede: 2\n"),
         "params.yaml changed while training (train.sede: (none) -> 2); nothing recorded, run dvc repro again"),
        (lambda d: (d / "code.py").write_text("x = 2\n"),
         "code.py changed while training; nothing recorded, run dvc repro again"),
        (lambda d: (d / "data/train.npz").write_bytes(b"other images"),
         "data changed while training; nothing recorded, run dvc repro again"),
    ],
    ids=["param", "new key", "code", "data"],
)
def test_an_input_changed_while_the_stage_ran_is_one_line(stage_dir: Path, edit, message: str) -> None:
    started = run_inputs.take("train")
    edit(stage_dir)
    with pytest.raises(StageError) as changed:
        run_inputs.verify(started)
    assert str(changed.value) == message


def test_a_stage_tracking_the_whole_file_sees_a_new_section(stage_dir: Path) -> None:
    started = run_inputs.take("everything")
    with (stage_dir / "params.yaml").open("a") as f:
        f.write("trian:\n  seed: 1\n")
    with pytest.raises(StageError, match=r"params.yaml changed while the stage ran \(trian.seed: \(none\) -> 1\)"):
        run_inputs.verify(started)
