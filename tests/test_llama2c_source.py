"""llama2.c checkpoints: what is accepted (compiled prefixes, GQA, untied) and every bad input."""

import os
import zipfile

import numpy as np
import pytest
from conftest import assert_refused
from helpers import DATA, preset_args, preset_arrays, run_cli, save_llama2c

from llama2bin.formats.reader import BinFile
from llama2bin.formats.source_registry import open_source


def test_untied_classifier_is_kept_in_every_version(tmp_path):
    ckpt = save_llama2c(str(tmp_path / "u.pt"), preset_arrays("untied"), preset_args("untied"))
    outs = [str(tmp_path / f"u.v{v}.bin") for v in (0, 1, 2)]
    assert run_cli("export", *outs, "--checkpoint", ckpt, "--version", "0", "1", "2").returncode == 0
    want = preset_arrays("untied")["output.weight"]
    for v, out in enumerate(outs):
        with BinFile(out) as bf:
            assert not bf.config.shared_classifier
            got = bf.tensors["output"].read_all()
            np.testing.assert_allclose(got, want, atol=0 if v == 0 else np.abs(want).max() / 127)
    assert open(outs[0], "rb").read()[20:24] == (-160).to_bytes(4, "little", signed=True)  # negative vocab
    assert open(outs[2], "rb").read()[36] == 0  # shared_classifier byte
    assert run_cli("verify", *outs, "--checkpoint", ckpt).returncode == 0


def test_tied_checkpoint_with_equal_but_separate_storage_is_shared(tmp_path):
    arrays = preset_arrays("mha")
    ckpt = save_llama2c(str(tmp_path / "t.pt"), arrays, preset_args("mha"), tie=False)
    with open_source("llama2c", ckpt) as src:
        assert src.config.shared_classifier


def test_compiled_prefix_and_gqa(tmp_path):
    ckpt = save_llama2c(str(tmp_path / "c.pt"), preset_arrays("gqa_backoff"), preset_args("gqa_backoff"), prefix="_orig_mod.")
    with open_source("llama2c", ckpt) as src:
        assert (src.config.n_heads, src.config.n_kv_heads, src.config.dim) == (6, 2, 48)
        assert src.tensor("layers.2.attention.wk").shape == (16, 48)


def _bad(tmp_path, mutate_arrays=None, mutate_args=None) -> str:
    arrays, args = preset_arrays("mha"), preset_args("mha")
    if mutate_arrays:
        mutate_arrays(arrays)
    if mutate_args:
        mutate_args(args)
    return save_llama2c(str(tmp_path / "bad.pt"), arrays, args)


def _export_fails(tmp_path, ckpt, *needles, extra=()):
    out_dir = tmp_path / "out"
    proc = run_cli("export", str(out_dir / "m.v0.bin"), str(out_dir / "m.v2.bin"), "--checkpoint", ckpt,
                   "--version", "0", "2", *extra)
    assert_refused(proc, *needles)
    assert not out_dir.exists() or os.listdir(out_dir) == []  # nothing final, nothing partial


def test_missing_checkpoint(tmp_path):
    _export_fails(tmp_path, str(tmp_path / "nope.pt"), "nope.pt", "no such file")


def test_directory_instead_of_checkpoint(tmp_path):
    # A directory beside the outputs: one that contains them is refused earlier, by the output guard.
    (tmp_path / "ckpt").mkdir()
    _export_fails(tmp_path, str(tmp_path / "ckpt"), "is a directory")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files regardless of permissions")
def test_unreadable_checkpoint(tmp_path):
    ckpt = _bad(tmp_path)
    os.chmod(ckpt, 0)
    _export_fails(tmp_path, ckpt, "permission denied")


