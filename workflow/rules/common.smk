# Helpers shared by every rule: config validation, checkpoint locations, command arguments,
# resources. Rules pass every file name and config value to the shell quoted ({...:q}), and
# every command-line argument here is one list element, so no value is ever parsed by a shell.
import json
import os
import re
import sys
from types import SimpleNamespace

from snakemake.utils import validate

from llama2bin.errors import Llama2binError
from llama2bin.fetch import FetchSpec, config_source
from llama2bin.fetch.spec import TOKENIZER_FILES
from llama2bin.formats import FORMATS
from llama2bin.formats.source_registry import SOURCES, single_file
from llama2bin.formats.targets import target_spec

# jsonschema's message for a failed oneOf is hard to read; say plainly what is wrong first, with
# the same checks `llama2bin fetch` applies (FetchSpec is the one place a source is validated).
_models = config.get("models")
for _name, _model in _models.items() if isinstance(_models, dict) else ():
    if isinstance(_model, dict):
        try:
            config_source(_name, _model, single_file(_model.get("source")))
        except Llama2binError as _e:
            raise config_error(f"{CONFIG_NAME}: {_e}")
# One line naming the field (config_guard.smk); then the schema owns every default: validate()
# fills in what the config leaves out.
check_config_schema(
    config, os.path.join(workflow.basedir, "workflow/schemas/config.schema.yaml")
)
_VERSIONS_GIVEN = "versions" in config
validate(config, schema="../schemas/config.schema.yaml", set_default=True)
if config["targets"] and _VERSIONS_GIVEN:
    raise config_error(
        f"{CONFIG_NAME}: give targets or versions, not both (a target picks its format)"
    )

for _name, _model in config["models"].items():
    if "demo" in _model and _model["source"] != "llama2c":
        raise config_error(
            f"{CONFIG_NAME}: model {_name}: demo checkpoints are llama2c checkpoints (source: llama2c)"
        )


# Every job runs the CLI of the interpreter running Snakemake, as its own process, so the same
# workflow runs unchanged on a cluster (the venv path is the same on every node). Rules take it
# as params.llama2bin, so it is part of each job's recorded parameters.
# This is also why no rule has a conda or container directive, the one `snakemake --lint`
# finding left on purpose - a "lint" comment above each rule says so. The software of every
# step is this project's own venv, installed from pyproject.toml + constraints.txt; a conda
# environment per rule would be a second, unpinned copy of it that nothing here tests.
LLAMA2BIN = [sys.executable, "-m", "llama2bin"]


# The local job server (src/llama2bin/cli/job_server.py): started before the first job of a
# local run, stopped after the last; jobs find it through $LLAMA2BIN_JOB_SERVER and run as before
# without it (on a cluster, in a dry run, with `job_server: false`).
_job_server = []


def start_job_server():
    # Linux only: the server watches its workers through pidfds, the client its ancestry in /proc
    linux = sys.platform.startswith("linux")
    if (
        config["job_server"]
        and linux
        and workflow.local_exec
        and workflow.is_main_process
    ):
        from llama2bin.cli.job_server import JobServer
        from llama2bin.job_client import ENV

        os.makedirs("logs", exist_ok=True)
        server = JobServer.start("logs/job_server.tsv", wait=False)
        _job_server.append(server)
        os.environ[ENV] = server.env


def stop_job_server():
    from llama2bin.job_client import ENV

    os.environ.pop(ENV, None)
    while _job_server:
        _job_server.pop().stop()


MODELS = list(config["models"])
# The formats every model is written in, in registry order (v0, v1, 1f, v2, hf): each knows its
# label, its file (or directory) name and whether the C consumer reads it.
# With `targets:`, the formats those programs read (formats/targets.py), else `versions:`.
TARGETS_USED = [target_spec(name) for name in config["targets"]]
_FORMAT_NAMES = (
    {t.format for t in TARGETS_USED}
    if TARGETS_USED
    else {str(v) for v in config["versions"]}
)
OUTPUTS = [spec for spec in FORMATS.values() if spec.name in _FORMAT_NAMES]
LABELS = [spec.label for spec in OUTPUTS]
C_CHECKED = [spec for spec in OUTPUTS if spec.family.c_consumer]
# Formats that store the model's tokenizer and name (GGUF): export and verify then get them.
STORES_TOKENIZER = any(spec.stores_tokenizer for spec in OUTPUTS)
# The source registry's CLI flag of every config `source:` kind.
SOURCE_FLAGS = {name: kind.flag for name, kind in SOURCES.items()}


