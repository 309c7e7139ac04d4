# llama2bin: checkpoints -> llama2.c .bin files, verified and reported.
# This file only validates the config, includes one rule file per step and builds `all`.


# Config files are plain data: checked (no YTE templating, no duplicate keys, bounded size) before use.
include: "workflow/rules/config_guard.smk"


# `--configfile FILE` replaces the default config instead of merging into it.
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/checkpoints.smk"
include: "workflow/rules/export.smk"
include: "workflow/rules/verify.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/reverify.smk"


report: "workflow/report/workflow.rst"


onstart:
    start_job_server()


onsuccess:
    stop_job_server()


onerror:
    stop_job_server()


localrules:
    report,
    summary,


rule all:
    input:
        all_outputs(),
