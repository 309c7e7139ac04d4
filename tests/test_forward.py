"""The numpy reference forward pass against transformers' LlamaForCausalLM.

Weights are drawn in the canonical (interleaved-rotary) layout and handed to transformers after
the Meta -> HF permutation of its own conversion script, so the two forwards share no code and
not even the direction of the rotary conversion.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from llama_checkpoints import TOKENS, Spec, canonical_weights, hf_logits, hf_model, model_from_canonical  # noqa: E402

from llama2bin.checks import forward  # noqa: E402
from llama2bin.checks import weights as lazy_weights  # noqa: E402
from llama2bin.errors import Llama2binError  # noqa: E402
from llama2bin.formats.reader import BinFile  # noqa: E402
from llama2bin.model import ModelConfig  # noqa: E402

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
# float64 (ours) vs transformers' float32: differences are a few float32 ulps of O(10) logits.
ATOL, RTOL = 1e-4, 1e-5


def config_of(spec: Spec) -> ModelConfig:
    return ModelConfig(dim=spec.dim, hidden_dim=spec.hidden, n_layers=spec.n_layers, n_heads=spec.n_heads,
                       n_kv_heads=spec.n_kv_heads, vocab_size=spec.vocab, max_seq_len=spec.max_pos,
                       shared_classifier=spec.tied, norm_eps=spec.norm_eps, rope_theta=spec.rope_theta)


def canonical_arrays(spec: Spec) -> dict[str, np.ndarray]:
    w = {k.removesuffix(".weight"): v.numpy() for k, v in canonical_weights(spec).items()}
    if spec.tied:
        del w["output"]  # the forward must use the embeddings as the classifier
    return w


SPECS = {
    "mha_untied": Spec(),
    "gqa_tied": Spec(n_kv_heads=2, tied=True, seed=1),
    "mqa_untied": Spec(n_kv_heads=1, seed=2),
    "wide_heads_eps": Spec(dim=48, n_heads=3, n_kv_heads=3, hidden=64, norm_eps=1e-6, seed=3),
    "rope_theta": Spec(n_kv_heads=2, rope_theta=500000.0, seed=4),
}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_forward_matches_transformers(name):
    spec = SPECS[name]
    got = forward.logits(canonical_arrays(spec), config_of(spec), TOKENS)
    want = hf_logits(hf_model(spec))
    assert got.shape == (len(TOKENS), spec.vocab) and got.dtype == np.float64
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=RTOL)


def _float64_transformers_logits(spec: Spec) -> np.ndarray:
    """transformers' forward in float64 throughout: the model in float64, and the two places
    LlamaForCausalLM computes in float32 whatever the model's dtype (the rotary angles and
    RMSNorm) replaced by their float64 equivalents."""
    import torch
    import transformers.models.llama.modeling_llama as modeling

    model = hf_model(spec).double()
    # the model's own frequencies: transformers computes them in float32 (as run.c does) and
    # .double() keeps those values; the reference takes the same ones (ModelConfig.inv_freq)
    inv_freq = model.model.rotary_emb.inv_freq.double()

    def rotary(x, position_ids):
        angles = position_ids[..., None].double() * inv_freq
        both = torch.cat((angles, angles), dim=-1)
        return both.cos().to(x.dtype), both.sin().to(x.dtype)

    def rms_norm(self, h):
        return self.weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))

    model.model.rotary_emb.forward = rotary
    saved = modeling.LlamaRMSNorm.forward
    modeling.LlamaRMSNorm.forward = rms_norm
    try:
        with torch.no_grad():
            return model(torch.tensor([list(TOKENS)])).logits[0].numpy()
    finally:
        modeling.LlamaRMSNorm.forward = saved


@pytest.mark.parametrize("name", sorted(SPECS))
def test_forward_is_as_precise_as_float64(name):
    """The reference's products are exact sums of operands kept to >= 40 bits (numerics.matmul):
    it agrees with transformers computing in float64 to 1e-12 of the largest logit (measured
    4e-14), where a float32 forward is 1e-7 off."""
    spec = SPECS[name]
    want = _float64_transformers_logits(spec)
    got = forward.logits(canonical_arrays(spec), config_of(spec), TOKENS)
    assert np.abs(got - want).max() <= 1e-12 * max(1.0, np.abs(want).max())


def test_tolerance_catches_a_wrong_rotary_layout():
    """Feeding transformers the canonical q/k without its permutation (the mistake a converter can
    make) moves the logits by orders of magnitude more than the tolerance above."""
    spec = Spec(n_kv_heads=2)
    w = canonical_weights(spec)
    model = hf_model(spec)
    with torch.no_grad():
        for i in range(spec.n_layers):
            attn = model.model.layers[i].self_attn
            attn.q_proj.weight.copy_(w[f"layers.{i}.attention.wq.weight"])
            attn.k_proj.weight.copy_(w[f"layers.{i}.attention.wk.weight"])
    wrong = hf_logits(model)
    got = forward.logits(canonical_arrays(spec), config_of(spec), TOKENS)
    assert np.abs(wrong - got).max() > 100 * ATOL


def test_rope_theta_is_used():
    spec = SPECS["rope_theta"]
    at_default = forward.logits(canonical_arrays(spec), dataclasses.replace(config_of(spec), rope_theta=10000.0), TOKENS)
    assert np.abs(at_default - hf_logits(hf_model(spec))).max() > 100 * ATOL


def test_weights_from_golden_bin_are_the_checkpoint_and_run_like_transformers():
    """tiny_b (GQA, dim 40) as the seed wrote it: the reader yields exactly the checkpoint's
    tensors, and forwarding them matches transformers on the same weights."""
    ckpt = torch.load(os.path.join(DATA, "tiny_b.pt"), map_location="cpu", weights_only=True)
    state = {k.removeprefix("_orig_mod.").removesuffix(".weight"): v.numpy() for k, v in ckpt["model"].items()}
    with BinFile(os.path.join(DATA, "tiny_b.v0.bin")) as bf:
        weights = lazy_weights.weights_from_bin(bf)
        cfg = bf.config
    assert cfg.shared_classifier and weights["output"] is weights["tok_embeddings"]
    for name, array in state.items():
        assert np.array_equal(weights[name], array), name
    args = ckpt["model_args"]
    spec = Spec(dim=args["dim"], n_layers=args["n_layers"], n_heads=args["n_heads"], n_kv_heads=args["n_kv_heads"],
                vocab=args["vocab_size"], hidden=cfg.hidden_dim, max_pos=args["max_seq_len"], tied=True)
    tokens = TOKENS[: cfg.max_seq_len]
    want = hf_logits(model_from_canonical(spec, weights), tokens)
    np.testing.assert_allclose(forward.logits(weights, cfg, tokens), want, atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(forward.bin_logits(os.path.join(DATA, "tiny_b.v0.bin"), tokens), want, atol=ATOL, rtol=RTOL)


def test_weights_from_quantized_bin_are_the_dequantized_values():
    with BinFile(os.path.join(DATA, "tiny_b.v2.bin")) as bf:
        weights = lazy_weights.weights_from_bin(bf)
        t = bf.tensors["layers.1.feed_forward.w2"]
        q, scales = t.read_q8(0, t.rows)
        expected = (q.astype(np.float32).reshape(-1, bf.group_size) * scales[:, None]).reshape(t.shape)
    assert np.array_equal(weights["layers.1.feed_forward.w2"], expected)


def test_bad_tokens_are_refused():
    spec = Spec()
    w, cfg = canonical_arrays(spec), config_of(spec)
    with pytest.raises(Llama2binError, match="outside the vocabulary"):
        forward.logits(w, cfg, [1, spec.vocab])
    with pytest.raises(Llama2binError, match="exceed max_seq_len"):
        forward.logits(w, cfg, [1] * (spec.max_pos + 1))
    with pytest.raises(Llama2binError, match="non-empty"):
        forward.logits(w, cfg, [])
