# Re-verify on demand: `snakemake --cores 4 reverify` reads every existing output back and
# compares it with its checkpoint again, whatever Snakemake's bookkeeping says. Snakemake
# never looks inside an output that exists and is newer than its inputs (and a change to
# llama2bin's own code triggers nothing); this target is for when that trust is not enough:
# files copied between machines, a disk that may have corrupted them, a new llama2bin release.
#
# The rule has no declared output, so Snakemake never considers it done: every invocation runs
# the checks again. Each file's result is recorded in results/NAME/reverify/NAME.LABEL.verify.json
# (same content as the pipeline's verify JSON; not tracked); every model is checked even when
# an earlier one fails, and the job fails if any file does. Outputs that do not exist yet are
# first made by the usual rules. To re-verify per model in parallel jobs instead, and refresh the
# pipeline's own verify JSONs and reports: `snakemake --cores 4 --forcerun verify`.
from types import SimpleNamespace


def reverify_records(model):
    return [f"results/{model}/reverify/{model}.{label}.verify.json" for label in LABELS]


def reverify_command():
    lines = ["status=0"]
    for m in MODELS:
        wc = SimpleNamespace(model=m)
        outputs = " ".join(f'"{p}"' for p in export_paths(m))
        records = " ".join(f'"{p}"' for p in reverify_records(m))
        lines.append(f"{LLAMA2BIN} verify {outputs} {source_args(wc)} --json {records} --quiet || status=1")
    lines.append("exit $status")
    return "\n".join(lines)


rule reverify:
    input:
        [checkpoint_path(m) for m in MODELS],
        [p for m in MODELS for p in export_paths(m)],
    log:
        "logs/reverify/reverify.log",
    threads: 1
    resources:
        mem_mb=verify_mem_mb,
    shell:
        "( " + reverify_command().replace("{", "{{").replace("}", "}}") + " ) 2>&1 | tee {log}"
