"""Download stage against a local HTTP server and local mirrors: fallback, retries, verification,
and its hard edges: bad digest tables, files in data/raw that are not the stage's, bounds in size
and time (the minimum rate, the deadline), redirects, a full disk."""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import os
import re
import socket
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from mnist_early_stopping.data import download
from mnist_early_stopping.data.download import Expected, FetchError, download_all, fetch_file
from mnist_early_stopping.data.idx import encode_idx
from mnist_early_stopping.pipeline import params
from mnist_early_stopping.pipeline import stage as cli
from mnist_early_stopping.pipeline.params import DownloadParams
from mnist_early_stopping.pipeline.stage import StageError
from stages import download as download_stage
from tests.conftest import TinyMirror, committed_params, run_stage, stage_env, write_params
from tests.tiny_mnist import FILE_NAMES, make_arrays

TRAIN_IMAGES, TRAIN_LABELS = FILE_NAMES[0], FILE_NAMES[1]


def tiny_files(seed: int = 0) -> dict[str, bytes]:
    """Decompressed content of the four files of a very small data set."""
    return {name: encode_idx(a) for name, a in make_arrays(n_train=30, n_test=10, seed=seed).items()}


GOOD = tiny_files()
EXPECTED = {name: Expected(len(data), hashlib.sha256(data).hexdigest()) for name, data in GOOD.items()}


def gzipped(files: dict[str, bytes]) -> dict[str, bytes]:
    return {f"{name}.gz": gzip.compress(data, mtime=0) for name, data in files.items()}


def config(
    retries: int = 1, timeout: float = 5.0, backoff: float = 0.0, min_rate: float = 1.0, window: float = 3600.0
) -> DownloadParams:
    """Download params; by default a rate rule that no test server falls under."""
    return DownloadParams(
        mirrors=(), timeout_seconds=timeout, retries=retries, backoff_seconds=backoff,
        min_rate_bytes_per_second=min_rate, min_rate_window_seconds=window, files=EXPECTED,
    )


def no_sleep(seconds: float) -> None:
    """Retries in these tests never wait."""


@dataclass
class Mirror:
    """What one mirror on the local server answers."""

    files: dict[str, bytes] = field(default_factory=dict)
    status: int = 200  # every request gets this status when it is not 200
    delay: float = 0.0  # seconds of silence before the status line
    stall_after: int | None = None  # bytes of body sent before going silent
    extra_length: int = 0  # Content-Length claims this many bytes more than are sent
    redirect: str | None = None  # answer 302 to this URL ("{name}" is the file asked for)
    drip: float = 0.0  # seconds between single bytes of the response, for at most DRIP_FOR seconds
    drip_headers: bool = False  # drip the status line and headers too, not only the body
    endless: bool = False  # a body of ENDLESS bytes with no Content-Length, whatever is asked
    steady: tuple[int, float] | None = None  # send the body in blocks of this many bytes, this many seconds apart


DRIP_FOR = 6.0
ENDLESS = 64 << 20


class LocalServer(ThreadingHTTPServer):
    """Serves /<mirror>/<file> from the `mirrors` table and records every request path."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.mirrors: dict[str, Mirror] = {}
        self.requests: list[str] = []
        self.release = threading.Event()  # ends the waits of slow mirrors at teardown
        self.sent = 0  # body bytes an endless mirror managed to send
        self.done = threading.Event()  # set when an endless or dripping answer has ended

    def url(self, mirror: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{mirror}/"

    def count(self, mirror: str) -> int:
        return sum(path.startswith(f"/{mirror}/") for path in self.requests)

    def handle_error(self, request: object, client_address: object) -> None:
        """Clients that gave up on a slow mirror are expected; stay quiet."""


class Handler(BaseHTTPRequestHandler):
    server: LocalServer

    def do_GET(self) -> None:
        self.server.requests.append(self.path)
        _, mirror_name, name = self.path.split("/", 2)
        mirror = self.server.mirrors.get(mirror_name, Mirror())
        if mirror.delay:
            self.server.release.wait(mirror.delay)
        if mirror.status != 200:
            self.send_error(mirror.status)
            return
        if mirror.redirect is not None:
            self.send_response(302)
            self.send_header("Location", mirror.redirect.format(name=name))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if mirror.endless:
            self.send_endless()
            return
        if name not in mirror.files:
            self.send_error(404)
            return
        body = mirror.files[name]
        if mirror.drip_headers:
            head = f"HTTP/1.0 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            self.send_drip(head + body, mirror.drip)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body) + mirror.extra_length))
        self.end_headers()
        if mirror.drip:
            self.send_drip(body, mirror.drip)
            return
        if mirror.steady:
            size, interval = mirror.steady
            for i in range(0, len(body), size):
                self.wfile.write(body[i : i + size])
                self.wfile.flush()
                if self.server.release.wait(interval):
                    return
            return
        if mirror.stall_after is not None:
            self.wfile.write(body[: mirror.stall_after])
            self.wfile.flush()
            self.server.release.wait(10)
            return
        self.wfile.write(body)

    def send_drip(self, data: bytes, interval: float) -> None:
        """Send `data` one byte at a time, `interval` seconds apart, for at most DRIP_FOR seconds."""
        end = time.monotonic() + DRIP_FOR
        try:
            for i in range(len(data)):
                if self.server.release.wait(interval) or time.monotonic() > end:
                    return
                self.wfile.write(data[i : i + 1])
        finally:
            self.server.done.set()

    def send_endless(self) -> None:
        """Send ENDLESS zero bytes with no Content-Length, counting what gets out before the client leaves."""
        self.send_response(200)
        self.end_headers()
        block = bytes(64 << 10)
        try:
            while self.server.sent < ENDLESS:
                self.wfile.write(block)
                self.server.sent += len(block)
        finally:
            self.server.done.set()

    def log_message(self, format: str, *args: object) -> None:
        """No access log on the test output."""


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No proxy between urllib and the local server; no mirror from the caller's environment."""
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.delenv(download.MIRROR_ENV, raising=False)


