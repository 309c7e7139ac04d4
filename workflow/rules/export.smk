# Step 2: write every requested .bin version of a model in one job: one pass over the
# checkpoint feeds all versions, and the per-job start-up cost is paid once per model.


# lint: no conda/container on purpose (see LLAMA2BIN in common.smk)
rule export:
    input:
        unpack(checkpoint_input),
    output:
        export_outputs(),
    log:
        "logs/export/{model}.log",
    benchmark:
        "benchmarks/export/{model}.tsv"
    threads: 2
    resources:
        mem_mb=export_mem_mb,
    params:
        llama2bin=LLAMA2BIN,
        source=source_args,
        versions=export_versions(),
        # only when configured: the default group size backs off for runq.c (v2), an explicit one never does
        group_size=(
            ["--group-size", str(config["group_size"])]
            if "group_size" in config
            else []
        ),
    shell:
        "{params.llama2bin:q} export {output:q} {params.source:q} {params.versions:q}"
        " {params.group_size:q} --threads {threads} > {log:q} 2>&1"
        " || (s=$?; grep -h -E '^llama2bin: |: FAILED: ' {log:q} >&2; exit $s)"


# lint: no conda/container on purpose (see LLAMA2BIN in common.smk)
rule tokenizer:
    input:
        unpack(checkpoint_input),
        unpack(tokenizer_input),
    output:
        "results/{model}/tokenizer.bin",
    log:
        "logs/tokenizer/{model}.log",
    benchmark:
        "benchmarks/tokenizer/{model}.tsv"
    threads: 1
    resources:
        mem_mb=300,
    params:
        llama2bin=LLAMA2BIN,
        source=source_args,
        tokenizer=lambda wc: tokenizer_model(wc.model),
        targets=target_args(),
    shell:
        # The source flags make the command refuse a tokenizer whose size is not the model's vocab.
        "{params.llama2bin:q} tokenizer {params.tokenizer:q} {output:q} {params.source:q} {params.targets:q} > {log:q} 2>&1"
        " || (s=$?; grep -h -E '^llama2bin: |: FAILED: ' {log:q} >&2; exit $s)"
