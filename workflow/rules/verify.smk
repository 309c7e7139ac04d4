# Step 3: read every file back with the round-trip reader and compare it with the checkpoint.
# A failed verification fails the job, and so the run.


rule verify:
    input:
        unpack(checkpoint_input),
        bins=lambda wc: export_paths(wc.model),
    output:
        expand("results/{{model}}/{{model}}.{label}.verify.json", label=LABELS),
    params:
        source=source_args,
    log:
        "logs/verify/{model}.log",
    benchmark:
        "benchmarks/verify/{model}.tsv"
    threads: 1
    resources:
        mem_mb=verify_mem_mb,
    shell:
        "{LLAMA2BIN} verify {input.bins} {params.source} --json {output} > {log} 2>&1"
