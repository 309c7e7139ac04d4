"""Hostile configs and JSON fields of the wrong type (issue 17, item 3), through the real programs.

Pipeline configs run through `snakemake -n` in a fresh copy of the workflow, both as the default
`config.yaml` (checked by workflow/rules/config_guard.smk before Snakemake reads it) and via
`--configfile` (parsed by Snakemake first, then checked before anything walks it). JSON inputs
run through the `llama2bin` CLI. Every case goes through tests/hostile_harness.py: one
`llama2bin: error:` line naming the file and the key or field, non-zero exit, no traceback, no
output, inputs unchanged, a time limit and a 1 GiB address-space cap.

Not here, because no workflow code can prevent it (README "Security"): a `--configfile` whose
*mappings* alias each other billions of times is expanded by Snakemake's own config merge before
the Snakefile runs, and one nested 1000 levels deep fails in Snakemake's parser with its traceback.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
from helpers import DATA, ROOT
from hostile_builders import yaml_laughs
from hostile_harness import HostileCase, run_hostile

# A hang guard, not a timing: every refusal here is Snakemake's start-up plus milliseconds of checks.
TIMEOUT = 30.0
WORKFLOW_FILES = ("Snakefile", "config.yaml", "workflow")


def _workflow(dest: str) -> str:
    os.makedirs(dest)
    for name in WORKFLOW_FILES:
        src = os.path.join(ROOT, name)
        (shutil.copytree if os.path.isdir(src) else shutil.copy)(src, os.path.join(dest, name))
    return dest


def _snakemake_case(tmp_path, name: str, text: str, needle: str, as_default: bool) -> HostileCase:
    """`snakemake -n` on a fresh workflow whose config is `text`: as config.yaml, or --configfile."""
    workdir = _workflow(str(tmp_path / "w"))
    if as_default:
        config = os.path.join(workdir, "config.yaml")
        argv = ["--cores", "1", "-n"]
    else:
        config = str(tmp_path / "c.yaml")
        argv = ["--cores", "1", "-n", "--configfile", config]
    with open(config, "w") as f:
        f.write(text)
    outputs = [os.path.join(workdir, d) for d in ("results", "reports", "resources")]
    return HostileCase(name, argv, inputs=[config, os.path.join(workdir, "workflow")], outputs=outputs,
                       needle=needle, timeout=TIMEOUT, cwd=workdir, program=("-m", "snakemake"), judge_stdout=True)


LAUGHS = "key 'lol' expands to more than 100000 values"

CONFIGS = {
    # name: (config text, needle, as the default config.yaml?)
    "billion_laughs_default_config": (yaml_laughs(), f"config.yaml: {LAUGHS}", True),
    "billion_laughs_configfile": (yaml_laughs(), f"c.yaml: {LAUGHS}", False),
    "billion_laughs_of_mappings_default_config": (yaml_laughs(mapping=True), f"config.yaml: {LAUGHS}", True),
    "python_tag_configfile": ("models: {m: {source: llama2c, demo: mha}}\nx: !!python/name:os.system\n",
                              "c.yaml: not valid YAML: could not determine a constructor for the tag", False),
    "models_a_list_configfile": ("models: [m]\n", "c.yaml: models: ['m'] is not of type 'object'", False),
    "eval_seqs_a_string_configfile": ("models: {m: {source: llama2c, demo: mha}}\nfunctional: {eval_seqs: '8'}\n",
                                      "c.yaml: functional.eval_seqs: '8' is not of type 'integer'", False),
    # The C check runs c_check.cc: before, "a command name or path and plain arguments" let a
    # config run `sh evil.sh` (a script it shipped or had fetched) or `gcc -wrapper sh,...`.
    "c_check_cc_runs_a_script_configfile": ("models: {m: {source: llama2c, demo: mha}}\nc_check: {cc: sh evil.sh}\n",
                                            "c.yaml: c_check.cc: 'sh evil.sh' does not match", False),
    "c_check_cc_a_path_configfile": ("models: {m: {source: llama2c, demo: mha}}\nc_check: {cc: ./gcc}\n",
                                     "c.yaml: c_check.cc: './gcc' does not match", False),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_hostile_config_refused(name: str, tmp_path) -> None:
    text, needle, as_default = CONFIGS[name]
    run_hostile(_snakemake_case(tmp_path, name, text, needle, as_default))


def test_hostile_config_control(tmp_path) -> None:
    """The same workflow copy plans the default config, and a config that shares one anchor
    between models and names a compiler, so each refusal above is the config's doing."""
    import subprocess
    import sys

    workdir = _workflow(str(tmp_path / "w"))
    config = tmp_path / "c.yaml"
    config.write_text("models:\n  a: {source: llama2c, demo: mha, quality: &q {kld_mean_max: 0.1}}\n"
                      "  b: {source: llama2c, demo: gqa_backoff, quality: *q}\n"
                      "c_check: {cc: ccache x86_64-linux-gnu-gcc-12}\n")
    for extra in ([], ["--configfile", str(config)]):
        proc = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", "-n", *extra], cwd=workdir,
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]


