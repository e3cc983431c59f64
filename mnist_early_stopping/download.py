"""Fetch the four MNIST files, verified by content (the download stage's logic).

Mirrors are tried in order: $MNIST_MIRROR first (a directory, a file:// URL or
an http(s):// URL), then `download.mirrors` from params.yaml. A mirror may
serve each file gzipped (`NAME.gz`) or plain (`NAME`). Every file is checked
against the SHA-256 and size of its *decompressed* content and stored
decompressed, so the output is byte-identical whichever mirror served it and
DVC never re-runs later stages because the source changed.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.client
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from mnist_early_stopping import params
MIRROR_ENV = "MNIST_MIRROR"
# A JSON file {"name": {"size": N, "sha256": "..."}} replacing the canonical
# digests: for tests and for other datasets in MNIST's format.
DIGESTS_ENV = "MNIST_DIGESTS"
CHUNK = 1 << 20


@dataclass(frozen=True)
class Expected:
    """Size and SHA-256 of a file's decompressed content."""

    size: int
    sha256: str


CANONICAL: dict[str, Expected] = {
    "train-images-idx3-ubyte": Expected(
        47040016, "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"
    ),
    "train-labels-idx1-ubyte": Expected(
        60008, "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"
    ),
    "t10k-images-idx3-ubyte": Expected(
        7840016, "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"
    ),
    "t10k-labels-idx1-ubyte": Expected(
        10008, "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"
    ),
}


class FetchError(Exception):
    """One attempt at one file from one mirror failed."""


class NotOnMirror(FetchError):
    """The mirror does not have this file (HTTP 404 or no such local file)."""


def load_expected() -> dict[str, Expected]:
    """The digest table: canonical MNIST, or the file named by $MNIST_DIGESTS."""
    path = os.environ.get(DIGESTS_ENV)
    if not path:
        return CANONICAL
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
        return {name: Expected(int(d["size"]), str(d["sha256"])) for name, d in raw.items()}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"download: ${DIGESTS_ENV}={path} is not a readable digest table: {e}")


def mirror_list(configured: tuple[str, ...]) -> list[str]:
    """Mirrors in the order they are tried: $MNIST_MIRROR, then the configured ones."""
    extra = os.environ.get(MIRROR_ENV, "").strip()
    return ([extra] if extra else []) + list(configured)


def file_url(mirror: str, name: str) -> str:
    """URL of `name` on `mirror`, which may be a URL or a local directory."""
    if "://" not in mirror:
        return Path(mirror).expanduser().resolve().as_uri() + "/" + name
    return mirror.rstrip("/") + "/" + name


