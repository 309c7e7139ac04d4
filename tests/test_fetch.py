"""Fetching checkpoints: a real HTTP server on 127.0.0.1 (Range, failures, corruption, 404/401,
dropped and killed connections) through the real download code, and Hugging Face snapshots from a
local cache laid out the way huggingface_hub writes it, offline."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import types
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest
from helpers import DATA, ROOT
from hostile_harness import HostileCase, run_hostile

from llama2bin.cli import main
from llama2bin.errors import Llama2binError
from llama2bin.fetch import (
    SOURCE_JSON,
    FetchSpec,
    RetryPolicy,
    checkpoint_from_source_json,
    config_source,
    download_url,
    fetch,
)

PAYLOAD = random.Random(20240601).randbytes(300_000)
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()
CUT = 100_000  # where the server drops (or stalls) a first response
def no_sleep(seconds: float) -> None:
    """Back-off delays are computed but never waited for in tests."""


FAST = RetryPolicy(retries=3, base_delay=0.01, max_delay=0.05, timeout=5.0, sleep=no_sleep)
NO_RETRY = RetryPolicy(retries=0, base_delay=0.01, timeout=5.0, sleep=no_sleep)
TOKEN = "hf_test_secret_token_value"
COMMIT = "a" * 40  # what the fake hub says a branch URL resolved to


# ---- the test server ------------------------------------------------------------------------


class FixtureServer:
    """Serves PAYLOAD under several behaviours; records every request's path and headers."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.counts: dict[str, int] = defaultdict(int)
        self.lock = threading.Lock()
        self.release = threading.Event()  # lets a stalled response finish (see /stall)
        fixture = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 5  # every server-side socket operation

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                path = urlsplit(self.path).path
                with fixture.lock:
                    fixture.requests.append((path, {k.lower(): v for k, v in self.headers.items()}))
                    fixture.counts[path] += 1
                    n = fixture.counts[path]
                segments = path.strip("/").split("/")
                if len(segments) > 2 and segments[2] == "resolve":  # /ORG/NAME/resolve/REV/FILE: the fake Hub
                    self.route_hub(segments[1])
                    return
                getattr(self, "route_" + segments[0].replace("-", "_"), self.route_unknown)(n)

            def do_HEAD(self) -> None:  # huggingface_hub asks for a file's metadata first
                self.head_only = True
                self.do_GET()

            head_only = False

            # -- helpers --
            def send_body(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not self.head_only:
                    self.wfile.write(body)

            def send_file(self, data: bytes, honor_range: bool = True) -> None:
                etag = '"' + hashlib.sha256(data).hexdigest() + '"'
                rng, if_range = self.headers.get("Range"), self.headers.get("If-Range")
                m = re.fullmatch(r"bytes=(\d+)-", rng or "")
                if honor_range and m and (if_range is None or if_range == etag):
                    start = int(m.group(1))
                    if start >= len(data):
                        self.send_body(416, b"", {"Content-Range": f"bytes */{len(data)}"})
                        return
                    self.send_body(206, data[start:], {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}",
                                                       "ETag": etag, "Accept-Ranges": "bytes"})
                else:
                    self.send_body(200, data, {"ETag": etag, "Accept-Ranges": "bytes" if honor_range else "none"})

            def send_cut(self, data: bytes) -> None:
                """Announce the whole file, send CUT bytes, close: a connection lost midway."""
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("ETag", '"' + hashlib.sha256(data).hexdigest() + '"')
                self.end_headers()
                self.wfile.write(data[:CUT])
                self.wfile.flush()
                self.close_connection = True

            # -- routes --
            def route_files(self, n: int) -> None:
                self.send_file(PAYLOAD)

            def route_flaky(self, n: int) -> None:
                if n <= 2:
                    self.send_body(503, b"busy")
                else:
                    self.send_file(PAYLOAD)

            def route_ratelimited(self, n: int) -> None:
                if n == 1:
                    self.send_body(429, b"slow down", {"Retry-After": "0"})
                else:
                    self.send_file(PAYLOAD)

            def route_down(self, n: int) -> None:
                self.send_body(503, b"down")

            def route_corrupt(self, n: int) -> None:
                self.send_file(corrupted(PAYLOAD))

            def route_missing(self, n: int) -> None:
                self.send_body(404, b"no such file")

            def route_gated(self, n: int) -> None:
                if self.headers.get("Authorization") == f"Bearer {TOKEN}":
                    self.send_file(PAYLOAD)
                else:
                    self.send_body(401, b"auth required")

            def route_cut(self, n: int) -> None:
                if n == 1:
                    self.send_cut(PAYLOAD)
                else:
                    self.send_file(PAYLOAD)

            def route_cut_norange(self, n: int) -> None:
                if n == 1:
                    self.send_cut(PAYLOAD)
                else:
                    self.send_file(PAYLOAD, honor_range=False)

            def route_stall(self, n: int) -> None:
                if n > 1:
                    self.send_file(PAYLOAD)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(PAYLOAD)))
                self.send_header("ETag", '"' + PAYLOAD_SHA + '"')
                self.end_headers()
                self.wfile.write(PAYLOAD[:CUT])
                self.wfile.flush()
                fixture.release.wait(10)  # the client is killed meanwhile
                self.close_connection = True

            def route_hub(self, repo_name: str) -> None:
                """Like huggingface.co/ORG/NAME/resolve/main/F: a redirect to another host (the CDN),
                carrying the commit the branch resolved to and the file's sha256 (repo "Bad"
                announces a wrong one). Gated unless the bearer token is right."""
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    self.send_body(401, b"", {"X-Error-Code": "GatedRepo", "X-Error-Message": "gated"})
                    return
                port = self.server.server_address[1]
                announced = "0" * 64 if repo_name == "Bad" else PAYLOAD_SHA
                self.send_body(302, b"", {"Location": f"http://localhost:{port}/files/stories.pt",
                                          "X-Repo-Commit": COMMIT, "X-Linked-Etag": f'"{announced}"',
                                          "X-Linked-Size": str(len(PAYLOAD))})

            def route_unknown(self, n: int) -> None:
                self.send_body(500, b"unknown route")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def url(self, route: str, name: str = "stories.pt") -> str:
        return f"http://127.0.0.1:{self.port}/{route}/{name}"

    def seen(self, route: str) -> list[dict[str, str]]:
        with self.lock:
            return [h for p, h in self.requests if p.split("/")[1] == route]


