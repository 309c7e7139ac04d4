"""The fetch tests' pytest fixtures (registered with `pytest_plugins` by the fetch test modules):
the misbehaving HTTP server, a fake Hub endpoint, and offline Hugging Face caches."""

from __future__ import annotations

import time
import types

import pytest
from fetch_fixtures import HF_FILES, LLAMA2C_REPO_FILES, SNAP_COMMIT, TOKEN, FixtureServer, make_hf_cache


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


@pytest.fixture
def hub_env(server, tmp_path, monkeypatch):
    """The fake Hub at the test server's address, an empty cache, online, HF_TOKEN set."""
    constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # decided at import, maybe by another test
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    return f"http://127.0.0.1:{server.port}"


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    pytest.importorskip("huggingface_hub")
    cache = tmp_path / "hf-cache"
    root = make_hf_cache(cache, "Org/Tiny", SNAP_COMMIT, HF_FILES)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return root


@pytest.fixture
def library_sleeps(monkeypatch) -> list[float]:
    """huggingface_hub retries an unreachable Hub with real back-off (1, 2, 4, 8, 8 s), and a
    dropped transfer after 1 s, with no setting for either: its modules' `time` is swapped for one
    whose sleep records instead of waiting."""
    from huggingface_hub import constants, file_download
    from huggingface_hub.utils import _http

    # the library decides offline mode once, at import: whatever this process had then, be online
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    delays: list[float] = []
    clock = types.SimpleNamespace(**{k: getattr(time, k) for k in dir(time) if not k.startswith("_")})
    clock.sleep = delays.append
    monkeypatch.setattr(_http, "time", clock)
    monkeypatch.setattr(file_download, "time", clock)
    return delays


@pytest.fixture
def llama2c_repo(hf_cache):
    """A repo like karpathy/tinyllamas: llama2.c files side by side, in the same offline cache."""
    return make_hf_cache(hf_cache.parent, "Org/Llamas", SNAP_COMMIT, LLAMA2C_REPO_FILES, lfs={"tiny_a.pt", "tiny_a.v0.bin"})

