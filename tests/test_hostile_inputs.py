"""The hostile-input corpus for every reader of input files (issue 14, items 3 and 5).

Each case is a file a careless colleague or an attacker could hand us - a FIFO, a symlink to
/dev/zero, a zip bomb, type confusion in JSON or a pickle, a safetensors header that aliases
one tensor onto another - built here in tmp_path from the small fixtures in tests/data, and
run through the real CLI by tests/hostile_harness.py, which checks all seven points: one
`llama2bin: error:` line (naming the file and, via `needle`, the reason), non-zero exit, no
traceback, no output under a final name, inputs unchanged, a time limit and a 1 GiB
address-space cap. Controls show the unmodified builds convert, so each refusal comes from
the damage and not from the builder.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import struct
import warnings
import zipfile

import hostile_tokenizer_cases  # noqa: F401  (registers the tiktoken / tokenizer.json cases in CASES)
import pytest
from helpers import DATA, preset_args, preset_arrays, run_cli, save_llama2c
from hostile_builders import (
    CASES,
    Base,
    Built,
    FakeTensor,
    StorageRef,
    case,
    export,
    hf_config,
    hf_config_text,
    hf_dir,
    hf_header,
    llama2c_pt,
    local_header,
    make_base,
    meta_dir,
    meta_params,
    replace_with,
    repoint_member,
    tokenizer,
)
from hostile_harness import HostileCase, run_hostile

# A hang would otherwise wait forever; every refusal here takes well under a second of work.
TIMEOUT = 30.0


@pytest.fixture(scope="module")
def base() -> Base:
    pytest.importorskip("sentencepiece")
    return make_base()


# ---- the cases (registered in hostile_builders.CASES) ---------------------------------------


# Hangs: opening a FIFO for reading blocks until a writer appears.

for _kind in ("fifo", "dev_zero"):
    _cls = "hang" if _kind == "fifo" else "memory"
    _what = "FIFO" if _kind == "fifo" else "character device"

    @case(f"{_kind}_hf_config", _cls)
    def _hf_config(b: Base, d: str, kind: str = _kind, what: str = _what) -> Built:
        path = hf_dir(d)
        replace_with(os.path.join(path, "config.json"), kind)
        return export("--hf", path, d), [path], f"config.json: is a {what}"

    @case(f"{_kind}_hf_safetensors", _cls)
    def _hf_weights(b: Base, d: str, kind: str = _kind, what: str = _what) -> Built:
        path = hf_dir(d)
        replace_with(os.path.join(path, "model.safetensors"), kind)
        return export("--hf", path, d), [path], f"model.safetensors: is a {what}"

    @case(f"{_kind}_tokenizer_model", _cls)
    def _tokenizer(b: Base, d: str, kind: str = _kind, what: str = _what) -> Built:
        model = replace_with(os.path.join(d, "tokenizer.model"), kind)
        return tokenizer(model, d), [model], f"tokenizer.model: is a {what}"

    @case(f"{_kind}_checkpoint", _cls)
    def _checkpoint(b: Base, d: str, kind: str = _kind, what: str = _what) -> Built:
        ckpt = replace_with(os.path.join(d, "ckpt.pt"), kind)
        return export("--checkpoint", ckpt, d), [ckpt], f"ckpt.pt: is a {what}"

    @case(f"{_kind}_meta_shard", _cls)
    def _meta_shard(b: Base, d: str, kind: str = _kind, what: str = _what) -> Built:
        path = meta_dir(b, d)
        replace_with(os.path.join(path, "consolidated.00.pth"), kind)
        return export("--meta-llama", path, d), [path], f"consolidated.00.pth: is a {what}"


@case("fifo_meta_params", "hang")
def _fifo_params(b: Base, d: str) -> Built:
    path = meta_dir(b, d)
    replace_with(os.path.join(path, "params.json"), "fifo")
    return export("--meta-llama", path, d), [path], "params.json: is a FIFO"


# Memory blow-ups: sizes a file declares, or never-ending files, must not size an allocation.


@case("zip_bomb_deflated_pickle", "memory")
def _zip_bomb(b: Base, d: str) -> Built:
    # 64 MiB of zeros after the pickle deflate to ~64 KB: refused without inflating.
    ckpt = llama2c_pt(b, os.path.join(d, "bomb.pt"), pickle_compression=zipfile.ZIP_DEFLATED, pickle_padding=64 << 20)
    return export("--checkpoint", ckpt, d), [ckpt], "is compressed"


@case("safetensors_100mb_metadata", "memory")
def _huge_metadata(b: Base, d: str) -> Built:
    path = hf_header(d, lambda h: json.dumps(h | {"__metadata__": {"format": "pt", "junk": "x" * 100_000_000}}))
    return export("--hf", path, d), [path], "header of"


@case("pickle_storage_numel_2_62", "memory")
def _huge_numel(b: Base, d: str) -> Built:
    def mutate(state: dict, args: dict, storages: dict) -> None:
        t = state["tok_embeddings.weight"]
        t.storage = StorageRef(t.storage.key, 1 << 62)  # a storage of 16 EiB in a 120 KB file

    ckpt = llama2c_pt(b, os.path.join(d, "ckpt.pt"), mutate)
    return export("--checkpoint", ckpt, d), [ckpt], "declares 4611686018427387904 elements"


@case("pickle_bytes_of_1_tib", "memory")
def _huge_bytes(b: Base, d: str) -> Built:
    # BINBYTES8 declaring 2^40 bytes: CPython's unpickler allocates the declared size first.
    ckpt = os.path.join(d, "ckpt.pt")
    with zipfile.ZipFile(ckpt, "w") as zf:
        zf.writestr("archive/data.pkl", b"\x80\x04\x8e" + struct.pack("<Q", 1 << 40) + b"x" * 10 + b".")
    return export("--checkpoint", ckpt, d), [ckpt], "a length field exceeds the pickle's size"


@case("zip64_central_directory_1_tib", "memory")
def _huge_directory(b: Base, d: str) -> Built:
    # torch.save writes zip64 end records; zipfile trusts the zip64 size and reads that much.
    with open(os.path.join(DATA, "tiny_a.pt"), "rb") as f:
        data = bytearray(f.read())
    at = data.rfind(b"PK\x06\x06")
    data[at + 40 : at + 48] = struct.pack("<Q", 1 << 40)
    ckpt = os.path.join(d, "ckpt.pt")
    with open(ckpt, "wb") as f:
        f.write(data)
    return export("--checkpoint", ckpt, d), [ckpt], "central directory of 1099511627776 bytes"


# Tracebacks: type confusion in JSON, pickles and headers.


@case("hf_model_type_list", "traceback")
def _model_type_list(b: Base, d: str) -> Built:
    path = hf_config(d, model_type=["llama"])
    return export("--hf", path, d), [path], "model_type ['llama'] is not supported"


@case("hf_head_dim_object", "traceback")
def _head_dim_object(b: Base, d: str) -> Built:
    path = hf_config(d, head_dim={"size": 8})
    return export("--hf", path, d), [path], "head_dim must be an integer, got an object"


@case("hf_eps_string", "traceback")
def _eps_string(b: Base, d: str) -> Built:
    path = hf_config(d, rms_norm_eps="abc")
    return export("--hf", path, d), [path], "rms_norm_eps must be a positive finite number, got a string"


@case("hf_config_nested_100000", "traceback")
def _nested(b: Base, d: str) -> Built:
    path = hf_config_text(d, lambda text: "[" * 100000 + "]" * 100000)
    return export("--hf", path, d), [path], "nested deeper than 64"


@case("safetensors_shape_infinity", "traceback")
def _shape_inf(b: Base, d: str) -> Built:
    def edit(h: dict) -> str:
        h["model.norm.weight"]["shape"] = ["INF"]
        return json.dumps(h).replace('["INF"]', "[Infinity]")

    path = hf_header(d, edit)
    return export("--hf", path, d), [path], "Infinity is not a number JSON allows"


@case("pickle_int_state_dict_keys", "traceback")
def _int_keys(b: Base, d: str) -> Built:
    def mutate(state: dict, args: dict, storages: dict) -> None:
        state[7] = state.pop("norm.weight")

    ckpt = llama2c_pt(b, os.path.join(d, "ckpt.pt"), mutate)
    return export("--checkpoint", ckpt, d), [ckpt], "state_dict key 7 is not a string"


@case("pickle_zero_d_weight", "traceback")
def _zero_d(b: Base, d: str) -> Built:
    def mutate(state: dict, args: dict, storages: dict) -> None:
        state["layers.0.feed_forward.w1.weight"] = FakeTensor(StorageRef("0", 1), 0, (), ())

    ckpt = llama2c_pt(b, os.path.join(d, "ckpt.pt"), mutate)
    return export("--checkpoint", ckpt, d), [ckpt], "layers.0.feed_forward.w1.weight has shape [], expected a matrix"


@case("pickle_storage_is_int", "traceback")
def _storage_int(b: Base, d: str) -> Built:
    def mutate(state: dict, args: dict, storages: dict) -> None:
        state["norm.weight"].storage = 5

    ckpt = llama2c_pt(b, os.path.join(d, "ckpt.pt"), mutate)
    return export("--checkpoint", ckpt, d), [ckpt], "storage argument is int 5, not a storage"


@case("meta_params_dim_string", "traceback")
def _params_string(b: Base, d: str) -> Built:
    path = meta_dir(b, d)
    with open(os.path.join(path, "params.json"), "w") as f:
        json.dump(meta_params(b.model_args) | {"dim": "32"}, f)
    return export("--meta-llama", path, d), [path], "dim must be an integer, got a string"


@case("tokenizer_piece_not_utf8", "traceback")
def _not_utf8(b: Base, d: str) -> Built:
    # Same length, so the protobuf stays well-formed: piece "oken" becomes b"ok\xffn".
    assert b.sp_model.count(b"\x0a\x04oken") == 1
    model = os.path.join(d, "tokenizer.model")
    with open(model, "wb") as f:
        f.write(b.sp_model.replace(b"\x0a\x04oken", b"\x0a\x04ok\xffn"))
    return tokenizer(model, d), [model], "is not valid UTF-8"


# Silently wrong output: files that used to convert into something other than what they hold.


@case("safetensors_duplicate_name", "wrong")
def _duplicate(b: Base, d: str) -> Built:
    def edit(h: dict) -> str:
        # A second "model.norm.weight" pointing at layer 0's norm: json.loads would keep the last.
        dup = json.dumps({"model.norm.weight": h["model.layers.0.input_layernorm.weight"]})[1:-1]
        return json.dumps(h)[:-1] + ", " + dup + "}"

    path = hf_header(d, edit)
    return export("--hf", path, d), [path], "duplicate key 'model.norm.weight'"


@case("safetensors_overlapping_ranges", "wrong")
def _overlap(b: Base, d: str) -> Built:
    def edit(h: dict) -> str:
        # Same dtype and shape, so only the overlap check can tell that layer 1 reads layer 0's bytes.
        h["model.layers.1.input_layernorm.weight"] = dict(h["model.layers.0.input_layernorm.weight"])
        return json.dumps(h)

    path = hf_header(d, edit)
    return export("--hf", path, d), [path], "aliasing"


@case("safetensors_fractional_dim", "wrong")
def _fractional_shape(b: Base, d: str) -> Built:
    def edit(h: dict) -> str:
        h["model.norm.weight"]["shape"] = [32.9]
        return json.dumps(h)

    path = hf_header(d, edit)
    return export("--hf", path, d), [path], "shape [32.9] is not a list of non-negative integers"


@case("meta_params_fractional_dim", "wrong")
def _fractional_dim(b: Base, d: str) -> Built:
    path = meta_dir(b, d)
    with open(os.path.join(path, "params.json"), "w") as f:
        json.dump(meta_params(b.model_args) | {"dim": 32.9}, f)
    return export("--meta-llama", path, d), [path], "dim must be an integer, got float 32.9"


@case("hf_nan_eps", "wrong")
def _nan_eps(b: Base, d: str) -> Built:
    path = hf_config_text(d, lambda text: json.dumps(json.loads(text) | {"rms_norm_eps": "NAN"}).replace('"NAN"', "NaN"))
    return export("--hf", path, d), [path], "NaN is not a number JSON allows"


@case("pickle_nan_norm_eps", "wrong")
def _pickle_nan(b: Base, d: str) -> Built:
    def mutate(state: dict, args: dict, storages: dict) -> None:
        args["norm_eps"] = float("nan")

    ckpt = llama2c_pt(b, os.path.join(d, "ckpt.pt"), mutate)
    return export("--checkpoint", ckpt, d), [ckpt], "model_args.norm_eps must be a positive finite number"


@case("pickle_storage_longer_than_member", "wrong")
def _long_storage(b: Base, d: str) -> Built:
    def mutate(state: dict, args: dict, storages: dict) -> None:
        # The member loses its last row; the pickle still declares the full 32 x 32.
        t = state["layers.1.attention.wo.weight"]
        storages[t.storage.key] = storages[t.storage.key][: -32 * 4]

    ckpt = llama2c_pt(b, os.path.join(d, "ckpt.pt"), mutate)
    return export("--checkpoint", ckpt, d), [ckpt], "declares 1024 elements (4096 bytes) but the member holds 3968"


@case("zip_duplicate_member", "wrong")
def _duplicate_member(b: Base, d: str) -> Built:
    ckpt = llama2c_pt(b, os.path.join(d, "ckpt.pt"))
    with warnings.catch_warnings(), zipfile.ZipFile(ckpt, "a") as zf:
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name we mean to write
        zf.writestr("archive/data/2", bytes(32 * 32 * 4))
    return export("--checkpoint", ckpt, d), [ckpt], "zip member archive/data/2 appears twice"


@case("zip_entry_points_at_other_member", "wrong")
def _repointed(b: Base, d: str) -> Built:
    # wq (storage 1) and wk (storage 2) are both 32 x 32: wk's directory entry now leads to wq's bytes.
    ckpt = llama2c_pt(b, os.path.join(d, "ckpt.pt"))
    with zipfile.ZipFile(ckpt) as zf:
        wq_header = zf.getinfo("archive/data/1").header_offset
    repoint_member(ckpt, "archive/data/2", wq_header)
    return export("--checkpoint", ckpt, d), [ckpt], "archive/data/2 points at another member's local header"


@case("zip_member_nested_in_other", "wrong")
def _nested_member(b: Base, d: str) -> Built:
    # Storage 1's bytes begin with a local header named archive/data/2, and data/2's directory
    # entry points there: names match, but wk would read wq's bytes.
    size = 32 * 32 * 4
    name = "archive/data/2"

    def mutate(state: dict, args: dict, storages: dict) -> None:
        fake = local_header(name, size)
        storages["1"] = (fake + storages["1"])[:size]

    ckpt = llama2c_pt(b, os.path.join(d, "ckpt.pt"), mutate)
    with zipfile.ZipFile(ckpt) as zf:
        info = zf.getinfo("archive/data/1")
    repoint_member(ckpt, name, info.header_offset + 30 + len(info.filename.encode()) + len(info.extra))
    return export("--checkpoint", ckpt, d), [ckpt], "overlaps archive/data/1 (one storage aliasing another)"


@case("pickle_negative_storage_offset", "wrong")
def _negative_offset(b: Base, d: str) -> Built:
    def mutate(state: dict, args: dict, storages: dict) -> None:
        state["layers.0.attention.wq.weight"].offset = -32

    ckpt = llama2c_pt(b, os.path.join(d, "ckpt.pt"), mutate)
    return export("--checkpoint", ckpt, d), [ckpt], "storage_offset -32 is not a non-negative integer"


# ---- the tests ----------------------------------------------------------------------------------


def test_every_class_has_three_cases() -> None:
    kinds = [kind for kind, _ in CASES.values()]
    for kind in ("hang", "memory", "traceback", "wrong"):
        assert kinds.count(kind) >= 3, kind


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_input_refused(name: str, base: Base, tmp_path) -> None:
    _, build = CASES[name]
    argv, inputs, needle = build(base, str(tmp_path))
    outputs = [os.path.join(tmp_path, "out.bin"), os.path.join(tmp_path, "tokenizer.bin")]
    run_hostile(HostileCase(name, argv, inputs=inputs, outputs=outputs, needle=needle, timeout=TIMEOUT))


def test_verify_refuses_a_storage_shorter_than_declared(base: Base, tmp_path) -> None:
    """verify reads the source through the same readers, so it cannot certify what export would
    have read from outside a storage (issue 14: "the independent check must not share the hole")."""
    _, build = CASES["pickle_storage_longer_than_member"]
    _, inputs, needle = build(base, str(tmp_path))
    golden = os.path.join(tmp_path, "tiny_a.v0.bin")
    shutil.copy(os.path.join(DATA, "tiny_a.v0.bin"), golden)
    report = os.path.join(tmp_path, "verify.json")
    argv = ["verify", "--checkpoint", inputs[0], golden, "--json", report, "--no-functional"]
    run_hostile(HostileCase("verify_short_storage", argv, inputs=[*inputs, golden], outputs=[report], needle=needle,
                            timeout=TIMEOUT))


def test_controls_convert(base: Base, tmp_path) -> None:
    """The undamaged builds convert: the llama2.c build to tiny_a's golden bytes, the Meta
    directory and the tokenizer without error. So each refusal above is the damage's doing."""
    d = str(tmp_path)
    ckpt = llama2c_pt(base, os.path.join(d, "ckpt.pt"))
    out = os.path.join(d, "a.bin")
    proc = run_cli("export", "--checkpoint", ckpt, out, "--version", "0", "--quiet")
    assert proc.returncode == 0, proc.stderr
    with open(out, "rb") as got, open(os.path.join(DATA, "tiny_a.v0.bin"), "rb") as want:
        assert got.read() == want.read()
    meta = meta_dir(base, d)
    proc = run_cli("export", "--meta-llama", meta, os.path.join(d, "m.bin"), "--version", "0", "--quiet")
    assert proc.returncode == 0, proc.stderr
    model = os.path.join(d, "tokenizer.model")
    with open(model, "wb") as f:
        f.write(base.sp_model)
    proc = run_cli("tokenizer", model, os.path.join(d, "tok.bin"))
    assert proc.returncode == 0, proc.stderr


