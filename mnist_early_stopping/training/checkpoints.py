"""Where unfinished trainings keep their resumable state (one entry per run manifest), and its files.

The store is checkpoints/train/ of the main workspace. A queued or `--temp`
experiment runs in a copy under the main workspace's .dvc/tmp/exps/, which
DVC deletes with everything in it when the run ends or is killed; such a copy
uses the main workspace's store, so re-running the same experiment resumes.

An entry is named by the SHA-256 of its manifest (params, data and code), so
two runs with different inputs never share one, and holds that manifest; the
training of an entry holds its lock, so two runs of one manifest never train
at once. An entry goes when its run has finished and every output is written;
of the unfinished ones, the newest KEEP_UNFINISHED stay.

Inside an entry, each checkpoint (TensorFlow's ckpt-N.index and ckpt-N.data-*)
counts only with its record ckpt-N.json, written after it: the manifest's
digest and the SHA-256 of each of its files, checked before it is read. The
best weights are saved as best.weights.npz at every improvement (and kept
in every checkpoint too), checked against the digest recorded when saved.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
import shutil
from pathlib import Path
from typing import Any, Iterator, Protocol

import numpy as np

from mnist_early_stopping.pipeline.atomic import cannot_write, write_atomic, write_json
from mnist_early_stopping.pipeline.digests import sha256_file
from mnist_early_stopping.pipeline.layout import CHECKPOINT_DIR
from mnist_early_stopping.pipeline.stage import StageError, say
from mnist_early_stopping.pipeline.workspace_lock import LockedError, hold

# Unfinished entries kept besides the running one: a few killed runs to come back to.
KEEP_UNFINISHED = 3
# DVC's temporary workspaces of queued and --temp experiments: <main>/.dvc/tmp/exps/...
EXPERIMENT_COPIES = (".dvc", "tmp", "exps")
MANIFEST = "manifest.json"
LOCK_SUFFIX = ".lock"


def manifest_digest(manifest: dict[str, Any]) -> str:
    """The SHA-256 of a manifest's canonical JSON: the name of its entry."""
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


def store_dir(workspace: Path) -> tuple[Path, str | None]:
    """The store for a training run in `workspace`, and a line to print when it is not the usual one."""
    parts = workspace.resolve().parts
    for i in range(len(parts) - len(EXPERIMENT_COPIES)):
        if parts[i : i + len(EXPERIMENT_COPIES)] == EXPERIMENT_COPIES:
            main = Path(*parts[:i])
            if (main / "dvc.yaml").is_file():
                return main / CHECKPOINT_DIR, None
            return workspace / CHECKPOINT_DIR, (
                f"{main} does not look like this experiment's workspace (no dvc.yaml); checkpoints stay "
                "in the experiment's own copy, which DVC deletes with it, so a killed run will start afresh"
            )
    return CHECKPOINT_DIR if workspace == Path.cwd() else workspace / CHECKPOINT_DIR, None


def remove_tree(path: Path) -> None:
    """Delete a directory, or raise a StageError naming what could not be deleted."""
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise StageError(
            f"cannot remove {e.filename or path}: {e.strerror or e}; remove {path} by hand, then run again"
        ) from None


class Entry:
    """One run's directory in the store, bound to its manifest."""

    def __init__(self, store: Path, manifest: dict[str, Any]) -> None:
        self.store = store
        self.manifest = manifest
        self.digest = manifest_digest(manifest)
        self.path = store / self.digest[:32]
        self.lock = store / (self.path.name + LOCK_SUFFIX)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Hold the entry's lock for the block: one training of a manifest at a time."""
        with contextlib.ExitStack() as stack:
            try:  # only taking the lock: errors of the block pass through untouched
                stack.enter_context(hold(self.lock, "a training with these inputs"))
            except OSError as e:
                raise cannot_write(self.lock, e) from None
            except LockedError as e:
                raise StageError(
                    f"another training with the same params, data and code is running: {e}; wait for it to "
                    f"finish or stop it, then run again ({self.lock} is free once it has exited)"
                ) from None
            yield

    def is_ours(self) -> bool:
        """Whether the entry exists and holds exactly this manifest."""
        try:
            return json.loads((self.path / MANIFEST).read_text(encoding="utf-8")) == self.manifest
        except (OSError, ValueError):
            return False

    def start_fresh(self) -> None:
        """Empty the entry (whatever it holds) and write its manifest."""
        remove_tree(self.path)
        try:
            self.path.mkdir(parents=True)
        except OSError as e:
            raise cannot_write(self.path, e) from None
        write_json(self.path / MANIFEST, self.manifest)

    def remove(self) -> None:
        """Delete the finished run's entry."""
        remove_tree(self.path)

    def remove_empty_store(self) -> None:
        """Remove the store's folders if nothing is left in them (call once the lock is released)."""
        for folder in (self.store, self.store.parent):
            with contextlib.suppress(OSError):  # not empty: other runs' entries, or the user's files
                folder.rmdir()


