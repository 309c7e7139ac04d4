"""llama2.c training checkpoints: `{"model": state_dict, "model_args": {...}, ...}` in a torch zip."""

from __future__ import annotations

from typing import Any

from ..errors import Llama2binError
from ..model import ModelConfig
from .base import FilePool, Source, TensorRef, check_tensors, split_classifier
from .policy import int_field, optional_int_field, positive_float_field
from .torchzip import TorchTensor, TorchZip

_COMPILED_PREFIX = "_orig_mod."  # torch.compile wraps the model; its state_dict keys carry this


class Llama2cSource(Source):
    kind = "llama2c"

    def __init__(self, path: str, max_seq_len: int | None = None):
        self.path = path
        self._pool = FilePool()
        try:
            self._open(path, max_seq_len)
        except BaseException:
            self._pool.close()
            raise

    def _open(self, path: str, max_seq_len: int | None) -> None:
        ckpt = TorchZip(path, self._pool)
        obj = ckpt.obj
        if not isinstance(obj, dict) or "model" not in obj or "model_args" not in obj:
            raise Llama2binError(f"{path}: not a llama2.c training checkpoint (needs 'model' and 'model_args')")
        args: dict[str, Any] = obj["model_args"]
        state: dict[str, Any] = obj["model"]
        if not isinstance(args, dict) or not isinstance(state, dict):
            raise Llama2binError(f"{path}: 'model' and 'model_args' must be dicts")

        refs: dict[str, TensorRef] = {}
        for key, value in state.items():
            if not isinstance(key, str):
                raise Llama2binError(f"{path}: state_dict key {key!r:.60} is not a string (not a model's state_dict)")
            name = key[len(_COMPILED_PREFIX):] if key.startswith(_COMPILED_PREFIX) else key
            if not isinstance(value, TorchTensor):
                raise Llama2binError(f"{path}: state_dict entry {key} is not a tensor")
            if not name.endswith(".weight"):
                # llama2.c models have no biases; anything else would be silently dropped.
                raise Llama2binError(f"{path}: unexpected tensor {key}: this format holds only weights")
            refs[name[: -len(".weight")]] = ckpt.tensor(value, key)

        for field in ("dim", "n_layers", "n_heads", "vocab_size", "max_seq_len"):
            if field not in args:
                raise Llama2binError(f"{path}: model_args has no {field}")
        for needed in ("tok_embeddings", "layers.0.feed_forward.w1"):
            if needed not in refs:
                raise Llama2binError(f"{path}: missing tensor {needed}.weight")
            if len(refs[needed].shape) != 2:
                raise Llama2binError(f"{path}: tensor {needed}.weight has shape {list(refs[needed].shape)}, expected a matrix")
        ints = {f: int_field(path, f"model_args.{f}", args[f]) for f in ("dim", "n_layers", "n_heads", "vocab_size")}
        n_kv_heads = optional_int_field(path, "model_args.n_kv_heads", args.get("n_kv_heads"))
        if max_seq_len is None:
            max_seq_len = int_field(path, "model_args.max_seq_len", args["max_seq_len"])
        # llama2.c's ModelArgs default; a NaN, zero or string eps is refused, not carried into the model.
        norm_eps = positive_float_field(path, "model_args.norm_eps", args.get("norm_eps", 1e-5))
        shared = split_classifier(refs)

        n_heads = ints["n_heads"]
        config = ModelConfig(
            dim=ints["dim"],
            hidden_dim=refs["layers.0.feed_forward.w1"].shape[0],  # multiple_of rounding: trust the tensors
            n_layers=ints["n_layers"],
            n_heads=n_heads,
            n_kv_heads=n_heads if n_kv_heads is None else n_kv_heads,  # 0 is refused, not replaced
            vocab_size=ints["vocab_size"],
            max_seq_len=max_seq_len,
            shared_classifier=shared,
            norm_eps=norm_eps,
        )
        config.validate(path)
        check_tensors(path, config, refs, display=lambda name: f"{name}.weight")
        self.config = config
        self._refs = refs


