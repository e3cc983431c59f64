"""Read and write IDX files, the format MNIST is distributed in."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

# Third byte of the magic number -> element dtype (big-endian where it matters).
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


class IdxError(ValueError):
    """An IDX file is malformed or not what the caller expected."""


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Parse the bytes of an IDX file into an array, checking header and length."""
    if len(data) < 4:
        raise IdxError(f"{name}: {len(data)} bytes is too short for an IDX header")
    zero, dtype_code, ndim = data[0:2], data[2], data[3]
    if zero != b"\x00\x00" or dtype_code not in IDX_DTYPES or ndim == 0:
        raise IdxError(f"{name}: bad magic number 0x{data[:4].hex()}; not an IDX file")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise IdxError(f"{name}: truncated header ({len(data)} bytes, need {header_len})")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = IDX_DTYPES[dtype_code]
    expected = header_len + math.prod(shape) * dtype.itemsize  # Python ints: no overflow on a corrupt header
    if len(data) != expected:
        problem = "truncated" if len(data) < expected else "has trailing bytes"
        raise IdxError(
            f"{name}: {problem}: header says shape {shape} ({expected} bytes), file has {len(data)}"
        )
    return np.frombuffer(data, dtype=dtype, offset=header_len).reshape(shape).astype(dtype.newbyteorder("="))


def read_idx(path: Path, ndim: int, dtype: np.dtype = np.dtype(np.uint8)) -> np.ndarray:
    """Read an IDX file and check it has the expected number of dimensions and dtype."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise IdxError(f"{path}: not found; run the download stage first") from None
    except OSError as e:
        raise IdxError(f"{path}: cannot read: {e.strerror or e}") from None
    array = parse_idx(data, str(path))
    if array.ndim != ndim:
        raise IdxError(f"{path}: expected {ndim} dimensions, found shape {array.shape}")
    if array.dtype != dtype:
        raise IdxError(f"{path}: expected {dtype} elements, found {array.dtype}")
    return array


def encode_idx(array: np.ndarray) -> bytes:
    """Serialise an array as IDX bytes (used to build test fixtures and local mirrors)."""
    for code, dtype in IDX_DTYPES.items():
        if dtype.kind == array.dtype.kind and dtype.itemsize == array.dtype.itemsize:
            header = bytes([0, 0, code, array.ndim])
            header += b"".join(int(n).to_bytes(4, "big") for n in array.shape)
            return header + np.ascontiguousarray(array, dtype=dtype).tobytes()
    raise IdxError(f"no IDX type for dtype {array.dtype}")
