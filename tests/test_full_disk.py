"""A full disk in the train, evaluate, plots and export stages: one line naming the path, exit 1, no torn output.

Each stage runs in a tiny project copy on a small tmpfs that is filled up to
leave a few bytes free, as many as a fraction of what the stage writes, so
the failure lands on different writes. Needs root (to mount the tmpfs).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import yaml

from mnist_early_stopping.pipeline.atomic import LEFTOVER
from tests.conftest import run_stage, staged_project

STAGES = ("download", "split", "train", "evaluate", "plots", "export")
DISK_SIZE = "64m"
PAGE = 4096
# Free space left for the stage, as fractions of the size of its outputs: the first
# write fails (nothing at all), then later ones, up to the last few files. Training
# also fills its checkpoint store until the end, so its fractions go beyond 1.
FRACTIONS = {
    "train": (0.0, 0.05, 0.3, 0.6, 0.9, 1.1, 1.3, 1.6),
    "evaluate": (0.0, 0.5, 0.9),
    "plots": (0.0, 0.3, 0.6, 0.9),
    "export": (0.0, 0.5, 0.9),
}


def declared_outputs(project: Path, stage: str) -> list[Path]:
    """The outputs dvc.yaml declares for `stage`: outs, metrics and plots."""
    spec = yaml.safe_load((project / "dvc.yaml").read_text())["stages"][stage]
    entries = [e for key in ("outs", "metrics", "plots") for e in spec.get(key, [])]
    return [Path(next(iter(e)) if isinstance(e, dict) else e) for e in entries]


def disk_usage(path: Path) -> int:
    """Bytes a file or tree takes on disk, in whole pages."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(-(-p.stat().st_size // PAGE) * PAGE for p in files)


@pytest.fixture(scope="module")
def disk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """An empty tmpfs of DISK_SIZE, unmounted after the module's tests."""
    mount = tmp_path_factory.mktemp("disk")
    if os.geteuid() != 0:
        pytest.skip("the full-disk tests mount a tmpfs, which needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_SIZE}", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); the full-disk tests need one")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A tiny project on the ordinary disk after every stage has run, and the stages' environment."""
    return staged_project(tmp_path_factory.mktemp("full_disk"), tuple(STAGES))


def fill(disk: Path, leave: int) -> None:
    """Take all the free space of `disk` but `leave` bytes, in one preallocated file."""
    stat = os.statvfs(disk)
    free = stat.f_bavail * stat.f_frsize
    with open(disk / "filler", "wb") as f:
        os.posix_fallocate(f.fileno(), 0, max(free - leave, PAGE))


def assert_complete(path: Path, reference: Path) -> None:
    """`path`, an output the failed stage left, is whole: it reads back and has every file the reference has."""
    if reference.is_dir():
        names = sorted(p.relative_to(reference) for p in reference.rglob("*") if p.is_file())
        assert sorted(p.relative_to(path) for p in path.rglob("*") if p.is_file()) == names, path
        for name in names:
            assert_complete(path / name, reference / name)
        return
    data = path.read_bytes()
    if path.suffix == ".json":
        json.loads(data)
    elif path.suffix in (".csv", ".tsv"):
        text = data.decode()
        assert text.endswith("\n"), path
        widths = {len(line.split("\t" if path.suffix == ".tsv" else ",")) for line in text.splitlines()}
        assert len(widths) == 1, path
    elif path.suffix == ".npz":
        with np.load(path) as archive:
            [archive[name] for name in archive.files]
    elif path.suffix == ".keras":
        with zipfile.ZipFile(path) as archive:
            assert archive.testzip() is None, path
    elif path.suffix == ".png":
        assert data.startswith(b"\x89PNG") and data.endswith(b"IEND\xaeB`\x82"), path
    elif path.parent.name == "variables" or path.suffix == ".tflite":  # sizes set by the network's shape
        assert len(data) == reference.stat().st_size, path
    else:  # the SavedModel's protobufs: their varints vary in length from run to run
        assert data, path


def assert_no_leftovers(project: Path, outputs: list[Path]) -> None:
    """No temporary file or directory of an atomic write is left beside or inside any output."""
    beside = [p for folder in {project / o.parent for o in outputs} for p in folder.iterdir()]
    inside = [p for o in outputs if (project / o).is_dir() for p in (project / o).rglob("*")]
    found = [p for p in beside + inside if LEFTOVER.fullmatch(p.name)]
    assert not found, found


def run_on_full_disk(disk: Path, reference: Path, env: dict[str, str], stage: str, leave: int) -> str:
    """Run `stage` in a copy of `reference` on `disk` with `leave` bytes free; check the failure; return its line."""
    project = disk / "project"
    shutil.copytree(reference, project, symlinks=True)
    outputs = declared_outputs(project, stage)
    for output in outputs:  # as DVC does before running the stage
        target = project / output
        shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    try:
        fill(disk, leave)
        result = run_stage(project, stage, env, check=False)
        assert result.returncode == 1, f"{stage} with {leave} bytes free: exit {result.returncode}\n{result.stderr}"
        assert "Traceback" not in result.stderr, result.stderr
        line = result.stderr.strip().splitlines()[-1]
        assert line.startswith(f"{stage}: cannot write ") and "No space left on device" in line, line
        print(f"{leave} bytes free: {line}")
        named = line.removeprefix(f"{stage}: cannot write ").split(":")[0]
        # An output, a file in one or the folder of some, or the checkpoint store: never a temporary name.
        places = [*outputs, Path("checkpoints/train")]
        assert any(Path(named).is_relative_to(o) or o.is_relative_to(named) for o in places), line
        for output in outputs:
            if (project / output).exists():
                assert_complete(project / output, reference / output)
        assert_no_leftovers(project, outputs)
        return named
    finally:
        shutil.rmtree(project)
        (disk / "filler").unlink(missing_ok=True)


@pytest.mark.slow
@pytest.mark.parametrize("stage", list(FRACTIONS))
def test_a_full_disk_is_one_line_naming_the_path_and_leaves_no_torn_output(
    disk: Path, reference: tuple[Path, dict[str, str]], stage: str
) -> None:
    source, env = reference
    written = sum(disk_usage(source / o) for o in declared_outputs(source, stage))
    named = [run_on_full_disk(disk, source, env, stage, int(f * written)) for f in FRACTIONS[stage]]
    # The failures land on different writes.
    assert len(set(named)) >= 2, named
