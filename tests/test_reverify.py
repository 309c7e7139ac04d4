"""`llama2bin reverify --plan`: the pipeline's re-verification target as one CLI command."""

import json
import os
import shutil

import pytest
from conftest import assert_refused, every_kind_config, snakemake, workflow_copy
from helpers import DATA, run_cli

from llama2bin.formats.source_registry import SOURCES


def _plan(tmp_path, corrupt: bool) -> dict:
    models = []
    for name, versions in (("a", (0, 2)), ("b", (1,))):
        files = []
        for v in versions:
            dest = tmp_path / f"{name}.v{v}.bin"
            shutil.copy(os.path.join(DATA, f"tiny_{name}.v{v}.bin"), dest)
            files.append(str(dest))
        models.append({"model": name, "source": "llama2c", "path": os.path.join(DATA, f"tiny_{name}.pt"),
                       "files": files, "json": [f"{f}.verify.json" for f in files]})
    if corrupt:
        with open(models[0]["files"][1], "r+b") as f:  # one q byte of a.v2
            f.seek(300)
            b = f.read(1)[0]
            f.seek(300)
            f.write(bytes([b ^ 0x40]))
    return {"models": models, "verify_options": ["--no-functional"]}


def test_a_failing_model_does_not_stop_the_others(tmp_path):
    plan = _plan(tmp_path, corrupt=True)
    proc = run_cli("reverify", "--plan", json.dumps(plan))
    assert_refused(proc, "1 model(s): a")
    assert "a.v2.bin: FAILED" in proc.stderr
    (a_v0, a_v2), (b_v1,) = plan["models"][0]["json"], plan["models"][1]["json"]
    assert json.load(open(a_v2))["passed"] is False
    assert json.load(open(a_v0))["passed"] is True  # every file of a model is recorded
    assert json.load(open(b_v1))["passed"] is True  # b was checked after a failed


@pytest.mark.parametrize(
    "plan,needle",
    [
        ("{not json", "not valid JSON"),
        ('{"models": {}}', "'models' list"),
        ('{"models": [{"model": "a", "source": "onnx", "path": "x", "files": ["f"], "json": ["j"]}]}', "models[0].source"),
        ('{"models": [{"model": "a", "source": "hf", "path": "x", "files": [], "json": ["j"]}]}', "models[0].files"),
        ('{"models": [{"model": "a", "source": "hf", "path": "x", "files": ["f"], "json": ["j"], "max_seq_len": "9"}]}',
         "models[0].max_seq_len"),
        ('{"models": [{"model": "a", "source": "hf", "path": "x", "files": ["f"], "json": ["j"], "shell": "rm"}]}',
         "models[0]"),
    ],
)
def test_a_malformed_plan_is_one_error_naming_the_field(plan, needle):
    assert_refused(run_cli("reverify", "--plan", plan), "reverify plan", needle)


@pytest.mark.slow
def test_snakemake_reverify_checks_a_model_of_every_source_kind(tmp_path, checkpoint):
    """`snakemake reverify` on a config with a bin, a llama2c, an hf and a meta model: each model's
    output is verified again against its own source, through its own kind's flag."""
    workdir = workflow_copy(tmp_path / "w", every_kind_config(checkpoint))
    proc = snakemake(workdir, "reverify", "--configfile", "c.yaml")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for kind in SOURCES:
        record = json.load(open(os.path.join(workdir, "results", kind, "reverify", f"{kind}.v2.verify.json")))
        assert record["passed"] and record["source"]["kind"] == kind, record["failures"]
        assert record["format"] == "2" and record["tensors"]
