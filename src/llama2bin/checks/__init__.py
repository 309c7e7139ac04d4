"""Checks of an exported output against its source (stage 3 of sources -> formats -> checks -> report -> cli).

- tensor.py: the round trip - header fields and every tensor against the source (correctness);
- numerics.py: products, exp/log and sums whose bits are the same on every machine (reproducible results);
- forward.py: the numpy reference forward pass (the oracle of the two checks below);
- eval_tokens.py: the evaluation tokens of a model (sampled from the source by default);
- metrics.py: llama.cpp's statistics (perplexity, ΔPPL, KL divergence, same top, RMS Δp);
- functional.py: the logits of the output against the source's; quality limits;
- ccheck.py: llama2bin's C consumer reads the .bin as llama2.c does and must agree with Python;
- verification.py: `verify_output`, one call that runs them all and returns a `Verification`.
"""
