"""Every number the .bin formats fix, in one place (see docs/formats.md)."""

from typing import Final

# The "ak42" header (v1, 1f, v2) and v0's: their fields are tabled in formats/layout.py.
MAGIC: Final = 0x616B3432
V0_HEADER_SIZE: Final = 28
QHEADER_SIZE: Final = 256

DEFAULT_GROUP_SIZE: Final = 64
Q8_MAX: Final = 127.0

# The C readers hard-code this rotary base; a model trained with another one cannot be expressed.
ROPE_THETA: Final = 10000.0

# Meta's params.json carries no context length, yet every .bin header needs max_seq_len (the C
# readers size their KV cache and rope tables by it). Without --max-seq-len we use 2048, what
# llama2.c's own export.py sets for Meta checkpoints (and transformers' LlamaConfig default).
# Llama 2 was trained with 4096: pass --max-seq-len 4096 for its full context (KV cache x2).
DEFAULT_MAX_SEQ_LEN: Final = 2048

# Sanity bounds for header fields read from untrusted files: large enough for any released
# LLaMA-family model (70B: dim 8192, hidden 28672, 80 layers, vocab 128256), small enough that
# no size computation on them can ask for an absurd allocation.
MAX_DIM: Final = 1 << 17
MAX_HIDDEN_DIM: Final = 1 << 19
MAX_LAYERS: Final = 1 << 10
MAX_HEADS: Final = 1 << 12
MAX_VOCAB: Final = 1 << 22
MAX_SEQ_LEN: Final = 1 << 22
