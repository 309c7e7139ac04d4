"""Does the exported model behave the same? Logit-level verification, the C consumer, reports.

- the lazy, batched reference forward against transformers' LlamaForCausalLM and against itself;
- functional verification: exact for float32 outputs, within the thresholds for Q8_0, and a
  corrupted file that passes every size check fails it;
- llama2bin's C consumer (compiled with the system cc) reproduces the Python logits on v0/v1/v2
  of GQA and untied models, in float32 and in runq.c's Q8_0 arithmetic;
- the report figures are byte-identical from render to render (the HTML report: test_report_html.py).
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import weakref

import numpy as np
import pytest
from conftest import assert_refused
from helpers import DATA, run_cli, save_llama2c

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from llama_checkpoints import TOKENS, Spec, canonical_weights, hf_logits, hf_model  # noqa: E402

from llama2bin.checks import forward, weights  # noqa: E402
from llama2bin.checks.ccheck import TOLERANCE, c_check  # noqa: E402
from llama2bin.checks.eval_tokens import random_tokens, sampled_tokens  # noqa: E402
from llama2bin.checks.functional import QualityLimits, ReferenceModel, functional_check  # noqa: E402
from llama2bin.checks.metrics import compare_logits  # noqa: E402
from llama2bin.checks.tensor import HIST_EDGES  # noqa: E402
from llama2bin.checks.verification import verify_output  # noqa: E402
from llama2bin.demo import write_demo_checkpoint  # noqa: E402
from llama2bin.errors import Llama2binError  # noqa: E402
from llama2bin.formats.families import open_output  # noqa: E402
from llama2bin.formats.hf_export import export_hf  # noqa: E402
from llama2bin.formats.reader import BinFile  # noqa: E402
from llama2bin.formats.source_registry import open_source  # noqa: E402
from llama2bin.formats.writer import export  # noqa: E402
from llama2bin.model import LAYER_TENSORS  # noqa: E402
from llama2bin.report.plots import render_model_png  # noqa: E402

# float32 vs float32, same math in a different order (as in test_forward.py).
ATOL, RTOL = 1e-4, 1e-5
SPECS = {"gqa_untied": Spec(n_kv_heads=2, tied=False, seed=5), "mha_tied": Spec(tied=True, seed=6)}
DEMOS = ("gqa_backoff", "untied")


def _spec_checkpoint(spec: Spec, path: str) -> str:
    arrays = {k: v.numpy() for k, v in canonical_weights(spec).items()}
    args = {"dim": spec.dim, "n_layers": spec.n_layers, "n_heads": spec.n_heads, "n_kv_heads": spec.n_kv_heads,
            "vocab_size": spec.vocab, "multiple_of": 32, "max_seq_len": spec.max_pos, "dropout": 0.0}
    return save_llama2c(path, arrays, args, tie=spec.tied)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """name -> (checkpoint, {version: .bin}) for the Spec models (O(1) activations) and two demos."""
    root = tmp_path_factory.mktemp("models")
    out = {}
    for name in [*SPECS, *DEMOS]:
        ckpt = str(root / f"{name}.pt")
        if name in SPECS:
            _spec_checkpoint(SPECS[name], ckpt)
        else:
            write_demo_checkpoint(name, ckpt)
        bins = {v: str(root / f"{name}.v{v}.bin") for v in (0, 1, "1f", 2)}
        with open_source("llama2c", ckpt) as src:
            export(src, list(bins.items()), quiet=True)
        out[name] = (ckpt, bins)
    return out


def _swap_sections(src: str, dst: str, pairs: list[tuple[str, str]]) -> str:
    """Copy `src` with the bytes of same-sized tensors swapped (values and scales): every size
    and header check still passes, only the model is wrong."""
    with BinFile(src) as bf:
        spans = []
        for a, b in pairs:
            for sa, sb in zip(bf.layout.sections_of(a), bf.layout.sections_of(b), strict=True):
                assert sa.nbytes == sb.nbytes
                spans.append((sa, sb))
    data = bytearray(open(src, "rb").read())
    for sa, sb in spans:
        first, second = bytes(data[sa.offset : sa.offset + sa.nbytes]), bytes(data[sb.offset : sb.offset + sb.nbytes])
        data[sa.offset : sa.offset + sa.nbytes], data[sb.offset : sb.offset + sb.nbytes] = second, first
    with open(dst, "wb") as f:
        f.write(bytes(data))
    return dst


# ---- the reference forward ----------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SPECS))
def test_lazy_forward_of_source_and_fp32_export_matches_transformers(models, name):
    ckpt, bins = models[name]
    want = hf_logits(hf_model(SPECS[name]))
    with open_source("llama2c", ckpt) as src:
        from_source = forward.logits(weights.SourceWeights(src), src.config, TOKENS)
    np.testing.assert_allclose(from_source, want, atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(forward.bin_logits(bins[0], TOKENS), want, atol=ATOL, rtol=RTOL)
    # Q8_0 changes the numbers, but not beyond what quantization explains
    q8 = forward.bin_logits(bins[2], TOKENS)
    assert 0 < np.abs(q8 - want).max() < 0.1 * np.abs(want).max()


def test_sequences_are_batched_without_mixing(models):
    ckpt, bins = models["gqa_untied"]
    tokens = np.random.default_rng(1).integers(0, 64, size=(3, 12))
    with BinFile(bins[1]) as bf:
        batch = forward.logits(weights.BinWeights(bf), bf.config, tokens)
        for i in range(3):
            alone = forward.logits(weights.BinWeights(bf), bf.config, tokens[i])
            np.testing.assert_allclose(batch[i], alone, atol=1e-5, rtol=1e-6)
            # causal: a position does not see what follows it
            prefix = forward.logits(weights.BinWeights(bf), bf.config, tokens[i, :5])
            np.testing.assert_allclose(batch[i, :5], prefix, atol=1e-5, rtol=1e-6)


class _TrackingWeights(weights.LazyWeights):
    """Counts the bytes of weight arrays alive at once (handed out and not yet garbage)."""

    def __init__(self, inner: weights.LazyWeights):
        self.inner = inner
        self.config = inner.config
        self.live = self.peak = self.total = 0

    def _track(self, a: np.ndarray) -> np.ndarray:
        self.live += a.nbytes
        self.total += a.nbytes
        self.peak = max(self.peak, self.live)
        weakref.finalize(a, self._free, a.nbytes)
        return a

    def _free(self, nbytes: int) -> None:
        self.live -= nbytes

    def read_rows(self, name, start, stop):
        return self._track(self.inner.read_rows(name, start, stop))

    def __getitem__(self, name):
        return self._track(super().__getitem__(name))


def test_forward_never_holds_the_model(models, monkeypatch):
    """Weights are pulled one block at a time and dropped: with 2 KiB blocks the peak is a few
    blocks, while the pass reads every weight of the model."""
    monkeypatch.setattr(weights, "CHUNK_BYTES", 2048)  # the row blocks of lazy weights
    ckpt, _ = models["gqa_untied"]
    with open_source("llama2c", ckpt) as src:
        tracked = _TrackingWeights(weights.SourceWeights(src))
        got = forward.logits(tracked, src.config, TOKENS)
        model_bytes = 4 * sum(int(np.prod(s)) for s in src.config.shapes().values())
        np.testing.assert_allclose(got, forward.logits(weights.SourceWeights(src), src.config, TOKENS), rtol=1e-5, atol=1e-5)
    assert tracked.total >= model_bytes - 4 * 64 * 32  # everything but the embedding rows no token uses
    assert tracked.peak <= 3 * 2048 < model_bytes / 10


def test_q8_activations_round_like_c():
    """runq.c rounds x / scale half away from zero (C's round); numpy's rint would round to even."""
    x = np.array([[127.0, 2.5, -2.5, 0.5, -0.5, 1.5, 0.0, 3.0], [0.0] * 8], dtype=np.float32)
    q, s = forward.quantize_activations(x, 8)
    assert s.tolist() == [[1.0], [0.0]]
    assert q[0].tolist() == [127, 3, -3, 1, -1, 2, 0, 3] and not q[1].any()


def test_q8_arithmetic_needs_a_q8_file(models):
    _, bins = models["gqa_untied"]
    with pytest.raises(Llama2binError, match="Q8_0 file"):
        forward.bin_logits(bins[0], TOKENS, arithmetic="q8")


# ---- functional verification --------------------------------------------------------------


def test_statistics_match_an_independent_computation():
    rng = np.random.default_rng(0)
    ref = rng.normal(0, 3, size=(40, 50)).astype(np.float32)
    got = (ref + rng.normal(0, 0.3, size=ref.shape)).astype(np.float32)
    nxt = rng.integers(0, 50, size=40)
    nxt[::8] = -1  # the last position of each of 5 sequences has no next token
    stats = compare_logits(ref, got, nxt)
    r, g = torch.from_numpy(ref).double(), torch.from_numpy(got).double()
    kld = torch.nn.functional.kl_div(g.log_softmax(-1), r.log_softmax(-1), log_target=True, reduction="none").sum(-1)
    assert stats["kld_mean"] == pytest.approx(kld.mean().item(), rel=1e-9)
    assert stats["kld_max"] == pytest.approx(kld.max().item(), rel=1e-9)
    middle = kld.sort().values[19:21]
    assert middle[0].item() <= stats["kld_percentiles"]["p50"] <= middle[1].item()
    assert stats["same_top"] == (g.argmax(-1) == r.argmax(-1)).double().mean().item()
    has_next = torch.from_numpy(nxt >= 0)
    target = torch.from_numpy(nxt[nxt >= 0])
    ppl_ref = torch.nn.functional.cross_entropy(r[has_next], target).exp().item()
    ppl_got = torch.nn.functional.cross_entropy(g[has_next], target).exp().item()
    assert stats["predicted"] == 35
    assert stats["ppl_source"] == pytest.approx(ppl_ref, rel=1e-9) and stats["ppl_file"] == pytest.approx(ppl_got, rel=1e-9)
    assert stats["delta_ppl"] == pytest.approx(ppl_got - ppl_ref, rel=1e-6)
    assert stats["ppl_ratio"] == pytest.approx(ppl_got / ppl_ref, rel=1e-9)
    rows = torch.arange(35)
    dp = g[has_next].softmax(-1)[rows, target] - r[has_next].softmax(-1)[rows, target]
    assert stats["rms_dp"] == pytest.approx(dp.pow(2).mean().sqrt().item(), rel=1e-9)
    assert stats["max_abs_dlogit"] == pytest.approx(np.abs(got - ref).max(), rel=1e-6)
    assert sum(stats["kld_hist"]) == 40


def test_statistics_stream_in_blocks(monkeypatch):
    """Logits are compared in blocks of vocabulary entries; the result does not depend on the block size."""
    from llama2bin.checks import metrics

    rng = np.random.default_rng(1)
    ref = rng.normal(0, 2, size=(30, 64)).astype(np.float32)
    got = (ref + rng.normal(0, 0.1, size=ref.shape)).astype(np.float32)
    nxt = rng.integers(-1, 64, size=30)
    whole = compare_logits(ref, got, nxt)
    monkeypatch.setattr(metrics, "BLOCK_ELEMENTS", 7 * 30)
    assert metrics.block_columns(30) == 7  # 10 blocks of the 64 entries
    blocks = compare_logits(ref, got, nxt)
    for key in ("kld_mean", "kld_max", "same_top", "ppl_source", "ppl_file", "rms_dp", "max_abs_dlogit"):
        assert blocks[key] == pytest.approx(whole[key], rel=1e-12)


@pytest.mark.parametrize("name", [*SPECS, *DEMOS])
@pytest.mark.parametrize("arithmetic", ["f32", "q8"])
def test_every_version_passes_functional_verification(models, name, arithmetic):
    ckpt, bins = models[name]
    with open_source("llama2c", ckpt) as src:
        ref = ReferenceModel(src, sampled_tokens(src, 8, 16))
        results = {v: verify_output(p, src, reference=ref, arithmetic=arithmetic).functional for v, p in bins.items()}
    v0, v1, v2 = results[0], results[1], results[2]
    for r in (v0, results["1f"]):  # float32: the source's logits exactly
        assert r.passed and r.max_abs_dlogit == 0 and r.kld_max == 0 and r.same_top == 1.0 and not r.quantized
        assert r.delta_ppl == 0 and r.ppl_ratio == 1
    for r in (v1, v2):
        assert r.passed, r.failures
        assert r.quantized and r.arithmetic == arithmetic and r.positions == 8 * 16 and r.predicted == 8 * 15
        assert 0 < r.kld_mean < QualityLimits().kld_mean_max / 4 and r.same_top >= QualityLimits().same_top_min
        assert not QualityLimits().exceeded(r)
    assert v1.kld_mean == v2.kld_mean  # same quantization, two layouts


@pytest.mark.parametrize("name", [*SPECS, *DEMOS])
def test_an_unquantized_output_with_the_source_s_tensors_shares_its_forward(models, name, tmp_path):
    """verify_output lets a float32 output whose tensor check passed take the reference's forward
    (source_weights): the result must be, bit for bit, what its own forward gives."""
    ckpt, bins = models[name]
    with open_source("llama2c", ckpt) as src:
        export_hf(src, str(tmp_path / "hf"), quiet=True)
        ref = ReferenceModel(src, sampled_tokens(src, 4, 16))
        for path in (bins[0], bins["1f"], str(tmp_path / "hf")):
            with open_output(path) as output:
                own = functional_check(output, ref).to_json()
                shared = functional_check(output, ref, source_weights=True).to_json()
            assert json.dumps(shared) == json.dumps(own), path
            assert json.dumps(verify_output(path, src, reference=ref).functional.to_json()) == json.dumps(own)
        with open_output(bins[2]) as quantized, pytest.raises(Llama2binError, match="only an unquantized output"):
            functional_check(quantized, ref, source_weights=True)


@pytest.mark.parametrize("version", [0, 2])
def test_swapped_layers_pass_size_checks_but_fail_verification(models, tmp_path, version):
    ckpt, bins = models["gqa_untied"]
    bad = _swap_sections(bins[version], str(tmp_path / f"bad.v{version}.bin"),
                         [(f"layers.0.{k}", f"layers.1.{k}") for k in LAYER_TENSORS])
    inspected = run_cli("inspect", bad, "--json")
    assert inspected.returncode == 0 and json.loads(inspected.stdout)["size_matches"]
    out = str(tmp_path / "bad.json")
    proc = run_cli("verify", bad, "--checkpoint", ckpt, "--json", out, "--quiet")
    assert proc.returncode == 1
    result = json.load(open(out))
    assert not result["correct"] and not result["passed"]
    # a correctness failure: the round trip finds the wrong tensors, and says so on stderr
    assert result["tensor_failures"] and all(f in proc.stderr for f in result["failures"])
    assert any("layers.0." in f for f in result["tensor_failures"])
    f = result["functional"]
    if version == 0:  # float32: the logits must match exactly, a correctness failure too
        assert not f["passed"] and "exceeds float32 tolerance" in f["failures"][0]
    else:  # quantized: the damage is measured as quality, beyond every limit
        assert f["passed"] and f["kld_mean"] > QualityLimits().kld_mean_max
        assert result["quality"]["exceeded"]


@pytest.mark.parametrize("version", [0, 2])
def test_swapped_q_and_k_fail_verification(models, tmp_path, version):
    ckpt, bins = models["mha_tied"]  # MHA: wq and wk have the same shape
    bad = _swap_sections(bins[version], str(tmp_path / "qk.bin"), [("layers.1.attention.wq", "layers.1.attention.wk")])
    with open_source("llama2c", ckpt) as src:
        result = verify_output(bad, src, reference=ReferenceModel(src, sampled_tokens(src, 8, 16)))
    assert not result.correct and not result.passed
    assert any(f.startswith("tensor layers.1.attention.w") for f in result.failures)


def test_quality_limits_warn_by_default_and_fail_under_a_gate(models, tmp_path):
    ckpt, bins = models["untied"]
    out = str(tmp_path / "v.json")
    args = ("verify", bins[2], "--checkpoint", ckpt, "--kld-max", "1e-12", "--eval-seqs", "2", "--eval-len", "5",
            "--json", out, "--quiet")
    warned = run_cli(*args)
    assert warned.returncode == 0, warned.stderr
    warnings = [line for line in warned.stderr.splitlines() if line.startswith("llama2bin: warning:")]
    assert len(warnings) == 1 and "mean KLD" in warnings[0] and "1e-12" in warnings[0]
    result = json.load(open(out))
    f, q = result["functional"], result["quality"]
    assert f["positions"] == 10 and q["limits"]["kld_mean_max"] == 1e-12 and not q["gate"]
    assert result["correct"] and result["passed"] and q["exceeded"]
    gated = run_cli(*args, "--quality-gate")
    assert gated.returncode == 1
    assert_refused(gated, bins[2], "quality gate", "mean KLD")
    assert not json.load(open(out))["passed"] and json.load(open(out))["correct"]
    skipped = run_cli("verify", bins[2], "--checkpoint", ckpt, "--no-functional", "--json", out, "--quiet")
    assert skipped.returncode == 0 and json.load(open(out))["functional"] is None


def test_verify_json_round_trips_through_the_types(models, tmp_path):
    from llama2bin.checks.verification import Verification

    ckpt, bins = models["gqa_untied"]
    out = str(tmp_path / "v.json")
    assert run_cli("verify", bins[1], "--checkpoint", ckpt, "--json", out, "--quiet").returncode == 0
    d = json.load(open(out))
    typed = Verification.from_json(d)
    assert typed.to_json() == d
    assert typed.functional.ppl_source > 1 and typed.functional.delta_ppl is not None
    assert d["functional"]["eval"]["recipe"]["kind"] == "sampled" and len(d["functional"]["eval"]["sha256"]) == 64


def test_hf_directory_output_is_verified_functionally(models, tmp_path):
    ckpt, _ = models["gqa_untied"]
    with open_source("llama2c", ckpt) as src:
        export_hf(src, str(tmp_path / "hf"), quiet=True)
        result = verify_output(str(tmp_path / "hf"), src, reference=ReferenceModel(src, random_tokens(64, 64, 2, 8))).functional
    assert result.passed and result.max_abs_dlogit == 0 and not result.quantized


# ---- the C consumer -----------------------------------------------------------------------


C_CASES = [(name, v, arith) for name in ("gqa_untied", *DEMOS) for v in (0, 1, "1f", 2) for arith in ("f32", "q8")
           if v in (1, 2) or arith == "f32"]


@pytest.mark.parametrize("name,version,arithmetic", C_CASES)
def test_c_consumer_reproduces_the_python_logits(models, consumer, name, version, arithmetic):
    _, bins = models[name]
    result = c_check(bins[version], consumer, arithmetic=arithmetic)
    assert result.passed, result.failures
    assert result.version == version and result.arithmetic == arithmetic and len(result.tokens) == 16
    assert result.max_abs_diff <= TOLERANCE[arithmetic] * max(1.0, result.max_abs_logit)


@pytest.mark.parametrize("golden", ["tiny_hf_untied.v0.bin", "tiny_hf_untied.v2.bin", "tiny_b.v1.bin",
                                    "tiny_a.master_v1.bin", "tiny_b.master_v1.bin", "tiny_hf_untied.master_v1.bin"])
def test_c_consumer_reads_the_golden_files(consumer, golden):
    """Untied classifier from Hugging Face (negative vocab_size in v0), tiny_b (GQA, group size 8,
    all-zero embedding rows 3 and 17, which quantize to scale 0), and llama2.c master's float32 v1
    (1f: group_size 0, norms first, untied classifier last)."""
    result = c_check(os.path.join(DATA, golden), consumer, tokens=[1, 3, 17, 5, 9, 2, 11])
    assert result.passed, result.failures
    if "master_v1" in golden:
        assert result.version == "1f" and result.arithmetic == "f32"


def test_c_consumer_refuses_q8_arithmetic_on_1f(consumer):
    path = os.path.join(DATA, "tiny_b.master_v1.bin")
    with pytest.raises(Llama2binError, match="needs a Q8_0 file .* this is v1f"):
        c_check(path, consumer, arithmetic="q8")
    # the C side refuses it on its own too, naming the file
    with pytest.raises(Llama2binError, match="float32"):
        consumer.logits(path, [1, 2], "q8")


def test_c_check_compares_for_real(models, consumer):
    """The C consumer in runq.c's arithmetic differs from the Python float32 forward by far more
    than the float32 tolerance: agreement above is not vacuous."""
    _, bins = models["untied"]
    with BinFile(bins[2]) as bf:
        tokens = random_tokens(bf.config.vocab_size, bf.config.max_seq_len, 1, 16).sequences[0]
    c_q8 = consumer.logits(bins[2], tokens, "q8")
    py_f32 = forward.bin_logits(bins[2], tokens)
    assert np.abs(c_q8 - py_f32).max() > 10 * TOLERANCE["f32"] * max(1.0, np.abs(py_f32).max())


def test_c_consumer_refuses_what_it_cannot_read(models, consumer, tmp_path):
    _, bins = models["untied"]
    truncated = str(tmp_path / "t.bin")
    with open(bins[2], "rb") as f, open(truncated, "wb") as g:
        g.write(f.read()[:-4])
    with pytest.raises(Llama2binError, match="header implies"):
        consumer.logits(truncated, [1, 2], "q8")
    with pytest.raises(Llama2binError, match="needs a Q8_0 file"):
        consumer.logits(bins[0], [1, 2], "q8")


def test_c_check_cli(models, consumer, tmp_path):
    _, bins = models["gqa_backoff"]
    out = [str(tmp_path / f"{v}.json") for v in (0, 2)]
    proc = run_cli("c-check", bins[0], bins[2], "--json", *out)
    assert proc.returncode == 0, proc.stderr
    assert "C consumer agrees (v0, f32" in proc.stdout and "C consumer agrees (v2, q8" in proc.stdout
    assert [json.load(open(p))["passed"] for p in out] == [True, True]
    assert_refused(run_cli("c-check", bins[0], "--arithmetic", "q8"), "q8 arithmetic needs a Q8_0 file")
    assert_refused(run_cli("c-check", bins[0], "--cc", "no-such-compiler-xyz"), "no-such-compiler-xyz", "not found")


def test_without_a_compiler_the_check_is_skipped_visibly(models, tmp_path):
    _, bins = models["untied"]
    env = {**os.environ, "PATH": str(tmp_path), "CC": ""}  # no cc on PATH
    out = str(tmp_path / "c.json")
    proc = subprocess.run([sys.executable, "-m", "llama2bin", "c-check", bins[2], "--json", out],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0 and "notice: no C compiler found" in proc.stderr and "SKIPPED" in proc.stderr
    result = json.load(open(out))
    assert result["skipped"] and result["passed"] is None
    required = subprocess.run([sys.executable, "-m", "llama2bin", "c-check", bins[2], "--require-cc"],
                              capture_output=True, text=True, env=env)
    assert_refused(required, "no C compiler found")


# ---- reports ------------------------------------------------------------------------------


def _verify_jsons(models, name, tmp_path) -> list[str]:
    ckpt, bins = models[name]
    versions = (0, 1, 2, "1f")
    jsons = [str(tmp_path / f"{name}.v{v}.verify.json") for v in versions]
    proc = run_cli("verify", *(bins[v] for v in versions), "--checkpoint", ckpt, "--json", *jsons, "--quiet")
    assert proc.returncode == 0, proc.stderr
    return jsons


def test_figures_are_byte_identical_render_to_render(models, tmp_path):
    import matplotlib

    from llama2bin.report.records import build_report, load_verification

    result = load_verification(_verify_jsons(models, "untied", tmp_path)[2])
    functional = build_report("untied", result)["functional"]
    assert functional is not None
    args = ("untied", [{"title": "v2", "tensors": result.tensor.tensors, "functional": functional}], 2, HIST_EDGES)
    first = render_model_png(*args)
    with matplotlib.rc_context({"font.size": 20, "lines.linewidth": 5}):  # a caller's style must not leak in
        second = render_model_png(*args)
    assert first == second and first.startswith(b"\x89PNG")
    assert b"Software" not in first and b"Matplotlib" not in first


def _deep_model_rows(n_layers: int, spread: float, groups: int) -> list[dict]:
    """Figure rows at real proportions: Llama 3.2 1B's 16 layers or deeper, a log or a linear error
    axis (`spread`: largest / smallest relative error), billions of Q8_0 groups in one bin."""
    from llama2bin.checks.tensor import TensorStats
    from llama2bin.model import LAYER_MATRICES

    rng = np.random.default_rng(n_layers)
    hist = [0] * (len(HIST_EDGES) - 1)
    hist[5], hist[6], hist[9] = groups, groups // 3, 7
    tensors = [TensorStats(f"layers.{i}.{kind}", [1, 1], "q8_0", 32, rel_err=float(3e-3 * spread ** rng.random()),
                           group_err_hist=hist) for i in range(n_layers) for kind in LAYER_MATRICES]
    tensors += [TensorStats("tok_embeddings", [1, 1], "q8_0", 32, rel_err=3e-3, group_err_hist=hist),
                TensorStats("output", [1, 1], "q8_0", 32, rel_err=6e-3, group_err_hist=hist)]
    return [{"title": f"v{v}: a title as long as a real one (Q8_0, group size 32, 8.50 bits/weight)",
             "tensors": tensors, "functional": None} for v in (1, 2)]


@pytest.mark.parametrize(("n_layers", "spread", "groups"), [(6, 1.02, 250_000), (16, 1.3, 9_000_000),
                                                            (22, 30.0, 640_000_000), (80, 1000.0, 123_456)])
def test_model_figure_panels_and_labels_do_not_overlap(n_layers, spread, groups, monkeypatch):
    """The figure's fixed geometry (no layout engine measures the labels): at real shapes every
    panel with its tick labels, axis labels and title stays inside the figure and clear of its
    neighbours, no tick label touches the next, and no "1e-3" offset sits under a panel title."""
    from llama2bin.report import plots

    boxes: list[list] = []
    real_png = plots._png

    def measuring(fig):
        renderer = fig.canvas.get_renderer()
        for ax in fig.axes:
            ticks = [t.get_window_extent(renderer) for t in ax.get_xticklabels() if t.get_text()]
            assert all(a.x1 < b.x0 for a, b in itertools.pairwise(ticks)), [t.get_text() for t in ax.get_xticklabels()]
            assert not ax.yaxis.get_offset_text().get_text() and not ax.xaxis.get_offset_text().get_text()
        boxes.append([ax.get_tightbbox(renderer) for ax in fig.axes])
        return real_png(fig)

    monkeypatch.setattr(plots, "_png", measuring)
    png = plots.render_model_png("Llama-shaped", _deep_model_rows(n_layers, spread, groups), n_layers, HIST_EDGES)
    width, height = (int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big"))
    (panels,) = boxes
    assert len(panels) == 6
    for box in panels:
        assert box.x0 >= 0 and box.y0 >= 0 and box.x1 <= width and box.y1 <= height, box
    for a, b in itertools.pairwise(panels):
        assert not a.overlaps(b), (a, b)


def test_reports_embed_the_figure_and_the_functional_table(models, tmp_path):
    jsons = _verify_jsons(models, "gqa_backoff", tmp_path)
    out = tmp_path / "reports"
    proc = run_cli("report", *jsons, "--model", "m", "--out-dir", str(out))
    assert proc.returncode == 0, proc.stderr
    md = (out / "gqa_backoff.v2.md").read_text()
    assert "![" in md and "(m.png)" in md and (out / "m.png").exists()  # one figure per model
    assert "functional verification: logits" in md and "same top token" in md
    report = json.load(open(out / "gqa_backoff.v2.json"))
    assert report["functional"]["passed"] and report["plot"] == "m.png"
    assert json.load(open(out / "gqa_backoff.v0.json"))["plot"] is None  # float32: exact, nothing plotted
    summary = run_cli("summary", *(str(out / f"gqa_backoff.v{v}.json") for v in (0, 1, 2)),
                      "--md", str(tmp_path / "s.md"), "--json", str(tmp_path / "s.json"))
    assert summary.returncode == 0
    text = (tmp_path / "s.md").read_text()
    assert "## Logits against the source" in text and text.count("| m | ") == 4  # 3 outputs, 1 distinct quantization
    # llama2.c master's float32 v1: a report of its own, exact like v0
    assert (out / "gqa_backoff.v1f.md").read_text().startswith("# m — version 1f")
    assert json.load(open(out / "gqa_backoff.v1f.json"))["version"] == "1f"
