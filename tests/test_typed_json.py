"""typed_json: JSON checked against its types at load, one error naming the field."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypedDict

import pytest

from llama2bin.errors import Llama2binError
from llama2bin.typed_json import Checked, check, derived, load


class Limits(TypedDict):
    low: float
    high: float


Percentiles = TypedDict("Percentiles", {"p50": float, "p99.9": float})


@dataclass
class Stat:
    name: str
    shape: list[int]
    snr_db: float | None = None
    _private: float = 0.0


@dataclass
class Record:
    file: str
    size: int
    passed: bool
    stats: list[Stat]
    limits: Limits
    percentiles: Percentiles
    header: dict[str, Any]
    failures: list[str] = field(default_factory=list)


GOOD = {"file": "a.bin", "size": 12, "passed": True, "stats": [{"name": "w", "shape": [2, 3], "snr_db": None}],
        "limits": {"low": 0, "high": 0.5}, "percentiles": {"p50": 0.1, "p99.9": 2}, "header": {"x": [1]},
        "failures": [], "unknown": "ignored"}


def test_a_good_record_loads_into_its_types():
    r = load(Record, GOOD, "r.json")
    assert r == Record("a.bin", 12, True, [Stat("w", [2, 3])], {"low": 0, "high": 0.5}, {"p50": 0.1, "p99.9": 2},
                       {"x": [1]})


@pytest.mark.parametrize(("change", "message"), [
    ({"size": "12"}, "r.json: size must be an integer, got a string"),
    ({"size": True}, "r.json: size must be an integer, got a boolean"),
    ({"passed": 1}, "r.json: passed must be true or false, got an integer"),
    ({"stats": [{"name": "w", "shape": [2, "3"]}]}, r"r.json: stats\[0\].shape\[1\] must be an integer"),
    ({"stats": [{"name": "w", "shape": [2], "snr_db": "inf"}]}, r"r.json: stats\[0\].snr_db must be a number or null"),
    ({"stats": {}}, "r.json: stats must be a list, got an object"),
    ({"limits": {"low": 0}}, "r.json: missing field 'limits.high'"),
    ({"percentiles": {"p50": 1}}, "r.json: missing field 'percentiles.p99.9'"),
    ({"header": []}, "r.json: header must be an object, got a list"),
    ({"file": None}, "r.json: file must be a string, got null"),
])
def test_a_wrong_field_is_one_error_naming_it(change, message):
    with pytest.raises(Llama2binError, match=message):
        load(Record, GOOD | change, "r.json")


def test_a_missing_field_is_named_unless_it_may_be_null():
    bad = {k: v for k, v in GOOD.items() if k != "stats"}
    with pytest.raises(Llama2binError, match="r.json: missing field 'stats'"):
        load(Record, bad, "r.json")
    # a default that is not None is for code: a file without the field is truncated or foreign
    with pytest.raises(Llama2binError, match="r.json: missing field 'failures'"):
        load(Record, {k: v for k, v in GOOD.items() if k != "failures"}, "r.json")
    # an optional field (`X | None = None`) may be absent: files from before it was added still load
    assert load(Record, GOOD | {"stats": [{"name": "w", "shape": []}]}, "r.json").stats[0].snr_db is None


def test_not_an_object_and_not_a_finite_number():
    with pytest.raises(Llama2binError, match="r.json must be an object, got a list"):
        load(Record, [], "r.json")
    with pytest.raises(Llama2binError, match="x must be a number"):
        check(float("nan"), float, "x")
    assert check(3, float, "x") == 3 and check(None, int | None, "x") is None


def test_a_union_reports_the_deeper_error_of_the_matching_kind():
    with pytest.raises(Llama2binError, match=r"^r.json: stats\[1\] must be an integer, got a string$"):
        check([1, "2"], list[int] | None, "r.json", "stats")
    with pytest.raises(Llama2binError, match=r"^r.json: x must be an integer or a string, got a boolean$"):
        check(True, int | str, "r.json", "x")


@dataclass
class Verdict(Checked):
    failures: list[str]

    def json_loaded(self, value, where, path):
        derived(value, "passed", not self.failures, where, path)


def test_derived_keys_are_checked_by_the_class_hook():
    assert load(Verdict, {"failures": [], "passed": True}, "v.json").failures == []
    with pytest.raises(Llama2binError, match="^v.json: q.passed must be true or false, got a string$"):
        check({"failures": [], "passed": "yes"}, Verdict, "v.json", "q")
    with pytest.raises(Llama2binError, match="^v.json: passed is true, but the fields it follows from give false$"):
        load(Verdict, {"failures": ["x"], "passed": True}, "v.json")
    with pytest.raises(Llama2binError, match="^v.json: missing field 'passed'$"):
        load(Verdict, {"failures": []}, "v.json")