def corrupted(data: bytes) -> bytes:
    return data[:1000] + bytes([data[1000] ^ 0xFF]) + data[1001:]


@pytest.fixture
def server():
    s = FixtureServer()
    s.thread.start()
    try:
        yield s
    finally:
        s.release.set()
        s.httpd.shutdown()
        s.httpd.server_close()
        s.thread.join(5)


def listing(folder) -> list[str]:
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def url_fetch(server, route, dest, *, sha256=PAYLOAD_SHA, retry=FAST, **kw):
    spec = FetchSpec("url", url=server.url(route), sha256=sha256)
    return fetch("stories", spec, str(dest), retry=retry, quiet=True, **kw)


# ---- url: downloads -------------------------------------------------------------------------


def test_download_writes_file_and_source_json(server, tmp_path):
    dest = tmp_path / "checkpoints" / "stories"
    result = url_fetch(server, "files", dest)
    assert (dest / "stories.pt").read_bytes() == PAYLOAD
    assert listing(dest) == ["SOURCE.json", "stories.pt"]  # no .part left behind
    record = json.loads((dest / SOURCE_JSON).read_text())
    assert record == {
        "model": "stories",
        "kind": "url",
        "url": server.url("files"),
        "sha256_pinned": True,
        "checkpoint": "stories.pt",
        "files": [{"path": "stories.pt", "sha256": PAYLOAD_SHA, "size": len(PAYLOAD)}],
    }
    assert result.checkpoint == str(dest / "stories.pt")
    assert checkpoint_from_source_json(str(dest / SOURCE_JSON)) == str(dest / "stories.pt")
    assert "range" not in server.seen("files")[0]


def test_rerun_reuses_verified_file_without_network(server, tmp_path):
    dest = tmp_path / "stories"
    url_fetch(server, "files", dest)
    first = (dest / SOURCE_JSON).read_bytes()
    again = url_fetch(server, "files", dest)
    assert again.reused
    assert len(server.seen("files")) == 1
    assert (dest / SOURCE_JSON).read_bytes() == first  # deterministic record


def test_existing_file_with_wrong_content_is_replaced(server, tmp_path):
    dest = tmp_path / "stories"
    dest.mkdir()
    (dest / "stories.pt").write_bytes(b"something else")
    url_fetch(server, "files", dest)
    assert (dest / "stories.pt").read_bytes() == PAYLOAD


def test_unpinned_download_warns_with_the_sha_to_pin(server, tmp_path, capsys):
    dest = tmp_path / "stories"
    code = main(["fetch", "--model", "stories", "--dest", str(dest), "--url", server.url("files"), "--quiet",
                 "--retry-delay", "0.01"])
    out, err = capsys.readouterr()
    assert code == 0
    assert f"sha256: {PAYLOAD_SHA}" in err and "warning" in err
    assert json.loads((dest / SOURCE_JSON).read_text())["sha256_pinned"] is False
    assert f"wrote {dest / SOURCE_JSON}" in out


def test_503_twice_then_success_with_exponential_back_off(server, tmp_path):
    warnings: list[str] = []
    delays: list[float] = []
    retry = RetryPolicy(retries=3, base_delay=1.0, max_delay=60.0, timeout=5.0, sleep=delays.append)
    url_fetch(server, "flaky", tmp_path / "d", warn=warnings.append, retry=retry)
    assert (tmp_path / "d" / "stories.pt").read_bytes() == PAYLOAD
    assert len(server.seen("flaky")) == 3
    assert delays == [1.0, 2.0]  # asked for, never waited
    assert len(warnings) == 2 and all("503" in w and "retry" in w for w in warnings)


def test_429_is_retried_after_the_delay_the_server_asks(server, tmp_path):
    delays: list[float] = []
    retry = RetryPolicy(retries=3, base_delay=0.5, timeout=5.0, sleep=delays.append)
    url_fetch(server, "ratelimited", tmp_path / "d", warn=lambda m: None, retry=retry)
    assert len(server.seen("ratelimited")) == 2
    assert delays == [0.5]  # Retry-After: 0 never shortens our own back-off
    assert RetryPolicy(base_delay=1.0, max_delay=60.0).delay(1, retry_after=30.0) == 30.0
    assert RetryPolicy(base_delay=1.0, max_delay=60.0).delay(9) == 60.0


def test_retries_are_bounded(server, tmp_path):
    with pytest.raises(Llama2binError, match=r"giving up after 4 attempts: HTTP 503") as e:
        url_fetch(server, "down", tmp_path / "d", warn=lambda m: None)
    assert len(server.seen("down")) == 4  # first try + FAST.retries
    assert "\n" not in str(e.value)
    assert listing(tmp_path / "d") == []


def test_checksum_mismatch_deletes_the_download(server, tmp_path, capsys):
    dest = tmp_path / "d"
    code = main(["fetch", "--model", "stories", "--dest", str(dest), "--url", server.url("corrupt"),
                 "--sha256", PAYLOAD_SHA, "--quiet"])
    err = capsys.readouterr().err
    actual = hashlib.sha256(corrupted(PAYLOAD)).hexdigest()
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("llama2bin: error: ")
    assert f"expected sha256 {PAYLOAD_SHA}" in err and f"got {actual}" in err
    assert listing(dest) == []  # neither the final name, nor the .part, nor SOURCE.json


