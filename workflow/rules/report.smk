# Step 4: tracked, deterministic reports. Per model x output a JSON and a Markdown report; per
# model one self-contained HTML page with one figure (a row per distinct quantization); across
# all models a summary (JSON, Markdown, HTML, and a figure of size against quality).
# `snakemake --report report.html` shows the HTML pages: its viewer embeds HTML (in an iframe)
# but offers Markdown only as a download, so every number a researcher needs is in the pages.


rule report:
    input:
        verify=lambda wc: verify_jsons(wc.model),
        c_check=lambda wc: c_check_jsons(wc.model),
        # where a fetched checkpoint came from (repo@revision or URL, file sha256s); demos have none
        source_record=lambda wc: checkpoint_input(wc).get("source_record", []),
    output:
        json=expand("reports/{{model}}/{{model}}.{label}.json", label=LABELS),
        md=expand("reports/{{model}}/{{model}}.{label}.md", label=LABELS),
        png="reports/{model}/{model}.png",
        html=report(
            "reports/{model}/{model}.html",
            caption="../report/model.rst",
            category="Models",
            labels={"model": "{model}"},
        ),
    params:
        c_check=lambda wc, input: f"--c-check {input.c_check}" if input.c_check else "",
        source_record=lambda wc, input: f"--source-record {input.source_record}" if input.source_record else "",
    log:
        "logs/report/{model}.log",
    benchmark:
        "benchmarks/report/{model}.tsv"
    threads: 1
    resources:
        mem_mb=400,
    shell:
        "{LLAMA2BIN} report {input.verify} {params.c_check} {params.source_record} --model {wildcards.model}"
        " --out-dir reports/{wildcards.model} > {log} 2>&1"


rule summary:
    input:
        [f"reports/{m}/{m}.{label}.json" for m in MODELS for label in LABELS],
    output:
        md="reports/summary.md",
        json="reports/summary.json",
        png="reports/summary.png",
        html=report(
            "reports/summary.html",
            caption="../report/summary.rst",
            category="Summary",
            labels={"page": "all models and outputs"},
        ),
    log:
        "logs/report/summary.log",
    benchmark:
        "benchmarks/report/summary.tsv"
    threads: 1
    resources:
        mem_mb=300,
    shell:
        "{LLAMA2BIN} summary {input} --md {output.md} --json {output.json} --html {output.html}"
        " --figure {output.png} > {log} 2>&1"
