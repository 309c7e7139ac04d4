# Step 1: locate each model's checkpoint. `path:` sources are used in place, `url:` and `repo:`
# sources are downloaded (pinned, checksummed, resumable); each gets a SOURCE.json recording
# what was used. `demo:` sources are generated here, offline and deterministically.
#
# A failed job repeats its log's `llama2bin:` lines on stderr, so Snakemake's own output shows
# why it failed, not only "check log file(s)".

# One download at a time unless the command line says otherwise (--resources downloads=N).
if "downloads" not in workflow.global_resources:
    workflow.register_resource("downloads", 1)


# lint: no conda/container on purpose (see LLAMA2BIN in common.smk)
rule fetch_checkpoint:
    output:
        "resources/checkpoints/{model}/SOURCE.json",
    log:
        "logs/checkpoints/{model}.fetch.log",
    benchmark:
        "benchmarks/checkpoints/{model}.fetch.tsv"
    localrule: True
    threads: 1
    resources:
        # a `path:` source is only hashed in place: no download slot, so a batch's records run in parallel
        downloads=lambda wc: 0 if "path" in config["models"][wc.model] else 1,
        mem_mb=400,
    params:
        llama2bin=LLAMA2BIN,
        source=fetch_args,
        dest=lambda wc: checkpoint_dir(wc.model),
    shell:
        "{params.llama2bin:q} fetch --model {wildcards.model:q} --dest {params.dest:q}"
        " {params.source:q} > {log:q} 2>&1"
        " || (s=$?; grep -h -E '^llama2bin: |: FAILED: ' {log:q} >&2; exit $s)"


# lint: no conda/container on purpose (see LLAMA2BIN in common.smk)
rule demo_checkpoint:
    output:
        "resources/checkpoints/{model}/demo.pt",
    log:
        "logs/checkpoints/{model}.demo.log",
    benchmark:
        "benchmarks/checkpoints/{model}.demo.tsv"
    threads: 1
    resources:
        mem_mb=600,
    params:
        llama2bin=LLAMA2BIN,
        preset=lambda wc: model_cfg(wc)["demo"],
    shell:
        "{params.llama2bin:q} demo {output:q} --preset {params.preset:q} > {log:q} 2>&1"
        " || (s=$?; grep -h -E '^llama2bin: |: FAILED: ' {log:q} >&2; exit $s)"
