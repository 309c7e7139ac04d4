# Step 4: tracked, deterministic reports, per model and across all models, each model x version
# with a figure (per-tensor and per-group quantization error, KL divergence distribution).
# `snakemake --report report.html` gathers them into one browsable HTML report.


def report_items(model, ext, caption, kind):
    """One report() entry per output label; a line must not start with `report` (a Snakemake keyword)."""
    items = []
    for label in LABELS:
        path = f"reports/{model}/{model}.{label}.{ext}"
        labels = {"model": "{model}", "output": label, "kind": kind}
        items.append(report(path, caption=caption, category="{model}", labels=labels))
    return items


rule report:
    input:
        verify=lambda wc: verify_jsons(wc.model),
        c_check=lambda wc: c_check_jsons(wc.model),
    output:
        json=expand("reports/{{model}}/{{model}}.{label}.json", label=LABELS),
        md=report_items("{model}", "md", "../report/version.rst", "report (Markdown)"),
        png=report_items("{model}", "png", "../report/figure.rst", "figure"),
    params:
        c_check=lambda wc, input: f"--c-check {input.c_check}" if input.c_check else "",
    log:
        "logs/report/{model}.log",
    benchmark:
        "benchmarks/report/{model}.tsv"
    threads: 1
    resources:
        mem_mb=400,
    shell:
        "{LLAMA2BIN} report {input.verify} {params.c_check} --model {wildcards.model}"
        " --out-dir reports/{wildcards.model} > {log} 2>&1"


rule summary:
    input:
        [f"reports/{m}/{m}.{label}.json" for m in MODELS for label in LABELS],
    output:
        md=report("reports/summary.md", caption="../report/summary.rst", category="Summary"),
        json="reports/summary.json",
    log:
        "logs/report/summary.log",
    benchmark:
        "benchmarks/report/summary.tsv"
    threads: 1
    resources:
        mem_mb=300,
    shell:
        "{LLAMA2BIN} summary {input} --md {output.md} --json {output.json} > {log} 2>&1"
