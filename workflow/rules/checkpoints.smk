# Step 1: locate each model's checkpoint. `path:` sources are used in place, `url:` and `repo:`
# sources are downloaded (pinned, checksummed, resumable); each gets a SOURCE.json recording
# what was used. `demo:` sources are generated here, offline and deterministically.

# One download at a time unless the command line says otherwise (--resources downloads=N).
if "downloads" not in workflow.global_resources:
    workflow.register_resource("downloads", 1)


rule fetch_checkpoint:
    output:
        "resources/checkpoints/{model}/SOURCE.json",
    params:
        source=lambda wc: " ".join(shlex.quote(a) for a in fetch_spec(wc.model).cli_args()),
        dest=lambda wc: checkpoint_dir(wc.model),
    log:
        "logs/checkpoints/{model}.fetch.log",
    benchmark:
        "benchmarks/checkpoints/{model}.fetch.tsv"
    localrule: True
    threads: 1
    resources:
        downloads=1,
        mem_mb=400,
    shell:
        "{LLAMA2BIN} fetch --model {wildcards.model} --dest {params.dest} {params.source} > {log} 2>&1"


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
