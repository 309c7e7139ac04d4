# Step 3: read every output back and check it against the checkpoint.
# - Correctness (fails the job, and so the run): header, every tensor against the source,
#   float32 outputs giving the source's logits, and llama2bin's C consumer reading every .bin as
#   llama2.c does and reproducing the Python logits.
# - Quality of Q8_0 outputs (perplexity, ΔPPL, KL divergence, same top token) on the model's
#   evaluation tokens: a warning when beyond the `quality` limits, a failure only with
#   `quality: {gate: true}` (globally or per model).
# - The evaluation tokens are made inside the verify job (sampled from the source, or read from the
#   model's own id/text file) and written to results/NAME/eval_tokens.json: one process start and
#   one read of the checkpoint fewer per model than a job of their own.


# lint: no conda/container on purpose (see LLAMA2BIN in common.smk)
rule verify:
    input:
        unpack(verify_inputs),
        unpack(stored_tokenizer_input),
        bins=lambda wc: export_paths(wc.model),
    output:
        verify_outputs(),
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
        functional=lambda wc, input: functional_args(wc.model, input),
        stored_tokenizer=stored_tokenizer_args,
        jsons=lambda wc: verify_jsons(wc.model),
    shell:
        # Quality warnings and failure reasons are one line each: repeated on the terminal.
        "{params.llama2bin:q} verify {input.bins:q} {params.source:q} {params.functional:q} {params.stored_tokenizer:q}"
        " --threads {threads} --json {params.jsons:q} > {log:q} 2>&1"
        " && (grep -h '^llama2bin: warning:' {log:q} >&2 || true)"
        " || (s=$?; grep -h -E '^llama2bin: |: FAILED: ' {log:q} >&2; exit $s)"


# lint: no conda/container on purpose (see LLAMA2BIN in common.smk)
rule c_check:
    input:
        bins=lambda wc: c_check_paths(wc.model),
    output:
        expand(
            "results/{{model}}/{{model}}.{label}.ccheck.json",
            label=[spec.label for spec in C_CHECKED],
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
