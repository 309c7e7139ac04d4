"""An interruption (Ctrl-C, or SIGTERM, which the CLI turns into the same KeyboardInterrupt) that
lands between creating an output's hidden .part file (or an hf output's .part directory) and
registering it for cleanup: held back until the cleanup knows the file, so nothing is left
(test_recovery.py interrupts whole exports; this is the window inside)."""

from __future__ import annotations

import os
import signal

import pytest
from helpers import preset_arrays, save_llama2c


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    shape = {"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": None, "vocab_size": 256, "multiple_of": 32,
             "max_seq_len": 32}
    return save_llama2c(str(tmp_path_factory.mktemp("ckpt") / "m.pt"), preset_arrays("mha", seed=3, **shape),
                        {**shape, "dropout": 0.0})


class _Interrupted(BaseException):
    pass


def test_an_interruption_while_a_part_file_is_created_leaves_nothing(tmp_path, monkeypatch):
    """SIGTERM arriving after mkstemp made the .part file but before atomic_outputs registered it
    for abort (a window the SIGTERM test above hit under load): held back until the file is
    registered, then raised, so the abort removes it."""
    from llama2bin import atomic

    def interrupting_sweep(*args: object) -> None:  # inside AtomicOutput(), after mkstemp
        os.kill(os.getpid(), signal.SIGTERM)
        real_sweep(*args)

    def raise_interrupted(*_: object) -> None:
        raise _Interrupted

    real_sweep = atomic._remove_stale_parts
    monkeypatch.setattr(atomic, "_remove_stale_parts", interrupting_sweep)
    previous = signal.signal(signal.SIGTERM, raise_interrupted)
    try:
        with pytest.raises(_Interrupted), atomic.atomic_outputs([str(tmp_path / "a.bin"), str(tmp_path / "b.bin")]):
            pytest.fail("the interruption comes before the block")
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert os.listdir(tmp_path) == []


def test_an_interruption_while_an_hf_directory_is_created_leaves_nothing(tmp_path, monkeypatch, checkpoint):
    """The same window for an hf output's .part directory (tempfile.mkdtemp, then the cleanup's try)."""
    import tempfile

    from llama2bin.formats import hf_export
    from llama2bin.formats.source_registry import open_source

    def interrupting_mkdtemp(*args: object, **kwargs: object) -> str:
        made = real_mkdtemp(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)  # after the directory exists, before it is assigned
        return made

    def raise_interrupted(*_: object) -> None:
        raise _Interrupted

    real_mkdtemp = tempfile.mkdtemp
    out = tmp_path / "out"
    out.mkdir()
    with open_source("llama2c", checkpoint) as src:
        monkeypatch.setattr(hf_export.tempfile, "mkdtemp", interrupting_mkdtemp)
        previous = signal.signal(signal.SIGTERM, raise_interrupted)
        try:
            with pytest.raises(_Interrupted):
                hf_export.export_hf(src, str(out / "m.hf"), quiet=True)
        finally:
            signal.signal(signal.SIGTERM, previous)
    assert os.listdir(out) == []
