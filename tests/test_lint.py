"""The code base stays ruff clean (the style rules are in pyproject.toml)."""

import os
import re
import shutil
import subprocess
import sys

import pytest
from helpers import ROOT


def test_ruff_clean():
    ruff = shutil.which("ruff", path=os.path.dirname(sys.executable)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (pip install -e '.[test]' installs it)")
    proc = subprocess.run([ruff, "check", "src", "tests", "bench"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _workflow_rule_files() -> list[str]:
    rules = os.path.join(ROOT, "workflow", "rules")
    return [os.path.join(rules, f) for f in sorted(os.listdir(rules)) if f.endswith(".smk")]


def test_snakemake_lint_leaves_only_the_justified_software_lint():
    """`snakemake --lint` finds nothing but the missing conda/container directive, and every rule
    it names carries the "lint:" comment that says why (see LLAMA2BIN in workflow/rules/common.smk)."""
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--lint", "text"], cwd=ROOT, capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    sections = re.findall(r"^Lints for (rule (\w+) \(line \d+, [^)]*\)|snakefile [^\n]*):\n((?:    .*\n|      .*\n|\n)*)",
                          out, flags=re.M)
    assert sections or proc.returncode == 0, out
    rule_sources = {name: path for path in _workflow_rule_files()
                    for name in re.findall(r"^rule (\w+):", open(path).read(), flags=re.M)}
    for where, rule, body in sections:
        assert rule, f"lint outside a rule: {where}\n{body}"
        titles = re.findall(r"^    \* (.*):$", body, flags=re.M)
        assert titles == ["Specify a conda environment or container for each rule."], (where, titles)
        lines = open(rule_sources[rule]).read().splitlines()
        above = lines[lines.index(f"rule {rule}:") - 1]
        assert above.startswith("# lint: no conda/container"), (rule, above)


def test_workflow_is_snakefmt_formatted():
    snakefmt = shutil.which("snakefmt", path=os.path.dirname(sys.executable)) or shutil.which("snakefmt")
    if snakefmt is None:
        pytest.skip("snakefmt is not installed (pip install -e '.[test]' installs it)")
    proc = subprocess.run([snakefmt, "--check", "Snakefile", "workflow"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_shell_interpolation_is_quoted_and_local():
    """No config value, file name or checkpoint string reaches a shell unquoted (issue 14), and
    shell strings read only the rule's own fields, never a global (issue 11)."""
    for path in _workflow_rule_files():
        text = open(path).read()
        for shell in re.findall(r"^    shell:\n((?:        .*\n)+)", text, flags=re.M):
            for field in re.findall(r"(?<!\{)\{([^{}]+)\}(?!\})", shell):
                name = field.split(":")[0]
                assert name.split(".")[0] in {"input", "output", "params", "log", "wildcards", "threads", "resources"}, (
                    path, field)
                if name.split(".")[0] != "threads":
                    assert field.endswith(":q"), f"{path}: {{{field}}} reaches the shell unquoted"


def test_the_schema_and_the_cli_share_their_defaults():
    """One owner per default: the pipeline's come from the schema, the CLI's from constants and
    the check modules; they must be the same numbers."""
    import yaml

    from llama2bin.cli import build_parser
    from llama2bin.constants import DEFAULT_GROUP_SIZE

    full = yaml.safe_load(open(os.path.join(ROOT, "workflow", "schemas", "config.schema.yaml")))
    schema = full["properties"]
    parser = build_parser()
    export = parser.parse_args(["export", "o.bin", "--checkpoint", "c.pt"])
    verify = parser.parse_args(["verify", "o.bin", "--checkpoint", "c.pt"])
    c_check = parser.parse_args(["c-check", "o.bin"])
    # no number on either side: "not given" means DEFAULT_GROUP_SIZE with group_size.py's back-off for
    # runq.c, which an explicit value would switch off
    assert "default" not in schema["group_size"] and export.group_size is None
    export_help = parser._subparsers._group_actions[0].choices["export"].format_help()
    assert f"default {DEFAULT_GROUP_SIZE}" in " ".join(export_help.split())
    functional = {k: v["default"] for k, v in schema["functional"]["properties"].items()}
    assert functional == {
        "enabled": not verify.no_functional, "eval": verify.eval_recipe, "eval_seqs": verify.eval_seqs,
        "eval_len": verify.eval_len, "eval_seed": verify.eval_seed, "activations": verify.activations,
        "fp32_rtol": verify.fp32_rtol,
    }
    quality = {k: v["default"] for k, v in full["definitions"]["quality"]["properties"].items()}
    assert quality == {
        "gate": verify.quality_gate, "kld_mean_max": verify.kld_mean_max, "kld_p99_max": verify.kld_p99_max,
        "same_top_min": verify.same_top_min, "ppl_ratio_max": verify.ppl_ratio_max,
    }
    assert schema["c_check"]["properties"]["arithmetic"]["default"] == c_check.arithmetic


def test_config_yaml_does_not_repeat_a_default():
    """Every value the shipped config sets besides its models differs from the schema's default
    (the demo's deliberate choices); defaults appear only as comments, so the schema stays the one
    place a default is written."""
    import yaml

    config = yaml.safe_load(open(os.path.join(ROOT, "config.yaml")))
    schema = yaml.safe_load(open(os.path.join(ROOT, "workflow", "schemas", "config.schema.yaml")))["properties"]
    for key, value in config.items():
        if key == "models":
            continue
        if isinstance(value, dict):
            defaults = {k: v.get("default") for k, v in schema[key]["properties"].items()}
            repeated = [k for k, v in value.items() if "default" in schema[key]["properties"][k] and v == defaults[k]]
            assert not repeated, (key, repeated)
        else:
            assert value != schema[key].get("default", object()), key
