# Step 3: read every file back with the round-trip reader and compare it with the checkpoint,
# tensor by tensor and - functional verification - logit by logit on a seeded evaluation set;
# then let llama2bin's C consumer read every .bin as llama2.c does and reproduce the logits.
# A failed verification or C check fails the job, and so the run.


def functional_args():
    """verify flags of the `functional:` config section."""
    f = config["functional"]
    if not f["enabled"]:
        return "--no-functional"
    return (
        f"--eval-seqs {f['eval_seqs']} --eval-len {f['eval_len']} --eval-seed {f['eval_seed']}"
        f" --activations {f['activations']} --kld-max {f['kld_mean_max']!r} --kld-p99-max {f['kld_p99_max']!r}"
        f" --same-top-min {f['same_top_min']!r} --fp32-rtol {f['fp32_rtol']!r}"
    )


def c_check_jsons(model):
    """The C check's results, one per .bin (a Hugging Face directory has no C reader)."""
    if not config["c_check"]["enabled"]:
        return []
    return [f"results/{model}/{model}.v{v}.ccheck.json" for v in BIN_VERSIONS]


def c_check_args():
    c = config["c_check"]
    return f"--arithmetic {c['arithmetic']}" + (f" --cc '{c['cc']}'" if "cc" in c else "")


rule verify:
    input:
        unpack(checkpoint_input),
        bins=lambda wc: export_paths(wc.model),
    output:
        expand("results/{{model}}/{{model}}.{label}.verify.json", label=LABELS),
    params:
        source=source_args,
        functional=functional_args(),
    log:
        "logs/verify/{model}.log",
    benchmark:
        "benchmarks/verify/{model}.tsv"
    threads: 2
    resources:
        mem_mb=verify_mem_mb,
    shell:
        "{LLAMA2BIN} verify {input.bins} {params.source} {params.functional} --threads {threads}"
        " --json {output} > {log} 2>&1"


rule c_check:
    input:
        bins=lambda wc: [f"results/{wc.model}/{wc.model}.v{v}.bin" for v in BIN_VERSIONS],
    output:
        expand("results/{{model}}/{{model}}.v{version}.ccheck.json", version=BIN_VERSIONS),
    params:
        args=c_check_args(),
    log:
        "logs/c_check/{model}.log",
    benchmark:
        "benchmarks/c_check/{model}.tsv"
    threads: 1
    resources:
        mem_mb=400,
    shell:
        # Without a compiler the check records "skipped"; its notice is repeated on the terminal.
        "{LLAMA2BIN} c-check {input.bins} {params.args} --json {output} > {log} 2>&1"
        " && (grep -h 'notice:' {log} >&2 || true)"