# ---- JSON fields of the wrong type, at the point they are parsed -------------------------------


@pytest.fixture(scope="module")
def hf_export(tmp_path_factory) -> str:
    """tiny_a exported as an hf directory (the export itself is tested in test_hf_export)."""
    from llama2bin.cli import main

    out = str(tmp_path_factory.mktemp("hf") / "hfout")
    assert main(["export", "--checkpoint", os.path.join(DATA, "tiny_a.pt"), out, "--version", "hf", "--quiet"]) == 0
    return out


@pytest.mark.parametrize("value", ["x", ["x"], 10000.0, True])
def test_verify_refuses_rope_parameters_of_the_wrong_type(hf_export, tmp_path, value) -> None:
    """The reported case: a string rope_parameters in an exported config.json was an internal error."""
    out = shutil.copytree(hf_export, str(tmp_path / "hfout"))
    config = os.path.join(out, "config.json")
    with open(config) as f:
        cfg = json.load(f)
    with open(config, "w") as f:
        json.dump(cfg | {"rope_parameters": value}, f)
    report = str(tmp_path / "verify.json")
    argv = ["verify", out, "--checkpoint", os.path.join(DATA, "tiny_a.pt"), "--no-functional", "--json", report]
    run_hostile(HostileCase("hf_export_rope_parameters", argv, inputs=[out], outputs=[report], timeout=TIMEOUT,
                            needle=f"config.json: rope_parameters must be an object, got {_type_name(value)}"))


def _type_name(value: object) -> str:
    return {str: "a string", list: "a list", bool: "a boolean"}.get(type(value), type(value).__name__)


@pytest.mark.parametrize(("recipe", "needle"), [
    ("sampled", "recipe must be an object"),
    ({"kind": ["sampled"]}, "recipe.kind must be a string or a number"),
])
def test_verify_refuses_an_eval_tokens_recipe_of_the_wrong_type(tmp_path, recipe, needle) -> None:
    """Before, verify copied such a recipe into its JSON and `report` then blamed the verify JSON."""
    tokens = str(tmp_path / "eval.json")
    with open(tokens, "w") as f:
        json.dump({"recipe": recipe, "sequences": [[1, 5, 9, 2]]}, f)
    out = shutil.copy(os.path.join(DATA, "tiny_a.v0.bin"), str(tmp_path / "a.v0.bin"))
    report = str(tmp_path / "verify.json")
    argv = ["verify", out, "--checkpoint", os.path.join(DATA, "tiny_a.pt"), "--eval-tokens", tokens, "--json", report]
    run_hostile(HostileCase("eval_tokens_recipe", argv, inputs=[tokens, out], outputs=[report], timeout=TIMEOUT,
                            needle=f"eval.json: {needle}"))


@pytest.mark.parametrize("source", [["llama2c"], {"kind": "llama2c"}])
def test_reverify_refuses_a_plan_source_of_the_wrong_type(tmp_path, source) -> None:
    """An unhashable `source` in a reverify plan was an internal error (TypeError)."""
    out = shutil.copy(os.path.join(DATA, "tiny_a.v0.bin"), str(tmp_path / "a.v0.bin"))
    report = str(tmp_path / "a.v0.verify.json")
    plan = {"models": [{"model": "a", "source": source, "path": os.path.join(DATA, "tiny_a.pt"), "files": [out],
                        "json": [report]}]}
    run_hostile(HostileCase("reverify_plan_source", ["reverify", "--plan", json.dumps(plan)], inputs=[out],
                            outputs=[report], timeout=TIMEOUT, needle="reverify plan: models[0].source must be one of"))


@pytest.mark.parametrize(("files", "needle"), [
    ([{"path": "tiny_a.pt", "sha256": "0" * 64, "size": None}], "files[0].size must be an integer, got null"),
    ("tiny_a.pt", "files must be a list"),
])
def test_report_refuses_a_source_record_field_of_the_wrong_type(tmp_path, files, needle) -> None:
    """A fetch record's wrong type was found while rendering and blamed on the verify JSON."""
    from llama2bin.cli import main

    out = shutil.copy(os.path.join(DATA, "tiny_a.v0.bin"), str(tmp_path / "a.v0.bin"))
    verify = str(tmp_path / "a.v0.verify.json")
    assert main(["verify", out, "--checkpoint", os.path.join(DATA, "tiny_a.pt"), "--no-functional", "--quiet",
                 "--json", verify]) == 0
    record = str(tmp_path / "SOURCE.json")
    with open(record, "w") as f:
        json.dump({"model": "a", "kind": "path", "path": "tiny_a.pt", "checkpoint": "tiny_a.pt", "files": files}, f)
    out_dir = str(tmp_path / "reports")
    argv = ["report", verify, "--model", "a", "--out-dir", out_dir, "--no-plots", "--source-record", record]
    run_hostile(HostileCase("report_source_record_files", argv, inputs=[verify, record], outputs=[out_dir],
                            timeout=TIMEOUT, needle=f"SOURCE.json: {needle}"))
