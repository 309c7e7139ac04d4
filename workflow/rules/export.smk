# Step 2: write every requested .bin version of a model in one job: one pass over the
# checkpoint feeds all versions, and the per-job start-up cost is paid once per model.


rule export:
    input:
        unpack(checkpoint_input),
    output:
        expand("results/{{model}}/{{model}}.v{version}.bin", version=BIN_VERSIONS)
        + ([directory("results/{model}/hf")] if WRITE_HF else []),
    params:
        source=source_args,
        versions=export_versions(),
        # only when configured: the default group size backs off for runq.c (v2), an explicit one never does
        group_size=f" --group-size {config['group_size']}" if "group_size" in config else "",
    log:
        "logs/export/{model}.log",
    benchmark:
        "benchmarks/export/{model}.tsv"
    threads: 2
    resources:
        mem_mb=export_mem_mb,
    shell:
        "{LLAMA2BIN} export {output} {params.source} --version {params.versions}"
        "{params.group_size} --threads {threads} > {log} 2>&1"


rule tokenizer:
    input:
        unpack(checkpoint_input),
        unpack(tokenizer_input),
    output:
        "results/{model}/tokenizer.bin",
    params:
        source=source_args,
        tokenizer=lambda wc: tokenizer_model(wc.model),
    log:
        "logs/tokenizer/{model}.log",
    benchmark:
        "benchmarks/tokenizer/{model}.tsv"
    threads: 1
    resources:
        mem_mb=300,
    shell:
        # The source flags make the command refuse a tokenizer whose size is not the model's vocab.
        "{LLAMA2BIN} tokenizer {params.tokenizer:q} {output} {params.source} > {log} 2>&1"