wildcard_constraints:
    model="|".join(re.escape(m) for m in MODELS),


def model_cfg(wildcards):
    return config["models"][wildcards.model]


def checkpoint_dir(model):
    return f"resources/checkpoints/{model}"


def fetch_spec(model):
    m = config["models"][model]
    return FetchSpec.from_config(model, m, single_file(m["source"]))


def fetch_args(wildcards):
    """The `llama2bin fetch` flags naming the source, one argument per element."""
    return fetch_spec(wildcards.model).cli_args()


def checkpoint_path(model):
    """Where the checkpoint of `model` is once located: the file or directory the CLI reads.
    Known before anything is fetched, so the DAG can be built up front."""
    m = config["models"][model]
    if "demo" in m:
        return f"{checkpoint_dir(model)}/demo.pt"
    return fetch_spec(model).checkpoint_path(checkpoint_dir(model))


def checkpoint_input(wildcards):
    """Inputs that make a job wait for (and re-run after) its checkpoint. A fetched checkpoint is
    represented by SOURCE.json, which the fetch writes last: declaring the downloaded file itself
    as an output would let Snakemake delete a verified download before a forced re-run.
    """
    model = wildcards.model
    if "demo" in config["models"][model]:
        return {"checkpoint": checkpoint_path(model)}
    inputs = {"source_record": f"{checkpoint_dir(model)}/SOURCE.json"}
    if "path" in config["models"][model]:
        inputs["checkpoint"] = checkpoint_path(model)
    return inputs


def source_args(wildcards):
    """The CLI flags that name the source, shared by export, verify and tokenizer."""
    m = model_cfg(wildcards)
    args = [SOURCE_FLAGS[m["source"]], checkpoint_path(wildcards.model)]
    if "max_seq_len" in m:
        args += ["--max-seq-len", str(m["max_seq_len"])]
    if m["allow_rope_theta"]:
        args.append("--allow-rope-theta")
    return args


def stored_tokenizer(model):
    """The tokenizer outputs that store one are given: the model's configured `tokenizer:`;
    without one the CLI takes the checkpoint's own (a Meta or Hugging Face directory's, a GGUF's).
    """
    m = config["models"][model]
    return m["tokenizer"] if STORES_TOKENIZER and "tokenizer" in m else None


def stored_tokenizer_input(wildcards):
    tokenizer = stored_tokenizer(wildcards.model)
    return {"stored_tokenizer": tokenizer} if tokenizer else {}


def stored_tokenizer_args(wildcards):
    tokenizer = stored_tokenizer(wildcards.model)
    return ["--tokenizer", tokenizer] if tokenizer else []


def export_name_args(wildcards):
    """GGUF's general.name is the model's name in the config."""
    return ["--name", wildcards.model] if STORES_TOKENIZER else []


def export_versions():
    """--version arguments matching export_paths() one to one, or with `targets:` --target
    arguments ordered by their formats' registry order, so the outputs they pick come in the
    order of export_paths() (the CLI writes one output per distinct format, in first-named order).
    """
    if TARGETS_USED:
        order = list(FORMATS)
        ordered = sorted(TARGETS_USED, key=lambda t: order.index(t.format))
        return ["--target", *(t.name for t in ordered)]
    return ["--version", *(spec.name for spec in OUTPUTS)]


def target_args():
    """verify and c-check: the programs the files are for (empty without `targets:`)."""
    return ["--target", *config["targets"]] if config["targets"] else []


def output_path(model, spec):
    """results/MODEL/ and the format's own name for it (MODEL.v2.bin, hf)."""
    return f"results/{model}/{spec.output_name(model)}"


def export_outputs():
    """The export rule's outputs, one per version (a directory format's as a directory())."""
    return [
        (
            directory(output_path("{model}", spec))
            if spec.directory
            else output_path("{model}", spec)
        )
        for spec in OUTPUTS
    ]


def export_paths(model):
    return [output_path(model, spec) for spec in OUTPUTS]


def verify_jsons(model):
    return [f"results/{model}/{model}.{label}.verify.json" for label in LABELS]


def report_files(model):
    return [
        f"reports/{model}/{model}.{label}.{ext}"
        for label in LABELS
        for ext in ("json", "md")
    ]


