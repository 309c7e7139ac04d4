"""The C check's Python side is shared between files with the same weights (a v1 and a v2 of one
model hold the same q and scales in different layouts): the same results, fewer forwards, and
never shared between files whose weights differ."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from llama2bin.checks import ccheck  # noqa: E402
from llama2bin.checks.ccheck import PythonSide, c_check, weights_key  # noqa: E402
from llama2bin.demo import write_demo_checkpoint  # noqa: E402
from llama2bin.formats.reader import BinFile  # noqa: E402
from llama2bin.formats.source_registry import open_source  # noqa: E402
from llama2bin.formats.writer import export  # noqa: E402


@pytest.fixture(scope="module")
def bins(tmp_path_factory):
    root = tmp_path_factory.mktemp("sharing")
    ckpt = str(root / "m.pt")
    write_demo_checkpoint("gqa_backoff", ckpt)
    out = {v: str(root / f"m.v{v}.bin") for v in (0, 1, 2)}
    with open_source("llama2c", ckpt) as src:
        export(src, list(out.items()), quiet=True)
    out["v2g"] = str(root / "m.v2g.bin")  # another group size: other q and scales
    with open_source("llama2c", ckpt) as src:
        export(src, [(2, out["v2g"])], group_size=8, quiet=True)
    return out


def _key(path: str) -> str:
    with BinFile(path) as bf:
        return weights_key(bf)


def test_weights_key_sees_the_weights_not_the_layout(bins, tmp_path):
    assert open(bins[1], "rb").read() != open(bins[2], "rb").read()  # other layouts and headers
    assert _key(bins[1]) == _key(bins[2])
    assert len({_key(bins[0]), _key(bins[2]), _key(bins["v2g"])}) == 3
    changed = tmp_path / "changed.v2.bin"
    data = bytearray(open(bins[2], "rb").read())
    data[-1] ^= 1  # one bit of the last tensor
    changed.write_bytes(bytes(data))
    assert _key(str(changed)) != _key(bins[2])


def test_files_with_equal_weights_share_their_python_forwards(bins, consumer, monkeypatch):
    alone = [c_check(bins[v], consumer).to_json() for v in (1, 2, "v2g")]
    calls = []
    real = ccheck.bin_logits
    monkeypatch.setattr(ccheck, "bin_logits", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    side = PythonSide()
    shared = [c_check(bins[v], consumer, python_side=side).to_json() for v in (1, 2, "v2g")]
    assert shared == alone  # the same results, field for field
    # own + teacher-forced for v1, none for v2 (same weights, same dump), both again for v2g
    assert calls == [bins[1], bins[1], bins["v2g"], bins["v2g"]]


def test_a_single_q8_file_is_not_fingerprinted(bins, consumer, monkeypatch, tmp_path):
    keyed = []
    real = ccheck.weights_key
    monkeypatch.setattr(ccheck, "weights_key", lambda bf: keyed.append(bf.path) or real(bf))
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not a model")
    alone = c_check(bins[2], consumer).to_json()
    # one Q8_0 file among a v0 and files that are not models: nothing to share its forwards with
    side = PythonSide([bins[0], bins[2], str(junk), str(tmp_path)])
    assert [c_check(bins[v], consumer, python_side=side).to_json() for v in (0, 2)] == [
        c_check(bins[0], consumer).to_json(), alone]
    assert keyed == []
    side = PythonSide([bins[1], bins[2]])  # two: both fingerprinted, the second shares
    c_check(bins[1], consumer, python_side=side)
    assert c_check(bins[2], consumer, python_side=side).to_json() == alone
    assert sorted(keyed) == sorted([bins[1], bins[2]])
