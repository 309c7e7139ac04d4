"""Generic URLs: the thin resumable client against a real HTTP server on 127.0.0.1 (Range,
failures, corruption, 404/401, dropped and killed connections); back-off delays are recorded,
never waited for."""

from __future__ import annotations

import hashlib
import json
import re
import signal
import subprocess
import sys
import time

import pytest
from fetch_fixtures import CUT, FAST, NO_RETRY, PAYLOAD, PAYLOAD_SHA, TOKEN, corrupted, listing, url_fetch

from llama2bin.cli import main
from llama2bin.errors import Llama2binError
from llama2bin.fetch import (
    SOURCE_JSON,
    RetryPolicy,
    checkpoint_from_source_json,
    download_url,
)

# ---- url: downloads -------------------------------------------------------------------------

pytest_plugins = ("fetch_plugin",)  # its fixtures: server, hf_cache, hub_env, ...


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


def test_generic_url_never_gets_the_token(server, tmp_path, monkeypatch):
    """127.0.0.1 is not the Hub: HF_TOKEN is not sent there, so the gated file is refused."""
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with pytest.raises(Llama2binError, match="HTTP 401.*no credentials are sent to this host") as e:
        url_fetch(server, "gated", tmp_path / "a")
    assert "authorization" not in server.seen("gated")[0]
    assert TOKEN not in str(e.value)


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


def test_progress_lines_in_a_log(server, tmp_path, capsys):
    """Not a terminal (captured stderr): periodic percentage lines rather than a bar."""
    assert main(["fetch", "--model", "stories", "--dest", str(tmp_path / "d"), "--url", server.url("files"),
                 "--sha256", PAYLOAD_SHA]) == 0
    err = capsys.readouterr().err
    assert re.search(r"^stories\.pt: download: 100% \(", err, re.M)