def test_truncated_checkpoint(tmp_path):
    raw = open(os.path.join(DATA, "tiny_a.pt"), "rb").read()
    (tmp_path / "cut.pt").write_bytes(raw[: len(raw) // 2])
    _export_fails(tmp_path, str(tmp_path / "cut.pt"), "cut.pt", "not a PyTorch zip checkpoint")


def test_not_a_zip(tmp_path):
    (tmp_path / "text.pt").write_text("hello\n" * 100)
    _export_fails(tmp_path, str(tmp_path / "text.pt"), "text.pt", "not a PyTorch zip checkpoint")


def test_storage_member_missing(tmp_path):
    src = os.path.join(DATA, "tiny_a.pt")
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(tmp_path / "hole.pt", "w") as zout:
        for info in zin.infolist():
            if not info.filename.endswith("/data/3"):
                zout.writestr(info, zin.read(info.filename))
    _export_fails(tmp_path, str(tmp_path / "hole.pt"), "storage", "data/3", "missing")


def test_missing_tensor_is_named(tmp_path):
    ckpt = _bad(tmp_path, mutate_arrays=lambda a: a.pop("layers.1.attention.wk.weight"))
    _export_fails(tmp_path, ckpt, "missing tensor layers.1.attention.wk.weight")


def test_shape_disagreeing_with_model_args_is_named(tmp_path):
    ckpt = _bad(tmp_path, mutate_arrays=lambda a: a.__setitem__("layers.0.attention.wq.weight", np.zeros((64, 32), np.float32)))
    _export_fails(tmp_path, ckpt, "layers.0.attention.wq.weight", "[64, 32]", "[64, 64]")


def test_model_args_disagreeing_with_tensors(tmp_path):
    ckpt = _bad(tmp_path, mutate_args=lambda a: a.__setitem__("n_layers", 3))
    _export_fails(tmp_path, ckpt, "missing tensor layers.2.")


def test_unexpected_tensor_is_refused_not_dropped(tmp_path):
    ckpt = _bad(tmp_path, mutate_arrays=lambda a: a.__setitem__("layers.0.attention.wq.bias", np.zeros(64, np.float32)))
    _export_fails(tmp_path, ckpt, "layers.0.attention.wq.bias")


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_non_finite_weight_is_named(tmp_path, bad_value):
    def poison(a):
        a["layers.1.feed_forward.w2.weight"][5, 7] = bad_value

    _export_fails(tmp_path, _bad(tmp_path, mutate_arrays=poison), "layers.1.feed_forward.w2", "NaN or Inf")


def test_missing_model_args(tmp_path):
    import torch

    torch.save({"model": {}}, tmp_path / "x.pt")
    _export_fails(tmp_path, str(tmp_path / "x.pt"), "not a llama2.c training checkpoint")


def test_pickled_code_is_refused_before_it_runs(tmp_path):
    """A crafted checkpoint whose unpickling would run a command: refused, command never runs."""
    import pickle

    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    src = os.path.join(DATA, "tiny_a.pt")
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(tmp_path / "evil.pt", "w") as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename.endswith("data.pkl"):
                data = pickle.dumps({"model": Exploit(), "model_args": {}}, protocol=2)
            zout.writestr(info, data)
    _export_fails(tmp_path, str(tmp_path / "evil.pt"), "refused", "system")
    assert not marker.exists()


def test_usage_errors(tmp_path):
    ckpt = os.path.join(DATA, "tiny_a.pt")
    out = str(tmp_path / "x.bin")
    assert_refused(run_cli("export", out, "--checkpoint", ckpt, "--version", "7"), "unknown version '7'")
    assert_refused(run_cli("export", out, "--checkpoint", ckpt, "--version", "0", "1"), "give one version per output")
    assert_refused(run_cli("export", out, "--checkpoint", ckpt, "--version", "1", "--group-size", "0"), "--group-size")
    assert os.listdir(tmp_path) == []


def test_v2_groups_never_straddle_rows(tmp_path):
    """runq.c walks each row of w2 (hidden_dim long) in whole groups; v1 has no such reader.
    The default group size backs off for v2 only (one line says so); an explicit one is refused."""
    args = preset_args("mha")  # hidden_dim is taken from the tensors, which we cut to 176
    arrays = preset_arrays("mha")
    hidden = 176  # a multiple of 16 but not of 32 (dim 64 keeps group size 64)
    for i in range(2):
        ffn = f"layers.{i}.feed_forward"
        arrays[f"{ffn}.w1.weight"] = arrays[f"{ffn}.w1.weight"][:hidden]
        arrays[f"{ffn}.w3.weight"] = arrays[f"{ffn}.w3.weight"][:hidden]
        arrays[f"{ffn}.w2.weight"] = np.ascontiguousarray(arrays[f"{ffn}.w2.weight"][:, :hidden])
    ckpt = save_llama2c(str(tmp_path / "h.pt"), arrays, args)
    _export_fails(tmp_path, ckpt, "hidden_dim 176", "group size 64", extra=("--group-size", "64"))
    out = tmp_path / "ok"
    proc = run_cli("export", str(out / "h.v1.bin"), str(out / "h.v2.bin"), "--checkpoint", ckpt, "--version", "1", "2")
    assert proc.returncode == 0, proc.stderr
    assert [line for line in proc.stderr.splitlines() if "BACKOFF" in line] == [
        "BACKOFF: version 2 group size 16 instead of 64: runq.c needs it to divide dim 64 and hidden_dim 176"]
    with BinFile(str(out / "h.v1.bin")) as v1, BinFile(str(out / "h.v2.bin")) as v2:
        assert (v1.group_size, v2.group_size) == (64, 16)  # each version its own quantization
    explicit = run_cli("export", str(out / "h16.v2.bin"), "--checkpoint", ckpt, "--version", "2", "--group-size", "16")
    assert explicit.returncode == 0, explicit.stderr


def test_absurd_max_seq_len_is_refused_before_sizing_anything(tmp_path):
    ckpt = _bad(tmp_path, mutate_args=lambda a: a.__setitem__("max_seq_len", 2**31 - 1))
    _export_fails(tmp_path, ckpt, "max_seq_len = 2147483647", "limit")