@pytest.mark.parametrize(
    "route, words",
    [("missing", ["HTTP 404", "check the URL"]), ("gated", ["HTTP 401", "HF_TOKEN"])],
)
def test_http_errors_are_one_line(server, tmp_path, capsys, route, words):
    dest = tmp_path / "d"
    code = main(["fetch", "--model", "stories", "--dest", str(dest), "--url", server.url(route), "--quiet"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("llama2bin: error: ")
    for w in words:
        assert w in err
    assert len(server.seen(route)) == 1  # a client error is not retried
    assert listing(dest) == []


def hub_url(server, repo: str = "Org/Tiny", revision: str = "main") -> str:
    return f"http://127.0.0.1:{server.port}/{repo}/resolve/{revision}/stories.pt"


@pytest.fixture
def hub_env(server, tmp_path, monkeypatch):
    """The fake Hub at the test server's address, an empty cache, online, HF_TOKEN set."""
    constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # decided at import, maybe by another test
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    return f"http://127.0.0.1:{server.port}"


def test_generic_url_never_gets_the_token(server, tmp_path, monkeypatch):
    """127.0.0.1 is not the Hub: HF_TOKEN is not sent there, so the gated file is refused."""
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with pytest.raises(Llama2binError, match="HTTP 401.*no credentials are sent to this host") as e:
        url_fetch(server, "gated", tmp_path / "a")
    assert "authorization" not in server.seen("gated")[0]
    assert TOKEN not in str(e.value)


def test_hub_url_goes_through_huggingface_hub(server, hub_env, tmp_path, capsys):
    """A /resolve/ URL on the Hub endpoint: the token goes to the Hub only, not to the CDN host
    it redirects to; the commit the branch resolved to is recorded; the token is nowhere."""
    dest = tmp_path / "d"
    result = fetch("stories", FetchSpec("url", url=hub_url(server), sha256=PAYLOAD_SHA), str(dest), quiet=True,
                   hf_endpoint=hub_env)
    hub_requests = [h for p, h in server.requests if "/resolve/" in p]
    cdn_requests = server.seen("files")
    assert hub_requests and all(h["authorization"] == f"Bearer {TOKEN}" for h in hub_requests)
    assert cdn_requests and all(h["host"].startswith("localhost") and "authorization" not in h for h in cdn_requests)
    assert (dest / "stories.pt").read_bytes() == PAYLOAD
    assert listing(dest) == ["SOURCE.json", "stories.pt"]  # no temporary link left behind
    record = json.loads((dest / SOURCE_JSON).read_text())
    assert record == {
        "model": "stories", "kind": "url", "url": hub_url(server), "revision": COMMIT, "sha256_pinned": True,
        "checkpoint": "stories.pt", "files": [{"path": "stories.pt", "sha256": PAYLOAD_SHA, "size": len(PAYLOAD)}],
    }
    assert result.checkpoint == str(dest / "stories.pt")
    out, err = capsys.readouterr()
    assert TOKEN not in out + err + (dest / SOURCE_JSON).read_text()
    # In the library's cache, named by the sha256 the Hub announced; DEST holds a hard link to it.
    blob = tmp_path / "hf-cache" / "models--Org--Tiny" / "blobs" / PAYLOAD_SHA
    assert os.path.samefile(blob, dest / "stories.pt")
    # Again: the verified file in DEST is reused without asking anyone.
    before = len(server.requests)
    assert fetch("stories", FetchSpec("url", url=hub_url(server), sha256=PAYLOAD_SHA), str(dest), quiet=True,
                 hf_endpoint=hub_env).reused
    assert len(server.requests) == before
    assert json.loads((dest / SOURCE_JSON).read_text()) == record


def test_hub_url_checksums_before_the_final_name(server, hub_env, tmp_path):
    """A wrong sha256 announced by the Hub (the blob's name) or pinned by the user: refused,
    nothing in DEST."""
    warnings: list[str] = []
    with pytest.raises(Llama2binError, match=f"damaged \\(content hash {PAYLOAD_SHA}, expected {'0' * 64}\\)"):
        fetch("stories", FetchSpec("url", url=hub_url(server, "Org/Bad")), str(tmp_path / "e"), quiet=True,
              hf_endpoint=hub_env, warn=warnings.append)
    assert listing(tmp_path / "e") == []
    with pytest.raises(Llama2binError, match=f"expected sha256 {'1' * 64}, got {PAYLOAD_SHA}.*nothing was written"):
        fetch("stories", FetchSpec("url", url=hub_url(server), sha256="1" * 64), str(tmp_path / "f"), quiet=True,
              hf_endpoint=hub_env)
    assert listing(tmp_path / "f") == []


def test_hub_url_gated_without_token_is_one_line(server, hub_env, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setenv("HF_ENDPOINT", hub_env)  # as a user with a mirror would: the CLI reads it
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no login cache either
    code = main(["fetch", "--model", "stories", "--dest", str(tmp_path / "d"), "--url", hub_url(server), "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1, err
    assert "gated repo" in err and "HF_TOKEN" in err
    assert listing(tmp_path / "d") == []


# ---- url: interrupted downloads -------------------------------------------------------------


def test_interrupted_download_resumes_on_the_next_call(server, tmp_path):
    dest = tmp_path / "d"
    with pytest.raises(Llama2binError, match=f"after {CUT} of {len(PAYLOAD)} bytes.*kept in"):
        url_fetch(server, "cut", dest, retry=NO_RETRY)
    assert listing(dest) == [".stories.pt.part", ".stories.pt.part.json"]  # nothing under the final name
    assert (dest / ".stories.pt.part").read_bytes() == PAYLOAD[:CUT]

    url_fetch(server, "cut", dest, retry=NO_RETRY)
    second = server.seen("cut")[1]
    assert second["range"] == f"bytes={CUT}-"
    assert second["if-range"] == f'"{PAYLOAD_SHA}"'
    assert (dest / "stories.pt").read_bytes() == PAYLOAD
    assert listing(dest) == ["SOURCE.json", "stories.pt"]


def test_dropped_connection_resumes_within_one_call(server, tmp_path):
    warnings: list[str] = []
    result = download_url(server.url("cut"), str(tmp_path / "f.pt"), sha256=PAYLOAD_SHA, retry=FAST, quiet=True,
                          warn=warnings.append)
    assert result.attempts == 2
    assert server.seen("cut")[1]["range"] == f"bytes={CUT}-"
    assert (tmp_path / "f.pt").read_bytes() == PAYLOAD
    assert any("connection" in w for w in warnings)


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    download_url(server.url("cut-norange"), str(tmp_path / "f.pt"), sha256=PAYLOAD_SHA, retry=FAST, quiet=True,
                 warn=lambda m: None)
    assert server.seen("cut-norange")[1]["range"] == f"bytes={CUT}-"  # asked to resume, got the whole file
    assert (tmp_path / "f.pt").read_bytes() == PAYLOAD


def test_stale_partial_is_not_spliced(server, tmp_path):
    """A partial whose validator no longer matches (the file changed upstream) is replaced, and a
    partial from another URL is never resumed."""
    dest = tmp_path / "d"
    dest.mkdir()
    (dest / ".stories.pt.part").write_bytes(b"x" * CUT)
    (dest / ".stories.pt.part.json").write_text(json.dumps({"url": server.url("files"), "validator": '"stale"'}))
    url_fetch(server, "files", dest)
    assert server.seen("files")[0]["if-range"] == '"stale"'
    assert (dest / "stories.pt").read_bytes() == PAYLOAD

    other = tmp_path / "o"
    other.mkdir()
    (other / ".stories.pt.part").write_bytes(b"x" * CUT)
    (other / ".stories.pt.part.json").write_text(json.dumps({"url": "http://elsewhere/stories.pt", "validator": None}))
    url_fetch(server, "files", other, warn=lambda m: None)
    assert "range" not in server.seen("files")[1]
    assert (other / "stories.pt").read_bytes() == PAYLOAD


def test_complete_partial_is_finished_without_refetching(server, tmp_path):
    """Interrupted between the last byte and the rename: the server answers 416 to the range."""
    dest = tmp_path / "d"
    dest.mkdir()
    (dest / ".stories.pt.part").write_bytes(PAYLOAD)
    (dest / ".stories.pt.part.json").write_text(json.dumps({"url": server.url("files"), "validator": None}))
    url_fetch(server, "files", dest)
    assert server.seen("files")[0]["range"] == f"bytes={len(PAYLOAD)}-"
    assert len(server.seen("files")) == 1  # not downloaded again
    assert (dest / "stories.pt").read_bytes() == PAYLOAD


def test_killed_process_resumes(server, tmp_path):
    """SIGKILL the CLI mid-download: the bytes received are kept in the .part, nothing appears
    under the final name, and the next run asks only for the rest."""
    dest = tmp_path / "d"
    part = dest / ".stories.pt.part"
    cmd = [sys.executable, "-m", "llama2bin", "fetch", "--model", "stories", "--dest", str(dest),
           "--url", server.url("stall"), "--sha256", PAYLOAD_SHA, "--quiet", "--timeout", "20"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not (part.exists() and part.stat().st_size == CUT):
            assert proc.poll() is None, "the download ended before it could be killed"
            assert time.monotonic() < deadline, "the partial file never reached the bytes sent"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        server.release.set()
    assert not (dest / "stories.pt").exists()

    assert main(["fetch", "--model", "stories", "--dest", str(dest), "--url", server.url("stall"),
                 "--sha256", PAYLOAD_SHA, "--quiet"]) == 0
    assert server.seen("stall")[1]["range"] == f"bytes={CUT}-"
    assert (dest / "stories.pt").read_bytes() == PAYLOAD


# ---- path: used in place --------------------------------------------------------------------


def test_path_file_and_directory_recorded_relative(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.makedirs("models/meta")
    with open("models/one.pt", "wb") as f:
        f.write(PAYLOAD)
    with open("models/meta/params.json", "w") as f:
        f.write('{"dim": 8}')
    os.makedirs("models/meta/sub")
    with open("models/meta/sub/consolidated.00.pth", "wb") as f:
        f.write(PAYLOAD[:5000])
    with open("models/meta/.hidden", "w") as f:
        f.write("editor backup")

    result = fetch("one", FetchSpec("path", path="models/one.pt"), quiet=True)
    assert result.checkpoint == "models/one.pt"
    text = open("resources/checkpoints/one/SOURCE.json").read()
    assert str(tmp_path) not in text
    assert json.loads(text) == {
        "model": "one", "kind": "path", "path": "models/one.pt",
        "checkpoint": "../../../models/one.pt",
        "files": [{"path": "one.pt", "sha256": PAYLOAD_SHA, "size": len(PAYLOAD)}],
    }
    assert checkpoint_from_source_json("resources/checkpoints/one/SOURCE.json") == "models/one.pt"
    assert listing("resources/checkpoints/one") == ["SOURCE.json"]  # used in place, not copied

    fetch("meta", FetchSpec("path", path="models/meta"), quiet=True)
    record = json.load(open("resources/checkpoints/meta/SOURCE.json"))
    assert record["files"] == [
        {"path": "params.json", "sha256": hashlib.sha256(b'{"dim": 8}').hexdigest(), "size": 10},
        {"path": "sub/consolidated.00.pth", "sha256": hashlib.sha256(PAYLOAD[:5000]).hexdigest(), "size": 5000},
    ]


def test_missing_path_is_a_one_line_error(tmp_path, capsys):
    code = main(["fetch", "--model", "x", "--dest", str(tmp_path / "d"), "--path", str(tmp_path / "nope.pt")])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1
    assert "nope.pt: no such file or directory" in err
    assert listing(tmp_path / "d") == []


def test_flags_that_do_not_go_with_the_source(tmp_path, capsys):
    assert main(["fetch", "--model", "x", "--path", "p", "--sha256", "0" * 64]) == 1
    assert "sha256 goes with a url source, not a path source" in capsys.readouterr().err
    assert main(["fetch", "--model", "x", "--url", "https://h/a.pt", "--file", "a.pt"]) == 1
    assert "file goes with a repo source, not a url source" in capsys.readouterr().err
    assert main(["fetch", "--model", "x", "--url", "https://huggingface.co/org/name/blob/main/a.pt"]) == 1
    assert "not a Hub file download URL" in capsys.readouterr().err
    assert main(["fetch", "--model", "x", "--repo", "org/name"]) == 1
    assert "needs a revision" in capsys.readouterr().err
    assert main(["fetch", "--model", "x", "--url", "http://user:pw@example.com/a.pt"]) == 1
    assert "credentials" in capsys.readouterr().err
    assert main(["fetch", "--model", "../x", "--path", "p"]) == 1
    assert "model name" in capsys.readouterr().err


def test_spec_from_config_and_cli_args():
    spec = FetchSpec.from_config("s", {"source": "llama2c", "url": "https://h/x/stories15M.pt", "max_seq_len": 256})
    assert spec.checkpoint_path("resources/checkpoints/s") == "resources/checkpoints/s/stories15M.pt"
    assert spec.cli_args() == ["--url", "https://h/x/stories15M.pt"]
    spec = FetchSpec.from_config("t", {"source": "hf", "repo": "Org/Name", "revision": COMMIT, "files": ["*.json"]})
    assert spec.checkpoint_path("d") == "d/snapshot"
    assert spec.cli_args() == ["--repo", "Org/Name", "--revision", COMMIT, "--files", "*.json"]
    with pytest.raises(Llama2binError, match="exactly one of"):
        FetchSpec.from_config("u", {"source": "hf", "repo": "Org/Name", "path": "x"})
    with pytest.raises(Llama2binError, match="sha256 must be"):
        FetchSpec.from_config("u", {"source": "llama2c", "url": "https://h/x.pt", "sha256": "ABC"})


# ---- repo: Hugging Face snapshots from a local cache ----------------------------------------

SNAP_COMMIT = "0123456789abcdef0123456789abcdef01234567"
HF_FILES = {
    "config.json": b'{"model_type": "llama", "hidden_size": 8}',
    "model.safetensors": PAYLOAD,
    "tokenizer.model": PAYLOAD[:2048],
    "README.md": b"# a model card\n",
    "original/params.json": b'{"dim": 8}',
}
LFS = {"model.safetensors", "tokenizer.model"}  # named by sha256 in blobs/; the rest by git object id


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def make_hf_cache(cache, repo: str, commit: str, files: dict[str, bytes], ref: str = "main", lfs=LFS):
    """models--ORG--NAME/{blobs/<id>, snapshots/<commit>/<file> -> ../../blobs/<id>, refs/<ref>}."""
    root = cache / ("models--" + repo.replace("/", "--"))
    (root / "blobs").mkdir(parents=True)
    (root / "refs").mkdir()
    for rel, data in files.items():
        blob = root / "blobs" / (hashlib.sha256(data).hexdigest() if rel in lfs else git_blob_id(data))
        blob.write_bytes(data)
        link = root / "snapshots" / commit / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    (root / "refs" / ref).write_text(commit)
    return root


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    pytest.importorskip("huggingface_hub")
    cache = tmp_path / "hf-cache"
    root = make_hf_cache(cache, "Org/Tiny", SNAP_COMMIT, HF_FILES)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return root


def test_hf_snapshot_offline_from_cache(hf_cache, tmp_path, capsys):
    dest = tmp_path / "ck" / "tiny"
    code = main(["fetch", "--model", "tiny", "--dest", str(dest), "--repo", "Org/Tiny", "--revision", SNAP_COMMIT,
                 "--files", "*.safetensors", "*.json", "tokenizer.model", "--quiet"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert err == ""  # pinned commit: no warning
    chosen = ["config.json", "model.safetensors", "original/params.json", "tokenizer.model"]  # not README.md
    snapshot = dest / "snapshot"
    for rel in chosen:
        assert (snapshot / rel).read_bytes() == HF_FILES[rel]
        assert not (snapshot / rel).is_symlink()
    assert os.path.samefile(snapshot / "model.safetensors", hf_cache / "blobs" / PAYLOAD_SHA)  # hard link, no copy
    assert not (snapshot / "README.md").exists()
    assert listing(dest) == ["SOURCE.json", "snapshot"]
    text = (dest / SOURCE_JSON).read_text()
    assert str(tmp_path) not in text
    assert json.loads(text) == {
        "model": "tiny", "kind": "repo", "repo": "Org/Tiny", "revision": SNAP_COMMIT, "commit": SNAP_COMMIT,
        "files_patterns": ["*.safetensors", "*.json", "tokenizer.model"],
        "checkpoint": "snapshot",
        "files": [{"path": rel, "sha256": hashlib.sha256(HF_FILES[rel]).hexdigest(), "size": len(HF_FILES[rel])}
                  for rel in chosen],
    }
    assert f"tiny: {snapshot} (ok; 4 files" in out

    # Again: same record, and the snapshot directory is replaced, not merged.
    (snapshot / "stray").write_text("left over")
    assert main(["fetch", "--model", "tiny", "--dest", str(dest), "--repo", "Org/Tiny", "--revision", SNAP_COMMIT,
                 "--files", "*.safetensors", "*.json", "tokenizer.model", "--quiet"]) == 0
    assert (dest / SOURCE_JSON).read_text() == text
    assert not (snapshot / "stray").exists()
    assert [n for n in listing(dest) if n.startswith(".")] == []


def test_hf_branch_resolves_through_refs_and_warns_to_pin(hf_cache, tmp_path):
    warnings: list[str] = []
    result = fetch("tiny", FetchSpec("repo", repo="Org/Tiny", revision="main"), str(tmp_path / "d"), quiet=True,
                   warn=warnings.append)
    assert result.record["commit"] == SNAP_COMMIT and result.record["revision"] == "main"
    assert [p["path"] for p in result.record["files"]] == sorted(HF_FILES)  # no patterns: the whole snapshot
    assert len(warnings) == 1 and f"revision: {SNAP_COMMIT}" in warnings[0]


def test_hf_offline_miss_says_how_to_fetch(hf_cache, tmp_path, capsys):
    code = main(["fetch", "--model", "other", "--dest", str(tmp_path / "d"), "--repo", "Org/Other",
                 "--revision", SNAP_COMMIT, "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1
    assert "not in the Hugging Face cache" in err and "HF_HUB_OFFLINE=1" in err
    assert "run once with network, or set HF_HUB_OFFLINE=0" in err
    assert listing(tmp_path / "d") == []


def test_hf_pattern_matching_nothing_is_refused(hf_cache, tmp_path):
    with pytest.raises(Llama2binError, match=r"'\*\.bin' matches no file .*run once with network"):
        fetch("tiny", FetchSpec("repo", repo="Org/Tiny", revision=SNAP_COMMIT, files=("*.bin",)), str(tmp_path / "d"),
              quiet=True)
    assert listing(tmp_path / "d") == []


@pytest.mark.parametrize("damaged", ["model.safetensors", "config.json"])  # sha256-named and git-id-named blobs
def test_hf_damaged_cache_blob_is_caught(hf_cache, tmp_path, damaged):
    blob = os.path.realpath(hf_cache / "snapshots" / SNAP_COMMIT / damaged)
    data = bytearray(open(blob, "rb").read())
    data[5] ^= 0xFF
    os.chmod(blob, 0o644)
    with open(blob, "wb") as f:
        f.write(data)
    with pytest.raises(Llama2binError, match=f"{damaged}: the cached blob .* is damaged"):
        fetch("tiny", FetchSpec("repo", repo="Org/Tiny", revision=SNAP_COMMIT), str(tmp_path / "d"), quiet=True)
    assert listing(tmp_path / "d") == []


@pytest.fixture
def library_sleeps(monkeypatch) -> list[float]:
    """huggingface_hub retries an unreachable Hub with real back-off (1, 2, 4, 8, 8 s) and has no
    setting for it: its module's `time` is swapped for one whose sleep records instead of waiting."""
    from huggingface_hub import constants
    from huggingface_hub.utils import _http

    # the library decides offline mode once, at import: whatever this process had then, be online
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    delays: list[float] = []
    clock = types.SimpleNamespace(**{k: getattr(time, k) for k in dir(time) if not k.startswith("_")})
    clock.sleep = delays.append
    monkeypatch.setattr(_http, "time", clock)
    return delays


def test_hf_unreachable_hub_falls_back_to_the_cache(hf_cache, tmp_path, monkeypatch, library_sleeps):
    """Not offline, but the Hub cannot be reached (a closed local port): the cached snapshot of a
    pinned commit is used; an uncached repo gets a message about the network (after the
    library's retries, whose delays are recorded, not waited for)."""
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    result = fetch("tiny", FetchSpec("repo", repo="Org/Tiny", revision=SNAP_COMMIT, files=("config.json",)),
                   str(tmp_path / "d"), quiet=True, hf_endpoint=dead)
    assert [f["path"] for f in result.record["files"]] == ["config.json"]
    with pytest.raises(Llama2binError, match="cannot reach the Hugging Face Hub"):
        fetch("other", FetchSpec("repo", repo="Org/Other", revision=SNAP_COMMIT), str(tmp_path / "e"), quiet=True,
              hf_endpoint=dead)
    assert library_sleeps  # it did retry


def test_progress_lines_in_a_log(server, tmp_path, capsys):
    """Not a terminal (captured stderr): periodic percentage lines rather than a bar."""
    assert main(["fetch", "--model", "stories", "--dest", str(tmp_path / "d"), "--url", server.url("files"),
                 "--sha256", PAYLOAD_SHA]) == 0
    err = capsys.readouterr().err
    assert re.search(r"^stories\.pt: download: 100% \(", err, re.M)


# ---- path: hostile directories (issue 14: nothing hangs, only regular files are read) -------


def checkpoint_dir(root) -> str:
    """A plausible Meta-style directory the hostile cases then spoil."""
    folder = root / "ckpt"
    folder.mkdir()
    (folder / "params.json").write_text('{"dim": 8}')
    (folder / "consolidated.00.pth").write_bytes(PAYLOAD[:4096])
    return str(folder)


def _loop_to_parent(folder: str) -> None:
    os.makedirs(os.path.join(folder, "sub"))
    os.symlink("..", os.path.join(folder, "sub", "up"))  # sub/up/sub/up/... forever if followed


def _loop_of_links(folder: str) -> None:
    os.symlink("b", os.path.join(folder, "a"))
    os.symlink("a", os.path.join(folder, "b"))


def _fifo_inside(folder: str) -> None:
    os.mkfifo(os.path.join(folder, "tokenizer.model"))


def _dev_zero_inside(folder: str) -> None:
    os.symlink("/dev/zero", os.path.join(folder, "consolidated.01.pth"))


@pytest.mark.parametrize(
    "spoil, needle",
    [
        (_loop_to_parent, "sub/up: symlink loop (leads back to a directory that contains it)"),
        (_loop_of_links, "symlink loop"),
        (_fifo_inside, "tokenizer.model: a FIFO, not a regular file: refused"),
        (_dev_zero_inside, "consolidated.01.pth: a character device, not a regular file: refused"),
    ],
    ids=["symlink-to-parent", "symlinks-to-each-other", "fifo", "dev-zero"],
)
def test_hostile_checkpoint_directory_is_refused_at_once(tmp_path, spoil, needle):
    folder = checkpoint_dir(tmp_path)
    spoil(folder)
    dest = tmp_path / "dest"
    run_hostile(HostileCase(
        name=spoil.__name__, argv=["fetch", "--model", "m", "--dest", str(dest), "--path", folder, "--quiet"],
        inputs=[folder], outputs=[str(dest / SOURCE_JSON)], needle=needle, timeout=30,
    ))


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "self-link"])
def test_hostile_checkpoint_file_is_refused_at_once(tmp_path, kind):
    target = str(tmp_path / "model.pt")
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "dev-zero":
        os.symlink("/dev/zero", target)
    else:
        os.symlink("model.pt", target)
    dest = tmp_path / "dest"
    needle = {"fifo": "a FIFO", "dev-zero": "a character device", "self-link": "symlink loop"}[kind]
    run_hostile(HostileCase(
        name=kind, argv=["fetch", "--model", "m", "--dest", str(dest), "--path", target, "--quiet"],
        inputs=[target], outputs=[str(dest / SOURCE_JSON)], needle=needle, timeout=30,
    ))


def test_symlinked_files_and_directories_without_loops_are_walked(tmp_path):
    """What the loop guard must not refuse: a symlink to a file (the Hugging Face cache is made of
    them) and a symlinked directory reached twice without a cycle."""
    folder = checkpoint_dir(tmp_path)
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "tokenizer.model").write_bytes(b"spm")
    os.symlink(str(shared / "tokenizer.model"), os.path.join(folder, "tokenizer.model"))
    os.symlink(str(shared), os.path.join(folder, "extra"))
    result = fetch("m", FetchSpec("path", path=folder), str(tmp_path / "dest"), quiet=True)
    assert [f["path"] for f in result.record["files"]] == [
        "consolidated.00.pth", "extra/tokenizer.model", "params.json", "tokenizer.model"]


# ---- Hub sources for every kind (issue 12): a file URL offline, a repo's single file ------------


def test_hub_url_offline_from_the_cache(hf_cache, tmp_path):
    """A huggingface.co /resolve/ URL goes through huggingface_hub, so HF_HUB_OFFLINE=1 re-runs
    work from its cache: a pinned commit directly, a branch through refs/."""
    for revision in (SNAP_COMMIT, "main"):
        dest = tmp_path / revision
        url = f"https://huggingface.co/Org/Tiny/resolve/{revision}/model.safetensors"
        result = fetch("tiny", FetchSpec("url", url=url, sha256=PAYLOAD_SHA), str(dest), quiet=True)
        assert result.record["revision"] == SNAP_COMMIT
        assert (dest / "model.safetensors").read_bytes() == PAYLOAD
        assert os.path.samefile(dest / "model.safetensors", hf_cache / "blobs" / PAYLOAD_SHA)
    with pytest.raises(Llama2binError, match="not in the Hugging Face cache .*HF_HUB_OFFLINE=1"):
        fetch("tiny", FetchSpec("url", url="https://huggingface.co/Org/Tiny/resolve/main/other.pt"),
              str(tmp_path / "x"), quiet=True, warn=lambda m: None)
    assert listing(tmp_path / "x") == []


LLAMA2C_REPO_FILES = {
    "tiny_a.pt": open(os.path.join(DATA, "tiny_a.pt"), "rb").read(),
    "tiny_a.v0.bin": open(os.path.join(DATA, "tiny_a.v0.bin"), "rb").read(),
    "README.md": b"# tiny llama2.c checkpoints\n",
}


@pytest.fixture
def llama2c_repo(hf_cache):
    """A repo like karpathy/tinyllamas: llama2.c files side by side, in the same offline cache."""
    return make_hf_cache(hf_cache.parent, "Org/Llamas", SNAP_COMMIT, LLAMA2C_REPO_FILES, lfs={"tiny_a.pt", "tiny_a.v0.bin"})


@pytest.mark.parametrize("name, source", [("tiny_a.pt", "llama2c"), ("tiny_a.v0.bin", "bin")])
def test_repo_file_is_the_checkpoint(llama2c_repo, tmp_path, name, source):
    dest = tmp_path / "m"
    spec = FetchSpec.from_config("m", {"source": source, "repo": "Org/Llamas", "revision": SNAP_COMMIT, "file": name})
    assert spec.checkpoint_path(str(dest)) == str(dest / "snapshot" / name)  # known before the fetch
    assert spec.cli_args() == ["--repo", "Org/Llamas", "--revision", SNAP_COMMIT, "--file", name]
    result = fetch("m", spec, str(dest), quiet=True)
    assert result.checkpoint == str(dest / "snapshot" / name)
    assert checkpoint_from_source_json(str(dest / SOURCE_JSON)) == result.checkpoint
    assert os.listdir(dest / "snapshot") == [name]  # only the named file, not the rest of the repo
    record = json.loads((dest / SOURCE_JSON).read_text())
    assert record["checkpoint"] == f"snapshot/{name}" and record["file"] == name
    assert record["files"] == [{"path": name, "sha256": hashlib.sha256(LLAMA2C_REPO_FILES[name]).hexdigest(),
                                "size": len(LLAMA2C_REPO_FILES[name])}]


def test_llama2c_checkpoint_fetched_from_a_repo_converts_to_the_golden_bytes(llama2c_repo, tmp_path):
    out = tmp_path / "out.v2.bin"
    assert main(["fetch", "--model", "m", "--dest", str(tmp_path / "m"), "--repo", "Org/Llamas",
                 "--revision", SNAP_COMMIT, "--file", "tiny_a.pt", "--quiet"]) == 0
    assert main(["export", str(out), "--checkpoint", str(tmp_path / "m" / "snapshot" / "tiny_a.pt"),
                 "--version", "2"]) == 0
    assert out.read_bytes() == open(os.path.join(DATA, "tiny_a.v2.bin"), "rb").read()


def test_repo_file_rules():
    base = {"repo": "Org/Llamas", "revision": SNAP_COMMIT}
    with pytest.raises(Llama2binError, match="a llama2c checkpoint is one file: name it inside the repo with file:"):
        FetchSpec.from_config("m", {"source": "llama2c", **base, "files": ["*.pt"]})
    with pytest.raises(Llama2binError, match="a hf checkpoint is the snapshot directory: use files:"):
        FetchSpec.from_config("m", {"source": "hf", **base, "file": "model.safetensors"})
    for bad in ("*.pt", "../x.pt", ".hidden.pt", "/abs.pt"):
        with pytest.raises(Llama2binError, match="file must be one file's path inside the repo"):
            FetchSpec.from_config("m", {"source": "llama2c", **base, "file": bad})
    spec = FetchSpec.from_config("m", {"source": "hf", **base, "files": ["*.json", "tokenizer.model"]})
    assert spec.snapshot_tokenizer("d") == os.path.join("d", "snapshot", "tokenizer.model")
    assert FetchSpec.from_config("m", {"source": "hf", **base, "files": ["*"]}).snapshot_tokenizer("d") is None
    assert FetchSpec.from_config("m", {"source": "hf", **base}).snapshot_tokenizer("d") is None


def test_repo_file_missing_from_the_snapshot(llama2c_repo, tmp_path):
    with pytest.raises(Llama2binError, match="file 'stories15M.pt' matches no file of the snapshot"):
        fetch("m", FetchSpec("repo", repo="Org/Llamas", revision=SNAP_COMMIT, file="stories15M.pt"),
              str(tmp_path / "m"), quiet=True)
    assert listing(tmp_path / "m") == []


@pytest.mark.slow
def test_pipeline_converts_hub_sources_of_every_kind_offline(tmp_path, monkeypatch):
    """Snakemake from an offline Hugging Face cache: an HF snapshot whose files: name
    tokenizer.model gives tokenizer.bin (as a local directory would), and a llama2.c .pt named by
    file: in another repo converts; both byte-identical to the golden files."""
    from test_pipeline import _train_tokenizer, fresh_copy, snakemake

    tokenizer = open(_train_tokenizer(tmp_path, 64), "rb").read()
    hf_dir = os.path.join(DATA, "tiny_hf_untied")
    hf_files = {name: open(os.path.join(hf_dir, name), "rb").read() for name in os.listdir(hf_dir)}
    cache = tmp_path / "hf-cache"
    make_hf_cache(cache, "Org/Hf", SNAP_COMMIT, {**hf_files, "tokenizer.model": tokenizer, "README.md": b"card"},
                  lfs={"model.safetensors", "tokenizer.model"})
    make_hf_cache(cache, "Org/Llamas", SNAP_COMMIT, LLAMA2C_REPO_FILES, lfs={"tiny_a.pt", "tiny_a.v0.bin"})
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    workdir = fresh_copy(tmp_path / "w")
    (tmp_path / "c.yaml").write_text(
        "models:\n"
        f"  h: {{source: hf, repo: Org/Hf, revision: {SNAP_COMMIT},"
        " files: [config.json, model.safetensors, tokenizer.model]}\n"
        f"  a: {{source: llama2c, repo: Org/Llamas, revision: {SNAP_COMMIT}, file: tiny_a.pt}}\n"
        "versions: [2]\n")
    proc = snakemake(workdir, "results/h/h.v2.bin", "results/h/tokenizer.bin", "results/a/a.v2.bin",
                     "--configfile", str(tmp_path / "c.yaml"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    for got, golden in (("results/h/h.v2.bin", "tiny_hf_untied.v2.bin"), ("results/a/a.v2.bin", "tiny_a.v2.bin")):
        assert open(os.path.join(workdir, got), "rb").read() == open(os.path.join(DATA, golden), "rb").read(), got
    with open(os.path.join(workdir, "results/h/tokenizer.bin"), "rb") as f:
        assert int.from_bytes(f.read(4), "little") > 0  # max_token_length; the format is tested in test_tokenizer
    assert not os.path.exists(os.path.join(workdir, "resources/checkpoints/h/snapshot/README.md"))


def test_config_examples_name_valid_sources():
    """Every shipped example passes the pipeline's schema and FetchSpec, and stories15M is there
    both as a .pt by URL and as the published .bin by repo + file, converted to v2."""
    import yaml
    from snakemake.utils import validate

    folder = os.path.join(ROOT, "config", "examples")
    examples = {}
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name)) as f:
            config = yaml.safe_load(f)
        validate(config, os.path.join(ROOT, "workflow", "schemas", "config.schema.yaml"))
        for model, entry in config["models"].items():
            examples[model] = (FetchSpec.from_config(model, entry), entry["source"], config["versions"])
    spec, source, versions = examples["stories15M-bin"]
    assert (source, spec.repo, spec.file, versions) == ("bin", "karpathy/tinyllamas", "stories15M.bin", [2])
    assert examples["stories15M"][0].hub_file() is not None  # through huggingface_hub


def test_config_source_is_the_pipelines_one_check():
    assert config_source("d", {"source": "llama2c", "demo": "mha"}) is None
    assert config_source("p", {"source": "llama2c", "path": "m.pt"}) == FetchSpec("path", path="m.pt")
    with pytest.raises(Llama2binError, match=r"give exactly one of path, url \(\+sha256\), repo \(\+revision\) or demo; "
                                             r"got \['path', 'demo'\]"):
        config_source("x", {"source": "llama2c", "path": "m.pt", "demo": "mha"})
    with pytest.raises(Llama2binError, match="model x: a bin checkpoint is one file"):
        config_source("x", {"source": "bin", "repo": "Org/Llamas", "revision": SNAP_COMMIT})