@pytest.fixture
def server() -> Iterator[LocalServer]:
    """A local HTTP server on 127.0.0.1 (port chosen by the OS), stopped after the test."""
    srv = LocalServer()
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield srv
    srv.release.set()
    srv.shutdown()
    srv.server_close()
    thread.join(5)


def assert_complete(out: Path, names: tuple[str, ...] = FILE_NAMES) -> None:
    """`out` holds exactly the named files, each with the expected content, and nothing else."""
    assert sorted(p.name for p in out.iterdir()) == sorted(names)
    for name in names:
        assert (out / name).read_bytes() == GOOD[name]


def assert_clean(out: Path) -> None:
    """Nothing in `out` but verified files: no partial download, no temp directory."""
    for path in out.iterdir():
        assert path.name in GOOD and path.read_bytes() == GOOD[path.name], f"left behind: {path.name}"


def fetch_one(
    out: Path,
    mirrors: list[str],
    cfg: DownloadParams | None = None,
    sleep: Callable[[float], None] = no_sleep,
    log: Callable[[str], None] = lambda line: None,
    name: str = TRAIN_IMAGES,
) -> list[str]:
    """Fetch one file (the training images) into `out`; return the failures seen."""
    out.mkdir(exist_ok=True)
    return fetch_file(name, EXPECTED[name], mirrors, out, cfg or config(), sleep, log)


def fetch_url(url: str, dest: Path, timeout: float, limit: int = 1 << 30, seconds: float = 60.0) -> str:
    """download.fetch_to under a deadline of `seconds`."""
    with download.Deadline(seconds) as deadline:
        return download.fetch_to(url, dest, timeout, limit, deadline)


def gz_url(server: LocalServer, mirror: str) -> str:
    return server.url(mirror) + TRAIN_IMAGES + ".gz"


# --- success paths ---------------------------------------------------------------------------


def test_success_gzipped_over_http(server: LocalServer, tmp_path: Path) -> None:
    server.mirrors["m1"] = Mirror(gzipped(GOOD))
    out = tmp_path / "raw"
    assert download_all(out, EXPECTED, [server.url("m1")], config(), log=lambda s: None) == []
    assert_complete(out)
    assert sorted(server.requests) == sorted(f"/m1/{n}.gz" for n in FILE_NAMES)


def test_success_plain_over_http(server: LocalServer, tmp_path: Path) -> None:
    server.mirrors["m1"] = Mirror(dict(GOOD))
    out = tmp_path / "raw"
    assert download_all(out, EXPECTED, [server.url("m1")], config(), log=lambda s: None) == []
    assert_complete(out)
    # Each file is asked for as NAME.gz first (404, not retried), then as NAME.
    assert len(server.requests) == 8


def test_verified_files_are_not_fetched_again(server: LocalServer, tmp_path: Path) -> None:
    server.mirrors["m1"] = Mirror(gzipped(GOOD))
    out = tmp_path / "raw"
    logged: list[str] = []
    assert download_all(out, EXPECTED, [server.url("m1")], config(), log=logged.append) == []
    assert server.count("m1") == 4
    assert download_all(out, EXPECTED, [server.url("m1")], config(), log=logged.append) == []
    assert server.count("m1") == 4
    assert logged[-4:] == [f"{n} already present and verified" for n in FILE_NAMES]


def test_only_missing_or_wrong_files_are_fetched(server: LocalServer, tmp_path: Path) -> None:
    server.mirrors["m1"] = Mirror(gzipped(GOOD))
    out = tmp_path / "raw"
    out.mkdir()
    for name in FILE_NAMES[1:]:
        (out / name).write_bytes(GOOD[name])
    (out / FILE_NAMES[3]).write_bytes(GOOD[FILE_NAMES[3]][:-1])  # a partial file from elsewhere
    (out / ".train-images-idx3-ubyte.abc123").mkdir()  # the temp dir of a killed run
    (out / ".t10k-images-idx3-ubyte.x_9").mkdir()  # another, with what it had written
    (out / ".t10k-images-idx3-ubyte.x_9" / "download").write_bytes(b"partial")
    assert download_all(out, EXPECTED, [server.url("m1")], config(), log=lambda s: None) == []
    assert server.requests == [f"/m1/{FILE_NAMES[0]}.gz", f"/m1/{FILE_NAMES[3]}.gz"]
    assert_complete(out)


@pytest.mark.parametrize("as_url", [False, True], ids=["directory", "file-url"])
@pytest.mark.parametrize("compressed", [True, False], ids=["gz", "plain"])
def test_local_mirror_from_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, as_url: bool, compressed: bool
) -> None:
    mirror = tmp_path / "my mirror"  # a space, to exercise URL quoting
    mirror.mkdir()
    for name, data in (gzipped(GOOD) if compressed else GOOD).items():
        (mirror / name).write_bytes(data)
    monkeypatch.setenv(download.MIRROR_ENV, mirror.as_uri() if as_url else str(mirror))
    mirrors = download.mirror_list(("http://127.0.0.1:9/never-used/",))
    assert mirrors[0] == (mirror.as_uri() if as_url else str(mirror))
    out = tmp_path / "raw"
    assert download_all(out, EXPECTED, mirrors, config(), log=lambda s: None) == []
    assert_complete(out)  # byte-identical whichever form the mirror has


def test_main_in_project(project: Path, tiny_mirror: TinyMirror, monkeypatch: pytest.MonkeyPatch) -> None:
    mirror, table = tiny_mirror  # the project's download.files
    monkeypatch.chdir(project)
    monkeypatch.setenv(download.MIRROR_ENV, str(mirror))
    download_stage.main()
    raw = project / "data" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(table)
    for name, d in table.items():
        assert hashlib.sha256((raw / name).read_bytes()).hexdigest() == d["sha256"]


# --- fallback between mirrors ----------------------------------------------------------------


def test_fallback_after_checksum_mismatch(server: LocalServer, tmp_path: Path) -> None:
    server.mirrors["m1"] = Mirror(gzipped(tiny_files(seed=1)))  # valid IDX files, wrong content
    server.mirrors["m2"] = Mirror(gzipped(GOOD))
    out = tmp_path / "raw"
    mirrors = [server.url("m1"), server.url("m2")]
    assert download_all(out, EXPECTED, mirrors, config(retries=2), log=lambda s: None) == []
    assert_complete(out)
    assert server.count("m1") == 2 * 4 and server.count("m2") == 4


