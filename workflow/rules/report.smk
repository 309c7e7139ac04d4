# Step 4: tracked, deterministic reports. Per model x output a JSON and a Markdown report; per
# model one self-contained HTML page with one figure (a row per distinct quantization); across
# all models a summary (JSON, Markdown, HTML, and a figure of size against quality).
# `snakemake --report report.html` shows the HTML pages: its viewer embeds HTML (in an iframe)
# but offers Markdown only as a download, so every number a researcher needs is in the pages.


# lint: no conda/container on purpose (see LLAMA2BIN in common.smk)
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
        source_record=report_source_record_args,
        out_dir=lambda wc: f"reports/{wc.model}",
    shell:
        "{params.llama2bin:q} report {input.verify:q} {params.c_check:q} {params.source_record:q}"
        " --model {wildcards.model:q} --out-dir {params.out_dir:q} > {log:q} 2>&1"
        " || (s=$?; grep -h -E '^llama2bin: |: FAILED: ' {log:q} >&2; exit $s)"


# lint: no conda/container on purpose (see LLAMA2BIN in common.smk)
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
    params:
        llama2bin=LLAMA2BIN,
    shell:
        "{params.llama2bin:q} summary {input:q} --md {output.md:q} --json {output.json:q}"
        " --html {output.html:q} --figure {output.png:q} > {log:q} 2>&1"
        " || (s=$?; grep -h -E '^llama2bin: |: FAILED: ' {log:q} >&2; exit $s)"
