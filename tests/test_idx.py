"""IDX reader and encoder, and the split stage's check that images and labels belong together."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from mnist_early_stopping.data.idx import IdxError, encode_idx, parse_idx, read_idx
from mnist_early_stopping.data.splits import load_pair


def at(path: Path, rest: str) -> str:
    """A regex for an error message that starts with `path` and continues with `rest`."""
    return "^" + re.escape(str(path)) + rest


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def images(n: int = 3, side: int = 28) -> np.ndarray:
    return np.arange(n * side * side, dtype=np.uint64).reshape(n, side, side).astype(np.uint8)


@pytest.mark.parametrize(
    "array",
    [
        images(),
        np.array([0, 9, 3], dtype=np.uint8),
        np.array([-3, 7], dtype=np.int8),
        np.array([[1, -2], [300, 4]], dtype=np.int16),
        np.array([1, -70000], dtype=np.int32),
        np.array([0.5, -1.25], dtype=np.float32),
        np.array([1e300], dtype=np.float64),
        np.zeros((0, 28, 28), dtype=np.uint8),
    ],
)
def test_round_trip(array: np.ndarray) -> None:
    parsed = parse_idx(encode_idx(array))
    assert parsed.shape == array.shape
    assert parsed.dtype == array.dtype.newbyteorder("=")
    np.testing.assert_array_equal(parsed, array)


def test_header_layout_is_mnist_format() -> None:
    data = encode_idx(images(2))
    assert data[:4] == b"\x00\x00\x08\x03"
    assert data[4:16] == (2).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    assert len(data) == 16 + 2 * 28 * 28
    assert encode_idx(np.array([1], dtype=">i4"))[8:] == b"\x00\x00\x00\x01"  # big-endian payload


def test_encode_rejects_unsupported_dtype() -> None:
    with pytest.raises(IdxError, match="no IDX type"):
        encode_idx(np.array([1], dtype=np.uint16))


def test_read_good_file(tmp_path: Path) -> None:
    array = images(5)
    path = write(tmp_path / "imgs", encode_idx(array))
    np.testing.assert_array_equal(read_idx(path, ndim=3), array)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"\x01\x00\x08\x01" + (1).to_bytes(4, "big") + b"\x05", "bad magic number 0x01000801"),
        (b"\x00\x00\x07\x01" + (1).to_bytes(4, "big") + b"\x05", "bad magic number 0x00000701"),
        (b"\x00\x00\x08\x00", "bad magic number 0x00000800"),
        (b"PK\x03\x04 a zip archive", "bad magic number 0x504b0304"),
        (b"\x00\x00", "2 bytes is too short for an IDX header"),
        (b"", "0 bytes is too short"),
        (b"\x00\x00\x08\x03" + (2).to_bytes(4, "big"), r"truncated header \(8 bytes, need 16\)"),
    ],
)
def test_malformed_header(tmp_path: Path, data: bytes, problem: str) -> None:
    path = write(tmp_path / "bad-file", data)
    with pytest.raises(IdxError, match=at(path, ": .*" + problem)):
        read_idx(path, ndim=1)


def test_truncated_data(tmp_path: Path) -> None:
    path = write(tmp_path / "short", encode_idx(images(2))[:-1])
    problem = r": truncated: header says shape \(2, 28, 28\) \(1584 bytes\), file has 1583"
    with pytest.raises(IdxError, match=at(path, problem)):
        read_idx(path, ndim=3)


def test_trailing_bytes(tmp_path: Path) -> None:
    path = write(tmp_path / "long", encode_idx(np.arange(4, dtype=np.uint8)) + b"\x00")
    problem = r": has trailing bytes: header says shape \(4,\) \(12 bytes\), file has 13"
    with pytest.raises(IdxError, match=at(path, problem)):
        read_idx(path, ndim=1)


def test_huge_shape_in_corrupt_header_is_truncation(tmp_path: Path) -> None:
    header = b"\x00\x00\x08\x04" + b"\xff\xff\xff\xff" * 4
    path = write(tmp_path / "huge", header + b"\x00" * 10)
    with pytest.raises(IdxError, match="truncated"):
        read_idx(path, ndim=4)


def test_wrong_number_of_dimensions(tmp_path: Path) -> None:
    path = write(tmp_path / "labels", encode_idx(np.arange(10, dtype=np.uint8)))
    with pytest.raises(IdxError, match=at(path, r": expected 3 dimensions, found shape \(10,\)")):
        read_idx(path, ndim=3)


def test_wrong_element_type(tmp_path: Path) -> None:
    path = write(tmp_path / "floats", encode_idx(np.zeros(3, dtype=np.float32)))
    with pytest.raises(IdxError, match=at(path, r": expected uint8 elements, found float32")):
        read_idx(path, ndim=1)


def test_missing_file_says_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "absent"
    with pytest.raises(IdxError, match=at(path, r": not found; run the download stage first")):
        read_idx(path, ndim=1)


def test_unreadable_path_is_an_idx_error(tmp_path: Path) -> None:
    with pytest.raises(IdxError, match=at(tmp_path, r": cannot read")):
        read_idx(tmp_path, ndim=1)


def pair(tmp_path: Path, imgs: np.ndarray, labels: np.ndarray) -> tuple[Path, Path]:
    return (
        write(tmp_path / "x-images-idx3-ubyte", encode_idx(imgs)),
        write(tmp_path / "x-labels-idx1-ubyte", encode_idx(labels)),
    )


def test_load_pair_good(tmp_path: Path) -> None:
    labels = np.array([0, 9, 4], dtype=np.uint8)
    got_images, got_labels = load_pair(*pair(tmp_path, images(3), labels))
    np.testing.assert_array_equal(got_images, images(3))
    np.testing.assert_array_equal(got_labels, labels)


def test_load_pair_count_mismatch(tmp_path: Path) -> None:
    img_path, lbl_path = pair(tmp_path, images(3), np.array([1, 2], dtype=np.uint8))
    problem = f" has 3 images but {re.escape(str(lbl_path))} has 2 labels"
    with pytest.raises(IdxError, match=at(img_path, problem)):
        load_pair(img_path, lbl_path)


def test_load_pair_label_out_of_range(tmp_path: Path) -> None:
    img_path, lbl_path = pair(tmp_path, images(3), np.array([1, 12, 2], dtype=np.uint8))
    with pytest.raises(IdxError, match=at(lbl_path, r": label 12 is not a digit 0-9")):
        load_pair(img_path, lbl_path)


def test_load_pair_wrong_image_size(tmp_path: Path) -> None:
    img_path, lbl_path = pair(tmp_path, images(2, side=32), np.array([1, 2], dtype=np.uint8))
    with pytest.raises(IdxError, match=at(img_path, r": images are \(32, 32\), expected \(28, 28\)")):
        load_pair(img_path, lbl_path)


def test_load_pair_swapped_files(tmp_path: Path) -> None:
    img_path, lbl_path = pair(tmp_path, images(2), np.array([1, 2], dtype=np.uint8))
    with pytest.raises(IdxError, match=at(lbl_path, r": expected 3 dimensions")):
        load_pair(lbl_path, img_path)
