"""Every field of the results `report` and `summary` read, of the wrong type (issue 18, item 4).

Real results are written by the CLI (a verify JSON with the functional check and quality verdict,
a C check, a fetch's SOURCE.json, the report JSON built from them); then every value in them,
one at a time, is replaced by one of another JSON kind (a number as a string, a string as a
number, a list as an object, ...). Each variant must be refused where the file is loaded, by one
Llama2binError naming the file and that field (`x.verify.json: tensors[3].rel_err must be a
number, got a string`), before anything is written. The only fields that accept another kind are
those declared open: the output's own header (shown as stored, never read) and the evaluation
recipe's values (any plain value; eval_tokens.py checks them when the tokens are read).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import DATA

from llama2bin.cli import main
from llama2bin.errors import Llama2binError
from llama2bin.report import write_reports, write_summary

OPEN = re.compile(r"header\..*|functional\.eval\.recipe\..*")


def _wrong(value: Any) -> Any:
    """A value of another JSON kind than `value`, wrong for every type a field of that kind has."""
    if isinstance(value, bool):
        return "yes"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return 7
    if isinstance(value, list):
        return {"x": 1}
    if isinstance(value, dict):
        return [1]
    return ["x"]  # null: a list is no optional scalar or object


def _variants(doc: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(field path as typed_json names it, the document with that field's value replaced). Of a
    list, the first and the last item (the others are of the same type)."""
    if isinstance(doc, list):
        items: Any = [(i, doc[i]) for i in sorted({0, len(doc) - 1}) if doc]
    else:
        items = doc.items() if isinstance(doc, dict) else ()
    for key, value in items:
        sub = f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}" if path else key
        yield sub, _replace(doc, key, _wrong(value))
        for deeper, changed in _variants(value, sub):
            yield deeper, _replace(doc, key, changed)


def _replace(doc: Any, key: Any, value: Any) -> Any:
    if isinstance(doc, list):
        return [value if i == key else v for i, v in enumerate(doc)]
    return {k: value if k == key else v for k, v in doc.items()}


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("results")
    out = shutil.copy(os.path.join(DATA, "tiny_a.v1.bin"), str(root / "tiny_a.v1.bin"))
    paths = {"verify": str(root / "tiny_a.v1.verify.json"), "ccheck": str(root / "tiny_a.v1.ccheck.json"),
             "source": str(root / "SOURCE.json")}
    assert main(["verify", out, "--checkpoint", os.path.join(DATA, "tiny_a.pt"), "--eval-seqs", "2", "--eval-len", "8",
                 "--quiet", "--json", paths["verify"]]) == 0
    assert main(["c-check", out, "--json", paths["ccheck"]]) == 0
    # A verify JSON that also holds a C check (as `verify_output` with a consumer writes it).
    with open(paths["verify"]) as f:
        verify = json.load(f)
    with open(paths["ccheck"]) as f:
        verify["c_check"] = json.load(f)
    paths["verify_cc"] = str(root / "cc" / "tiny_a.v1.verify.json")
    os.makedirs(os.path.dirname(paths["verify_cc"]))
    _dump(paths["verify_cc"], verify)
    _dump(paths["source"], {"model": "tiny_a", "kind": "repo", "repo": "someone/tiny", "revision": "main",
                            "commit": "c0ffee" * 6 + "c0ff", "checkpoint": "tiny_a.pt",
                            "files": [{"path": "tiny_a.pt", "sha256": "ab" * 32, "size": 1234}]})
    reports = str(root / "reports")
    assert main(["report", paths["verify"], "--model", "tiny_a", "--out-dir", reports, "--no-plots", "--c-check",
                 paths["ccheck"], "--source-record", paths["source"]]) == 0
    paths["report"] = os.path.join(reports, "tiny_a.v1.json")
    return paths


def _dump(path: str, doc: Any) -> None:
    with open(path, "w") as f:
        json.dump(doc, f)


def _names(message: str, path: str, field: str) -> bool:
    """The message is about the file `path` and names `field` (or a field inside it)."""
    f = re.escape(field)
    return message.startswith(path) and re.search(rf"(: |')({f})([ .\[']|$)", message) is not None


def _sweep(good: str, load: Any, tmp_path) -> tuple[int, list[str]]:
    """Each wrong-type variant of the file `good` through `load(path, out_dir)`; returns how many
    were refused naming their field and which fields accepted another kind."""
    with open(good) as f:
        doc = json.load(f)
    refused, accepted = 0, []
    bad = str(tmp_path / os.path.basename(good))
    for i, (field, variant) in enumerate(_variants(doc)):
        _dump(bad, variant)
        out = tmp_path / f"out{i}"
        try:
            load(bad, str(out))
        except Llama2binError as e:
            assert _names(str(e), bad, field), (field, str(e))
            assert not out.exists() or not os.listdir(out), (field, "wrote output")
            refused += 1
        else:
            accepted.append(field)
    return refused, accepted


def _check_accepted(accepted: list[str]) -> None:
    wrongly = [f for f in accepted if not OPEN.fullmatch(f)]
    assert not wrongly, f"accepted a wrong type in {wrongly}"


@pytest.mark.parametrize("which", ["verify", "verify_cc"])
def test_every_wrong_type_in_a_verify_json_is_refused_naming_its_field(results, tmp_path, which):
    def load(path: str, out: str) -> None:
        write_reports("tiny_a", [path], out, plots=False)

    refused, accepted = _sweep(results[which], load, tmp_path)
    _check_accepted(accepted)
    assert refused > 90 and accepted, (refused, accepted)


def test_every_wrong_type_in_a_c_check_json_is_refused_naming_its_field(results, tmp_path):
    def load(path: str, out: str) -> None:
        write_reports("tiny_a", [results["verify"]], out, c_check_paths=[path], plots=False)

    refused, accepted = _sweep(results["ccheck"], load, tmp_path)
    assert not accepted and refused > 10


def test_every_wrong_type_in_a_source_record_is_refused_naming_its_field(results, tmp_path):
    def load(path: str, out: str) -> None:
        write_reports("tiny_a", [results["verify"]], out, plots=False, source_record_path=path)

    refused, accepted = _sweep(results["source"], load, tmp_path)
    # fields of SOURCE.json the reports do not read (model, checkpoint) are fetch's business
    assert sorted(accepted) == ["checkpoint", "model"] and refused == 9


def test_every_wrong_type_in_a_report_json_is_refused_naming_its_field(results, tmp_path):
    def load(path: str, out: str) -> None:
        os.makedirs(out)
        write_summary([path], os.path.join(out, "s.md"), os.path.join(out, "s.json"))

    refused, accepted = _sweep(results["report"], load, tmp_path)
    _check_accepted(accepted)
    assert refused > 90 and accepted, (refused, accepted)


def test_a_verify_json_without_an_optional_section_still_loads(results):
    """A section that may be null may be absent (a file written before it was added): read as null."""
    from llama2bin.checks.verification import Verification

    with open(results["verify_cc"]) as f:
        doc = json.load(f)
    loaded = Verification.from_json(doc, "v.json")
    assert loaded.to_json() == doc and loaded.c_check is not None
    older = {k: v for k, v in doc.items() if k != "c_check"}
    older["failures"] = older["failures"][: len(older["failures"]) - len(doc["c_check"]["failures"])]
    assert Verification.from_json(older, "v.json").c_check is None
    with pytest.raises(Llama2binError, match="^v.json: missing field 'tensors'$"):
        Verification.from_json({k: v for k, v in doc.items() if k != "tensors"}, "v.json")
