"""Fetch the four MNIST files, verified by content (the download stage's logic).

Mirrors are tried in order: $MNIST_MIRROR first (a directory, a file:// URL or
an http(s):// URL), then `download.mirrors` from params.yaml. A mirror may
serve each file gzipped (`NAME.gz`) or plain (`NAME`). Every file is checked
against the SHA-256 and size of its *decompressed* content (`download.files`)
and stored decompressed, so the output is byte-identical whichever mirror
served it and DVC never re-runs later stages because the source changed.

The stage writes nothing in data/raw but the four MNIST files and its own
temp dirs (`.NAME.xxxxxxxx`), and deletes nothing else: anything else there
makes it refuse to run. What a mirror sends is bounded in size and in time
(a minimum rate, then a deadline), and redirects go to http(s) only, never
from https down to http.

Worst case in time, with the default params, against mirrors that trickle or
never answer a connect: each such mirror is asked once in the whole stage and
cut after min_rate_window_seconds + 1 s of polling = 21 s (connects included,
as their sockets are cut too; timeout_seconds = 30 s is longer than the window,
so a silence always meets the rate rule first). $MNIST_MIRROR and the two
configured mirrors: 3 x 21 s = 63 s; a mirror that refuses at once instead
costs its retries' backoff, 1 + 2 s per file: under 2 minutes in all. Name
look-ups are the system resolver's, outside these bounds.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import gzip
import hashlib
import http.client
import io
import os
import re
import socket
import ssl
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator

from mnist_early_stopping.pipeline import params
from mnist_early_stopping.pipeline.digests import sha256_file
from mnist_early_stopping.pipeline.layout import MNIST_NAMES
from mnist_early_stopping.pipeline.params import Expected
from mnist_early_stopping.pipeline.stage import EXIT_BAD_INPUT, StageError, say

MIRROR_ENV = "MNIST_MIRROR"
CHUNK = 1 << 20
# What fetch_from_mirror writes in its temp dir: the bytes as received, then the verified content.
DOWNLOAD, CONTENT = "download", "content"
# A download may be larger than its decompressed size by gzip's framing: a
# header (maybe with a file name or comment), 5 bytes per 64 KiB block of
# data that does not compress, an 8-byte trailer. 64 KiB covers that for
# MNIST-sized files and bounds what a mirror can make the stage write.
GZIP_SLACK = 64 * 1024
# One attempt at one file (NAME.gz then NAME, redirects included) is cut off
# after 10 * timeout_seconds, at least 10 minutes, and never before a transfer
# at the minimum rate could end (the 47 MB training images at 10 kB/s: 78 min):
# the rate rule stops trickles; this is the backstop for anything it misses.
DEADLINE_TIMEOUTS = 10
MIN_DEADLINE_SECONDS = 600.0
# How often the rate rule and the deadline are checked, at most.
POLL_SECONDS = 1.0


class FetchError(Exception):
    """One attempt at one file from one mirror failed."""


class NotOnMirror(FetchError):
    """The mirror does not have this file (HTTP 404 or no such local file)."""


class TooSlow(FetchError):
    """The attempt was cut by the rate rule or the deadline: the mirror is not asked again."""


class LocalError(StageError):
    """Reading or writing the stage's own files failed: never the mirror's fault, never retried."""


def local_error(action: str, path: Path | str, e: OSError) -> LocalError:
    """A LocalError naming the path, the system's reason and, where it helps, what to do."""
    reason = e.strerror or str(e) or type(e).__name__
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        reason += "; free some disk space and run again"
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        reason += "; make it writable for this user and run again"
    return LocalError(f"cannot {action} {path}: {reason}")


def attempt_deadline(timeout: float, limit: int, min_rate: float) -> float:
    """Seconds one attempt at one file of at most `limit` bytes may take in all (see DEADLINE_TIMEOUTS)."""
    return max(DEADLINE_TIMEOUTS * timeout, MIN_DEADLINE_SECONDS, limit / min_rate)


# --- the digest table and the mirrors: checked before anything is touched -----------------------


def check_names(expected: dict[str, Expected]) -> None:
    """Refuse a digest table that does not name exactly the four MNIST files."""
    if set(expected) != set(MNIST_NAMES):
        raise StageError(f"the digest table must name exactly {', '.join(MNIST_NAMES)}", code=EXIT_BAD_INPUT)


