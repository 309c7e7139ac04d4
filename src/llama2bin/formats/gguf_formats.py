"""gguf-f32, gguf-f16, gguf-bf16, gguf-q8_0: llama.cpp's GGUF, one format per tensor type.

The bytes are llama.cpp's (docs/formats.md, "GGUF"; gguf_plan.py says which tensor gets which
type, gguf_header.py and gguf_write.py write them). Files are named MODEL.<type>.gguf in a
model's results/ folder. `quantized` stays False for gguf-q8_0: that flag means llama2.c's Q8_0
at a planned group size (group_size.py); GGUF's Q8_0 blocks are always 32 values.
"""

from __future__ import annotations

from .spec import GGUF_FILE, FormatSpec

_READ_BY = "llama.cpp and the programs built on it (ollama, LM Studio, llama3.java)"

# (type, description, what it loses)
_TYPES = (
    ("f32", "every tensor float32", "nothing of the weights (float32)"),
    ("f16", "matrices float16, norms float32",
     "float16 precision in the matrices (round to nearest even; |w| >= 65520 is refused)"),
    ("bf16", "matrices bfloat16, norms float32", "bfloat16 precision in the matrices (round to nearest even)"),
    ("q8_0", "matrices Q8_0 (blocks of 32, float16 scales), norms float32",
     "Q8_0 precision in the matrices (|w - q*d| <= ~0.56 d per block of 32)"),
)

SPECS = tuple(
    FormatSpec(
        name=f"gguf-{t}",
        description=f"GGUF {t.upper()} ({what}; llama.cpp)",
        family=GGUF_FILE,
        read_by=_READ_BY,
        loses=loses,
        file_label=t,
        file_name="{model}.{label}.gguf",
        report_title=f"GGUF {t.upper()}",
        stores_tokenizer=True,
    )
    for t, what, loses in _TYPES
)