def tokenizer_model(model):
    """The tokenizer that comes with `model`, if any: named in config, or tokenizer.model (else
    tokenizer.json) inside a Meta or Hugging Face checkpoint directory. Its kind (sentencepiece,
    Llama 3's tiktoken, tokenizer.json) is detected from its content by `llama2bin tokenizer`.
    """
    m = config["models"][model]
    if "tokenizer" in m:
        return m["tokenizer"]
    for name in TOKENIZER_FILES:
        if "path" in m and os.path.isfile(os.path.join(m["path"], name)):
            return os.path.join(m["path"], name)
    if (
        "repo" in m
    ):  # a snapshot whose files: name tokenizer.model (FetchSpec.snapshot_tokenizer)
        return fetch_spec(model).snapshot_tokenizer(checkpoint_dir(model))
    return None


def tokenizer_input(wildcards):
    """tokenizer.model as an input file, unless it comes inside a fetched snapshot: then the
    SOURCE.json in checkpoint_input stands for it, as it does for the checkpoint."""
    m = config["models"][wildcards.model]
    return (
        {}
        if "repo" in m and "tokenizer" not in m
        else {"tokenizer": tokenizer_model(wildcards.model)}
    )


def quality_limits(model):
    """The global `quality` section with the model's own `quality` overrides on top."""
    return {
        **config["quality"],
        **(config["models"][model].get("quality", {}) if model else {}),
    }


def functional_args(model=None, input=None):
    """verify flags of the `functional:` and `quality:` config sections. With `model` (the verify
    rule): its evaluation-token recipe, the file the verify job writes the tokens to
    (results/NAME/eval_tokens.json, made in the same process: no job of its own) and its own
    limits; without (reverify's plan, shared by every model): the global recipe, which makes the
    same tokens for models without eval_text/eval_tokens, and the global limits."""
    f = config["functional"]
    if not f["enabled"]:
        return ["--no-functional", *target_args()]
    # str() of a float is its shortest round-tripping form: every digit of a threshold is kept.
    args = ["--activations", f["activations"], "--fp32-rtol", str(f["fp32_rtol"])]
    if model:
        args += eval_tokens_args(model, input)
        args += ["--write-eval-tokens", eval_tokens_path(model)]
    else:
        args += [
            "--eval",
            f["eval"],
            "--eval-seqs",
            str(f["eval_seqs"]),
            "--eval-len",
            str(f["eval_len"]),
            "--eval-seed",
            str(f["eval_seed"]),
        ]
    q = quality_limits(model)
    limits = {
        "--kld-max": "kld_mean_max",
        "--kld-p99-max": "kld_p99_max",
        "--same-top-min": "same_top_min",
        "--ppl-ratio-max": "ppl_ratio_max",
    }
    args += [a for flag, key in limits.items() for a in (flag, str(q[key]))]
    return args + (["--quality-gate"] if q["gate"] else []) + target_args()


def eval_tokens_path(model):
    return f"results/{model}/eval_tokens.json"


def eval_tokens_args(model, input):
    """Evaluation-token flags: the model's own token ids or text, else the global recipe."""
    f, m = config["functional"], config["models"][model]
    if "eval_tokens" in m:
        return [
            "--eval-tokens",
            input.eval_file,
        ]  # checked against the model and recorded
    size = ["--eval-seqs", str(f["eval_seqs"]), "--eval-len", str(f["eval_len"])]
    if "eval_text" in m:
        return ["--eval-text", input.eval_file, "--tokenizer", input.tokenizer, *size]
    return ["--eval", f["eval"], *size, "--eval-seed", str(f["eval_seed"])]


def eval_inputs(wildcards):
    m = model_cfg(wildcards)
    inputs = checkpoint_input(wildcards)
    if "eval_tokens" in m or "eval_text" in m:
        inputs["eval_file"] = m.get("eval_tokens") or m["eval_text"]
    if "eval_text" in m:
        tokenizer = tokenizer_model(wildcards.model)
        if tokenizer is None:
            raise WorkflowError(
                f"model {wildcards.model}: eval_text needs the model's tokenizer (set tokenizer:)"
            )
        inputs["tokenizer"] = tokenizer
    return inputs


def verify_inputs(wildcards):
    """The checkpoint, and the files the evaluation tokens come from (a model's own id or text file)."""
    if config["functional"]["enabled"]:
        return eval_inputs(wildcards)
    return checkpoint_input(wildcards)