def test_checksum_mismatch_message(server: LocalServer, tmp_path: Path) -> None:
    server.mirrors["m1"] = Mirror(gzipped(tiny_files(seed=1)))
    out = tmp_path / "raw"
    got = hashlib.sha256(tiny_files(seed=1)[TRAIN_IMAGES]).hexdigest()[:16]
    want = EXPECTED[TRAIN_IMAGES].sha256[:16]
    assert fetch_one(out, [server.url("m1")]) == [
        f"{server.url('m1')}: SHA-256 mismatch: got {got}..., expected {want}... (after 1 attempt)"
    ]
    assert_clean(out)


def test_wrong_size_is_caught_before_the_digest(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / f"{TRAIN_IMAGES}.gz").write_bytes(gzip.compress(GOOD[TRAIN_IMAGES] * 3))
    out = tmp_path / "raw"
    failures = fetch_one(out, [str(mirror)])
    assert len(failures) == 1 and "wrong size: more than" in failures[0]
    assert_clean(out)


def test_fallback_after_http_500(server: LocalServer, tmp_path: Path) -> None:
    server.mirrors["m1"] = Mirror(status=500)
    server.mirrors["m2"] = Mirror(gzipped(GOOD))
    out = tmp_path / "raw"
    assert fetch_one(out, [server.url("m1"), server.url("m2")], config(retries=2)) == []
    assert server.requests == [f"/m1/{TRAIN_IMAGES}.gz"] * 2 + [f"/m2/{TRAIN_IMAGES}.gz"]
    assert_complete(out, (TRAIN_IMAGES,))
    assert fetch_one(tmp_path / "other", [server.url("m1")]) == [
        f"{server.url('m1')}: HTTP 500 Internal Server Error for {gz_url(server, 'm1')} (after 1 attempt)"
    ]


def test_fallback_after_timeout_before_response(server: LocalServer, tmp_path: Path) -> None:
    server.mirrors["m1"] = Mirror(gzipped(GOOD), delay=10)
    server.mirrors["m2"] = Mirror(gzipped(GOOD))
    out = tmp_path / "raw"
    cfg = config(timeout=0.5)
    start = time.monotonic()
    assert fetch_one(out, [server.url("m1")], cfg) == [
        f"{server.url('m1')}: no response from {gz_url(server, 'm1')} within 0.5 s (after 1 attempt)"
    ]
    assert_clean(out)
    assert fetch_one(out, [server.url("m1"), server.url("m2")], cfg) == []
    assert time.monotonic() - start < 5
    assert_complete(out, (TRAIN_IMAGES,))


def test_fallback_after_timeout_during_transfer(server: LocalServer, tmp_path: Path) -> None:
    server.mirrors["m1"] = Mirror(gzipped(GOOD), stall_after=100)
    server.mirrors["m2"] = Mirror(gzipped(GOOD))
    out = tmp_path / "raw"
    cfg = config(timeout=0.5)
    assert fetch_one(out, [server.url("m1")], cfg) == [
        f"{server.url('m1')}: transfer of {gz_url(server, 'm1')} timed out (no data for 0.5 s)"
        " (after 1 attempt)"
    ]
    assert_clean(out)
    assert fetch_one(out, [server.url("m1"), server.url("m2")], cfg) == []
    assert_complete(out, (TRAIN_IMAGES,))


