# Step 3: read every output back and check it against the checkpoint.
# - Correctness (fails the job, and so the run): header, every tensor against the source,
#   float32 outputs giving the source's logits, and llama2bin's C consumer reading every .bin as
#   llama2.c does and reproducing the Python logits.
# - Quality of Q8_0 outputs (perplexity, ΔPPL, KL divergence, same top token) on the model's
#   evaluation tokens, made once per model by eval_tokens: a warning when beyond the `quality`
#   limits, a failure only with `quality: {gate: true}` (globally or per model).


def eval_tokens_args(wildcards, input):
    """eval-tokens flags: the model's own token ids or text, else the global recipe."""
    f, m = config["functional"], model_cfg(wildcards)
    if "eval_tokens" in m:
        return ["--eval-tokens", input.eval_file]  # checked against the model and recorded
    size = ["--eval-seqs", str(f["eval_seqs"]), "--eval-len", str(f["eval_len"])]
    if "eval_text" in m:
        return ["--eval-text", input.eval_file, "--tokenizer", input.tokenizer, *size]
    return ["--eval", f["eval"], *size, "--eval-seed", str(f["eval_seed"])]


def eval_inputs(wildcards):
    m = model_cfg(wildcards)
    inputs = checkpoint_input(wildcards)
    if "eval_tokens" in m or "eval_text" in m:
        inputs["eval_file"] = m.get("eval_tokens") or m["eval_text"]
    if "eval_text" in m:
        tokenizer = tokenizer_model(wildcards.model)
        if tokenizer is None:
            raise WorkflowError(
                f"model {wildcards.model}: eval_text needs the model's tokenizer (set tokenizer:)"
            )
        inputs["tokenizer"] = tokenizer
    return inputs


def verify_inputs(wildcards):
    inputs = checkpoint_input(wildcards)
    if config["functional"]["enabled"]:
        inputs["eval_tokens"] = f"results/{wildcards.model}/eval_tokens.json"
    return inputs


# lint: no conda/container on purpose (see LLAMA2BIN in common.smk)
rule eval_tokens:
    input:
        unpack(eval_inputs),
    output:
        "results/{model}/eval_tokens.json",
    log:
        "logs/eval_tokens/{model}.log",
    benchmark:
        "benchmarks/eval_tokens/{model}.tsv"
    threads: 1
    resources:
        mem_mb=verify_mem_mb,
    params:
        llama2bin=LLAMA2BIN,
        source=source_args,
        recipe=eval_tokens_args,
    shell:
        "{params.llama2bin:q} eval-tokens {output:q} {params.source:q} {params.recipe:q} > {log:q} 2>&1"
        " || (s=$?; grep -h -E '^llama2bin: ' {log:q} >&2; exit $s)"


# lint: no conda/container on purpose (see LLAMA2BIN in common.smk)
rule verify:
    input:
        unpack(verify_inputs),
        bins=lambda wc: export_paths(wc.model),
    output:
        expand("results/{{model}}/{{model}}.{label}.verify.json", label=LABELS),
    log:
        "logs/verify/{model}.log",
    benchmark:
        "benchmarks/verify/{model}.tsv"
    threads: 2
    resources:
        mem_mb=verify_mem_mb,
    params:
        llama2bin=LLAMA2BIN,
        source=source_args,
        functional=lambda wc: functional_args(wc.model),
    shell:
        # Quality warnings and failure reasons are one line each: repeated on the terminal.
        "{params.llama2bin:q} verify {input.bins:q} {params.source:q} {params.functional:q}"
        " --threads {threads} --json {output:q} > {log:q} 2>&1"
        " && (grep -h '^llama2bin: warning:' {log:q} >&2 || true)"
        " || (s=$?; grep -h -E '^llama2bin: |: FAILED: ' {log:q} >&2; exit $s)"


# lint: no conda/container on purpose (see LLAMA2BIN in common.smk)
rule c_check:
    input:
        bins=lambda wc: [
            f"results/{wc.model}/{wc.model}.v{v}.bin" for v in BIN_VERSIONS
        ],
    output:
        expand(
            "results/{{model}}/{{model}}.v{version}.ccheck.json", version=BIN_VERSIONS
        ),
    log:
        "logs/c_check/{model}.log",
    benchmark:
        "benchmarks/c_check/{model}.tsv"
    threads: 1
    resources:
        mem_mb=400,
    params:
        llama2bin=LLAMA2BIN,
        args=c_check_args(),
    shell:
        # Without a compiler the check records "skipped"; its notice is repeated on the terminal.
        "{params.llama2bin:q} c-check {input.bins:q} {params.args:q} --json {output:q} > {log:q} 2>&1"
        " && (grep -h 'notice:' {log:q} >&2 || true)"
        " || (s=$?; grep -h -E '^llama2bin: |: FAILED: ' {log:q} >&2; exit $s)"
