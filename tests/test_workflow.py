"""The workflow without running a job: config validation, the DAG (`snakemake -n`), and the
registries reaching the rules (the quick half of the pipeline tests; test_pipeline.py runs jobs)."""

import json
import os
import re
import shutil

import pytest
from conftest import every_kind_config, snakemake, workflow_copy
from helpers import ROOT, pwned

from llama2bin.formats.source_registry import SOURCES


@pytest.mark.parametrize(
    "config,needle",
    [
        ("models: {'../x': {source: llama2c, demo: mha}}", "does not match"),
        ("models: {a: {source: llama2c, demo: mha, colour: red}}", "'colour' was unexpected"),
        ("models: {a: {source: llama2c, demo: mha}}\nversions: [0, 7]", "7 is not one of"),
        ("models:\n  a: {source: llama2c, demo: mha}\n  a: {source: llama2c, demo: untied}", "duplicate key 'a'"),
        ("models: {a: {source: llama2c}}", "give exactly one of path"),
        ("models: {a: {source: meta, demo: mha}}", "demo checkpoints are llama2c"),
    ],
)
def test_bad_configs_are_refused_clearly(tmp_path, config, needle):
    workdir = workflow_copy(tmp_path / "w")
    (tmp_path / "c.yaml").write_text(config + "\n")
    proc = snakemake(workdir, "-n", "--configfile", str(tmp_path / "c.yaml"))
    assert proc.returncode != 0 and needle in proc.stdout + proc.stderr



def test_fresh_clone_with_tracked_reports_still_does_the_work(tmp_path):
    """reports/ is tracked, so a fresh clone has it; `snakemake --cores 4` must still convert and verify."""
    workdir = workflow_copy(tmp_path / "w")
    shutil.copytree(os.path.join(ROOT, "reports"), os.path.join(workdir, "reports"))
    proc = snakemake(workdir, "-n")
    assert proc.returncode == 0
    assert "Nothing to be done" not in proc.stdout + proc.stderr
    out = proc.stdout + proc.stderr
    stats = out[out.index("Job stats:"):].splitlines()
    counts = dict(line.split() for line in stats[3:] if len(line.split()) == 2)
    assert counts["export"] == counts["verify"] == counts["report"] == "3"



@pytest.mark.parametrize(
    "model,extra,needle",
    [
        ({"path": "ckpt.pt"}, {"c_check": {"cc": "cc'; touch PWNED; echo '"}}, "does not match"),
        ({"path": "ckpt.pt"}, {"c_check": {"cc": "$(touch PWNED)"}}, "does not match"),
        ({"path": "ckpt.pt"}, {"c_check": {"cc": "gcc `touch PWNED`"}}, "does not match"),
        ({"path": "ckpt.pt"}, {"c_check": {"cc": "gcc || touch PWNED"}}, "does not match"),
        ({"path": "ckpt.pt\ntouch PWNED"}, {}, "does not match"),
        ({"path": "ckpt{x}.pt"}, {}, "does not match"),
        ({"path": "--help"}, {}, "does not match"),
        ({"path": "ckpt.pt", "tokenizer": "tok.model\n"}, {}, "does not match"),
        ({"source": "hf", "repo": "a/b", "revision": "main", "files": ["-rf"]}, {}, "does not match"),
    ],
)
def test_configs_that_are_not_names_are_refused(tmp_path, model, extra, needle):
    """What must be a path, a name or a compiler is validated before any job runs."""
    workdir = workflow_copy(tmp_path / "w")
    (tmp_path / "c.yaml").write_text(json.dumps({"models": {"m": {"source": "llama2c", **model}}, **extra}))
    proc = snakemake(workdir, "--configfile", str(tmp_path / "c.yaml"))
    assert proc.returncode != 0 and needle in proc.stdout + proc.stderr, proc.stderr[-2000:]
    assert not os.path.exists(os.path.join(workdir, "results")) and not pwned(tmp_path)


def test_yte_templating_in_the_config_is_refused_before_it_runs(tmp_path):
    """`__use_yte__` makes Snakemake evaluate Python in a config. The default config.yaml is checked
    before Snakemake loads it, so its expressions never run; a --configfile is refused before any job."""
    workdir = workflow_copy(tmp_path / "w")
    with open(os.path.join(workdir, "config.yaml"), "w") as f:
        f.write("__use_yte__: true\nmodels:\n  ?__import__('pathlib').Path('PWNED').touch() or 'm':\n"
                "    source: llama2c\n    demo: mha\n")
    proc = snakemake(workdir, "-n")
    assert proc.returncode != 0 and "__use_yte__ turns on YTE templating" in proc.stdout + proc.stderr, proc.stdout[-2000:]
    assert not pwned(tmp_path)
    (tmp_path / "c.yaml").write_text("__use_yte__: true\nmodels: {m: {source: llama2c, demo: mha}}\n")
    proc = snakemake(workdir, "-n", "--configfile", str(tmp_path / "c.yaml"))
    assert proc.returncode != 0 and "__use_yte__ turns on YTE templating" in proc.stdout + proc.stderr, proc.stdout[-2000:]




def test_every_source_kind_reaches_the_rules_with_its_registered_flag(tmp_path, checkpoint):
    """The workflow's flags are the source registry's: a dry run plans each model's export with
    its kind's flag, and reverify's plan names every kind."""
    workdir = workflow_copy(tmp_path / "w", every_kind_config(checkpoint))
    proc = snakemake(workdir, "all", "reverify", "-n", "-p", "--configfile", "c.yaml")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    for name, kind in SOURCES.items():
        assert re.search(rf"export .*results/{name}/{name}\.v2\.bin.* {kind.flag} ", out), (name, out[-3000:])
    plan = json.loads(re.search(r"reverify --plan '(\{.*\})'", out)[1])
    assert [m["source"] for m in plan["models"]] == list(SOURCES)
