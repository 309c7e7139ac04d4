# Step 4: tracked, deterministic reports, per model and across all models, each model x version
# with a figure (per-tensor and per-group quantization error, KL divergence distribution).
# `snakemake --report report.html` gathers them into one browsable HTML report.


# lint: no conda/container on purpose (see LLAMA2BIN in common.smk)
rule report:
    input:
        verify=lambda wc: verify_jsons(wc.model),
        c_check=lambda wc: c_check_jsons(wc.model),
    output:
        json=expand("reports/{{model}}/{{model}}.{label}.json", label=LABELS),
        md=report_items("{model}", "md", "../report/version.rst", "report (Markdown)"),
        png=report_items("{model}", "png", "../report/figure.rst", "figure"),
    log:
        "logs/report/{model}.log",
    benchmark:
        "benchmarks/report/{model}.tsv"
    threads: 1
    resources:
        mem_mb=400,
    params:
        llama2bin=LLAMA2BIN,
        c_check=report_c_check_args,
        out_dir=lambda wc: f"reports/{wc.model}",
    shell:
        "{params.llama2bin:q} report {input.verify:q} {params.c_check:q} --model {wildcards.model:q}"
        " --out-dir {params.out_dir:q} > {log:q} 2>&1"
        " || (s=$?; grep -h -E '^llama2bin: |: FAILED: ' {log:q} >&2; exit $s)"


# lint: no conda/container on purpose (see LLAMA2BIN in common.smk)
rule summary:
    input:
        [f"reports/{m}/{m}.{label}.json" for m in MODELS for label in LABELS],
    output:
        md=report(
            "reports/summary.md", caption="../report/summary.rst", category="Summary"
        ),
        json="reports/summary.json",
    log:
        "logs/report/summary.log",
    benchmark:
        "benchmarks/report/summary.tsv"
    threads: 1
    resources:
        mem_mb=300,
    params:
        llama2bin=LLAMA2BIN,
    shell:
        "{params.llama2bin:q} summary {input:q} --md {output.md:q} --json {output.json:q} > {log:q} 2>&1"
        " || (s=$?; grep -h -E '^llama2bin: |: FAILED: ' {log:q} >&2; exit $s)"