def mirror_list(configured: tuple[str, ...]) -> list[str]:
    """Mirrors in the order they are tried: $MNIST_MIRROR, then the configured ones."""
    extra = os.environ.get(MIRROR_ENV, "").strip()
    return ([extra] if extra else []) + list(configured)


def local_dir(mirror: str) -> Path | None:
    """The directory a mirror names (a path or a file:// URL), or None for an http(s) mirror."""
    if "://" not in mirror:
        return Path(mirror).expanduser()
    url = urllib.parse.urlparse(mirror)
    return Path(urllib.request.url2pathname(url.path)) if url.scheme.lower() == "file" else None


def check_mirror(mirror: str, out_dir: Path) -> None:
    """Refuse a mirror of an unknown kind, or one that is, holds or is held by `out_dir`."""
    if "://" in mirror and urllib.parse.urlparse(mirror).scheme.lower() not in ("file", "http", "https"):
        raise StageError(
            f"mirror {mirror}: not a directory, a file:// URL or an http(s):// URL", code=EXIT_BAD_INPUT
        )
    local = local_dir(mirror)
    if local is None:
        return
    mine, theirs = out_dir.resolve(), local.resolve()
    if mine.is_relative_to(theirs) or theirs.is_relative_to(mine):
        raise StageError(
            f"mirror {mirror} is {out_dir} or overlaps it, and DVC deletes {out_dir} before running"
            f" this stage, which would destroy the files: put them in a directory outside {out_dir}"
            f" and point ${MIRROR_ENV} there",
            code=EXIT_BAD_INPUT,
        )


def file_url(mirror: str, name: str) -> str:
    """URL of `name` on `mirror`, which may be a URL or a local directory."""
    if "://" not in mirror:
        return Path(mirror).expanduser().resolve().as_uri() + "/" + name
    return mirror.rstrip("/") + "/" + name


# --- data/raw: only our own files ----------------------------------------------------------------


def is_output(path: Path) -> bool:
    """Whether `path` is one of the four files this stage writes (maybe a stale one): replaceable."""
    return path.name in MNIST_NAMES and (path.is_symlink() or path.is_file())


def is_leftover(path: Path) -> bool:
    """Whether `path` is the temp dir of an earlier, killed run, holding only what it writes."""
    names = "|".join(map(re.escape, MNIST_NAMES))
    if not re.fullmatch(rf"\.(?:{names})\.[a-z0-9_]+", path.name):
        return False
    if path.is_symlink() or not path.is_dir():
        return False
    return all(p.name in (DOWNLOAD, CONTENT) and p.is_file() and not p.is_symlink() for p in path.iterdir())


def prepare(out_dir: Path) -> None:
    """Make `out_dir` a directory of this stage's files only, or refuse without touching anything."""
    if out_dir.exists() and not out_dir.is_dir():
        raise StageError(
            f"{out_dir} is a file, not a directory: move it elsewhere (this stage writes"
            f" the four MNIST files into a directory {out_dir}) and run again"
        )
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise local_error("create", out_dir, e) from None
    try:
        entries = sorted(out_dir.iterdir())
        strays = [p for p in entries if not is_output(p) and not is_leftover(p)]
    except OSError as e:
        raise local_error("read", out_dir, e) from None
    if strays:
        more = f" (and {len(strays) - 1} more)" if len(strays) > 1 else ""
        raise StageError(
            f"{strays[0]}{more} is not a file this stage writes: move it out of {out_dir} and run again"
            f" (DVC deletes {out_dir} before running this stage, so nothing else belongs there)"
        )
    for path in entries:
        if is_leftover(path):
            remove_leftover(path)


def remove_leftover(tmp: Path) -> None:
    """Delete a temp dir of an earlier run (checked by is_leftover)."""
    try:
        for path in tmp.iterdir():
            path.unlink()
        tmp.rmdir()
    except OSError as e:
        raise local_error("remove", tmp, e) from None


