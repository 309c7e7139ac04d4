"""llama2.c training checkpoints: `{"model": state_dict, "model_args": {...}, ...}` in a torch zip."""

from __future__ import annotations

from typing import Any

from ..errors import Llama2binError
from ..model import ModelConfig
from .base import FilePool, Source, TensorRef, check_tensors, split_classifier
from .torchzip import TorchTensor, TorchZip

_COMPILED_PREFIX = "_orig_mod."  # torch.compile wraps the model; its state_dict keys carry this


class Llama2cSource(Source):
    kind = "llama2c"

    def __init__(self, path: str, max_seq_len: int | None = None):
        self.path = path
        self._pool = FilePool()
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
        shared = split_classifier(refs)

        n_heads = args["n_heads"]
        config = ModelConfig(
            dim=args["dim"],
            hidden_dim=refs["layers.0.feed_forward.w1"].shape[0],  # multiple_of rounding: trust the tensors
            n_layers=args["n_layers"],
            n_heads=n_heads,
            n_kv_heads=args.get("n_kv_heads") or n_heads,
            vocab_size=args["vocab_size"],
            max_seq_len=max_seq_len if max_seq_len is not None else args["max_seq_len"],
            shared_classifier=shared,
            norm_eps=float(args.get("norm_eps", 1e-5)),
        )
        config.validate(path)
        check_tensors(path, config, refs, display=lambda name: f"{name}.weight")
        self.config = config
        self._refs = refs