def test_verify_refuses_a_fifo_in_an_hf_export(base: Base, tmp_path) -> None:
    """An exported HF directory whose model.safetensors is a FIFO: verify hashes the exported
    file, and must refuse it rather than wait for a writer."""
    exported = hf_dir(str(tmp_path))
    replace_with(os.path.join(exported, "model.safetensors"), "fifo")
    report = os.path.join(tmp_path, "verify.json")
    argv = ["verify", "--hf", os.path.join(DATA, "tiny_hf_untied"), exported, "--json", report, "--no-functional"]
    run_hostile(HostileCase("verify_hf_export_fifo", argv, inputs=[exported], outputs=[report],
                            needle="model.safetensors: is a FIFO", timeout=TIMEOUT))


@pytest.mark.slow
def test_verify_of_a_2_20_token_vocabulary_finishes_in_time(tmp_path) -> None:
    """A legal, extreme model: vocab 2^20 and dim 2 (a 17 MB .pt). `verify` with the default
    functional check must finish within 30 s under the 1 GiB cap, and pass: memory was already
    bounded; time must be too (Llama 3's 128256 tokens make the cost per vocabulary entry matter).
    The 30 s are CPU seconds of the verify process (about 12 measured; bench/functional_cost.py):
    its wall time on a machine shared with other jobs says nothing about the code, so the wall
    limit is only a hang guard."""
    from llama2bin.cli import main

    shape = {"dim": 2, "n_heads": 1, "n_kv_heads": None, "n_layers": 1, "vocab_size": 1 << 20, "multiple_of": 2,
             "max_seq_len": 16}  # as tests/test_verify_memory.py, which bounds its memory
    ckpt = save_llama2c(str(tmp_path / "wide.pt"), preset_arrays("untied", **shape), {**preset_args("untied"), **shape},
                        tie=False)
    out = str(tmp_path / "wide.v0.bin")
    assert main(["export", "--checkpoint", ckpt, out, "--version", "0", "--quiet"]) == 0
    report = str(tmp_path / "wide.v0.verify.json")
    case = HostileCase("verify_vocab_2_20", ["verify", out, "--checkpoint", ckpt, "--json", report, "--quiet"],
                       inputs=[ckpt, out], timeout=10 * TIMEOUT, expect_success=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    run_hostile(case)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert cpu <= TIMEOUT, f"verify of a 2^20-token vocabulary took {cpu:.1f} CPU s (limit {TIMEOUT:g})"
    with open(report) as f:
        assert json.load(f)["passed"] is True