@contextlib.contextmanager
def temp_dir(out: Path) -> Iterator[Path]:
    """A fresh temp dir beside `out`, named after it, deleted afterwards."""
    try:
        tmp = tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.", ignore_cleanup_errors=True)
    except OSError as e:
        raise local_error("create a temporary directory in", out.parent, e) from None
    with tmp as name:
        yield out.parent / Path(name).name  # relative when `out` is, for shorter messages


class Output:
    """A file being written; any OSError on it is a LocalError naming it, never the mirror's fault."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file = self.do(lambda: path.open("wb"))

    def do(self, operation: Callable[[], Any]) -> Any:
        """Run one operation on the file, turning an OSError into a LocalError."""
        try:
            return operation()
        except OSError as e:
            raise local_error("write", self.path, e) from None

    def write(self, chunk: bytes) -> None:
        """Append bytes."""
        self.do(lambda: self.file.write(chunk))

    def sync(self) -> None:
        """Flush the file to disk (before it is renamed into place)."""
        self.do(self.file.flush)
        self.do(lambda: os.fsync(self.file.fileno()))

    def __enter__(self) -> Output:
        return self

    def __exit__(self, *exc: object) -> None:
        self.do(self.file.close)  # a full disk may show only here, when the buffer is flushed


# --- one connection: a minimum rate, a deadline, safe redirects ----------------------------------


class MinRate:
    """curl's --speed-limit/--speed-time: too slow once the last `window` s averaged under `rate` bytes/s."""

    def __init__(self, rate: float, window: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.window, self.clock = rate, window, clock
        self.samples: collections.deque[tuple[float, int]] = collections.deque([(clock(), 0)])

    def too_slow(self, received: int) -> bool:
        """Note that `received` bytes have arrived so far; whether the last window was too slow."""
        now = self.clock()
        self.samples.append((now, received))
        while self.samples[1][0] <= now - self.window:  # the window starts at the last sample before it
            self.samples.popleft()
        start, before = self.samples[0]
        return now - start >= self.window and received - before < self.rate * (now - start)


class Deadline:
    """The end of one attempt, at its time limit or as soon as it falls under the minimum rate: then
    every socket it opened is shut down, whatever is going on (a connect, a TLS handshake, a read)."""

    def __init__(self, seconds: float, min_rate: MinRate | None = None) -> None:
        self.seconds, self.min_rate = seconds, min_rate
        self.received = 0  # bytes of the attempt so far, counted by the reader, judged by the rate rule
        self.expired = False
        self.too_slow = False  # expired by the rate rule, not the time limit
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.watcher = threading.Thread(target=self.watch, daemon=True)

    def __enter__(self) -> Deadline:
        self.watcher.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.watcher.join()

    def watch(self) -> None:
        """The watcher thread: check the rule every poll, and the time limit, until the attempt is done."""
        end = time.monotonic() + self.seconds
        poll = min(POLL_SECONDS, self.min_rate.window / 10) if self.min_rate else POLL_SECONDS
        while not self.done.wait(min(poll, max(end - time.monotonic(), 0.0))):
            if self.min_rate is not None and self.min_rate.too_slow(self.received):
                self.too_slow = True
            if self.too_slow or time.monotonic() >= end:
                self.expire()
                return

    def reason(self, url: str) -> str:
        """Why the attempt at `url` was cut, once it has expired."""
        if self.too_slow and self.min_rate is not None:
            rate, window = self.min_rate.rate, self.min_rate.window
            return f"{url} sent less than {rate:g} bytes/s over {window:g} s, the minimum rate"
        return f"{url} not complete after {self.seconds:g} s, the limit for one attempt"

    def connect(
        self, address: tuple[str, int], timeout: float, source_address: tuple[str, int] | None = None
    ) -> socket.socket:
        """socket.create_connection, each socket cut from before its connect on; no address tried once cut."""
        host, port = address
        error: OSError = OSError(f"no address for {host}")
        for family, kind, proto, _, addr in socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM):
            sock = socket.socket(family, kind, proto)
            try:
                self.track(sock)
                sock.settimeout(timeout)
                if source_address:
                    sock.bind(source_address)
                sock.connect(addr)
                return sock
            except OSError as e:
                sock.close()
                error = e
                if self.expired:
                    break
        raise error

    def track(self, sock: socket.socket) -> None:
        """Cut `sock` at the deadline (at once if it has passed)."""
        with self.lock:
            self.sockets.append(sock)
            if self.expired:
                shut(sock)

    def expire(self) -> None:
        """Called by the watcher: wake every connect or read blocked on the attempt's sockets."""
        with self.lock:
            self.expired = True
            for sock in self.sockets:
                shut(sock)


