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
