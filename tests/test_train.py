"""The train stage on tiny data: outputs, determinism, resume after SIGKILL, refusing a foreign checkpoint."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mnist_early_stopping.training.loop import cpu_description, log_line, manifest_differences
from tests.conftest import read_curves, run_stage, stage_env, write_params

RESULT_KEYS = ("best_iteration", "stopped_iteration", "best_validation_accuracy", "best_validation_loss", "stop_reason")


def test_log_line_matches_the_tutorial():
    assert log_line(4800, 1.0, 0.988, True) == "Iter:   4800, Train-Batch Accuracy: 100.0%, Validation Acc:  98.8% *"
    assert log_line(100, 0.844, 0.852, False) == "Iter:    100, Train-Batch Accuracy:  84.4%, Validation Acc:  85.2%"


def test_progress_note_gives_the_best_and_the_earliest_stop_with_its_eta():
    from mnist_early_stopping.training.loop import progress_note

    assert progress_note(300, 200, 200, 1000, 10000, 50.0) == "best at 200; stops at 1200 at the earliest, in 0:00:18"
    assert progress_note(9500, 9000, 9000, 1000, 10000, 100.0) == "best at 9000; stops at 10000 at the earliest, in 0:00:05"
    assert progress_note(100, 0, 0, 1000, 10000, None) == "no best yet; stops at 1000 at the earliest, in ?"
    # With train.baseline or train.start_from the clock may start elsewhere than at the best.
    assert progress_note(700, 600, 0, 1000, 10000, None) == "best at 600; stops at 1000 at the earliest, in ?"


def test_cpu_description_names_the_isa_limit_and_the_thread_count(monkeypatch: pytest.MonkeyPatch):
    # Both change float32 results, so metrics/train.json and the provenance record them.
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("TF_NUM_INTRAOP_THREADS", raising=False)
    plain = cpu_description()
    assert "limited" not in plain and "threads" not in plain
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.setenv("TF_NUM_INTRAOP_THREADS", "1")
    assert cpu_description() == f"{plain}, oneDNN limited to AVX2, 1 intra-op threads"


def test_manifest_differences_name_what_changed():
    old = {"model": {"conv_filters": [16, 36]}, "train": {"seed": 1}, "code": {"stages/train.py": "a"}}
    new = {"model": {"conv_filters": [16, 32]}, "train": {"seed": 1}, "code": {"stages/train.py": "b"}}
    assert manifest_differences(old, new) == ["stages/train.py changed", "model.conv_filters: [16, 36] -> [16, 32]"]
    assert manifest_differences(new, new) == []


def results(project: Path) -> dict:
    metrics = json.loads((project / "metrics/train.json").read_text())
    return {k: metrics[k] for k in RESULT_KEYS}


def kill_after_checkpoint(project: Path, env: dict[str, str], sig: int = signal.SIGKILL) -> None:
    """Start training, kill it as soon as a resumable checkpoint is on disk."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "stages.train"], cwd=project, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    # A checkpoint's record is written (atomically) last: then the checkpoint is complete.
    while not list((project / "checkpoints/train").glob("*/ckpt-*.json")):
        assert proc.poll() is None, "training finished before it could be killed"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.005)
    proc.send_signal(sig)
    proc.wait(timeout=60)
    assert not (project / "metrics/train.json").exists()


