""".keras archives from an untrusted source: checked in memory before Keras reads them, nothing extracted."""

from __future__ import annotations

import json
import struct
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mnist_early_stopping.serving.keras_archive import JSON_CAP, WEIGHTS_CEILING, weights_bound, write_checked
from mnist_early_stopping.serving.network import NetworkError, load_keras_network, read_provenance

MIB = 1 << 20


def layer(kind: str, input_shape: list[int | None] | None = None, **config: Any) -> dict[str, Any]:
    """One layer entry as Keras 3 writes it in a Functional config."""
    entry: dict[str, Any] = {"class_name": kind, "config": config}
    if input_shape is not None:
        entry["build_config"] = {"input_shape": input_shape}
    return entry


def config_json(*layers: dict[str, Any]) -> bytes:
    """A Functional model's config.json with these layers (by default: flatten, then a 10-unit dense)."""
    layers = layers or (layer("InputLayer"), layer("Flatten", [None, 28, 28]), layer("Dense", [None, 784], units=10))
    return json.dumps({"class_name": "Functional", "config": {"layers": list(layers)}}).encode()


def members(**overrides: bytes) -> dict[str, bytes]:
    """The members of a small .keras file, some replaced."""
    return {"config.json": config_json(), "metadata.json": b'{"keras_version": "3"}',
            "model.weights.h5": b"\x89HDF\r\n\x1a\n" + bytes(1000), **overrides}


