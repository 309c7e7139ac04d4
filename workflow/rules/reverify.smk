# Re-verify on demand: `snakemake --cores 4 reverify` reads every existing output back and
# compares it with its checkpoint again, whatever Snakemake's bookkeeping says. Snakemake
# never looks inside an output that exists and is newer than its inputs (and a change to
# llama2bin's own code triggers nothing); this target is for when that trust is not enough:
# files copied between machines, a disk that may have corrupted them, a new llama2bin release.
#
# The rule has no declared output, so Snakemake never considers it done: every invocation runs
# the checks again. `llama2bin reverify` records each file's result in
# results/NAME/reverify/NAME.LABEL.verify.json (same content as the pipeline's verify JSON; not
# tracked); every model is checked even when an earlier one fails, and the job fails if any file
# does. Outputs that do not exist yet are first made by the usual rules. To re-verify per model
# in parallel jobs instead, and refresh the pipeline's own verify JSONs and reports:
# `snakemake --cores 4 --forcerun verify`.


# lint: no conda/container on purpose (see LLAMA2BIN in common.smk)
rule reverify:
    input:
        reverify_inputs(),
    log:
        "logs/reverify/reverify.log",
    threads: 1
    resources:
        mem_mb=verify_mem_mb,
    params:
        llama2bin=LLAMA2BIN,
        plan=reverify_plan(),
    shell:
        "{params.llama2bin:q} reverify --plan {params.plan:q} 2>&1 | tee {log:q}"
