"""Shared by the fetch tests: a real HTTP server on 127.0.0.1 that misbehaves on request (Range,
failures, corruption, 404/401, dropped and stalled connections, a fake Hub endpoint), and
Hugging Face caches laid out the way huggingface_hub writes them, for offline runs."""

from __future__ import annotations

import hashlib
import os
import random
import re
import threading
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from helpers import DATA

from llama2bin.fetch import (
    FetchSpec,
    RetryPolicy,
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
                announces a wrong one; repo "Cut" sends to a CDN that drops the first transfer
                midway). Gated unless the bearer token is right."""
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    self.send_body(401, b"", {"X-Error-Code": "GatedRepo", "X-Error-Message": "gated"})
                    return
                port = self.server.server_address[1]
                announced = "0" * 64 if repo_name == "Bad" else PAYLOAD_SHA
                cdn = "cut" if repo_name == "Cut" else "files"  # "Cut": the CDN drops the first transfer
                self.send_body(302, b"", {"Location": f"http://localhost:{port}/{cdn}/stories.pt",
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


def listing(folder) -> list[str]:
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def url_fetch(server, route, dest, *, sha256=PAYLOAD_SHA, retry=FAST, **kw):
    spec = FetchSpec("url", url=server.url(route), sha256=sha256)
    return fetch("stories", spec, str(dest), retry=retry, quiet=True, **kw)


def hub_url(server, repo: str = "Org/Tiny", revision: str = "main") -> str:
    return f"http://127.0.0.1:{server.port}/{repo}/resolve/{revision}/stories.pt"


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


LLAMA2C_REPO_FILES = {
    "tiny_a.pt": open(os.path.join(DATA, "tiny_a.pt"), "rb").read(),
    "tiny_a.v0.bin": open(os.path.join(DATA, "tiny_a.v0.bin"), "rb").read(),
    "README.md": b"# tiny llama2.c checkpoints\n",
}


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
