"""JSON checked against the types that describe it, at load.

A result llama2bin wrote (verify JSON, a C check, a report) may come back hand-edited, truncated
or foreign. `load(cls, value, where)` builds a dataclass from JSON and `check(value, tp, where)`
checks any value against a type (TypedDicts included), field by field against the annotations,
so a wrong file is one error naming the file and the field (`x.json: tensors[3].rel_err must be
a number, got a string`), and code that reads the loaded value never has to guard itself.

Understood: bool, int, float (an int is accepted as one), str, None, Any, `X | Y`, list[X],
tuple[X, ...], dict[str, X], TypedDicts (their required and optional keys) and dataclasses
(their fields; a field with a default may be absent; keys that are no field are ignored).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, TypeVar

from .errors import Llama2binError

T = TypeVar("T")

_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}


def _got(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "an object"}.get(type(value), type(value).__name__)


def _hints(tp: Any) -> dict[str, Any]:
    return typing.get_type_hints(tp)


def check(value: Any, tp: Any, where: str) -> Any:
    """`value` if it is of type `tp` (as JSON can hold it), else one Llama2binError at `where`.
    Dataclasses are built (use `load`); everything else is returned as it is."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        for option in options:
            try:
                return check(value, option, where)
            except Llama2binError:
                continue
        raise Llama2binError(f"{where} must be {' or '.join(_describe(o) for o in options)}, got {_got(value)}")
    if tp is type(None):
        if value is not None:
            raise Llama2binError(f"{where} must be null, got {_got(value)}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise Llama2binError(f"{where} must be true or false, got {_got(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise Llama2binError(f"{where} must be an integer, got {_got(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise Llama2binError(f"{where} must be a number, got {_got(value)}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise Llama2binError(f"{where} must be a string, got {_got(value)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise Llama2binError(f"{where} must be a list, got {_got(value)}")
        (item,) = typing.get_args(tp)[:1] or (Any,)
        return [check(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise Llama2binError(f"{where} must be an object, got {_got(value)}")
        _, item = typing.get_args(tp) or (str, Any)
        return {k: check(v, item, f"{where}.{k}") for k, v in value.items()}
    if typing.is_typeddict(tp):
        if not isinstance(value, dict):
            raise Llama2binError(f"{where} must be an object, got {_got(value)}")
        hints = _hints(tp)
        for key in tp.__required_keys__:
            if key not in value:
                raise Llama2binError(f"{where}: missing field {key!r}")
        return {k: check(v, hints[k], f"{where}.{k}") if k in hints else v for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return load(tp, value, where)
    raise TypeError(f"typed_json cannot check {tp!r}")  # a programming error, not bad input


def _describe(tp: Any) -> str:
    if tp in _NAMES:
        return _NAMES[tp]
    origin = typing.get_origin(tp)
    return {list: "a list", tuple: "a list", dict: "an object"}.get(origin, "an object")  # type: ignore[arg-type]


def load(cls: type[T], value: Any, where: str) -> T:
    """The dataclass `cls` from a JSON object, every field checked against its annotation."""
    if not isinstance(value, dict):
        raise Llama2binError(f"{where} must be an object, got {_got(value)}")
    hints = _hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if not f.init or f.name.startswith("_"):
            continue
        if f.name not in value:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise Llama2binError(f"{where}: missing field {f.name!r}")
            continue
        kwargs[f.name] = check(value[f.name], hints[f.name], f"{where}.{f.name}")
    return cls(**kwargs)
