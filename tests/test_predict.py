"""mnist-predict: inputs, failures, output formats and batches; the TensorFlow runs are marked slow."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from mnist_early_stopping.serving import images, predict
from tests.conftest import params_with

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "mnist-predict: "


def write_digit(path: Path, box: tuple[int, int, int, int] = (30, 20, 90, 140), mode: str = "RGB") -> Path:
    """A dark ring on white, saved in the format the suffix names; returns the path."""
    img = Image.new(mode, (160, 160), "white")
    ImageDraw.Draw(img).ellipse(box, outline="black", width=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def write_bad_inputs(folder: Path) -> dict[str, str]:
    """Files that cannot be classified, by name, with the words their error line must hold."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "notes.txt").write_text("shopping list\n")
    whole = write_digit(folder / "cut.png").read_bytes()
    (folder / "cut.png").write_bytes(whole[: len(whole) // 2])
    Image.new("L", (40, 40), 255).save(folder / "blank.png")
    return {
        "notes.txt": "not an image Pillow can read",
        "cut.png": "truncated or corrupt",
        "blank.png": "blank image",
    }


def error_lines(stderr: str) -> list[str]:
    """The command's own lines on stderr (TensorFlow may log there too)."""
    return [line for line in stderr.splitlines() if line.startswith(PREFIX)]


def run_cli(args: list[str], cwd: Path, script: str = "") -> subprocess.CompletedProcess:
    """Run mnist-predict in a fresh interpreter in `cwd`; `script` runs after main, before exiting."""
    code = (
        "import sys\nfrom mnist_early_stopping.serving.predict import main\n"
        f"rc = main({args!r})\n{script}\nsys.exit(rc)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


class FakeNetwork:
    """Stands in for the network: probabilities halving from a digit set by the ink, recording batch sizes."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    @staticmethod
    def digit(image: np.ndarray) -> int:
        """The fake's answer for one image."""
        return int(np.count_nonzero(image)) % 10

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        assert batch.dtype == np.uint8 and batch.shape[1:] == (28, 28)
        self.batches.append(len(batch))
        halving = 0.5 ** np.arange(10)
        return np.stack([np.roll(halving / halving.sum(), self.digit(image)) for image in batch])


@pytest.fixture
def fake_network(monkeypatch: pytest.MonkeyPatch) -> FakeNetwork:
    """Replace the model loading with a FakeNetwork."""
    network = FakeNetwork()
    monkeypatch.setattr(predict, "load_model", lambda path, batch_size: network)
    return network


def test_importing_the_command_does_not_import_tensorflow() -> None:
    code = "import sys, mnist_early_stopping.serving.predict; print('tensorflow' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.stdout.strip() == "False", result.stderr


def test_bad_inputs_get_one_line_each_and_tensorflow_is_never_imported(tmp_path: Path) -> None:
    bad = write_bad_inputs(tmp_path / "in")
    (tmp_path / "empty").mkdir()
    args = ["in/notes.txt", "in/cut.png", "in/blank.png", "missing.png", "empty"]
    result = run_cli(args, tmp_path, script="print('tensorflow' in sys.modules)")
    assert result.returncode == 1
    assert result.stdout.strip() == "False"
    expected = {**{f"in/{name}": words for name, words in bad.items()},
                "missing.png": "no such file", "empty": "a folder with no files"}
    lines = result.stderr.splitlines()
    assert len(lines) == len(expected) and lines == error_lines(result.stderr), result.stderr
    for line, (file, words) in zip(lines, expected.items()):
        assert line.startswith(f"{PREFIX}{file}: ") and words in line, line


def test_with_a_missing_model_the_images_are_checked_first(tmp_path: Path) -> None:
    write_digit(tmp_path / "seven.png")
    write_bad_inputs(tmp_path)
    result = run_cli(
        ["seven.png", "notes.txt", "--model", "nowhere/best", "--json"], tmp_path,
        script="print('tensorflow' in sys.modules, file=sys.stderr)",
    )
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines[0] == f"{PREFIX}notes.txt: not an image Pillow can read"
    assert lines[1].startswith(f"{PREFIX}nowhere/best is not a SavedModel") and "--model" in lines[1]
    assert lines[2:] == ["False"]  # the model's absence is found without TensorFlow
    assert json.loads(result.stdout) == [
        {"file": "seven.png", "error": "not classified: the network could not be loaded"},
        {"file": "notes.txt", "error": "not an image Pillow can read"},
    ]


@pytest.mark.parametrize(
    "args, words",
    [([], "at least one image"), (["a.png", "--top", "11"], "--top"), (["a.png", "--top", "0"], "--top"),
     (["a.png", "--info"], "--info takes no images"), (["a.png", "--batch-size", "0"], "--batch-size")],
)
def test_bad_usage_exits_2(args: list[str], words: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        predict.main(args)
    assert exit_info.value.code == 2
    assert words in capsys.readouterr().err


def test_folders_are_read_in_sorted_order_files_only(tmp_path: Path) -> None:
    for name in ("b.png", "a.png", "c.jpg", ".hidden.png"):
        write_digit(tmp_path / "in" / name)
    write_digit(tmp_path / "in" / "sub" / "deeper.png")
    items = predict.expand([str(tmp_path / "in"), str(tmp_path / "in" / "b.png")])
    assert [Path(item.file).name for item in items] == ["a.png", "b.png", "c.jpg", "b.png"]
    assert all(item.error is None for item in items)


def test_json_output_in_input_order_with_errors_and_batches(
    tmp_path: Path, fake_network: FakeNetwork, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for i, name in enumerate(("d1.png", "d2.jpg", "d4.bmp", "d5.gif", "d6.png")):
        write_digit(tmp_path / "in" / name, box=(20 + 5 * i, 20, 100, 140))
    write_bad_inputs(tmp_path / "in")  # blank.png, cut.png, notes.txt sort among them
    status = predict.main(["in", "--json", "--top", "4", "--batch-size", "3"])
    captured = capsys.readouterr()
    results = json.loads(captured.out)
    names = ["blank.png", "cut.png", "d1.png", "d2.jpg", "d4.bmp", "d5.gif", "d6.png", "notes.txt"]
    assert [r["file"] for r in results] == [f"in/{n}" for n in names]
    assert status == 1 and len(error_lines(captured.err)) == 3
    # Chunks of three inputs: (blank, cut, d1), (d2, d4, d5), (d6, notes): only readable ones are run.
    assert fake_network.batches == [1, 3, 1]
    for result in results:
        if "error" in result:
            assert set(result) == {"file", "error"}
            continue
        expected = FakeNetwork.digit(images.load(Path(result["file"])))
        assert result["digit"] == expected == result["top"][0]["digit"]
        assert [t["digit"] for t in result["top"]] == [(expected + j) % 10 for j in range(4)]
        probabilities = [t["probability"] for t in result["top"]]
        assert probabilities == sorted(probabilities, reverse=True)
        assert result["probability"] == probabilities[0]


def test_text_output_and_saved_preprocessed_images(
    tmp_path: Path, fake_network: FakeNetwork, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write_digit(tmp_path / "seven.png")
    write_digit(tmp_path / "one.jpg", box=(60, 10, 80, 150))
    status = predict.main(["seven.png", "one.jpg", "--top", "2", "--save-preprocessed", "seen"])
    assert status == 0
    lines = capsys.readouterr().out.splitlines()
    pattern = r"(seven\.png|one\.jpg): (\d) \((0\.\d{3})\); top 2: \2 \3, \d 0\.\d{3}"
    assert len(lines) == 2 and all(re.fullmatch(pattern, line) for line in lines), lines
    assert sorted(p.name for p in (tmp_path / "seen").iterdir()) == ["00001-seven.png", "00002-one.png"]
    seen = np.asarray(Image.open(tmp_path / "seen" / "00002-one.png"))
    np.testing.assert_array_equal(seen, images.load(tmp_path / "one.jpg"))


def test_saving_preprocessed_images_never_overwrites_a_file(
    tmp_path: Path, fake_network: FakeNetwork, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write_digit(tmp_path / "seven.png")
    write_digit(tmp_path / "one.jpg", box=(60, 10, 80, 150))
    (tmp_path / "seen").mkdir()
    (tmp_path / "seen" / "00001-seven.png").write_bytes(b"the user's own file")
    status = predict.main(["seven.png", "one.jpg", "--save-preprocessed", "seen"])
    assert status == 1
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        f"{PREFIX}seven.png: not saving the preprocessed image: seen/00001-seven.png already exists "
        "(use an empty --save-preprocessed folder)"
    ]
    assert (tmp_path / "seen" / "00001-seven.png").read_bytes() == b"the user's own file"
    assert [line.split(":")[0] for line in captured.out.splitlines()] == ["one.jpg"]  # the other is still classified
    assert (tmp_path / "seen" / "00002-one.png").is_file()


def test_info_prints_what_exists_and_says_what_is_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    model = tmp_path / "models" / "best"
    assert predict.main(["--info", "--model", str(model)]) == 1
    no_record = "no provenance recorded in the model"
    assert capsys.readouterr().out.splitlines() == [
        f"model: missing ({model})", f"provenance: missing ({model}; {no_record})",
        f"params: missing ({model.parent / 'model.json'})",
    ]
    model.mkdir(parents=True)
    (model / "saved_model.pb").write_bytes(b"")
    (model.parent / "model.json").write_text(json.dumps({"conv_filters": [16, 36], "precision": "float32"}))
    assert predict.main(["--info", "--model", str(model)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"model: {model} (SavedModel)", f"provenance: missing ({model}; {no_record})",
        f"params: {model.parent / 'model.json'}", "  conv_filters: [16, 36]", '  precision: "float32"',
    ]
    (model / "assets.extra").mkdir()
    (model / "assets.extra/provenance.json").write_text(json.dumps({"commit": "abc123", "network": "best"}))
    assert predict.main(["--info", "--model", str(model), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["model"]["present"] and info["params"]["values"]["conv_filters"] == [16, 36]
    assert info["provenance"]["values"] == {"commit": "abc123", "network": "best"}


# --- the real thing: a SavedModel exported by this project, loaded by TensorFlow ---


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained network exported as the train stage does (models/best with models/model.json beside)."""
    from mnist_early_stopping.training.model import build_model, describe
    cfg = params_with("model", conv_filters=[4, 8], conv_kernel_size=5, dense_units=[16])
    path = tmp_path_factory.mktemp("project") / "models" / "best"
    build_model(cfg, seed=0).export(str(path), format="tf_saved_model", verbose=False)
    (path.parent / "model.json").write_text(json.dumps(describe(cfg)))
    return path


@pytest.mark.slow
def test_a_folder_with_the_real_network(tmp_path: Path, saved_model: Path) -> None:
    for i in range(7):
        write_digit(tmp_path / "in" / f"{i:02d}.png", box=(20 + 8 * i, 20, 120, 150 - 5 * i))
    (tmp_path / "in" / "notes.txt").write_text("not a digit")
    args = ["in", "--model", str(saved_model), "--json", "--top", "10", "--batch-size", "3"]
    result = run_cli(args, tmp_path)
    assert result.returncode == 1
    assert error_lines(result.stderr) == [f"{PREFIX}in/notes.txt: not an image Pillow can read"]
    results = json.loads(result.stdout)
    assert [r["file"] for r in results] == [f"in/{i:02d}.png" for i in range(7)] + ["in/notes.txt"]
    from mnist_early_stopping.serving.network import load_network

    network = load_network(saved_model, 3)
    expected = network(np.stack([images.load(tmp_path / r["file"]) for r in results[:7]]))
    for result_, probabilities in zip(results, expected):
        top = result_["top"]
        assert [t["digit"] for t in top] == list(np.argsort(-probabilities, kind="stable"))
        assert sum(t["probability"] for t in top) == pytest.approx(1.0, abs=1e-4)
        got = np.array([t["probability"] for t in sorted(top, key=lambda t: t["digit"])])
        np.testing.assert_allclose(got, probabilities, atol=1e-5)


@pytest.mark.slow
def test_the_console_script_prints_a_line_per_image(tmp_path: Path, saved_model: Path) -> None:
    script = Path(sys.executable).with_name("mnist-predict")
    assert script.is_file(), f"{script} is missing: install the project (pip install -e .)"
    write_digit(tmp_path / "seven.png")
    write_digit(tmp_path / "one.jpg", box=(60, 10, 80, 150))
    result = subprocess.run(
        [str(script), "seven.png", "one.jpg", "--model", str(saved_model)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    assert result.returncode == 0 and error_lines(result.stderr) == [], result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["seven.png", "one.jpg"]
    pattern = r"[^:]+: (\d) \((\d\.\d{3})\); top 3: \1 \2, \d \d\.\d{3}, \d \d\.\d{3}"
    assert all(re.fullmatch(pattern, line) for line in lines), lines


@pytest.mark.slow
def test_a_broken_model_is_one_line_and_the_images_are_still_checked(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "saved_model.pb").write_bytes(b"not a protobuf" * 10)
    write_digit(tmp_path / "seven.png")
    (tmp_path / "notes.txt").write_text("x")
    result = run_cli(["seven.png", "notes.txt", "--model", "broken"], tmp_path)
    assert result.returncode == 1 and result.stdout == ""
    lines = error_lines(result.stderr)
    assert lines[0] == f"{PREFIX}notes.txt: not an image Pillow can read"
    assert lines[1].startswith(f"{PREFIX}broken is a broken SavedModel (") and len(lines) == 2


def classify(tmp_path: Path, args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, list[str], list[str]]:
    """mnist-predict in process (cwd tmp_path): its status, stdout lines and stderr lines."""
    status = predict.main(args)
    captured = capsys.readouterr()
    return status, captured.out.splitlines(), captured.err.splitlines()


def test_pictures_with_nan_too_large_or_not_regular_files_cost_one_line_each(
    tmp_path: Path, fake_network: FakeNetwork, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write_digit(tmp_path / "seven.png")
    values = np.zeros((40, 40), np.float32)
    values[10:30, 18:22] = 1.0
    values[0, 0] = np.nan
    Image.fromarray(values, mode="F").save(tmp_path / "nan.tiff")
    Image.new("L", (images.MAX_SIDE + 1, 1), 255).save(tmp_path / "line.png")
    os.mkfifo(tmp_path / "pipe")  # reading it would block forever
    tall = Image.new("L", (20, 2000), 255)  # a thin, tall "1": a real picture, inside the bounds
    ImageDraw.Draw(tall).line([(10, 50), (10, 1950)], fill=0, width=6)
    tall.save(tmp_path / "tall-one.png")
    status, out, err = classify(tmp_path, ["nan.tiff", "seven.png", "line.png", "pipe", "tall-one.png"], capsys)
    assert status == 1
    assert [line.split(":")[0] for line in out] == ["seven.png", "tall-one.png"]
    assert len(err) == 3, err
    assert err[0].startswith(f"{PREFIX}nan.tiff: holds pixel values that are not numbers")
    assert err[1].startswith(f"{PREFIX}line.png: {images.MAX_SIDE + 1} x 1 pixels is too large")
    assert err[2] == f"{PREFIX}pipe: not a regular file or a folder (a pipe, socket or device is never read)"


def test_info_on_malformed_records_is_one_line_each(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model = tmp_path / "models" / "best"
    (model / "assets.extra").mkdir(parents=True)
    (model / "saved_model.pb").write_bytes(b"")
    (model / "assets.extra" / "provenance.json").write_text("[1, 2]")
    (model.parent / "model.json").write_text("[" * 100_000 + "]" * 100_000)  # nested past Python's recursion limit
    assert predict.main(["--info", "--model", str(model)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == f"provenance: missing ({model}; the recorded provenance is not a JSON object)"
    assert lines[2].startswith(f"params: missing ({model.parent / 'model.json'}; unreadable (RecursionError")
    (model.parent / "model.json").write_text('"a string"')
    assert predict.main(["--info", "--model", str(model)]) == 0
    assert capsys.readouterr().out.splitlines()[2] == f"params: missing ({model.parent / 'model.json'}; not a JSON object)"


def test_randomly_damaged_pictures_cost_one_line_each_and_never_a_traceback(
    tmp_path: Path, fake_network: FakeNetwork, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(7)
    originals = [write_digit(tmp_path / f"digit.{suffix}").read_bytes() for suffix in ("png", "jpg")]
    names = []
    for i in range(300):
        data = bytearray(originals[i % 2])
        if rng.random() < 0.5:
            data = data[: int(rng.integers(0, len(data)))]  # truncated
        else:
            for position in rng.integers(0, len(data), int(rng.integers(1, 20))):
                data[position] = int(rng.integers(0, 256))  # flipped bytes
        name = f"in/{i:03d}.{'png' if i % 2 == 0 else 'jpg'}"
        (tmp_path / "in").mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(bytes(data))
        names.append(name)
    status, out, err = classify(tmp_path, ["in"], capsys)
    classified_names = [line.split(": ")[0] for line in out]
    failed_names = [line[len(PREFIX):].split(": ")[0] for line in err]
    assert all(line.startswith(PREFIX) for line in err), err
    assert sorted(classified_names + failed_names) == names, "exactly one line per input"
    assert status == (1 if failed_names else 0)
    assert failed_names and classified_names, "the damage should leave some readable and some not"


@pytest.mark.slow
def test_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    digit = Image.new("L", (28, 28), 0)
    ImageDraw.Draw(digit).line([(14, 4), (14, 24)], fill=255, width=3)
    for i in range(3000):  # more lines than a pipe holds, so the writer meets the closed end
        digit.save(folder / f"{i:04d}.png")
    code = (
        "import sys\nimport numpy as np\nfrom mnist_early_stopping.serving import predict\n"
        "predict.load_model = lambda path, batch_size: lambda batch: np.full((len(batch), 10), 0.1, np.float32)\n"
        "sys.exit(predict.main(['in']))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()  # `| head -1`
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=300) in (0, 141), err
    assert first.startswith("in/0000.png: ") and err == "", err


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(784,), (28, 28, 1)], ids=["flat", "channels"])
def test_a_network_of_another_input_shape_is_refused_in_one_line(tmp_path: Path, shape: tuple[int, ...]) -> None:
    write_digit(tmp_path / "seven.png")
    script = (
        "import keras\n"
        f"model = keras.Sequential([keras.Input({shape!r}), keras.layers.Flatten(), keras.layers.Dense(10)])\n"
        "model.export('other', verbose=False)\n"
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    made = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert made.returncode == 0, made.stderr
    result = run_cli(["seven.png", "--model", "other"], tmp_path)
    assert result.returncode == 1
    lines = error_lines(result.stderr)
    assert "Traceback" not in result.stderr and len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{PREFIX}other's `serve` takes float32 (None, {', '.join(map(str, shape))}), not "
                               "float32 images (N, 28, 28)"), lines[0]
