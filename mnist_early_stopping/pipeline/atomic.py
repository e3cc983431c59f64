"""Atomic file and directory writes: a crash leaves the old version or the new one, never half.

A killed write leaves its temporary file or directory beside the target; the
next write of that target removes it first (only the names made here, nothing
else), so one writer per target at a time, as DVC runs a stage. What stands
where an output goes is replaced: a file where a directory goes, an empty
directory (or one holding only such leftovers) where a file goes; any other
directory there is refused with one line.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator, Mapping

from mnist_early_stopping.pipeline.stage import StageError, first_line, write_failure

# The random part tempfile puts in mkstemp and mkdtemp names.
_RANDOM = r"[a-z0-9_]{8}"
# Keras insists on these suffixes, so its files are written under a fixed temporary name.
KERAS_SUFFIXES = (".weights.h5", ".keras")
# Any name this module (or keras_temp) gives a temporary file or directory, whatever the target.
LEFTOVER = re.compile(rf"\..+\.(?:{_RANDOM}\.tmp|old|tmp\.weights\.h5|tmp\.keras)")


class OutputError(StageError):
    """An output cannot be written; the message names it and says what to do."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _leftover_pattern(name: str) -> re.Pattern[str]:
    """The temporary names a write of a target called `name` makes beside it."""
    n = re.escape(name)
    patterns = [rf"\.{n}\.{_RANDOM}\.tmp", rf"\.{n}\.old"]
    patterns += [
        re.escape(f".{name[: -len(s)]}.tmp{s}") for s in KERAS_SUFFIXES if name.endswith(s) and name != s
    ]
    return re.compile("|".join(patterns))