def write_archive(path: Path, contents: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> Path:
    """A zip archive of these members."""
    with zipfile.ZipFile(path, "w", method) as archive:
        for name, data in contents.items():
            archive.writestr(name, data)
    return path


def write_zeros(archive: zipfile.ZipFile, name: str, mib: int) -> None:
    """A member of `mib` MiB of zeros, compressed as it is written (never whole in memory)."""
    with archive.open(name, "w") as member:
        for _ in range(mib):
            member.write(bytes(MIB))


def patch_member(path: Path, name: str, local_offset: int, central_offset: int, value: int) -> None:
    """Overwrite a 4-byte field of one member in both its local header and its central directory entry."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info, start = archive.getinfo(name), archive.start_dir
    struct.pack_into("<I", data, info.header_offset + local_offset, value)
    entry = start
    while data[entry + 46 : entry + 46 + len(name)] != name.encode():  # central entries in order
        entry += 46 + sum(struct.unpack_from("<HHH", data, entry + 28))
    struct.pack_into("<I", data, entry + central_offset, value)
    path.write_bytes(bytes(data))


@pytest.fixture
def temp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty directory in place of the system's temporary directory."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def refusal(path: Path) -> str:
    """The one-line NetworkError that loading `path` raises."""
    with pytest.raises(NetworkError) as caught:
        load_keras_network(path, 8)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(str(path))
    return message


def test_a_zip_bomb_of_weights_is_refused_and_nothing_is_extracted(tmp_path: Path, temp_dir: Path) -> None:
    path = tmp_path / "bomb.keras"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for name, data in members().items():
            if name != "model.weights.h5":
                archive.writestr(name, data)
        write_zeros(archive, "model.weights.h5", 300)
        archive.writestr("provenance.json", b"{}")
    assert path.stat().st_size < MIB
    message = refusal(path)
    assert "model.weights.h5 is over" in message and "more than its config's layers can hold" in message
    assert list(temp_dir.iterdir()) == []


def test_a_huge_config_is_refused_without_decompressing_it_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "huge.keras"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        with archive.open("config.json", "w") as member:
            member.write(b'{"class_name": "Functional", "config": {"layers": []}}')
            for _ in range(200):
                member.write(b" " * MIB)
        for name, data in members().items():
            if name != "config.json":
                archive.writestr(name, data)
    assert path.stat().st_size < MIB
    decompressed: list[int] = []
    read = zipfile.ZipExtFile.read

    def counted(self: zipfile.ZipExtFile, n: int = -1) -> bytes:
        data = read(self, n)
        decompressed.append(len(data))
        return data

    monkeypatch.setattr(zipfile.ZipExtFile, "read", counted)
    assert "config.json is over 1 MiB when decompressed; not a network of this project's kind" in refusal(path)
    assert sum(decompressed) < 2 * MIB


def test_a_member_declaring_less_than_it_holds_is_caught(tmp_path: Path, temp_dir: Path) -> None:
    path = write_archive(tmp_path / "forged.keras", members(**{"config.json": config_json() + b" " * 5 * MIB}))
    patch_member(path, "config.json", 22, 24, 100)  # the uncompressed size, in both headers
    with zipfile.ZipFile(path) as archive:
        assert archive.getinfo("config.json").file_size == 100
    assert "config.json cannot be read (Bad CRC-32" in refusal(path)
    assert list(temp_dir.iterdir()) == []


def test_a_member_declaring_more_than_it_holds_is_not_trusted(tmp_path: Path) -> None:
    path = write_archive(tmp_path / "declared.keras", members(), zipfile.ZIP_STORED)
    patch_member(path, "metadata.json", 22, 24, 1 << 30)  # a 1 GiB claim, far over the cap: what is stored counts
    write_checked(path, tmp_path / "copy.keras")
    with zipfile.ZipFile(tmp_path / "copy.keras") as archive:
        assert archive.read("metadata.json") == members()["metadata.json"]


@pytest.mark.parametrize("name", ["../escape.json", "/etc/cron.d/x", "assets/", "assets/notes.txt", "extra.json",
                                  "model.weights.npz"])
def test_a_member_keras_would_not_write_is_refused(tmp_path: Path, temp_dir: Path, name: str) -> None:
    path = write_archive(tmp_path / "odd.keras", {**members(), name: b"{}"})
    assert "not a member of a .keras file" in refusal(path)
    assert list(temp_dir.iterdir()) == [] and not (tmp_path / "escape.json").exists()


def test_a_member_named_twice_or_missing_is_refused(tmp_path: Path) -> None:
    path = write_archive(tmp_path / "twice.keras", members())
    with warnings.catch_warnings(), zipfile.ZipFile(path, "a") as archive:
        warnings.simplefilter("ignore")  # zipfile warns of the duplicate it is asked to write
        archive.writestr("config.json", config_json())
    assert "names a member twice" in refusal(path)
    contents = members()
    del contents["model.weights.h5"]
    assert "has no model.weights.h5" in refusal(write_archive(tmp_path / "none.keras", contents))


def test_a_truncated_archive_is_refused_and_leaves_no_temp_files(tmp_path: Path, temp_dir: Path) -> None:
    whole = write_archive(tmp_path / "whole.keras", members())
    path = tmp_path / "torn.keras"
    path.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    assert "is not a readable zip archive" in refusal(path)
    assert list(temp_dir.iterdir()) == []


def test_weights_with_a_wrong_crc_are_refused_and_leave_no_temp_files(tmp_path: Path, temp_dir: Path) -> None:
    path = write_archive(tmp_path / "crc.keras", members())
    with zipfile.ZipFile(path) as archive:
        crc = archive.getinfo("model.weights.h5").CRC
    patch_member(path, "model.weights.h5", 14, 16, crc ^ 1)
    assert "model.weights.h5 cannot be read (Bad CRC-32" in refusal(path)
    assert list(temp_dir.iterdir()) == []


def test_a_config_whose_weights_cannot_be_bounded_is_refused(tmp_path: Path) -> None:
    unknown = config_json(layer("InputLayer"), layer("MysteryLayer", [None, 28, 28]))
    assert "'MysteryLayer' layer, whose weights this check cannot size" in refusal(
        write_archive(tmp_path / "unknown.keras", members(**{"config.json": unknown})))
    shapeless = config_json(layer("Dense", None, units=10))
    assert "does not describe a network Keras can build" in refusal(
        write_archive(tmp_path / "shapeless.keras", members(**{"config.json": shapeless})))
    vast = config_json(layer("Dense", [None, 1 << 20], units=1 << 20))
    assert "parameters, whose weights could take over 8 GiB" in refusal(
        write_archive(tmp_path / "vast.keras", members(**{"config.json": vast})))
    assert "is not a JSON object" in refusal(write_archive(tmp_path / "list.keras", members(**{"config.json": b"[]"})))


def test_the_largest_network_the_params_allow_is_within_the_ceiling(tmp_path: Path) -> None:
    convs = [layer("Conv2D", [None, side, side, channels], filters=1024, kernel_size=[9, 9])
             for side, channels in ((28, 1), (14, 1024), (7, 1024), (4, 1024))]
    denses = [layer("Dense", [None, width], units=units)
              for width, units in ((2 * 2 * 1024, 8192), (8192, 8192), (8192, 8192), (8192, 8192), (8192, 10))]
    config = json.loads(config_json(layer("InputLayer"), layer("Reshape"), *convs, layer("Flatten"), *denses))
    assert 7 << 30 < weights_bound(config, tmp_path / "largest.keras") < WEIGHTS_CEILING


def test_the_checked_archive_holds_only_what_keras_reads(tmp_path: Path) -> None:
    path = write_archive(tmp_path / "ok.keras", {**members(), "provenance.json": b'{"network": "best"}'})
    write_checked(path, tmp_path / "copy.keras")
    with zipfile.ZipFile(tmp_path / "copy.keras") as archive:
        assert archive.namelist() == ["config.json", "metadata.json", "model.weights.h5"]
        assert archive.read("config.json") == config_json()


def test_provenance_is_read_under_the_cap(tmp_path: Path) -> None:
    path = tmp_path / "provenance.keras"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive, archive.open("provenance.json", "w") as member:
        member.write(b"{}" + b" " * (JSON_CAP + 1))
    assert read_provenance(path) is None
    assert read_provenance(write_archive(tmp_path / "small.keras", {"provenance.json": b'{"a": 1}'})) == {"a": 1}


def project_network(path: Path) -> Any:
    """A small network built by the project, saved compiled with its provenance as the train stage does."""
    from mnist_early_stopping.pipeline.params import ModelParams
    from mnist_early_stopping.training.model import build_model

    model = build_model(ModelParams(conv_filters=(4, 8), conv_kernel_size=5, dense_units=(16,)), seed=0)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.optimizer.build(model.trainable_variables)
    model.save(path)
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("provenance.json", b'{"network": "best"}')
    return model


def test_a_keras_file_as_the_project_writes_it_still_loads(tmp_path: Path, temp_dir: Path) -> None:
    keras = pytest.importorskip("keras")
    from mnist_early_stopping.pipeline.layout import PIXEL_SCALE

    path = tmp_path / "best.keras"
    model = project_network(path)
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    network = load_keras_network(path, 2)
    expected = keras.ops.convert_to_numpy(model(images.astype(np.float32) * PIXEL_SCALE, training=False))
    np.testing.assert_allclose(network(images), expected, rtol=1e-5, atol=1e-6)
    assert read_provenance(path) == {"network": "best"}
    # TensorFlow leaves the predictor's traced graph code there; of the loading, nothing is left.
    assert [p.name for p in temp_dir.iterdir() if not p.name.startswith("__autograph_generated_file")] == []


def test_weights_keras_cannot_read_are_refused_and_leave_no_temp_files(tmp_path: Path, temp_dir: Path) -> None:
    pytest.importorskip("keras")
    saved = tmp_path / "saved.keras"
    project_network(saved)
    with zipfile.ZipFile(saved) as archive:
        contents = {name: archive.read(name) for name in archive.namelist()}
    contents["model.weights.h5"] = contents["model.weights.h5"][:4096]  # a torn HDF5 file
    path = write_archive(tmp_path / "torn.keras", contents)
    assert "is not a loadable .keras file" in refusal(path)
    assert list(temp_dir.iterdir()) == []


def test_no_room_for_the_checked_copy_is_one_line_and_leaves_no_temp_files(
    tmp_path: Path, temp_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mnist_early_stopping.serving import network

    def full_disk(path: Path, destination: Path) -> None:
        destination.write_bytes(b"PK half a copy")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(network, "write_checked", full_disk)
    message = refusal(write_archive(tmp_path / "ok.keras", members()))
    assert "could not be checked: no room for a copy" in message and "No space left on device" in message
    assert list(temp_dir.iterdir()) == []
