# Step 1: locate each model's checkpoint. `path:` sources are used in place; `demo:` sources
# are generated here, offline and deterministically.


rule demo_checkpoint:
    output:
        "resources/checkpoints/{model}/demo.pt",
    params:
        preset=lambda wc: model_cfg(wc)["demo"],
    log:
        "logs/checkpoints/{model}.demo.log",
    benchmark:
        "benchmarks/checkpoints/{model}.demo.tsv"
    threads: 1
    resources:
        mem_mb=600,
    shell:
        "{LLAMA2BIN} demo {output} --preset {params.preset} > {log} 2>&1"