def shut(sock: socket.socket) -> None:
    """Make reads blocked on `sock` in another thread return; the TCP level, also for TLS sockets."""
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class TrackedHTTPConnection(http.client.HTTPConnection):
    """An HTTP connection whose socket its Deadline can cut, from the connect on."""

    def __init__(self, *args: Any, deadline: Deadline, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._create_connection = deadline.connect  # http.client's hook for making the socket


class TrackedHTTPSConnection(http.client.HTTPSConnection):
    """An HTTPS connection whose socket its Deadline can cut, from the connect on."""

    def __init__(self, *args: Any, deadline: Deadline, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._create_connection = deadline.connect


class TrackedTLSContext(ssl.SSLContext):
    """create_default_context()'s settings, with sockets a Deadline can cut from the TLS handshake on."""

    deadline: Deadline

    def wrap_socket(  # type: ignore[override]
        self, sock: socket.socket, *args: Any, **kwargs: Any
    ) -> ssl.SSLSocket:
        tls = super().wrap_socket(sock, *args, do_handshake_on_connect=False, **kwargs)
        self.deadline.track(tls)
        tls.do_handshake()
        return tls


def tls_context(deadline: Deadline) -> TrackedTLSContext:
    """A client TLS context that verifies certificates and host names, as urllib's default does."""
    context = TrackedTLSContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname
    context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    context.deadline = deadline
    return context


class DeadlineHTTPHandler(urllib.request.HTTPHandler):
    """Opens http:// URLs on connections cut at the deadline."""

    def __init__(self, deadline: Deadline) -> None:
        super().__init__()
        self.deadline = deadline

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(TrackedHTTPConnection, req, deadline=self.deadline)


class DeadlineHTTPSHandler(urllib.request.HTTPSHandler):
    """Opens https:// URLs on connections cut at the deadline."""

    def __init__(self, deadline: Deadline) -> None:
        super().__init__()
        self.deadline = deadline

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        context = tls_context(self.deadline)
        return self.do_open(TrackedHTTPSConnection, req, context=context, deadline=self.deadline)


def redirect_problem(source: str, target: str) -> str | None:
    """Why a redirect from `source` to `target` is refused, or None to follow it.

    Any host will do, as the content's digest is what makes a file trusted.
    """
    scheme = urllib.parse.urlparse(target).scheme.lower()
    if scheme not in ("http", "https"):
        return "only redirects to http(s) URLs are followed"
    if scheme == "http" and urllib.parse.urlparse(source).scheme.lower() == "https":
        return "a redirect from https down to http is refused"
    return None


class SafeRedirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects to http(s) URLs only, never from https down to http."""

    def http_error_302(self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any) -> Any:
        target = headers.get("location") or headers.get("uri")
        if target:
            target = urllib.parse.urljoin(req.full_url, target.strip())
            problem = redirect_problem(req.full_url, target)
            if problem:
                fp.close()
                raise FetchError(f"{req.full_url} redirects to {target}: {problem}")
        return super().http_error_302(req, fp, code, msg, headers)

    # The base class binds these to its own http_error_302.
    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


def opener(deadline: Deadline) -> urllib.request.OpenerDirector:
    """A urllib opener with safe redirects and connections cut at the deadline."""
    handlers = (SafeRedirects, DeadlineHTTPHandler(deadline), DeadlineHTTPSHandler(deadline))
    return urllib.request.build_opener(*handlers)


@contextlib.contextmanager
def open_url(
    url: str, timeout: float, deadline: Deadline
) -> Iterator[tuple[io.BufferedIOBase, int | None, str]]:
    """Open a URL for reading; yields the stream, its length when known and the URL after redirects."""
    if url.startswith("file://"):
        path = Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path))
        if not path.is_file():
            raise NotOnMirror(f"no file {path}")
        with path.open("rb") as f:
            yield f, path.stat().st_size, url
        return
    try:
        response = opener(deadline).open(url, timeout=timeout)
    except urllib.error.HTTPError as e:
        e.close()
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
        yield response, int(length) if length and length.isdigit() else None, response.geturl()


@contextlib.contextmanager
def progress_bar(total: int | None, desc: str) -> Iterator[Callable[[int], None]]:
    """Yield a progress callback: a tqdm bar when stderr is a terminal, else a no-op."""
    if not sys.stderr.isatty():
        yield lambda n: None
        return
    from tqdm import tqdm

    with tqdm(total=total, desc=desc, unit="B", unit_scale=True, leave=False) as bar:
        yield bar.update


# --- one file ------------------------------------------------------------------------------------


def fetch_to(url: str, dest: Path, timeout: float, limit: int, deadline: Deadline) -> str:
    """Copy at most `limit` bytes at `url` into `dest`; return the URL read after redirects.

    Raises FetchError for whatever the mirror does wrong (TooSlow when the deadline cut it),
    LocalError when `dest` cannot be written.
    """
    try:
        final, received, length = copy_url(url, dest, timeout, limit, deadline)
    except FetchError:
        if deadline.expired:
            raise TooSlow(deadline.reason(url)) from None
        raise
    if deadline.expired:  # the deadline's shutdown may read as a normal end of a response of unknown length
        raise TooSlow(deadline.reason(url))
    if length is not None and received != length:
        raise FetchError(f"{url}: {received} bytes received but Content-Length said {length}")
    return final


def copy_url(
    url: str, dest: Path, timeout: float, limit: int, deadline: Deadline
) -> tuple[str, int, int | None]:
    """The copying of fetch_to; returns the URL after redirects, the bytes received, the announced length."""
    too_many = f"{url} sends more than {limit} bytes, more than the file can be (its size plus gzip framing)"
    try:
        with (
            Output(dest) as out,  # first: a disk we cannot write to is no reason to ask the mirror
            open_url(url, timeout, deadline) as (stream, length, final),
            progress_bar(length, url.rsplit("/", 1)[-1]) as advance,
        ):
            if length is not None and length > limit:
                raise FetchError(too_many)
            received = 0
            # read1 returns what has arrived, so the checks run between the server's sends.
            while chunk := stream.read1(CHUNK):
                received += len(chunk)
                deadline.received += len(chunk)
                if received > limit:
                    raise FetchError(too_many)
                if deadline.expired:
                    raise FetchError("deadline")  # reworded by fetch_to
                out.write(chunk)
                advance(len(chunk))
    except TimeoutError:
        raise FetchError(f"transfer of {url} timed out (no data for {timeout:g} s)") from None
    except (OSError, http.client.HTTPException) as e:
        raise FetchError(f"transfer of {url} failed: {str(e) or type(e).__name__}") from None
    return final, received, length


def is_gzipped(path: Path) -> bool:
    """Whether `path` starts with gzip's magic number."""
    try:
        with path.open("rb") as f:
            return f.read(2) == b"\x1f\x8b"
    except OSError as e:
        raise local_error("read", path, e) from None


def decompress_and_verify(src: Path, dest: Path, expected: Expected) -> None:
    """Write the (gunzipped if needed) content of `src` to `dest`, check its digest, sync it."""
    gzipped = is_gzipped(src)
    digest, size = hashlib.sha256(), 0  # hashed as it is written: one pass over the data
    with Output(dest) as out:
        try:
            with (gzip.open(src, "rb") if gzipped else src.open("rb")) as f:
                while chunk := f.read(CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                    if size > expected.size:  # a wrong file or a gzip bomb: stop before filling the disk
                        raise FetchError(
                            f"wrong size: more than {expected.size} bytes, expected {expected.size}"
                        )
                    out.write(chunk)
        except (gzip.BadGzipFile, EOFError, zlib.error) as e:
            raise FetchError(f"corrupt gzip data: {str(e) or type(e).__name__}") from None
        except OSError as e:  # not the data's fault: the disk's
            raise local_error("read", src, e) from None
        if size != expected.size:
            raise FetchError(f"wrong size: {size} bytes, expected {expected.size}")
        got = digest.hexdigest()
        if got != expected.sha256:
            raise FetchError(f"SHA-256 mismatch: got {got[:16]}..., expected {expected.sha256[:16]}...")
        out.sync()


def is_verified(path: Path, expected: Expected) -> bool:
    """Whether `path` already holds exactly the expected content."""
    try:
        if not path.is_file() or path.stat().st_size != expected.size:
            return False
        return sha256_file(path) == expected.sha256
    except OSError as e:
        raise local_error("read", path, e) from None


def fetch_from_mirror(
    mirror: str,
    name: str,
    expected: Expected,
    out: Path,
    cfg: params.DownloadParams,
    log: Callable[[str], None] = say,
) -> None:
    """Fetch `name` (as NAME.gz, else NAME) from one mirror into `out`, verified."""
    timeout, limit, rate = cfg.timeout_seconds, expected.size + GZIP_SLACK, cfg.min_rate_bytes_per_second
    with temp_dir(out) as tmp:
        downloaded, verified = tmp / DOWNLOAD, tmp / CONTENT
        min_rate = MinRate(rate, cfg.min_rate_window_seconds)
        with Deadline(attempt_deadline(timeout, limit, rate), min_rate) as deadline:
            for candidate in (name + ".gz", name):
                url = file_url(mirror, candidate)
                try:
                    final = fetch_to(url, downloaded, timeout, limit, deadline)
                    break
                except NotOnMirror:
                    continue
            else:
                raise NotOnMirror(f"has neither {name}.gz nor {name}")
        if final != url:
            log(f"{url} redirected to {final}")
        decompress_and_verify(downloaded, verified, expected)
        # The rename is the only step that makes the file visible under its
        # real name, so data/raw never holds a partial or unverified file.
        try:
            os.replace(verified, out)
        except OSError as e:
            raise local_error("write", out, e) from None


def fetch_file(
    name: str,
    expected: Expected,
    mirrors: list[str],
    out_dir: Path,
    cfg: params.DownloadParams,
    sleep: Callable[[float], None] = time.sleep,
    log: Callable[[str], None] = say,
    dropped: set[str] | None = None,
) -> list[str]:
    """Fetch one file, trying each mirror with retries; return the failures seen.

    A mirror cut for slowness is not retried and joins `dropped`, the mirrors
    not asked again (for the remaining files too): a stalled mirror costs the
    stage one rate window, not one per attempt and file. A LocalError (the
    disk, not the mirror) is raised at once: retrying or another mirror would
    fail the same way.
    """
    dropped = set() if dropped is None else dropped
    failures: list[str] = []
    for mirror in mirrors:
        if mirror in dropped:
            failures.append(f"{mirror}: not asked, too slow for an earlier file")
            continue
        for attempt in range(1, cfg.retries + 1):
            try:
                fetch_from_mirror(mirror, name, expected, out_dir / name, cfg, log)
                return []
            except NotOnMirror as e:
                failures.append(f"{mirror}: {e}")
                break
            except TooSlow as e:
                failures.append(f"{mirror}: {e} (not asked again)")
                log(f"{mirror} dropped: {e}")
                dropped.add(mirror)
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
    log: Callable[[str], None] = say,
) -> list[str]:
    """Make `out_dir` hold every expected file; on failure return error lines, one per mirror.

    Raises StageError (before touching anything) for bad input or files in
    `out_dir` that are not this stage's, LocalError when the disk fails.
    Stops at the first file that no mirror provides: the stage fails anyway,
    and the same mirrors would only fail again, slowly, for the next files.
    """
    check_names(expected)
    for mirror in mirrors:
        check_mirror(mirror, out_dir)
    prepare(out_dir)
    dropped: set[str] = set()
    for name in MNIST_NAMES:  # never a name from the table: those are checked, these are ours
        path, exp = out_dir / name, expected[name]
        if is_verified(path, exp):
            log(f"{name} already present and verified")
            continue
        if path.is_symlink() or path.exists():
            log(f"{name} present but not the expected content; fetching it again")
            try:
                path.unlink()  # one of our outputs (prepare checked), stale
            except OSError as e:
                raise local_error("remove", path, e) from None
        failures = fetch_file(name, exp, mirrors, out_dir, cfg, log=log, dropped=dropped)
        if failures:
            return [f"could not get {name} from any mirror:"] + ["  " + f for f in failures]
        log(f"{name} verified ({exp.size} bytes)")
    return []
