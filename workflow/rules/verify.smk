# Step 3: read every file back with the round-trip reader and compare it with the checkpoint,
# tensor by tensor and - functional verification - logit by logit on a seeded evaluation set;
# then let llama2bin's C consumer read every .bin as llama2.c does and reproduce the logits.
# A failed verification or C check fails the job, and so the run.


# lint: no conda/container on purpose (see LLAMA2BIN in common.smk)
rule verify:
    input:
        unpack(checkpoint_input),
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
        functional=functional_args(),
    shell:
        "{params.llama2bin:q} verify {input.bins:q} {params.source:q} {params.functional:q}"
        " --threads {threads} --json {output:q} > {log:q} 2>&1"
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
