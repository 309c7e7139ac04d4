"""JSON checked against the types that describe it, at load.

A result llama2bin wrote (verify JSON, a C check, a report) may come back hand-edited, truncated
or foreign. `load(cls, value, where)` builds a dataclass from JSON and `check(value, tp, where)`
checks any value against a type (TypedDicts included), field by field against the annotations,
so a wrong file is one error naming the file and the field (`x.json: tensors[3].rel_err must be
a number, got a string`; `x.json: missing field 'functional.kld_mean'`), and code that reads the
loaded value never has to guard itself.

Understood: bool, int, float (an int is accepted as one), str, None, Any, `X | Y`, list[X],
tuple[X, ...], dict[str, X], TypedDicts (their required and optional keys) and dataclasses
(their fields; keys that are no field are ignored). A dataclass field may be absent from the
JSON only if it may be null and defaults to None (absent reads as null): the defaults of the
others are for code, and a file without them is truncated or foreign. So a new optional field
is one annotation, `x: X | None = None`, and files written before it still load.
"""

from __future__ import annotations

import dataclasses
import functools
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


@functools.cache
def _hints(tp: Any) -> dict[str, Any]:
    return typing.get_type_hints(tp)  # resolving string annotations is most of the cost of a load


def _at(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def field_error(where: str, path: str, what: str) -> Llama2binError:
    """The error of the field `path` of the file `where`: `x.json: tensors[3].rel_err {what}`."""
    return Llama2binError(f"{where}: {path} {what}" if path else f"{where} {what}")


_fail = field_error


def _missing(where: str, path: str, key: str) -> Llama2binError:
    return Llama2binError(f"{where}: missing field {_at(path, key)!r}")


def check(value: Any, tp: Any, where: str, path: str = "") -> Any:
    """`value` if it is of type `tp` (as JSON can hold it), else one Llama2binError naming the
    file `where` and the field `path` in it. Dataclasses are built (see `load`); everything else
    is returned as it is."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        for option in options:
            if _shallow_match(value, option):  # the option of the value's own kind reports a deeper error
                return check(value, option, where, path)
        raise _fail(where, path, f"must be {' or '.join(_describe(o) for o in options)}, got {_got(value)}")
    if tp in _NAMES:
        if not _shallow_match(value, tp):
            raise _fail(where, path, f"must be {_NAMES[tp]}, got {_got(value)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise _fail(where, path, f"must be a list, got {_got(value)}")
        (item,) = typing.get_args(tp)[:1] or (Any,)
        return [check(v, item, where, _at(path, i)) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise _fail(where, path, f"must be an object, got {_got(value)}")
        _, item = typing.get_args(tp) or (str, Any)
        return {k: check(v, item, where, _at(path, k)) for k, v in value.items()}
    if typing.is_typeddict(tp):
        if not isinstance(value, dict):
            raise _fail(where, path, f"must be an object, got {_got(value)}")
        hints = _hints(tp)
        for key in sorted(tp.__required_keys__):
            if key not in value:
                raise _missing(where, path, key)
        return {k: check(v, hints[k], where, _at(path, k)) if k in hints else v for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return load(tp, value, where, path)
    raise TypeError(f"typed_json cannot check {tp!r}")  # a programming error, not bad input


def _shallow_match(value: Any, tp: Any) -> bool:
    """Whether `value` is of the JSON kind of `tp` (its items not looked at)."""
    tp = typing.get_origin(tp) or tp
    if tp is Any:
        return True
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if tp is str:
        return isinstance(value, str)
    if tp in (list, tuple):
        return isinstance(value, list)
    return isinstance(value, dict)  # dict, TypedDicts, dataclasses


def _admits_none(tp: Any) -> bool:
    return tp is Any or tp is type(None) or (typing.get_origin(tp) in (typing.Union, types.UnionType)
                                              and type(None) in typing.get_args(tp))


def _describe(tp: Any) -> str:
    if tp in _NAMES:
        return _NAMES[tp]
    origin = typing.get_origin(tp)
    return {list: "a list", tuple: "a list", dict: "an object"}.get(origin, "an object")  # type: ignore[arg-type]


def load(cls: type[T], value: Any, where: str, path: str = "") -> T:
    """The dataclass `cls` from a JSON object, every field checked against its annotation;
    errors name the file `where` and the field below `path`."""
    if not isinstance(value, dict):
        raise _fail(where, path, f"must be an object, got {_got(value)}")
    hints = _hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if not f.init or f.name.startswith("_"):
            continue
        if f.name not in value:
            if f.default is not None or not _admits_none(hints[f.name]):
                raise _missing(where, path, f.name)
            continue  # absent reads as null: a new optional field does not make older files wrong
        kwargs[f.name] = check(value[f.name], hints[f.name], where, _at(path, f.name))
    loaded = cls(**kwargs)
    if isinstance(loaded, Checked):
        loaded.json_loaded(value, where, path)
    return loaded


class Checked:
    """Base of a dataclass whose JSON holds more than its fields' types say (keys derived from
    them, like `passed`; values only some of which are valid): `load` calls `json_loaded` on
    the built object with the JSON it came from."""

    def json_loaded(self, value: dict[str, Any], where: str, path: str) -> None:
        """Raise `field_error(where, <field below path>, ...)` for what the types cannot say."""


def hints(tp: Any) -> dict[str, Any]:
    """The resolved annotations of a dataclass or TypedDict (cached)."""
    return _hints(tp)


def derived(value: dict[str, Any], key: str, expected: Any, where: str, path: str = "") -> None:
    """A key a writer repeats though it follows from the other fields (`passed`, for readers of
    the JSON): it must be there, of the type `expected` has, and agree with it."""
    field = _at(path, key)
    if key not in value:
        raise _missing(where, path, key)
    got = value[key]
    if expected is not None and not _shallow_match(got, type(expected)):
        raise _fail(where, field, f"must be {_NAMES.get(type(expected), 'a ' + type(expected).__name__)}, got {_got(got)}")
    if got != expected or (got is None) != (expected is None):
        raise _fail(where, field, f"is {_short(got)}, but the fields it follows from give {_short(expected)}")


def _short(value: Any) -> str:
    import json

    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."