def verify_outputs():
    """Per output its verify JSON; with the functional check also the model's evaluation tokens,
    which the verify job makes (sampled from the source, or read from the model's own file).
    """
    outputs = [f"results/{{model}}/{{model}}.{label}.verify.json" for label in LABELS]
    if config["functional"]["enabled"]:
        outputs.append(eval_tokens_path("{model}"))
    return outputs


def c_check_jsons(model):
    """The C check's results, one per output the C consumer reads (not a Hugging Face directory)."""
    if not config["c_check"]["enabled"]:
        return []
    return [f"results/{model}/{model}.{spec.label}.ccheck.json" for spec in C_CHECKED]


def c_check_paths(model):
    """The outputs the C consumer reads, in the order of c_check_jsons()."""
    return [output_path(model, spec) for spec in C_CHECKED]


def c_check_args():
    c = config["c_check"]
    return (
        ["--arithmetic", c["arithmetic"]]
        + (["--cc", c["cc"]] if "cc" in c else [])
        + target_args()
    )


def report_c_check_args(wildcards, input):
    return ["--c-check", *input.c_check] if input.c_check else []


def report_source_record_args(wildcards, input):
    return ["--source-record", input.source_record] if input.source_record else []


def reverify_records(model):
    return [f"results/{model}/reverify/{model}.{label}.verify.json" for label in LABELS]


def reverify_inputs():
    inputs = []
    for model in MODELS:
        inputs += list(checkpoint_input(SimpleNamespace(model=model)).values())
        inputs += list(stored_tokenizer_input(SimpleNamespace(model=model)).values())
        inputs += export_paths(model)
    return inputs


def reverify_plan():
    """What `llama2bin reverify --plan` checks: every model's outputs against its source."""
    models = []
    for model in MODELS:
        m = config["models"][model]
        entry = {
            "model": model,
            "source": m["source"],
            "path": checkpoint_path(model),
            "allow_rope_theta": m["allow_rope_theta"],
            "files": export_paths(model),
            "json": reverify_records(model),
        }
        if "max_seq_len" in m:
            entry["max_seq_len"] = m["max_seq_len"]
        if stored_tokenizer(model):
            entry["tokenizer"] = stored_tokenizer(model)
        models.append(entry)
    return json.dumps({"models": models, "verify_options": functional_args()})


# Memory per job, from measured peak RSS (bench/results.md, "Memory per job"): jobs stream
# fixed-size row chunks, so the peak does not grow with the checkpoint (15M -> 110M -> 1.1B:
# export 227 -> 239 -> 348 MiB with v0, 109 -> 109 -> 156 without; verify with its functional
# check 420 -> 422 -> 426). v0 cost ~200 MiB more while torch was imported for its rope tables;
# since issue 21.2 they come from MKL (~10 MiB), so these requests are generous for v0.
# Requests are those peaks plus ~25% headroom, so `--resources mem_mb=N` schedules safely.
ROPE_TABLES = any(spec.rope_tables for spec in OUTPUTS)


# Measured peaks (summed RSS of a job's processes) plus ~25%: with the compiled Q8_0 kernels of big
# models (numba, loaded in the parent and inherited by both workers) an export peaks at ~310 MiB and
# a round-trip verify at ~375 MiB whatever the model's size (bench/issue21.md).
def export_mem_mb(wildcards, input):
    return 450 if ROPE_TABLES else 400


# A model from 50M weights samples its evaluation tokens on two processes, each keeping up to 192 MB
# of weights resident (checks/split_weights.py), and runs its functional check on two (each with
# its blocks of weights and logits; the source's logits come back to be kept): ~770 MiB for a
# 1.1B verify, all processes' RSS summed, bounded whatever the size.
def verify_mem_mb(wildcards, input):
    return 1000 if config["functional"]["enabled"] else 550 if ROPE_TABLES else 475


def all_outputs():
    # The exported files and their verification results are targets in their own right: the
    # reports are tracked, so on a fresh clone they exist already, and a target list of reports
    # alone would let Snakemake call the run done without converting anything.
    outputs = ["reports/summary.md", "reports/summary.json"]
    for model in MODELS:
        outputs += export_paths(model) + verify_jsons(model) + report_files(model)
        if tokenizer_model(model):
            outputs.append(f"results/{model}/tokenizer.bin")
    return outputs