@pytest.mark.slow
def test_train_writes_a_savedmodel_that_loads_in_a_fresh_process(prepared):
    project, env = prepared
    out = run_stage(project, "train", env).stdout
    assert "Iter:     20, Train-Batch Accuracy:" in out
    assert "No improvement found in a while, stopping optimization." in out
    assert "Time usage: 0:00:" in out
    metrics = json.loads((project / "metrics/train.json").read_text())
    assert metrics["stop_reason"] == "patience"
    assert metrics["best_iteration"] < metrics["stopped_iteration"] <= 400
    assert metrics["best_validation_accuracy"] > 0.5
    history = read_curves(project)
    assert [int(r["iteration"]) for r in history] == list(range(20, metrics["stopped_iteration"] + 1, 20))
    best = history[metrics["best_iteration"] // 20 - 1]
    assert float(best["validation_accuracy"]) == metrics["best_validation_accuracy"]
    live = json.loads((project / "metrics/live/metrics.json").read_text())
    assert live["step"] == metrics["stopped_iteration"] and set(live) == {"step", *history[0]} - {"iteration"}
    assert not (project / "checkpoints").exists(), "checkpoints are cleaned up after a successful run"
    with __import__("numpy").load(project / "models/kernels.npz") as k:
        assert sorted(k.files) == sorted(f"conv{i}_{w}" for i in (1, 2) for w in ("initial", "best", "final"))
        assert k["conv1_initial"].shape == (5, 5, 1, 4)
    # No project code on the path: the SavedModel stands alone.
    check = (
        "import sys, numpy as np, tensorflow as tf\n"
        "assert 'stages' not in sys.modules and 'mnist_early_stopping' not in sys.modules\n"
        "m = tf.saved_model.load(sys.argv[1])\n"
        "x = np.load(sys.argv[2])['images'][:50].astype('float32') / 255\n"
        "p = m.serve(x).numpy()\n"
        "s = m.signatures['serving_default']\n"
        "q = list(s(tf.constant(x)).values())[0].numpy()\n"
        "assert p.shape == (50, 10) and np.allclose(p.sum(1), 1, atol=1e-4) and np.allclose(p, q)\n"
        "print('ok', (p.argmax(1) == np.load(sys.argv[2])['labels'][:50]).mean())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", check, str(project / "models/best"), str(project / "data/split/validation.npz")],
        cwd="/", env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok")
    assert_keras_file_fine_tunes_and_matches_the_savedmodel(project, env)


KERAS_CHECK = (
    "import sys, numpy as np, keras, tensorflow as tf\n"
    "assert 'stages' not in sys.modules and 'mnist_early_stopping' not in sys.modules\n"
    "model = keras.saving.load_model(sys.argv[1])\n"
    "data = np.load(sys.argv[3])\n"
    "x, y = data['images'].astype('float32') / 255, data['labels'].astype('int32')\n"
    "saved = tf.saved_model.load(sys.argv[2])\n"
    "served = saved.serve(x).numpy()\n"
    "ours = model.predict(x, verbose=0)\n"
    "assert np.array_equal(ours.argmax(1), served.argmax(1)), 'argmax differs'\n"
    "assert np.abs(ours - served).max() < 1e-5, np.abs(ours - served).max()\n"
    "loss = model.fit(x[:64], y[:64], batch_size=64, epochs=1, verbose=0).history['loss'][0]\n"
    "assert np.isfinite(loss), loss\n"
    "print('ok', loss)\n"
)


def assert_keras_file_fine_tunes_and_matches_the_savedmodel(project: Path, env: dict[str, str]) -> None:
    """models/{best,final}.keras load in plain Keras, agree with the SavedModels and train one more step."""
    for name in ("best", "final"):
        done = subprocess.run(
            [sys.executable, "-c", KERAS_CHECK, str(project / f"models/{name}.keras"), str(project / f"models/{name}"),
             str(project / "data/split/validation.npz")],
            cwd="/", env=env, capture_output=True, text=True, timeout=300,
        )
        assert done.returncode == 0 and done.stdout.startswith("ok"), done.stderr[-3000:]
        assert "Skipping variable loading" not in done.stderr, done.stderr[-3000:]


@pytest.mark.slow
def test_same_params_same_results_and_resume_after_sigkill(prepared):
    project, env = prepared
    run_stage(project, "train", env)
    first = results(project)
    first_history = read_curves(project)
    run_stage(project, "train", env)
    assert results(project) == first, "two runs with the same params and data differ"
    assert read_curves(project) == first_history

    (project / "metrics/train.json").unlink()
    kill_after_checkpoint(project, env)
    resumed = run_stage(project, "train", env).stdout
    assert "train: resuming from the checkpoint at iteration" in resumed
    assert results(project) == first
    assert read_curves(project) == first_history


def damage_checkpoint_data(entry: Path) -> str:
    """Empty the newest checkpoint's data file: that checkpoint is skipped, with one line naming the file."""
    data = sorted(entry.glob("ckpt-*.data-*"), key=lambda p: int(p.name.split(".")[0].split("-")[1]))[-1]
    data.write_bytes(b"")
    return f"{data.name} is damaged"


def damage_best_weights(entry: Path) -> str:
    """Empty best.weights.npz: the best weights come from the checkpoint instead, with one line naming it."""
    (entry / "best.weights.npz").write_bytes(b"")
    return "best.weights.npz"


def stop_after(project: Path, env: dict[str, str], iteration: int) -> None:
    """Start training and SIGTERM it once it logs `iteration`: it saves a checkpoint there and exits."""
    proc = subprocess.Popen([sys.executable, "-m", "stages.train"], cwd=project, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(f"Iter: {iteration:>6}"):
            proc.send_signal(signal.SIGTERM)
            break
    proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, "training ended before it could be stopped"


@pytest.mark.slow
@pytest.mark.parametrize("damage", [damage_checkpoint_data, damage_best_weights], ids=["checkpoint", "best-weights"])
def test_a_damaged_checkpoint_file_is_named_and_the_run_still_gives_the_uninterrupted_result(prepared, damage):
    project, env = prepared
    run_stage(project, "train", env)
    first, first_history = results(project), read_curves(project)
    (project / "metrics/train.json").unlink()
    # Stopped after the best iteration: best.weights.npz is not written again, but read at the end.
    stop_after(project, env, first["best_iteration"] + 20)
    [entry] = [p for p in (project / "checkpoints/train").iterdir() if p.is_dir()]
    named = damage(entry)
    done = run_stage(project, "train", env)
    lines = [line for line in done.stdout.splitlines() if named in line]
    assert len(lines) == 1 and lines[0].startswith("train: "), done.stdout
    assert results(project) == first
    assert read_curves(project) == first_history
    assert run_stage(project, "train", env).returncode == 0  # and no failure that repeats


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_says_how_to_resume(prepared):
    project, env = prepared
    write_params(project, {"train": {"checkpoint_every": 100000, "max_iterations": 100000, "patience": 100000}})
    proc = subprocess.Popen(
        [sys.executable, "-m", "stages.train"], cwd=project, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )
    for line in proc.stdout:
        if line.startswith("Iter:     60"):
            proc.send_signal(signal.SIGTERM)
            break
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "checkpoint saved, `dvc repro` resumes from it" in err
    assert list((project / "checkpoints/train").glob("*/ckpt-*.index"))


@pytest.mark.slow
def test_checkpoint_of_a_different_network_is_not_loaded(prepared):
    project, env = prepared
    kill_after_checkpoint(project, env)
    write_params(project, {"model": {"conv_filters": [4, 6]}})
    out = run_stage(project, "train", env).stdout
    lines = [l for l in out.splitlines() if l.startswith("train: not resuming")]
    assert len(lines) == 1
    assert "model.conv_filters: [4, 8] -> [4, 6]" in lines[0] and "starting fresh" in lines[0]
    assert "resuming from the checkpoint" not in out


@pytest.mark.slow
@pytest.mark.parametrize(
    "section,key,value,message",
    [
        ("train", "patience", 0, "train.patience must be an integer between 1 and"),
        ("train", "monitor", "accuracy", "train.monitor must be one of validation_accuracy, validation_loss"),
        ("train", "learning_rate", "fast", "train.learning_rate must be a number greater than 0.0"),
    ],
)
def test_bad_train_params_are_rejected(project, tiny_mirror, section, key, value, message):
    write_params(project, {section: {key: value}})
    result = run_stage(project, "train", stage_env(tiny_mirror), check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert message in result.stderr


@pytest.mark.slow
def test_a_second_training_of_the_same_inputs_is_refused_then_takes_over_a_dead_ones_lock(prepared):
    project, env = prepared
    write_params(project, {"train": {"max_iterations": 100000, "patience": 100000}})
    first = subprocess.Popen(
        [sys.executable, "-m", "stages.train"], cwd=project, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        locks: list[Path] = []
        while not (locks and locks[0].read_text().strip()):
            locks = list((project / "checkpoints/train").glob("*.lock"))
            assert first.poll() is None and time.monotonic() < deadline, "the first training did not start"
            time.sleep(0.05)
        second = run_stage(project, "train", env, check=False)
        assert second.returncode == 1
        lines = second.stderr.strip().splitlines()
        assert lines == [lines[0]] and f"pid {first.pid}" in lines[0], second.stderr
        assert "another training with the same params, data and code is running" in lines[0]
        assert first.poll() is None, "the refused run must not disturb the running one"
    finally:
        first.kill()
        first.wait(timeout=60)
    # The kernel released the dead process's lock: the next run takes it over.
    write_params(project, {"train": {"max_iterations": 40, "patience": 100}})
    run_stage(project, "train", env)
    # What is left is the killed run's entry (other params), kept for a later resume.
    # (A SIGKILLed run's lock file stays; the kernel released its lock.)
    assert [p.is_dir() for p in (project / "checkpoints/train").iterdir() if p.suffix != ".lock"] == [True]
