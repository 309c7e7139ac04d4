"""llama.cpp as the real client of a GGUF, as run.c/runq.c are for .bin: load, evaluate, logits.

Through the llama-cpp-python binding (an optional extra: it builds llama.cpp from source at
install time). Without it, `LlamaCppUnavailable` is raised and callers skip with a notice, as the
C check does without a compiler.

The low-level API, not the `Llama` class, so that every setting that changes the arithmetic is
ours to fix, and stated:
- CPU only, `use_extra_bufts = False`: no repacked/AMX weight buffers. On CPUs with AMX,
  llama.cpp 0.3.36's AMX Q8_0 matmul crashes on small models (a segfault in
  ggml_backend_amx_mul_mat, seen here for dims 64-256); the plain CPU path is also the one
  every machine has, so results do not depend on the CPU's extensions beyond SIMD width.
- `check_tensors = True`: llama.cpp validates every tensor's data while loading (NaN/Inf,
  bad Q8_0 scales) - a file it would refuse fails here.
- a float32 KV cache (type_k = type_v = F32; llama.cpp's default is F16, which would round K
  and V to float16 and add that to every comparison), flash attention off, one thread, all
  tokens in one batch: the arithmetic is then ggml's CPU matmuls alone - float32 dot products for
  F32 weights; activations rounded to the weight type (F16, BF16) or quantized to Q8_0 in
  blocks of 32 (ggml's vec_dot_type) for the others.
- log output silenced (a library's chatter is not our user's).
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import Llama2binError
from ..formats.output import Output
from ..sources.base import TensorEncoding
from .ccheck import CCheckResult

GGML_TYPE_F32 = 0
LLAMA_FLASH_ATTN_TYPE_DISABLED = 0
_lock = threading.Lock()
_state: dict[str, Any] = {}


class LlamaCppUnavailable(RuntimeError):
    """The llama-cpp-python binding is not installed."""


def _binding() -> Any:
    with _lock:
        if "lib" not in _state:
            try:
                import llama_cpp
            except ImportError:
                raise LlamaCppUnavailable(
                    "llama.cpp check skipped: the llama-cpp-python binding is not installed "
                    "(pip install llama-cpp-python==0.3.36; it builds llama.cpp, ~10-25 min)"
                ) from None

            @llama_cpp.llama_log_callback
            def _quiet(level: int, text: bytes, user_data: Any) -> None:  # pragma: no cover - C calls it
                return None

            llama_cpp.llama_log_set(_quiet, ctypes.c_void_p(0))
            llama_cpp.llama_backend_init()
            _state["lib"], _state["log"] = llama_cpp, _quiet  # keep the callback alive
        return _state["lib"]


def llama_cpp_version() -> str:
    return str(_binding().__version__)


class LlamaCppModel:
    """One GGUF loaded by llama.cpp (CPU, settings above). Use as a context manager."""

    def __init__(self, path: str, n_ctx: int):
        lib = _binding()
        self.lib, self.path = lib, path
        mparams = lib.llama_model_default_params()
        mparams.n_gpu_layers = 0
        mparams.use_extra_bufts = False
        mparams.check_tensors = True
        self.model = lib.llama_model_load_from_file(path.encode(), mparams)
        if not self.model:
            raise Llama2binError(f"{path}: llama.cpp cannot load it")
        cparams = lib.llama_context_default_params()
        cparams.n_ctx = cparams.n_batch = cparams.n_ubatch = max(n_ctx, 16)
        cparams.n_threads = cparams.n_threads_batch = 1
        cparams.type_k = cparams.type_v = GGML_TYPE_F32
        cparams.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED
        cparams.no_perf = True
        self.ctx = lib.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            lib.llama_model_free(self.model)
            raise Llama2binError(f"{path}: llama.cpp cannot create a context for it")
        self.n_vocab = lib.llama_vocab_n_tokens(lib.llama_model_get_vocab(self.model))

    def close(self) -> None:
        if self.ctx:
            self.lib.llama_free(self.ctx)
            self.ctx = None
        if self.model:
            self.lib.llama_model_free(self.model)
            self.model = None

    def __enter__(self) -> LlamaCppModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def reset(self) -> None:
        self.lib.llama_memory_clear(self.lib.llama_get_memory(self.ctx), True)

    def decode(self, tokens: Sequence[int], first_pos: int, want_logits: Sequence[bool]) -> list[np.ndarray]:
        """Evaluate `tokens` at positions first_pos..; the logits (float32, copied) of those asked for."""
        lib, n = self.lib, len(tokens)
        for t in tokens:
            if not 0 <= t < self.n_vocab:
                raise Llama2binError(f"{self.path}: token {t} is outside the vocabulary of {self.n_vocab}")
        batch = lib.llama_batch_init(n, 0, 1)
        try:
            for i, t in enumerate(tokens):
                batch.token[i] = t
                batch.pos[i] = first_pos + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = bool(want_logits[i])
            batch.n_tokens = n
            rc = lib.llama_decode(self.ctx, batch)
            if rc != 0:
                raise Llama2binError(f"{self.path}: llama.cpp's llama_decode failed ({rc})")
            out = []
            for i in range(n):
                if want_logits[i]:
                    ptr = lib.llama_get_logits_ith(self.ctx, i)
                    out.append(np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).astype(np.float32, copy=True))
            return out
        finally:
            lib.llama_batch_free(batch)

    def logits(self, tokens: Sequence[int]) -> np.ndarray:
        """(len(tokens), n_vocab) float32 logits of one sequence from position 0."""
        self.reset()
        return np.stack(self.decode(tokens, 0, [True] * len(tokens)))

    def greedy(self, prompt: Sequence[int], n_new: int) -> list[int]:
        """`n_new` tokens after `prompt`, each the argmax of the last logits (ties: lowest id)."""
        self.reset()
        last = self.decode(prompt, 0, [False] * (len(prompt) - 1) + [True])[-1]
        generated: list[int] = []
        for _ in range(n_new):
            token = int(np.argmax(last))
            generated.append(token)
            if len(generated) < n_new:
                last = self.decode([token], len(prompt) + len(generated) - 1, [True])[-1]
        return generated


def llamacpp_logits(path: str, sequences: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """llama.cpp's logits for each sequence (each evaluated from position 0)."""
    with LlamaCppModel(path, max(len(s) for s in sequences)) as m:
        return [m.logits(s) for s in sequences]