def truncated(gz: bytes) -> bytes:
    return gz[: len(gz) // 2]


def garbled(gz: bytes) -> bytes:
    return gz[:10] + bytes(b ^ 0x5A for b in gz[10:])


def bad_crc(gz: bytes) -> bytes:
    return gz[:-8] + b"\x00" * 8


@pytest.mark.parametrize(
    ("corrupt", "problem"),
    [
        (truncated, "corrupt gzip data: Compressed file ended before the end-of-stream marker"),
        (garbled, "corrupt gzip data: "),
        (bad_crc, "corrupt gzip data: CRC check failed"),
    ],
)
def test_fallback_after_corrupt_gzip(
    server: LocalServer, tmp_path: Path, corrupt: Callable[[bytes], bytes], problem: str
) -> None:
    server.mirrors["m1"] = Mirror({k: corrupt(v) for k, v in gzipped(GOOD).items()})
    server.mirrors["m2"] = Mirror(gzipped(GOOD))
    out = tmp_path / "raw"
    failures = fetch_one(out, [server.url("m1")])
    assert len(failures) == 1 and problem in failures[0], failures
    assert_clean(out)
    assert fetch_one(out, [server.url("m1"), server.url("m2")]) == []
    assert_complete(out, (TRAIN_IMAGES,))


def test_content_length_mismatch(server: LocalServer, tmp_path: Path) -> None:
    server.mirrors["m1"] = Mirror(gzipped(GOOD), extra_length=7)
    out = tmp_path / "raw"
    size = len(gzipped(GOOD)[f"{TRAIN_IMAGES}.gz"])
    assert fetch_one(out, [server.url("m1")]) == [
        f"{server.url('m1')}: {gz_url(server, 'm1')}: {size} bytes received"
        f" but Content-Length said {size + 7} (after 1 attempt)"
    ]
    assert_clean(out)


def test_unreachable_mirror(tmp_path: Path) -> None:
    with LocalServer() as srv:  # bound, then closed: nothing listens on that port any more
        url = srv.url("m1")
    failures = fetch_one(tmp_path / "raw", [url])
    assert len(failures) == 1 and failures[0].startswith(f"{url}: cannot reach {url}{TRAIN_IMAGES}.gz: ")


# --- retries ---------------------------------------------------------------------------------


def test_bounded_retries_with_exponential_backoff(server: LocalServer, tmp_path: Path) -> None:
    server.mirrors["m1"] = Mirror(status=503)
    server.mirrors["m2"] = Mirror(status=500)
    out = tmp_path / "raw"
    slept: list[float] = []
    mirrors = [server.url("m1"), server.url("m2")]
    failures = fetch_one(out, mirrors, config(retries=4, backoff=0.5), slept.append)
    assert server.count("m1") == 4 and server.count("m2") == 4
    assert slept == [0.5, 1.0, 2.0] * 2  # no pause after the last attempt on a mirror
    assert failures == [
        f"{server.url('m1')}: HTTP 503 Service Unavailable for {gz_url(server, 'm1')} (after 4 attempts)",
        f"{server.url('m2')}: HTTP 500 Internal Server Error for {gz_url(server, 'm2')} (after 4 attempts)",
    ]
    assert_clean(out)


def test_retry_succeeds_when_the_mirror_recovers(server: LocalServer, tmp_path: Path) -> None:
    server.mirrors["m1"] = Mirror(status=500)
    out = tmp_path / "raw"

    def recover(seconds: float) -> None:
        server.mirrors["m1"] = Mirror(gzipped(GOOD))

    assert fetch_one(out, [server.url("m1")], config(retries=3, backoff=1.0), recover) == []
    assert server.count("m1") == 2
    assert_complete(out, (TRAIN_IMAGES,))


def test_missing_file_is_not_retried(server: LocalServer, tmp_path: Path) -> None:
    server.mirrors["m1"] = Mirror({})
    slept: list[float] = []
    failures = fetch_one(tmp_path / "raw", [server.url("m1")], config(retries=3), slept.append)
    assert failures == [f"{server.url('m1')}: has neither {TRAIN_IMAGES}.gz nor {TRAIN_IMAGES}"]
    assert server.requests == [f"/m1/{TRAIN_IMAGES}.gz", f"/m1/{TRAIN_IMAGES}"] and slept == []


# --- failure leaves nothing behind -------------------------------------------------------------


def test_interrupted_transfer_leaves_no_temp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / TRAIN_IMAGES).write_bytes(GOOD[TRAIN_IMAGES])
    out = tmp_path / "raw"

    def interrupted(url: str, dest: Path, *args: object) -> str:
        dest.write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(download, "fetch_to", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fetch_one(out, [str(mirror)])
    assert list(out.iterdir()) == []


def test_all_mirrors_fail_in_process(server: LocalServer, tmp_path: Path) -> None:
    server.mirrors["m1"] = Mirror(status=500)
    out = tmp_path / "raw"
    out.mkdir()
    (out / TRAIN_IMAGES).write_bytes(GOOD[TRAIN_IMAGES][:100])  # left by an older, interrupted tool
    (out / f".{TRAIN_IMAGES}.x1y2z3").mkdir()  # the temp dir of a killed run
    errors = download_all(out, EXPECTED, [server.url("m1")], config(), log=lambda s: None)
    # The first file no mirror has ends the attempt: the others would fail the same way.
    assert errors == [
        f"could not get {TRAIN_IMAGES} from any mirror:",
        f"  {server.url('m1')}: HTTP 500 Internal Server Error for {gz_url(server, 'm1')} (after 1 attempt)",
    ]
    assert server.count("m1") == 1
    assert list(out.iterdir()) == []


@pytest.mark.slow
def test_all_mirrors_fail_stage_exits_with_advice(
    server: LocalServer, project: Path, tiny_mirror: TinyMirror
) -> None:
    server.mirrors["m1"] = Mirror(status=500)
    server.mirrors["m2"] = Mirror({})
    server.mirrors["m3"] = Mirror({k: v[:40] for k, v in gzipped(GOOD).items()})
    urls = [server.url(m) for m in ("m1", "m2", "m3")]
    write_params(project, {"download": {"mirrors": urls, "retries": 2, "backoff_seconds": 0.01}})
    env = stage_env(tiny_mirror)
    del env[download.MIRROR_ENV]
    result = run_stage(project, "download", env, check=False)
    assert result.returncode == 1, result.stderr
    name = FILE_NAMES[0]
    lines = result.stderr.splitlines()
    assert lines[0] == f"download: could not get {name} from any mirror:"
    assert lines[1] == (
        f"  {urls[0]}: HTTP 500 Internal Server Error for {urls[0]}{name}.gz (after 2 attempts)"
    )
    assert lines[2] == f"  {urls[1]}: has neither {name}.gz nor {name}"
    assert lines[3].startswith(f"  {urls[2]}: corrupt gzip data: ")
    assert lines[3].endswith("(after 2 attempts)")
    assert "set MNIST_MIRROR to a directory or URL" in lines[4]
    assert len(lines) == 5
    assert list((project / "data" / "raw").iterdir()) == []


# --- progress bar, digest table, mirror list ---------------------------------------------------


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_is_closed(server: LocalServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tqdm

    bars: list[tqdm.tqdm] = []

    class RecordedBar(tqdm.tqdm):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)
            bars.append(self)
            self.closed = False

        def close(self) -> None:
            self.closed = True
            super().close()

    monkeypatch.setattr(tqdm, "tqdm", RecordedBar)
    terminal = FakeTerminal()
    monkeypatch.setattr("sys.stderr", terminal)
    server.mirrors["m1"] = Mirror(gzipped(GOOD))
    server.mirrors["m2"] = Mirror(gzipped(GOOD), stall_after=10)
    fetch_url(server.url("m1") + f"{TRAIN_IMAGES}.gz", tmp_path / "a", timeout=5)
    with pytest.raises(FetchError, match="timed out"):
        fetch_url(server.url("m2") + f"{TRAIN_IMAGES}.gz", tmp_path / "b", timeout=0.3)
    assert len(bars) == 2 and all(bar.closed for bar in bars)
    assert bars[0].n == len(gzipped(GOOD)[f"{TRAIN_IMAGES}.gz"])
    assert TRAIN_IMAGES in terminal.getvalue()


def test_no_progress_bar_without_terminal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stderr", io.StringIO())
    src = tmp_path / "src"
    src.write_bytes(b"x" * 100)
    fetch_url(src.as_uri(), tmp_path / "dest", timeout=1)
    assert (tmp_path / "dest").read_bytes() == b"x" * 100


def test_env_mirror_comes_first(monkeypatch: pytest.MonkeyPatch) -> None:
    configured = ("https://a.example/", "https://b.example/")
    assert download.mirror_list(configured) == list(configured)
    monkeypatch.setenv(download.MIRROR_ENV, " /data/mnist ")
    assert download.mirror_list(configured) == ["/data/mnist", *configured]


def test_file_url() -> None:
    assert download.file_url("https://a.example/mnist", "x.gz") == "https://a.example/mnist/x.gz"
    assert download.file_url("https://a.example/mnist/", "x.gz") == "https://a.example/mnist/x.gz"
    assert download.file_url("/srv/my data", "x") == "file:///srv/my%20data/x"


# --- the stage in process: exit status and its one line -----------------------------------------


def run_main(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> tuple[int, list[str]]:
    """Run the stage's main() in `project`; return its exit status and its stderr lines."""
    monkeypatch.chdir(project)
    code = cli.run_main("download", download_stage.main)  # as `python -m stages.download` runs it
    return code, capsys.readouterr().err.splitlines()


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under `root` with a file's content (None for a directory)."""
    return {str(p.relative_to(root)): None if p.is_dir() else p.read_bytes() for p in sorted(root.rglob("*"))}


@pytest.fixture
def stage_project(project: Path, tiny_mirror: TinyMirror, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project copy whose download stage would get the tiny data set from a local mirror."""
    mirror, _ = tiny_mirror
    monkeypatch.setenv(download.MIRROR_ENV, str(mirror))
    return project


# --- the digest table (download.files) names the four files, nothing else ------------------------


def table_with(entries: dict[str, object] | None = None) -> dict[str, object]:
    """The tiny data set's digest table as params.yaml holds it, with `entries` added or replaced."""
    table: dict[str, object] = {n: {"size": e.size, "sha256": e.sha256} for n, e in EXPECTED.items()}
    return {**table, **(entries or {})}


ALLOWED_TABLE = (
    "it must be a mapping of each of train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte,"
    " t10k-labels-idx1-ubyte (and nothing else) to {size: N, sha256: <64 hex digits>}"
)


@pytest.mark.parametrize("form", ["absolute", "relative"])
def test_digest_table_cannot_name_a_path(
    stage_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    form: str,
) -> None:
    sentinel = tmp_path / "outside" / "keep"
    sentinel.mkdir(parents=True)
    (sentinel / "precious.txt").write_text("mine")
    name = str(sentinel) if form == "absolute" else "../../../outside/keep"  # from data/raw
    write_params(stage_project, {"download": {"files": {name: {"size": 3, "sha256": "0" * 64}, **table_with()}}})
    code, lines = run_main(stage_project, monkeypatch, capsys)
    assert code == 2 and lines == [f"download: params.yaml: download.files: unknown file name {name!r}; {ALLOWED_TABLE}"]
    assert (sentinel / "precious.txt").read_text() == "mine"
    assert not (stage_project / "data" / "raw").exists()


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        (table_with({"../x": {"size": 3, "sha256": "0" * 64}}), "unknown file name '../x'"),
        (table_with({"mnist.gz": {"size": 3, "sha256": "0" * 64}}), "unknown file name 'mnist.gz'"),
        ({k: v for k, v in table_with().items() if k != TRAIN_LABELS}, f"no entry for {TRAIN_LABELS}"),
        ({}, f"no entry for {TRAIN_IMAGES}"),
        ([1, 2], "got [1, 2]"),
        (None, "got None"),
        (table_with({TRAIN_IMAGES: {"size": 0, "sha256": "0" * 64}}), "size must be a positive integer, got 0"),
        (table_with({TRAIN_IMAGES: {"size": -5, "sha256": "0" * 64}}), "size must be a positive integer"),
        (table_with({TRAIN_IMAGES: {"size": 3.0, "sha256": "0" * 64}}), "size must be a positive integer"),
        (table_with({TRAIN_IMAGES: {"size": "3", "sha256": "0" * 64}}), "size must be a positive integer"),
        (table_with({TRAIN_IMAGES: {"size": True, "sha256": "0" * 64}}), "size must be a positive integer"),
        (table_with({TRAIN_IMAGES: {"size": 3, "sha256": "abc"}}), "sha256 must be a string of 64 hex digits"),
        (table_with({TRAIN_IMAGES: {"size": 3, "sha256": "g" * 64}}), "sha256 must be a string of 64 hex digits"),
        (table_with({TRAIN_IMAGES: {"size": 3, "sha256": 10**63}}), "sha256 must be a string of 64 hex digits"),
        (table_with({TRAIN_IMAGES: {"size": 3}}), "not {size: N, sha256: <64 hex digits>}, got {'size': 3}"),
        (table_with({TRAIN_IMAGES: {"size": 3, "sha256": "0" * 64, "md5": "x"}}), "not {size: N, sha256:"),
        (table_with({TRAIN_IMAGES: 3}), "not {size: N, sha256: <64 hex digits>}, got 3"),
    ],
    ids=["dotdot", "unknown", "missing-name", "empty", "list", "null", "zero", "negative", "float", "string",
         "bool", "short-sha", "not-hex", "sha-number", "no-sha", "extra-key", "not-mapping"],
)
def test_bad_digest_table_is_refused(table: object, problem: str) -> None:
    section = {**yaml.safe_load(committed_params())["download"], "files": table}
    with pytest.raises(params.ParamsError) as refused:
        params.parse_section("download", section, DownloadParams)
    message = str(refused.value)
    assert message.startswith("params.yaml: download.files: ") and "\n" not in message, message
    assert problem in message and message.endswith(ALLOWED_TABLE), message


def test_digest_table_is_read_lowercased_in_the_files_order() -> None:
    table = table_with({TRAIN_IMAGES: {"size": 3, "sha256": "AB" * 32}})
    section = {**yaml.safe_load(committed_params())["download"], "files": dict(reversed(table.items()))}
    files = params.parse_section("download", section, DownloadParams).files
    assert list(files) == list(FILE_NAMES)
    assert files == {**EXPECTED, TRAIN_IMAGES: Expected(3, "ab" * 32)}


def test_the_canonical_digests_are_in_params_yaml(committed_params_file: Path) -> None:
    (cfg,) = params.load("download", path=committed_params_file)
    assert cfg.files[TRAIN_IMAGES] == Expected(
        47040016, "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"
    )
    assert {name: e.size for name, e in cfg.files.items()} == {
        TRAIN_IMAGES: 47040016, TRAIN_LABELS: 60008, "t10k-images-idx3-ubyte": 7840016,
        "t10k-labels-idx1-ubyte": 10008,
    }


def test_download_all_uses_only_the_four_names(tmp_path: Path) -> None:
    out = tmp_path / "raw"
    with pytest.raises(StageError, match="must name exactly"):
        download_all(out, {"../x": EXPECTED[TRAIN_IMAGES]}, [], config(), log=lambda s: None)
    assert not out.exists()


# --- data/raw: the stage deletes nothing it did not write ----------------------------------------


def test_users_file_in_raw_is_kept_and_the_stage_refuses(
    stage_project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = stage_project / "data" / "raw"
    raw.mkdir(parents=True)
    (raw / "notes.txt").write_text("where these files came from")
    (raw / TRAIN_LABELS).write_bytes(GOOD[TRAIN_LABELS])
    (raw / f".{TRAIN_IMAGES}.abcd1234").mkdir()  # a leftover of ours: still not touched while refusing
    before = snapshot(raw)
    code, lines = run_main(stage_project, monkeypatch, capsys)
    assert code == 1 and lines == [
        "download: data/raw/notes.txt is not a file this stage writes: move it out of data/raw and run again"
        " (DVC deletes data/raw before running this stage, so nothing else belongs there)"
    ]
    assert snapshot(raw) == before


@pytest.mark.parametrize(
    ("mirror", "files_in"),
    [
        ("data/raw", "data/raw"),
        ("data/raw/", "data/raw"),
        ("absolute", "data/raw"),
        ("file-url", "data/raw"),
        ("data/raw/mnist", "data/raw/mnist"),  # inside data/raw
        ("data", "data"),  # data/raw inside the mirror
    ],
)
def test_mirror_overlapping_raw_is_refused(
    stage_project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    mirror: str, files_in: str,
) -> None:
    raw = stage_project / "data" / "raw"
    raw.mkdir(parents=True)
    (raw / "notes.txt").write_text("the user's notes")
    for name, data in gzipped(GOOD).items():  # put there by hand
        (stage_project / files_in).mkdir(parents=True, exist_ok=True)
        (stage_project / files_in / name).write_bytes(data)
    given = {"absolute": str(raw), "file-url": raw.as_uri()}.get(mirror, mirror)
    monkeypatch.setenv(download.MIRROR_ENV, given)
    before = snapshot(stage_project / "data")
    code, lines = run_main(stage_project, monkeypatch, capsys)
    assert code == 2 and lines == [
        f"download: mirror {given} is data/raw or overlaps it, and DVC deletes data/raw before running this"
        " stage, which would destroy the files: put them in a directory outside data/raw and point"
        " $MNIST_MIRROR there"
    ]
    assert snapshot(stage_project / "data") == before


def test_mirror_of_another_scheme_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StageError, match="not a directory, a file:// URL or an http"):
        download_all(tmp_path / "raw", EXPECTED, ["ftp://127.0.0.1:9/mnist/"], config(), log=lambda s: None)
    assert not (tmp_path / "raw").exists()


def test_raw_is_a_file(
    stage_project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = stage_project / "data" / "raw"
    raw.parent.mkdir()
    raw.write_text("a file, not a directory")
    code, lines = run_main(stage_project, monkeypatch, capsys)
    assert code == 1 and lines == [
        "download: data/raw is a file, not a directory: move it elsewhere (this stage writes"
        " the four MNIST files into a directory data/raw) and run again"
    ]
    assert raw.read_text() == "a file, not a directory"


# --- bounds: size and time -----------------------------------------------------------------------


def test_endless_server_is_stopped_at_the_bound(server: LocalServer, tmp_path: Path) -> None:
    server.mirrors["m1"] = Mirror(endless=True)
    out = tmp_path / "raw"
    limit = EXPECTED[TRAIN_IMAGES].size + download.GZIP_SLACK
    assert fetch_one(out, [server.url("m1")]) == [
        f"{server.url('m1')}: {gz_url(server, 'm1')} sends more than {limit} bytes, more than the file can be"
        " (its size plus gzip framing) (after 1 attempt)"
    ]
    assert server.done.wait(10)
    assert server.sent < ENDLESS // 4  # what got out before the client left: socket buffers, no more
    assert_clean(out)


def test_too_large_local_file_is_not_read(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    big = mirror / f"{TRAIN_IMAGES}.gz"
    big.write_bytes(bytes(EXPECTED[TRAIN_IMAGES].size + download.GZIP_SLACK + 1))
    failures = fetch_one(tmp_path / "raw", [str(mirror)])
    assert len(failures) == 1 and f"{big.as_uri()} sends more than" in failures[0], failures
    assert_clean(tmp_path / "raw")


@pytest.mark.parametrize("headers", [False, True], ids=["body", "headers"])
def test_slow_drip_is_cut_off_by_the_deadline(
    server: LocalServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, headers: bool
) -> None:
    server.mirrors["m1"] = Mirror(gzipped(GOOD), drip=0.2, drip_headers=headers)
    monkeypatch.setattr(download, "attempt_deadline", lambda timeout, limit, rate: 1.0)
    out = tmp_path / "raw"
    start = time.monotonic()
    assert fetch_one(out, [server.url("m1")], config(timeout=2.0, retries=3)) == [
        f"{server.url('m1')}: {gz_url(server, 'm1')} not complete after 1 s, the limit for one attempt"
        " (not asked again)"
    ]
    assert server.count("m1") == 1
    assert time.monotonic() - start < 3
    assert_clean(out)


def test_attempt_deadline() -> None:
    assert download.attempt_deadline(30, 60008, 10_000) == 600
    assert download.attempt_deadline(120, 60008, 10_000) == 1200
    # Never before a transfer at the minimum rate could end: a steady 50 kB/s link is not cut.
    limit = 47040016 + download.GZIP_SLACK
    assert download.attempt_deadline(30, limit, 10_000) == limit / 10_000 > limit / 50_000


# --- the minimum rate ----------------------------------------------------------------------------


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def first_too_slow(rule: download.MinRate, clock: Clock, received: Callable[[float], int], step: float) -> float:
    """The first time (since the start) at which the rule, asked every `step` s, finds the transfer too slow."""
    start = clock.now
    while clock.now - start < 1000:
        clock.now += step
        if rule.too_slow(received(clock.now - start)):
            return clock.now - start
    return float("inf")


def test_min_rate_rule_averages_over_the_window() -> None:
    clock = Clock()
    # Steady at the minimum rate: kept, however long (asked every second, then every 3 s).
    assert first_too_slow(download.MinRate(100, 10, clock), clock, lambda t: round(100 * t), 1) == float("inf")
    assert first_too_slow(download.MinRate(100, 10, clock), clock, lambda t: round(100 * t), 3) == float("inf")
    # Nothing at all: too slow once a whole window has passed, not before.
    assert first_too_slow(download.MinRate(100, 10, clock), clock, lambda t: 0, 1) == 10
    # Just under the rate: too slow at the end of the first window.
    assert first_too_slow(download.MinRate(100, 10, clock), clock, lambda t: round(99 * t), 1) == 10
    # 200 bytes/s for 20 s, then a stall: the last 10 s fall under 1000 bytes only at 26 s (16..26 s: 800).
    assert first_too_slow(download.MinRate(100, 10, clock), clock, lambda t: round(200 * min(t, 20)), 1) == 26
    # A burst now and then that averages above the rate over every window: kept.
    bursts = download.MinRate(100, 10, clock)
    assert first_too_slow(bursts, clock, lambda t: 5000 * int(t // 4), 1) == float("inf")


def rule(min_rate: float, window: float, retries: int = 3) -> DownloadParams:
    return config(retries=retries, timeout=5.0, min_rate=min_rate, window=window)


def test_trickling_mirror_is_dropped_for_every_file_and_the_next_serves(server: LocalServer, tmp_path: Path) -> None:
    server.mirrors["m1"] = Mirror(gzipped(GOOD), drip=0.2)  # 5 bytes/s
    server.mirrors["m2"] = Mirror(gzipped(GOOD))
    out = tmp_path / "raw"
    logged: list[str] = []
    start = time.monotonic()
    assert download_all(out, EXPECTED, [server.url("m1"), server.url("m2")], rule(1000, 0.5), logged.append) == []
    assert time.monotonic() - start < 3
    assert_complete(out)
    # Asked once in all: not retried, not asked for the three other files.
    assert server.requests[0] == f"/m1/{TRAIN_IMAGES}.gz" and server.count("m1") == 1
    assert server.count("m2") == 4
    assert f"{server.url('m1')} dropped: {gz_url(server, 'm1')} sent less than 1000 bytes/s over 0.5 s," \
        " the minimum rate" in logged


def blackhole() -> tuple[socket.socket, socket.socket]:
    """A listening socket whose one-place queue a held connection fills: connects to it hang, unanswered."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    held = socket.create_connection(listener.getsockname(), timeout=5)
    return listener, held


def test_stage_against_a_trickling_and_unreachable_mirrors_ends_in_bounded_time(
    server: LocalServer, stage_project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    server.mirrors["m1"] = Mirror(gzipped(GOOD), drip=0.2)
    listener, held = blackhole()
    with LocalServer() as srv:  # bound, then closed: nothing listens on that port any more
        refused = srv.url("m3")
    silent = "http://{}:{}/m2/".format(*listener.getsockname())
    urls = [server.url("m1"), silent, refused]
    # timeout_seconds longer than the window, as in params.yaml: the rule cuts the hanging connect too.
    write_params(stage_project, {"download": {
        "mirrors": urls, "retries": 3, "backoff_seconds": 0.01, "timeout_seconds": 5,
        "min_rate_bytes_per_second": 1000, "min_rate_window_seconds": 0.5,
    }})
    monkeypatch.delenv(download.MIRROR_ENV)
    start = time.monotonic()
    try:
        code, lines = run_main(stage_project, monkeypatch, capsys)
    finally:
        held.close()
        listener.close()
    assert time.monotonic() - start < 4  # 2 windows and their polls, 3 refused connects
    slow = "sent less than 1000 bytes/s over 0.5 s, the minimum rate (not asked again)"
    assert code == 1 and lines[:3] == [
        f"download: could not get {TRAIN_IMAGES} from any mirror:",
        f"  {urls[0]}: {urls[0]}{TRAIN_IMAGES}.gz {slow}",
        f"  {urls[1]}: {urls[1]}{TRAIN_IMAGES}.gz {slow}",
    ], lines
    assert lines[3].startswith(f"  {refused}: cannot reach {refused}{TRAIN_IMAGES}.gz: ") and "3 attempts" in lines[3]
    assert len(lines) == 5 and server.count("m1") == 1
    assert list((stage_project / "data" / "raw").iterdir()) == []


def test_steady_adequate_mirror_is_not_cut(server: LocalServer, tmp_path: Path) -> None:
    size = len(gzipped(GOOD)[f"{TRAIN_IMAGES}.gz"])
    server.mirrors["m1"] = Mirror(gzipped(GOOD), steady=(500, 0.05))  # 10 kB/s, for a second or more
    out = tmp_path / "raw"
    start = time.monotonic()
    assert fetch_one(out, [server.url("m1")], rule(4000, 0.3)) == []
    assert time.monotonic() - start > 0.9 * size / 10_000  # it did take several windows
    assert_complete(out, (TRAIN_IMAGES,))
    # The same server under a rule above its rate is cut: the rule is what let it through.
    failures = fetch_one(tmp_path / "other", [server.url("m1")], rule(40_000, 0.3))
    assert failures == [
        f"{server.url('m1')}: {gz_url(server, 'm1')} sent less than 40000 bytes/s over 0.3 s, the minimum rate"
        " (not asked again)"
    ]
    assert server.count("m1") == 2


# --- redirects -----------------------------------------------------------------------------------


def test_http_redirect_is_followed_and_logged(server: LocalServer, tmp_path: Path) -> None:
    server.mirrors["m1"] = Mirror(redirect=server.url("m2") + "{name}")
    server.mirrors["m2"] = Mirror(gzipped(GOOD))
    out = tmp_path / "raw"
    logged: list[str] = []
    assert fetch_one(out, [server.url("m1")], log=logged.append) == []
    assert logged == [f"{gz_url(server, 'm1')} redirected to {gz_url(server, 'm2')}"]
    assert_complete(out, (TRAIN_IMAGES,))


@pytest.mark.parametrize("scheme", ["file", "ftp"])
def test_redirect_to_another_scheme_is_refused(server: LocalServer, tmp_path: Path, scheme: str) -> None:
    local = tmp_path / "elsewhere"
    local.mkdir()
    for name, data in gzipped(GOOD).items():
        (local / name).write_bytes(data)
    target = local.as_uri() + "/{name}" if scheme == "file" else "ftp://127.0.0.1:9/{name}"
    server.mirrors["m1"] = Mirror(redirect=target)
    out = tmp_path / "raw"
    assert fetch_one(out, [server.url("m1")]) == [
        f"{server.url('m1')}: {gz_url(server, 'm1')} redirects to {target.format(name=TRAIN_IMAGES + '.gz')}:"
        " only redirects to http(s) URLs are followed (after 1 attempt)"
    ]
    assert_clean(out)


@pytest.mark.parametrize(
    ("source", "target", "problem"),
    [
        ("https://a.example/x", "http://b.example/x", "a redirect from https down to http is refused"),
        ("https://a.example/x", "https://b.example/x", None),
        ("http://a.example/x", "https://b.example/x", None),
        ("http://a.example/x", "http://b.example/x", None),
        ("http://a.example/x", "file:///etc/passwd", "only redirects to http(s) URLs are followed"),
        ("https://a.example/x", "ftp://b.example/x", "only redirects to http(s) URLs are followed"),
        ("https://a.example/x", "data:,hello", "only redirects to http(s) URLs are followed"),
    ],
)
def test_redirect_decision(source: str, target: str, problem: str | None) -> None:
    assert download.redirect_problem(source, target) == problem


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_redirect_handler_refuses_https_to_http(code: int) -> None:
    handler = download.SafeRedirects()
    request = urllib.request.Request("https://a.example/mnist/x.gz")
    respond = getattr(handler, f"http_error_{code}")
    with pytest.raises(FetchError, match="redirects to http://b.example/x.gz: a redirect from https down"):
        respond(request, io.BytesIO(), code, "Moved", {"location": "http://b.example/x.gz"})


# --- the local disk: its errors are its own, not the mirror's --------------------------------------


def full_disk(monkeypatch: pytest.MonkeyPatch, target: str) -> None:
    """Make every file named `target` that the code opens for writing land on /dev/full (ENOSPC)."""
    real_open = Path.open

    def open_(self: Path, mode: str = "r", *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        if "w" in mode and self.name == target:
            return real_open(Path("/dev/full"), mode, *args, **kwargs)
        return real_open(self, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "open", open_)


needs_dev_full = pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")


@needs_dev_full
@pytest.mark.parametrize("target", ["download", "content"])  # the temp files, as received and verified
@pytest.mark.parametrize("name", [TRAIN_IMAGES, TRAIN_LABELS])  # written at once / only at flush
def test_disk_full_is_reported_as_itself_and_not_retried(
    server: LocalServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: str, name: str
) -> None:
    server.mirrors["m1"] = Mirror(gzipped(GOOD))
    server.mirrors["m2"] = Mirror(gzipped(GOOD))
    full_disk(monkeypatch, target)
    out = tmp_path / "raw"
    with pytest.raises(download.LocalError) as failed:
        fetch_one(out, [server.url("m1"), server.url("m2")], config(retries=3), name=name)
    pattern = rf"cannot write {re.escape(str(out))}/\.{name}\.[a-z0-9_]+/{target}: No space left on device"
    assert re.fullmatch(pattern + "; free some disk space and run again", str(failed.value)), failed.value
    assert server.requests == [f"/m1/{name}.gz"]  # one attempt, no other mirror
    assert_clean(out)


@needs_dev_full
def test_disk_full_stage_says_one_line(
    stage_project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    full_disk(monkeypatch, "content")
    code, lines = run_main(stage_project, monkeypatch, capsys)
    assert code == 1 and len(lines) == 1, lines
    temp = rf"data/raw/\.{TRAIN_IMAGES}\.[a-z0-9_]+"
    pattern = rf"download: cannot write {temp}/content: No space left on device; .*"
    assert re.fullmatch(pattern, lines[0]) and "MNIST_MIRROR" not in lines[0], lines
    assert list((stage_project / "data" / "raw").iterdir()) == []


def test_permission_error_is_reported_as_itself_and_not_retried(
    server: LocalServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.mirrors["m1"] = Mirror(gzipped(GOOD))
    real_open = Path.open

    def denied(self: Path, mode: str = "r", *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        if "w" in mode:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_open(self, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "open", denied)
    out = tmp_path / "raw"
    message = r"cannot write .*/download: Permission denied; make it writable"
    with pytest.raises(download.LocalError, match=message):
        fetch_one(out, [server.url("m1")], config(retries=3))
    assert server.count("m1") == 0  # the output could not even be opened: the mirror was never asked
    assert_clean(out)


def test_permission_error_in_raw_stage_says_one_line(
    stage_project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (stage_project / "data" / "raw").mkdir(parents=True)

    def denied(*args: object, **kwargs: object) -> str:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "mkdtemp", denied)  # the temp dir in data/raw (root ignores chmod)
    code, lines = run_main(stage_project, monkeypatch, capsys)
    assert code == 1 and lines == [
        "download: cannot create a temporary directory in data/raw: Permission denied;"
        " make it writable for this user and run again"
    ]
