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
        return f"--eval-tokens {shlex.quote(input.eval_file)}"  # eval-tokens reads and records them
    size = f"--eval-seqs {f['eval_seqs']} --eval-len {f['eval_len']}"
    if "eval_text" in m:
        return f"--eval-text {shlex.quote(input.eval_file)} --tokenizer {shlex.quote(input.tokenizer)} {size}"
    return f"--eval {f['eval']} {size} --eval-seed {f['eval_seed']}"


def eval_inputs(wildcards):
    m = model_cfg(wildcards)
    inputs = checkpoint_input(wildcards)
    if "eval_tokens" in m or "eval_text" in m:
        inputs["eval_file"] = m.get("eval_tokens") or m["eval_text"]
    if "eval_text" in m:
        tokenizer = tokenizer_model(wildcards.model)
        if tokenizer is None:
            raise WorkflowError(f"model {wildcards.model}: eval_text needs the model's tokenizer (set tokenizer:)")
        inputs["tokenizer"] = tokenizer
    return inputs


def quality_limits(model):
    """The global `quality` section with the model's own `quality` overrides on top."""
    return {**config["quality"], **config["models"][model].get("quality", {})}


def verify_args(wildcards):
    """verify flags of the `functional:` and `quality:` config sections."""
    f = config["functional"]
    if not f["enabled"]:
        return "--no-functional"
    q = quality_limits(wildcards.model)
    return (
        f"--eval-tokens results/{wildcards.model}/eval_tokens.json --activations {f['activations']}"
        f" --fp32-rtol {f['fp32_rtol']!r} --kld-max {q['kld_mean_max']!r} --kld-p99-max {q['kld_p99_max']!r}"
        f" --same-top-min {q['same_top_min']!r} --ppl-ratio-max {q['ppl_ratio_max']!r}"
        + (" --quality-gate" if q["gate"] else "")
    )


def c_check_jsons(model):
    """The C check's results, one per .bin (a Hugging Face directory has no C reader)."""
    if not config["c_check"]["enabled"]:
        return []
    return [f"results/{model}/{model}.v{v}.ccheck.json" for v in BIN_VERSIONS]


def c_check_args():
    c = config["c_check"]
    return f"--arithmetic {c['arithmetic']}" + (f" --cc {shlex.quote(c['cc'])}" if "cc" in c else "")


def verify_inputs(wildcards):
    inputs = checkpoint_input(wildcards)
    if config["functional"]["enabled"]:
        inputs["eval_tokens"] = f"results/{wildcards.model}/eval_tokens.json"
    return inputs


rule eval_tokens:
    input:
        unpack(eval_inputs),
    output:
        "results/{model}/eval_tokens.json",
    params:
        source=source_args,
        recipe=eval_tokens_args,
    log:
        "logs/eval_tokens/{model}.log",
    benchmark:
        "benchmarks/eval_tokens/{model}.tsv"
    threads: 1
    resources:
        mem_mb=verify_mem_mb,
    shell:
        "{LLAMA2BIN} eval-tokens {output} {params.source} {params.recipe} > {log} 2>&1"


rule verify:
    input:
        unpack(verify_inputs),
        bins=lambda wc: export_paths(wc.model),
    output:
        expand("results/{{model}}/{{model}}.{label}.verify.json", label=LABELS),
    params:
        source=source_args,
        functional=verify_args,
    log:
        "logs/verify/{model}.log",
    benchmark:
        "benchmarks/verify/{model}.tsv"
    threads: 2
    resources:
        mem_mb=verify_mem_mb,
    shell:
        # Quality warnings and failure reasons are one line each: repeated on the terminal.
        "{LLAMA2BIN} verify {input.bins} {params.source} {params.functional} --threads {threads}"
        " --json {output} > {log} 2>&1 && s=0 || s=$?;"
        " grep -h -e 'llama2bin: warning:' -e 'llama2bin: error:' -e 'FAILED:' {log} >&2 || true; exit $s"


rule c_check:
    input:
        bins=lambda wc: [f"results/{wc.model}/{wc.model}.v{v}.bin" for v in BIN_VERSIONS],
    output:
        expand("results/{{model}}/{{model}}.v{version}.ccheck.json", version=BIN_VERSIONS),
    params:
        args=c_check_args(),
    log:
        "logs/c_check/{model}.log",
    benchmark:
        "benchmarks/c_check/{model}.tsv"
    threads: 1
    resources:
        mem_mb=400,
    shell:
        # Without a compiler the check records "skipped"; its notice is repeated on the terminal.
        "{LLAMA2BIN} c-check {input.bins} {params.args} --json {output} > {log} 2>&1"
        " && (grep -h 'notice:' {log} >&2 || true)"
