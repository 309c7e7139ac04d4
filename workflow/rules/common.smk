# Helpers shared by every rule: config validation, checkpoint locations, resources.
import os
import re
import shlex
import sys

import yaml
from snakemake.utils import validate

from llama2bin.errors import Llama2binError
from llama2bin.fetch import FetchSpec, config_source
from llama2bin.formats import DIRECTORY, FORMATS


# jsonschema's message for a failed oneOf is hard to read; say plainly what is wrong first, with
# the same checks `llama2bin fetch` applies (FetchSpec is the one place a source is validated).
for _name, _model in (config.get("models") or {}).items():
    if isinstance(_model, dict):
        try:
            config_source(_name, _model)
        except Llama2binError as _e:
            raise WorkflowError(str(_e))
validate(config, schema="../schemas/config.schema.yaml")


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML silently keeps the last of two equal keys; a duplicated model name is an error."""


def _construct_unique_mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ValueError(f"duplicate key {key!r} at line {key_node.start_mark.line + 1}")
        seen.add(key)
    return loader.construct_mapping(node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)
for _configfile in dict.fromkeys([*workflow.configfiles, *(workflow.overwrite_configfiles or [])]):
    with open(_configfile) as _f:
        try:
            yaml.load(_f, Loader=_UniqueKeyLoader)
        except ValueError as _e:
            raise WorkflowError(f"{_configfile}: {_e}")

for _name, _model in config["models"].items():
    if "demo" in _model and _model["source"] != "llama2c":
        raise WorkflowError(f"model {_name}: demo checkpoints are llama2c checkpoints (source: llama2c)")


# Every job runs the CLI of the interpreter running Snakemake, as its own process, so the same
# workflow runs unchanged on a cluster (the venv path is the same on every node).
LLAMA2BIN = f'"{sys.executable}" -m llama2bin'

MODELS = list(config["models"])
# Output labels in the order export writes them: .bin versions first ("v0", ...), then "hf".
BIN_VERSIONS = [v for v in config["versions"] if FORMATS[str(v)].kind != DIRECTORY]
WRITE_HF = any(FORMATS[str(v)].kind == DIRECTORY for v in config["versions"])  # hf, the one directory format
LABELS = [f"v{v}" for v in BIN_VERSIONS] + (["hf"] if WRITE_HF else [])
SOURCE_FLAGS = {"llama2c": "--checkpoint", "meta": "--meta-llama", "hf": "--hf", "bin": "--bin"}

wildcard_constraints:
    model="|".join(re.escape(m) for m in MODELS),


def model_cfg(wildcards):
    return config["models"][wildcards.model]


def checkpoint_dir(model):
    return f"resources/checkpoints/{model}"


def fetch_spec(model):
    return FetchSpec.from_config(model, config["models"][model])


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
    as an output would let Snakemake delete a verified download before a forced re-run."""
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
    args = [SOURCE_FLAGS[m["source"]], f'"{checkpoint_path(wildcards.model)}"']
    if "max_seq_len" in m:
        args += ["--max-seq-len", str(m["max_seq_len"])]
    if m.get("allow_rope_theta"):
        args.append("--allow-rope-theta")
    return " ".join(args)


def export_versions():
    """--version arguments matching export_outputs() one to one."""
    return " ".join([str(v) for v in BIN_VERSIONS] + (["hf"] if WRITE_HF else []))


def export_paths(model):
    return [f"results/{model}/{model}.v{v}.bin" for v in BIN_VERSIONS] + ([f"results/{model}/hf"] if WRITE_HF else [])


def verify_jsons(model):
    return [f"results/{model}/{model}.{label}.verify.json" for label in LABELS]


def report_files(model):
    return [f"reports/{model}/{model}.{label}.{ext}" for label in LABELS for ext in ("json", "md")]


def tokenizer_model(model):
    """The sentencepiece model that comes with `model`, if any: named in config, or
    tokenizer.model inside a Meta or Hugging Face checkpoint directory."""
    m = config["models"][model]
    if "tokenizer" in m:
        return m["tokenizer"]
    if "path" in m and os.path.isfile(os.path.join(m["path"], "tokenizer.model")):
        return os.path.join(m["path"], "tokenizer.model")
    if "repo" in m:  # a snapshot whose files: name tokenizer.model (FetchSpec.snapshot_tokenizer)
        return fetch_spec(model).snapshot_tokenizer(checkpoint_dir(model))
    return None


def tokenizer_input(wildcards):
    """tokenizer.model as an input file, unless it comes inside a fetched snapshot: then the
    SOURCE.json in checkpoint_input stands for it, as it does for the checkpoint."""
    m = config["models"][wildcards.model]
    return {} if "repo" in m and "tokenizer" not in m else {"tokenizer": tokenizer_model(wildcards.model)}


# Memory per job, from measured peak RSS (bench/results.md, "Memory per job"): jobs stream
# fixed-size row chunks, so the peak does not grow with the checkpoint (15M -> 110M -> 1.1B:
# export 227 -> 239 -> 348 MiB with v0, 109 -> 109 -> 156 without; verify with its functional
# check 420 -> 422 -> 426). v0 costs ~200 MiB more: torch is imported for its rope tables.
# Requests are those peaks plus ~25% headroom, so `--resources mem_mb=N` schedules safely.
def export_mem_mb(wildcards, input):
    return 450 if 0 in BIN_VERSIONS else 200


def verify_mem_mb(wildcards, input):
    return 550 if config["functional"]["enabled"] or 0 in BIN_VERSIONS else 250


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