@contextlib.contextmanager
def open_url(url: str, timeout: float) -> Iterator[tuple[BinaryIO, int | None]]:
    """Open a URL for reading; yields the stream and its length when known."""
    if url.startswith("file://"):
        path = Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path))
        if not path.is_file():
            raise NotOnMirror(f"no file {path}")
        with path.open("rb") as f:
            yield f, path.stat().st_size
        return
    try:
        response = urllib.request.urlopen(url, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 404:
            raise NotOnMirror(f"HTTP 404 for {url}") from None
        raise FetchError(f"HTTP {e.code} {e.reason} for {url}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as e:
        reason = getattr(e, "reason", e)
        if isinstance(reason, TimeoutError):
            raise FetchError(f"no response from {url} within {timeout:g} s") from None
        raise FetchError(f"cannot reach {url}: {str(reason) or type(reason).__name__}") from None
    with response:
        length = response.headers.get("Content-Length")
        yield response, int(length) if length and length.isdigit() else None


@contextlib.contextmanager
def progress_bar(total: int | None, desc: str) -> Iterator[Callable[[int], None]]:
    """Yield a progress callback: a tqdm bar when stderr is a terminal, else a no-op."""
    if not sys.stderr.isatty():
        yield lambda n: None
        return
    from tqdm import tqdm

    with tqdm(total=total, desc=desc, unit="B", unit_scale=True, leave=False) as bar:
        yield bar.update


def fetch_to(url: str, dest: Path, timeout: float) -> None:
    """Copy the bytes at `url` into `dest`, raising FetchError on any failure."""
    try:
        with (
            open_url(url, timeout) as (stream, length),
            dest.open("wb") as out,
            progress_bar(length, url.rsplit("/", 1)[-1]) as advance,
        ):
            received = 0
            while chunk := stream.read(CHUNK):
                out.write(chunk)
                received += len(chunk)
                advance(len(chunk))
    except TimeoutError:
        raise FetchError(f"transfer of {url} timed out (no data for {timeout:g} s)") from None
    except (OSError, http.client.HTTPException) as e:
        raise FetchError(f"transfer of {url} failed: {str(e) or type(e).__name__}") from None
    if length is not None and received != length:
        raise FetchError(f"{url}: {received} bytes received but Content-Length said {length}")


def decompress_and_verify(src: Path, dest: Path, expected: Expected) -> None:
    """Write the (gunzipped if needed) content of `src` to `dest` and check its digest."""
    with src.open("rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    digest, size = hashlib.sha256(), 0
    try:
        with (gzip.open(src, "rb") if gzipped else src.open("rb")) as f, dest.open("wb") as out:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
                if size > expected.size:  # a wrong file or a gzip bomb: stop before filling the disk
                    raise FetchError(f"wrong size: more than {expected.size} bytes, expected {expected.size}")
                out.write(chunk)
    except (OSError, EOFError, zlib.error) as e:
        what = "corrupt gzip data" if gzipped else "cannot read the download"
        raise FetchError(f"{what}: {str(e) or type(e).__name__}") from None
    if size != expected.size:
        raise FetchError(f"wrong size: {size} bytes, expected {expected.size}")
    got = digest.hexdigest()
    if got != expected.sha256:
        raise FetchError(f"SHA-256 mismatch: got {got[:16]}..., expected {expected.sha256[:16]}...")


def is_verified(path: Path, expected: Expected) -> bool:
    """Whether `path` already holds exactly the expected content."""
    if not path.is_file() or path.stat().st_size != expected.size:
        return False
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest() == expected.sha256


def fetch_from_mirror(mirror: str, name: str, expected: Expected, out: Path, timeout: float) -> None:
    """Fetch `name` (as NAME.gz, else NAME) from one mirror into `out`, verified."""
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{name}.") as tmp:
        downloaded, verified = Path(tmp, "download"), Path(tmp, "content")
        for candidate in (name + ".gz", name):
            try:
                fetch_to(file_url(mirror, candidate), downloaded, timeout)
                break
            except NotOnMirror:
                continue
        else:
            raise NotOnMirror(f"has neither {name}.gz nor {name}")
        decompress_and_verify(downloaded, verified, expected)
        with verified.open("rb") as f:
            os.fsync(f.fileno())
        # The rename is the only step that makes the file visible under its
        # real name, so data/raw never holds a partial or unverified file.
        os.replace(verified, out)


def fetch_file(
    name: str,
    expected: Expected,
    mirrors: list[str],
    out_dir: Path,
    cfg: params.DownloadParams,
    sleep: Callable[[float], None] = time.sleep,
) -> list[str]:
    """Fetch one file, trying each mirror with retries; return the failures seen."""
    failures: list[str] = []
    for mirror in mirrors:
        for attempt in range(1, cfg.retries + 1):
            try:
                fetch_from_mirror(mirror, name, expected, out_dir / name, cfg.timeout_seconds)
                return []
            except NotOnMirror as e:
                failures.append(f"{mirror}: {e}")
                break
            except FetchError as e:
                if attempt == cfg.retries:
                    tries = "1 attempt" if attempt == 1 else f"{attempt} attempts"
                    failures.append(f"{mirror}: {e} (after {tries})")
                else:
                    sleep(cfg.backoff_seconds * 2 ** (attempt - 1))
    return failures


def download_all(
    out_dir: Path,
    expected: dict[str, Expected],
    mirrors: list[str],
    cfg: params.DownloadParams,
    log: Callable[[str], None] = print,
) -> list[str]:
    """Make `out_dir` hold every expected file; on failure return error lines, one per mirror.

    Stops at the first file that no mirror provides: the stage fails anyway,
    and the same mirrors would only fail again, slowly, for the next files.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_strays(out_dir, expected)
    for name, exp in expected.items():
        path = out_dir / name
        if is_verified(path, exp):
            log(f"download: {name} already present and verified")
            continue
        if path.exists():
            log(f"download: {name} present but not the expected content; fetching it again")
            remove(path)
        failures = fetch_file(name, exp, mirrors, out_dir, cfg)
        if failures:
            return [f"download: could not get {name} from any mirror:"] + ["  " + f for f in failures]
        log(f"download: {name} verified ({exp.size} bytes)")
    return []


def remove(path: Path) -> None:
    """Delete a file or a directory tree."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def remove_strays(out_dir: Path, expected: dict[str, Expected]) -> None:
    """Delete what is not an expected file, e.g. the temp dir of a killed earlier run."""
    for path in out_dir.iterdir():
        if path.name not in expected:
            remove(path)