def llamacpp_greedy(path: str, prompt: Sequence[int], n_new: int) -> list[int]:
    with LlamaCppModel(path, len(prompt) + n_new) as m:
        return m.greedy(prompt, n_new)


# A lossy GGUF (F16, BF16, Q8_0) through llama.cpp differs from the Python forward on the same
# dequantized weights by llama.cpp's own activation rounding (to F16/BF16, or Q8_0 blocks of 32):
# measured 5e-4 (F16), 3e-3 (BF16) and 1.2e-2 (Q8_0) of max |logit| on tests/data/gguf/tiny_hf_gqa.
# That is reported; a difference 20x beyond the largest means llama.cpp computes another model
# (wrong tensor order, transposed or misread weights move logits by their whole size): a failure.
LOSSY_RTOL = 0.25


def llamacpp_check(output: Output, tokens: Sequence[int], fp32_rtol: float) -> CCheckResult:
    """llama.cpp's logits of `tokens` from the GGUF `output` against the Python forward on the same
    file's weights (float32 arithmetic). F32 files: within fp32_rtol * max(1, max |logit|), else a
    failure. Lossy files: the difference is reported, a failure only beyond LOSSY_RTOL. Without the
    binding: skipped, with the notice as `skipped`."""
    from ..formats.registry import json_version
    from .forward import classify, hidden_states
    from .weights import BinWeights

    result = CCheckResult(output.display_name, json_version(output.spec.name), "f32", list(tokens), None)
    try:
        result.compiler = f"llama.cpp (llama-cpp-python {llama_cpp_version()})"
    except LlamaCppUnavailable as e:
        result.skipped = str(e)
        return result
    got = llamacpp_logits(output.path, [tokens])[0]
    weights = BinWeights(output)
    hidden = hidden_states(weights, output.config, np.asarray([tokens], dtype=np.int64))
    want = classify(weights, output.config, hidden)
    lossy = any(t.encoding != TensorEncoding.F32 for t in output.tensors.values())
    result.max_abs_logit = float(np.abs(want).max())
    result.max_abs_diff = float(np.abs(got - want).max()) if np.isfinite(got).all() else float("inf")
    result.tolerance = (LOSSY_RTOL if lossy else fp32_rtol) * max(1.0, result.max_abs_logit)
    if not result.max_abs_diff <= result.tolerance:
        what = "lossy file (llama.cpp rounds activations)" if lossy else "float32 file"
        result.failures.append(f"llama.cpp: max |Δlogit| {result.max_abs_diff:.3g} against the Python forward on the same "
                               f"weights exceeds {result.tolerance:.3g} ({what})")
    return result
