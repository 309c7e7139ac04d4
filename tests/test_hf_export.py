"""`--version hf`: the exported directory loads in transformers and computes the same logits.

References are independent of llama2bin: transformers' forward of the original HF model (for an
HF-built model), or a float64 forward written here from the checkpoint's own tensors following
llama2.c's model.py (interleaved-pair rotary, repeated kv heads) for llama2.c checkpoints.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

from conftest import export  # noqa: E402

from llama2bin.checks.tensor import check_tensors  # noqa: E402
from llama2bin.cli import main  # noqa: E402
from llama2bin.errors import Llama2binError  # noqa: E402
from llama2bin.formats.families import open_output  # noqa: E402
from llama2bin.formats.hf import CONFIG_NAME, WEIGHTS_NAME  # noqa: E402
from llama2bin.formats.hf_export import export_hf  # noqa: E402
from llama2bin.formats.source_registry import open_source  # noqa: E402

try:  # the numpy reference forward, when this build has it
    from llama2bin.checks import forward
except ImportError:
    forward = None

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
PREFIX = "_orig_mod."


# ---- independent references ---------------------------------------------------------------



def _check(out: str, source):  # type: ignore[no-untyped-def]
    """The round trip of an hf directory, as verify runs it."""
    with open_output(out) as output:
        return check_tensors(output, source, quiet=True)

def load_llama2c(path: str) -> tuple[dict[str, torch.Tensor], dict]:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    sd = {k.removeprefix(PREFIX).removesuffix(".weight"): v for k, v in ckpt["model"].items()}
    return sd, ckpt["model_args"]


def llama2c_logits(sd: dict[str, torch.Tensor], args: dict, tokens: list[int]) -> np.ndarray:
    """llama2.c model.py's forward in float64: RMSNorm, interleaved-pair rotary, GQA by repeating kv."""
    w = {k: v.double() for k, v in sd.items()}
    dim, n_heads = args["dim"], args["n_heads"]
    n_kv = args.get("n_kv_heads") or n_heads
    hd, eps, n_layers, T = dim // n_heads, args.get("norm_eps", 1e-5), args["n_layers"], len(tokens)

    def rmsnorm(x, weight):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight

    freqs = 1.0 / (10000.0 ** (torch.arange(0, hd, 2, dtype=torch.float64)[: hd // 2] / hd))
    angles = torch.outer(torch.arange(T, dtype=torch.float64), freqs)  # (T, hd/2)
    cos, sin = torch.cos(angles)[:, None, :], torch.sin(angles)[:, None, :]

    def rotate(x):  # (T, heads, hd): pairs (2j, 2j+1) rotated by position * freq_j
        re, im = x[..., 0::2], x[..., 1::2]
        return torch.stack([re * cos - im * sin, re * sin + im * cos], dim=-1).reshape(x.shape)

    x = w["tok_embeddings"][torch.tensor(tokens)]
    mask = torch.full((T, T), float("-inf"), dtype=torch.float64).triu(1)
    for i in range(n_layers):
        p = f"layers.{i}."
        h = rmsnorm(x, w[p + "attention_norm"])
        q = rotate((h @ w[p + "attention.wq"].T).view(T, n_heads, hd))
        k = rotate((h @ w[p + "attention.wk"].T).view(T, n_kv, hd))
        v = (h @ w[p + "attention.wv"].T).view(T, n_kv, hd)
        k, v = k.repeat_interleave(n_heads // n_kv, dim=1), v.repeat_interleave(n_heads // n_kv, dim=1)
        scores = torch.einsum("thd,shd->hts", q, k) / math.sqrt(hd) + mask
        att = torch.einsum("hts,shd->thd", torch.softmax(scores, dim=-1), v).reshape(T, dim)
        x = x + att @ w[p + "attention.wo"].T
        h = rmsnorm(x, w[p + "ffn_norm"])
        x = x + (torch.nn.functional.silu(h @ w[p + "feed_forward.w1"].T) * (h @ w[p + "feed_forward.w3"].T)) @ w[
            p + "feed_forward.w2"
        ].T
    x = rmsnorm(x, w["norm"])
    return (x @ w.get("output", w["tok_embeddings"]).T).numpy()


def hf_logits(model_dir_or_model, tokens: list[int]) -> np.ndarray:
    model = model_dir_or_model
    if isinstance(model, str):
        model, info = transformers.AutoModelForCausalLM.from_pretrained(model, local_files_only=True, output_loading_info=True)
        assert not any(info.values()), info  # no missing, unexpected or mismatched tensors
    model.eval()
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].double().numpy()


def tokens_for(args: dict) -> list[int]:
    rng = np.random.default_rng(7)
    return rng.integers(0, args["vocab_size"], size=args["max_seq_len"]).tolist()


def unpermute(w: torch.Tensor, n: int) -> torch.Tensor:
    """docs/formats.md: HF q_proj/k_proj rows -> canonical interleaved layout."""
    hd = w.shape[0] // n
    return w.reshape(n, 2, hd // 2, w.shape[1]).transpose(1, 2).reshape(n * hd, w.shape[1])


def save_untied_gqa_checkpoint(path: str) -> dict:
    """A llama2.c checkpoint with GQA and a classifier that differs from the embeddings."""
    args = {"dim": 48, "n_layers": 2, "n_heads": 6, "n_kv_heads": 2, "vocab_size": 70, "multiple_of": 16,
            "max_seq_len": 10, "norm_eps": 1e-5, "dropout": 0.0}
    g = torch.Generator().manual_seed(3)
    dim, hd, hidden = 48, 8, 128
    shapes = {"tok_embeddings": (70, dim), "norm": (dim,), "output": (70, dim)}
    for i in range(2):
        shapes |= {f"layers.{i}.attention.wq": (dim, dim), f"layers.{i}.attention.wk": (2 * hd, dim),
                   f"layers.{i}.attention.wv": (2 * hd, dim), f"layers.{i}.attention.wo": (dim, dim),
                   f"layers.{i}.feed_forward.w1": (hidden, dim), f"layers.{i}.feed_forward.w2": (dim, hidden),
                   f"layers.{i}.feed_forward.w3": (hidden, dim), f"layers.{i}.attention_norm": (dim,),
                   f"layers.{i}.ffn_norm": (dim,)}
    sd = {}
    for name, shape in shapes.items():
        t = torch.randn(shape, generator=g) * (0.2 if len(shape) == 2 else 0.3)
        sd[name + ".weight"] = t + 1.0 if len(shape) == 1 else t
    torch.save({"model": sd, "model_args": args, "iter_num": 0}, path)
    return args


# ---- llama2.c checkpoints: logits vs an independent float64 forward ------------------------


@pytest.mark.parametrize("name", ["tiny_a.pt", "tiny_b.pt", "untied_gqa"])
def test_llama2c_checkpoint_logits_match(name, tmp_path):
    ckpt = str(tmp_path / "untied.pt") if name == "untied_gqa" else os.path.join(DATA, name)
    if name == "untied_gqa":
        save_untied_gqa_checkpoint(ckpt)
    sd, args = load_llama2c(ckpt)
    out = str(tmp_path / "hf")
    export(tmp_path, "--checkpoint", ckpt, "hf")

    config = json.load(open(os.path.join(out, CONFIG_NAME)))
    tied = name != "untied_gqa"
    assert config["tie_word_embeddings"] is tied
    assert config["num_key_value_heads"] == (args.get("n_kv_heads") or args["n_heads"])
    with safetensors_torch.safe_open(os.path.join(out, WEIGHTS_NAME), "pt") as f:
        keys = set(f.keys())
        assert ("lm_head.weight" in keys) is not tied
        assert all(f.get_tensor(k).dtype == torch.float32 for k in keys)
        # q/k are permuted to HF's layout, with n_kv_heads for k; everything else is copied as is.
        for i in range(args["n_layers"]):
            q = f.get_tensor(f"model.layers.{i}.self_attn.q_proj.weight")
            k = f.get_tensor(f"model.layers.{i}.self_attn.k_proj.weight")
            assert torch.equal(unpermute(q, args["n_heads"]), sd[f"layers.{i}.attention.wq"])
            assert torch.equal(unpermute(k, config["num_key_value_heads"]), sd[f"layers.{i}.attention.wk"])
            assert torch.equal(f.get_tensor(f"model.layers.{i}.mlp.down_proj.weight"), sd[f"layers.{i}.feed_forward.w2"])
    assert len(keys) == 2 + 9 * args["n_layers"] + (0 if tied else 1)

    tokens = tokens_for(args)
    want = llama2c_logits(sd, args, tokens)
    got = hf_logits(out, tokens)
    assert got.shape == (len(tokens), args["vocab_size"])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)

    with open_source("llama2c", ckpt) as source:
        result = _check(out, source)
        assert result.passed, result.failures
        assert len(result.tensors) == len(keys) and all(t.max_abs_err == 0.0 for t in result.tensors)
        if forward is not None:  # the project's numpy float32 oracle agrees as well
            cfg = source.config
            weights = {n: source.tensor(n).read_rows(0, source.tensor(n).rows).reshape(s) for n, s in cfg.shapes().items()}
            np.testing.assert_allclose(got, forward.logits(weights, cfg, tokens), rtol=1e-4, atol=1e-4)


def test_wrong_kv_permutation_would_be_caught(tmp_path):
    """The logits comparison is sensitive to the k permutation: permuting k_proj with n_heads
    instead of n_kv_heads (the classic GQA mistake) changes the logits far beyond tolerance."""
    ckpt = os.path.join(DATA, "tiny_b.pt")
    sd, args = load_llama2c(ckpt)
    out = str(tmp_path / "hf")
    export(tmp_path, "--checkpoint", ckpt, "hf")
    tensors = safetensors_torch.load_file(os.path.join(out, WEIGHTS_NAME))
    n_heads, n_kv = args["n_heads"], args["n_kv_heads"]
    for i in range(args["n_layers"]):
        key = f"model.layers.{i}.self_attn.k_proj.weight"
        canonical = unpermute(tensors[key], n_kv)
        hd = canonical.shape[0] // n_kv
        wrong_n = n_heads  # rows grouped as if there were n_heads heads of hd * n_kv / n_heads rows
        wrong_hd = canonical.shape[0] // wrong_n
        tensors[key] = canonical.reshape(wrong_n, wrong_hd // 2, 2, -1).transpose(1, 2).reshape(canonical.shape).contiguous()
        assert hd != wrong_hd
    bad = tmp_path / "bad"
    bad.mkdir()
    safetensors_torch.save_file(tensors, str(bad / WEIGHTS_NAME), metadata={"format": "pt"})
    (bad / CONFIG_NAME).write_text(open(os.path.join(out, CONFIG_NAME)).read())
    tokens = tokens_for(args)
    want = llama2c_logits(sd, args, tokens)
    assert np.abs(hf_logits(str(bad), tokens) - want).max() > 1e-2
    with open_source("llama2c", ckpt) as source:
        result = _check(str(bad), source)
    assert not result.passed and "k_proj" in result.failures[0]


# ---- HF-built model: round trip HF -> llama2.c -> HF gives back transformers' own logits ------


@pytest.mark.parametrize("tied", [False, True])
def test_hf_model_round_trip(tied, tmp_path):
    torch.manual_seed(11)
    cfg = transformers.LlamaConfig(
        hidden_size=32, intermediate_size=80, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2,
        vocab_size=64, max_position_embeddings=16, rms_norm_eps=1e-6, tie_word_embeddings=tied,
    )
    original = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in original.named_parameters():
            if "norm" in name:  # default init is all ones: make the norms matter
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
    hf_sd = original.state_dict()

    # To a llama2.c checkpoint with the un-permutation of docs/formats.md (n_heads for q, n_kv_heads for k).
    sd = {"tok_embeddings.weight": hf_sd["model.embed_tokens.weight"], "norm.weight": hf_sd["model.norm.weight"],
          "output.weight": hf_sd["lm_head.weight"]}
    for i in range(2):
        p = f"model.layers.{i}."
        sd |= {
            f"layers.{i}.attention_norm.weight": hf_sd[p + "input_layernorm.weight"],
            f"layers.{i}.attention.wq.weight": unpermute(hf_sd[p + "self_attn.q_proj.weight"], 4),
            f"layers.{i}.attention.wk.weight": unpermute(hf_sd[p + "self_attn.k_proj.weight"], 2),
            f"layers.{i}.attention.wv.weight": hf_sd[p + "self_attn.v_proj.weight"],
            f"layers.{i}.attention.wo.weight": hf_sd[p + "self_attn.o_proj.weight"],
            f"layers.{i}.ffn_norm.weight": hf_sd[p + "post_attention_layernorm.weight"],
            f"layers.{i}.feed_forward.w1.weight": hf_sd[p + "mlp.gate_proj.weight"],
            f"layers.{i}.feed_forward.w2.weight": hf_sd[p + "mlp.down_proj.weight"],
            f"layers.{i}.feed_forward.w3.weight": hf_sd[p + "mlp.up_proj.weight"],
        }
    sd = {k: v.clone().contiguous() for k, v in sd.items()}
    args = {"dim": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "vocab_size": 64, "multiple_of": 16,
            "max_seq_len": 16, "norm_eps": 1e-6, "dropout": 0.0}
    ckpt = str(tmp_path / "from_hf.pt")
    torch.save({"model": sd, "model_args": args}, ckpt)

    out = str(tmp_path / "hf")
    export(tmp_path, "--checkpoint", ckpt, "hf")
    config = json.load(open(os.path.join(out, CONFIG_NAME)))
    assert config["tie_word_embeddings"] is tied and config["rms_norm_eps"] == 1e-6
    exported = safetensors_torch.load_file(os.path.join(out, WEIGHTS_NAME))
    want_keys = set(hf_sd) - ({"lm_head.weight"} if tied else set())
    assert set(exported) == want_keys
    for key in want_keys:  # the round trip gives back HF's own tensors, bit for bit
        assert torch.equal(exported[key], hf_sd[key]), key

    tokens = tokens_for(args)
    np.testing.assert_allclose(hf_logits(out, tokens), hf_logits(original, tokens), rtol=1e-5, atol=1e-5)


def test_hf_source_round_trip(tmp_path):
    """tests/data/tiny_hf_untied read through llama2bin's HF source and written back: identical tensors."""
    out = str(tmp_path / "hf")
    with open_source("hf", os.path.join(DATA, "tiny_hf_untied")) as source:
        export_hf(source, out, quiet=True)
        assert _check(out, source).passed
    original = safetensors_torch.load_file(os.path.join(DATA, "tiny_hf_untied", WEIGHTS_NAME))
    exported = safetensors_torch.load_file(os.path.join(out, WEIGHTS_NAME))
    assert set(exported) == set(original)
    for key, value in original.items():
        assert torch.equal(exported[key], value.float()), key
    tokens = list(range(1, 17))
    np.testing.assert_allclose(hf_logits(out, tokens), hf_logits(os.path.join(DATA, "tiny_hf_untied"), tokens),
                               rtol=1e-5, atol=1e-5)


# ---- verification catches corruption ------------------------------------------------------


def test_verify_detects_a_flipped_bit(tmp_path):
    ckpt = os.path.join(DATA, "tiny_a.pt")
    out = str(tmp_path / "hf")
    export(tmp_path, "--checkpoint", ckpt, "hf")
    path = os.path.join(out, WEIGHTS_NAME)
    (n,) = np.frombuffer(open(path, "rb").read(8), "<u8")
    table = json.loads(open(path, "rb").read(8 + int(n))[8:])
    begin = table["model.layers.1.self_attn.k_proj.weight"]["data_offsets"][0]
    data = bytearray(open(path, "rb").read())
    data[8 + int(n) + begin + 4 * 37 + 1] ^= 0x01
    open(path, "wb").write(bytes(data))
    with open_source("llama2c", ckpt) as source:
        result = _check(out, source)
    assert result.failures == [f"tensor model.layers.1.self_attn.k_proj.weight: element "
                               f"{_canonical_index(37, 8, 32)} differs from the float32 source"]
    assert main(["verify", out, "--checkpoint", ckpt, "--quiet"]) == 1


def _canonical_index(hf_flat: int, hd: int, cols: int) -> int:
    """Where HF element `hf_flat` of a permuted matrix lives in the canonical layout."""
    row, col = divmod(hf_flat, cols)
    head, r = divmod(row, hd)
    c, j = divmod(r, hd // 2)
    return (head * hd + 2 * j + c) * cols + col


def test_verify_detects_bytes_outside_every_tensor(tmp_path):
    ckpt = os.path.join(DATA, "tiny_a.pt")
    out = str(tmp_path / "hf")
    export(tmp_path, "--checkpoint", ckpt, "hf")
    with open(os.path.join(out, WEIGHTS_NAME), "ab") as f:
        f.write(b"\0" * 12)
    with open_source("llama2c", ckpt) as source:
        result = _check(out, source)
    assert result.failures == [f"{WEIGHTS_NAME}: 12 bytes of its data section belong to no tensor"]


def test_verify_detects_config_mismatch(tmp_path):
    out = str(tmp_path / "hf")
    export(tmp_path, "--checkpoint", os.path.join(DATA, "tiny_a.pt"), "hf")
    with open_source("llama2c", os.path.join(DATA, "tiny_b.pt")) as other:
        result = _check(out, other)
    assert not result.passed and result.failures[0].startswith("config.json: hidden_size is 32")


# ---- CLI: bad input, atomic output ----------------------------------------------------------


def test_unknown_version_writes_nothing(tmp_path, capsys):
    out = tmp_path / "x.bin"
    assert main(["export", str(out), "--checkpoint", os.path.join(DATA, "tiny_a.pt"), "--version", "7"]) == 1
    err = capsys.readouterr().err
    assert err == "llama2bin: error: unknown version '7' (known: 0, 1, 1f, 2, hf, gguf-f32, gguf-f16, gguf-bf16, gguf-q8_0)\n"
    assert os.listdir(tmp_path) == []


def test_hf_to_an_existing_file_is_refused(tmp_path, capsys):
    target = tmp_path / "model.bin"
    target.write_bytes(b"keep me")
    other = tmp_path / "also.bin"
    argv = ["export", str(other), str(target), "--checkpoint", os.path.join(DATA, "tiny_a.pt"), "--version", "0", "hf"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err == f"llama2bin: error: {target}: exists and is not a directory (--version hf writes a directory)\n"
    assert target.read_bytes() == b"keep me"
    assert sorted(os.listdir(tmp_path)) == ["model.bin"]  # the v0 output was not started either


def test_hf_refuses_to_replace_a_foreign_directory(tmp_path, capsys):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("precious")
    assert main(["export", str(target), "--checkpoint", os.path.join(DATA, "tiny_a.pt"), "--version", "hf"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "notes.txt" in err and str(target) in err
    assert os.listdir(target) == ["notes.txt"] and sorted(os.listdir(tmp_path)) == ["mine"]


def test_reexport_replaces_a_previous_export(tmp_path):
    out = tmp_path / "hf"
    export(tmp_path, "--checkpoint", os.path.join(DATA, "tiny_a.pt"), "hf")
    export(tmp_path, "--checkpoint", os.path.join(DATA, "tiny_b.pt"), "hf")
    assert json.load(open(out / CONFIG_NAME))["hidden_size"] == 40
    assert sorted(os.listdir(tmp_path)) == ["hf"] and sorted(os.listdir(out)) == [CONFIG_NAME, WEIGHTS_NAME]


def test_failure_midway_leaves_nothing(tmp_path, monkeypatch):
    out = tmp_path / "hf"
    with open_source("llama2c", os.path.join(DATA, "tiny_a.pt")) as source:
        real = source.tensor

        def failing(name):
            if name == "layers.1.feed_forward.w2":
                raise Llama2binError("simulated read failure")
            return real(name)

        monkeypatch.setattr(source, "tensor", failing)
        with pytest.raises(Llama2binError, match="simulated"):
            export_hf(source, str(out), quiet=True)
    assert os.listdir(tmp_path) == []


def test_export_bins_and_hf_in_one_command(tmp_path):
    ckpt = os.path.join(DATA, "tiny_a.pt")
    v2, hf = tmp_path / "m.v2.bin", tmp_path / "m.hf"
    assert main(["export", str(v2), str(hf), "--checkpoint", ckpt, "--version", "2", "hf", "--quiet"]) == 0
    assert v2.read_bytes() == open(os.path.join(DATA, "tiny_a.v2.bin"), "rb").read()
    assert main(["verify", str(v2), str(hf), "--checkpoint", ckpt, "--quiet"]) == 0