def unfinished_entries(store: Path) -> list[Path]:
    """The store's entries, newest first."""
    try:
        entries = [p for p in store.iterdir() if p.is_dir() and (p / MANIFEST).is_file()]
    except FileNotFoundError:
        return []
    return sorted(entries, key=lambda p: p.stat().st_mtime_ns, reverse=True)


def prune(store: Path, keep: Path) -> list[Path]:
    """Remove unfinished entries beyond the newest KEEP_UNFINISHED (never `keep`, nor one in training)."""
    removed = []
    others = [p for p in unfinished_entries(store) if p != keep]
    for path in others[KEEP_UNFINISHED:]:
        try:
            # Held while removing, so a training of that manifest that starts now waits for nothing half-deleted.
            with hold(store / (path.name + LOCK_SUFFIX), "removing an old unfinished training"):
                remove_tree(path)
        except LockedError:
            continue  # in training right now
        removed.append(path)
    return removed


def newest_other(store: Path, keep: Path) -> dict[str, Any] | None:
    """The manifest of the newest unfinished entry other than `keep`, if any (to say why we start afresh)."""
    for path in unfinished_entries(store):
        if path != keep:
            try:
                return json.loads((path / MANIFEST).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
    return None


class Writable(Protocol):
    """What `save` needs of a tf.train.Checkpoint (this module imports no TensorFlow)."""

    def write(self, file_prefix: str) -> str: ...


def _record(directory: Path, iteration: int) -> Path:
    return directory / f"ckpt-{iteration}.json"


def _iteration(path: Path) -> int | None:
    match = re.fullmatch(r"ckpt-(\d+)[._].*", path.name)
    return int(match.group(1)) if match else None


def _remove_or_report(path: Path) -> None:
    try:
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    except OSError as e:
        # Harmless to a later resume (its record is gone first), but never silent.
        say(f"cannot remove the old checkpoint file {path}: {e.strerror or e}")


def save(checkpoint: Writable, directory: Path, iteration: int, manifest_sha256: str, keep: int) -> None:
    """Write checkpoint ckpt-<iteration> and its record; keep the newest `keep` checkpoints."""
    prefix = directory / f"ckpt-{iteration}"
    checkpoint.write(str(prefix))
    files = sorted(p for p in directory.iterdir() if _iteration(p) == iteration and p.suffix != ".json")
    write_json(_record(directory, iteration), {
        "manifest_sha256": manifest_sha256, "files": {p.name: sha256_file(p) for p in files},
    })
    kept = sorted((i for p in directory.glob("ckpt-*.json") if (i := _iteration(p)) is not None), reverse=True)
    kept = set(kept[:keep])
    old = [p for p in directory.iterdir() if (i := _iteration(p)) is not None and i not in kept]
    for path in sorted(old, key=lambda p: p.suffix != ".json"):  # records first: a file without one is ignored
        _remove_or_report(path)


def intact(directory: Path, manifest_sha256: str) -> Iterator[Path]:
    """The prefixes of this manifest's checkpoints whose files match their records, newest first.

    Each one passed over is named in one line, with the reason.
    """
    records = [(i, p) for p in directory.glob("ckpt-*.json") if (i := _iteration(p)) is not None]
    for iteration, record_path in sorted(records, reverse=True):
        try:
            record = json.loads(record_path.read_text(encoding="utf-8"))
            files = dict(record["files"])
            problem = None if record["manifest_sha256"] == manifest_sha256 else "written by a run with other inputs"
        except (OSError, ValueError, KeyError, TypeError) as e:
            say(f"ignoring the damaged checkpoint record {record_path} ({type(e).__name__})")
            continue
        for name, digest in files.items():
            if problem is None:
                try:
                    problem = None if sha256_file(directory / name) == digest else f"{name} is damaged"
                except OSError as e:
                    problem = f"{name} cannot be read ({e.strerror or e})"
        if problem is not None or not files:
            say(f"ignoring the checkpoint at iteration {iteration} in {directory}: {problem or 'no files'}")
            continue
        yield directory / f"ckpt-{iteration}"


def write_weights(path: Path, arrays: list[np.ndarray]) -> str:
    """Write weights as an .npz file, atomically; return the SHA-256 of what was written."""
    buffer = io.BytesIO()
    np.savez(buffer, *arrays)
    data = buffer.getvalue()
    with write_atomic(path) as f:
        f.write(data)
    return hashlib.sha256(data).hexdigest()


def read_weights(path: Path) -> list[np.ndarray]:
    """The arrays `write_weights` wrote, in order."""
    with np.load(path, allow_pickle=False) as archive:
        return [archive[f"arr_{i}"] for i in range(len(archive.files))]


def weights_problem(path: Path, sha256: str | None, count: int) -> str | None:
    """None if `path` holds the weights saved with digest `sha256`, else what is wrong with it."""
    if sha256 is None:
        return "was never saved by this run"
    try:
        if sha256_file(path) != sha256:
            return "is not the file saved as the best (damaged or replaced)"
        if len(read_weights(path)) != count:
            return f"does not hold {count} arrays"
    except (OSError, ValueError) as e:
        return f"cannot be read ({getattr(e, 'strerror', None) or e})"
    return None
