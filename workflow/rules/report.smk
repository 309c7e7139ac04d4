# Step 4: tracked, deterministic quantization-error reports, per model and across all models.


rule report:
    input:
        lambda wc: verify_jsons(wc.model),
    output:
        expand("reports/{{model}}/{{model}}.{label}.{ext}", label=LABELS, ext=["json", "md"]),
    log:
        "logs/report/{model}.log",
    benchmark:
        "benchmarks/report/{model}.tsv"
    threads: 1
    resources:
        mem_mb=300,
    shell:
        "{LLAMA2BIN} report {input} --model {wildcards.model} --out-dir reports/{wildcards.model} > {log} 2>&1"


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
