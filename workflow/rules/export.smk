# Step 2: write every requested .bin version of a model in one job: one pass over the
# checkpoint feeds all versions, and the per-job start-up cost is paid once per model.


rule export:
    input:
        unpack(checkpoint_input),
    output:
        expand("results/{{model}}/{{model}}.v{version}.bin", version=BIN_VERSIONS),
    params:
        source=source_args,
        versions=" ".join(str(v) for v in BIN_VERSIONS),
        group_size=config["group_size"],
    log:
        "logs/export/{model}.log",
    benchmark:
        "benchmarks/export/{model}.tsv"
    threads: 2
    resources:
        mem_mb=export_mem_mb,
    shell:
        "{LLAMA2BIN} export {output} {params.source} --version {params.versions}"
        " --group-size {params.group_size} --threads {threads} > {log} 2>&1"