def _remove(path: Path) -> None:
    """Delete a file, a link or a whole directory."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def cannot_write(path: Path, e: BaseException) -> OutputError:
    """The one-line error for a write of `path` that failed with `e` (an OSError, or a library's error)."""
    reason = write_failure(e) or (e.strerror if isinstance(e, OSError) and e.strerror else first_line(e))
    return OutputError(
        f"cannot write {path}: {reason}; check the free space and the permissions of {path.parent}, then run again"
    )


def is_write_failure(e: BaseException) -> bool:
    """Whether `e`, raised while writing, is the disk's or the OS's refusal (not an error already reported)."""
    return not isinstance(e, StageError) and (isinstance(e, OSError) or write_failure(e) is not None)


@contextlib.contextmanager
def writes_to(path: Path) -> Iterator[None]:
    """Turn a failed write in the block (a full disk, no permission) into the one-line error naming `path`."""
    try:
        yield
    except Exception as e:
        if not is_write_failure(e):
            raise
        raise cannot_write(path, e) from None


def leftovers(path: Path) -> list[Path]:
    """What interrupted writes of `path` left beside it, by name."""
    path = Path(path)
    pattern = _leftover_pattern(path.name)
    try:
        names = os.listdir(path.parent)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(path.parent / n for n in names if pattern.fullmatch(n))


def remove_leftovers(path: Path) -> list[Path]:
    """Delete what interrupted writes of `path` left beside it; return what was deleted."""
    found = leftovers(path)
    for leftover in found:
        try:
            _remove(leftover)
        except OSError as e:
            raise OutputError(
                f"cannot remove {leftover}, left by an interrupted run: {e.strerror or e}; remove it by hand, "
                "then run again"
            ) from None
    return found


def _make_parent(path: Path) -> None:
    """Make the directory `path` goes in, or say which file stands in the way."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocking = next((p for p in path.parents if p.exists() and not p.is_dir()), path.parent)
        raise OutputError(
            f"cannot write {path}: {blocking} is a file, not a directory; move it elsewhere, then run again"
        ) from None
    except OSError as e:
        raise cannot_write(path, e) from None


def prepare_file(path: Path) -> None:
    """Make `path` ready to take a file: its directory made, leftovers gone, an empty directory there removed."""
    path = Path(path)
    _make_parent(path)
    remove_leftovers(path)
    if not path.is_dir() or path.is_symlink():
        return
    foreign = sorted(n for n in os.listdir(path) if not LEFTOVER.fullmatch(n))
    if foreign:
        raise OutputError(
            f"{path} is a directory, where this stage writes a file, and it holds {foreign[0]}"
            f"{f' and {len(foreign) - 1} more' if len(foreign) > 1 else ''}; move it elsewhere, then run again"
        )
    try:
        shutil.rmtree(path)  # empty, or only leftovers of our own writes: nothing of anyone's
    except OSError as e:
        raise cannot_write(path, e) from None


def _temp_beside(path: Path) -> tuple[int, str]:
    """A new temporary file beside `path`, open for writing."""
    try:
        return tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise cannot_write(path, e) from None


def _publish(tmp: str, path: Path) -> None:
    """Give a finished temporary file the usual permissions and rename it over `path`."""
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600 files
    os.replace(tmp, path)


@contextlib.contextmanager
def write_atomic(path: Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside `path`; on success fsync it and rename it over `path`."""
    path = Path(path)
    prepare_file(path)
    fd, tmp = _temp_beside(path)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        _publish(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError):  # the block only writes to f: a full disk, an I/O error
            raise cannot_write(path, e) from None
        raise


def write_files(contents: Mapping[Path, bytes]) -> None:
    """Write several files all or none: each to a temporary file first, renamed into place once all are written."""
    paths = [Path(p) for p in contents]
    for path in paths:
        prepare_file(path)
    written: list[tuple[str, Path]] = []
    try:
        for path, data in zip(paths, contents.values()):
            fd, tmp = _temp_beside(path)
            written.append((tmp, path))
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
            except OSError as e:
                raise cannot_write(path, e) from None
        for tmp, path in written:
            try:
                _publish(tmp, path)
            except OSError as e:
                raise cannot_write(path, e) from None
    finally:
        for tmp, _ in written:  # nothing left once published
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def json_bytes(data: Any) -> bytes:
    """`data` as indented JSON with a final newline, as write_json writes it."""
    return (json.dumps(data, indent=2) + "\n").encode("utf-8")


def write_json(path: Path, data: Any) -> None:
    """Write `data` as indented JSON, atomically."""
    with write_atomic(path) as f:
        f.write(json_bytes(data))


def keras_temp(path: Path, suffix: str) -> Path:
    """The fixed temporary name beside `path` for a file Keras writes (it insists on `suffix`), made ready."""
    path = Path(path)
    if suffix not in KERAS_SUFFIXES or not path.name.endswith(suffix):
        raise ValueError(f"{path}: expected a name ending in one of {KERAS_SUFFIXES}")
    prepare_file(path)
    return path.with_name(f".{path.name[: -len(suffix)]}.tmp{suffix}")


@contextlib.contextmanager
def written_by_keras(path: Path, suffix: str) -> Iterator[Path]:
    """Yield the temporary name Keras writes to; on success fsync it and rename it over `path`."""
    tmp = keras_temp(path, suffix)
    try:
        yield tmp
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if is_write_failure(e):  # Keras's zip and HDF5 writers report a full disk in their own ways
            raise cannot_write(path, e) from None
        raise


@contextlib.contextmanager
def replace_dir(path: Path) -> Iterator[Path]:
    """Yield an empty temporary directory that replaces `path` (a directory, or a file) once the block succeeds."""
    path = Path(path)
    _make_parent(path)
    remove_leftovers(path)
    try:
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
        tmp.chmod(0o777 & ~_umask())  # mkdtemp makes 0700 directories
    except OSError as e:
        raise cannot_write(path, e) from None
    try:
        yield tmp
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_write_failure(e):  # TensorFlow's SavedModel writer and matplotlib report a full disk in their own ways
            raise cannot_write(path, e) from None
        raise
    old = path.with_name(f".{path.name}.old")
    try:
        if path.exists() or path.is_symlink():
            os.replace(path, old)  # a directory, a file or a link: whatever it is, the path is an output
        os.replace(tmp, path)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise cannot_write(path, e) from None
    with contextlib.suppress(OSError):  # else the next write of path removes it
        _remove(old)
