"""What Meta and Hugging Face sources share: reading their JSON configs, and the one departure
from the formats a user may accept knowingly (a rotary base other than llama2.c's 10000, or rope
scaling)."""

from __future__ import annotations

import math
import os
from typing import Any

from ..constants import ROPE_THETA
from ..errors import Llama2binError
from ..rope_freqs import RopeScaling
from ..safe_io import load_json


def load_json_object(path: str, what: str) -> dict[str, Any]:
    """A JSON file that must hold an object; `what` says what the directory is missing otherwise.
    Read through safe_io: a regular file, size-capped, strict JSON (no NaN, no duplicate keys)."""
    data = load_json(path, what)
    if not isinstance(data, dict):
        raise Llama2binError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def require_dir(path: str, kind: str) -> None:
    if not os.path.exists(path):
        raise Llama2binError(f"{path}: no such directory")
    if not os.path.isdir(path):
        raise Llama2binError(f"{path}: not a directory (a {kind} checkpoint is a directory)")


def rope_theta_departure(where: str, field: str, value: Any, allow: bool) -> tuple[float, tuple[str, ...]]:
    """(theta, accepted departures) of a model without rope scaling: see `rope_departures`."""
    return rope_departures(where, field, value, None, "", allow)


def rope_departures(where: str, theta_field: str, theta_value: Any, scaling: RopeScaling | None, scaling_field: str,
                    allow: bool) -> tuple[float, tuple[str, ...]]:
    """(theta, accepted departures). run.c/runq.c hard-code unscaled RoPE at base 10000: a model
    trained with another base, or with rope scaling (Llama 3.1/3.2), runs there with wrong
    positions, so we refuse unless told `allow`. `scaling_field` names where the scaling was read."""
    theta = positive_float_field(where, theta_field, theta_value)
    departs = ([f"{theta_field} = {theta:g}"] if theta != ROPE_THETA else []) + \
        ([f"{scaling_field} is {scaling.describe()}"] if scaling is not None else [])
    if not departs:
        return theta, ()
    if not allow:
        raise Llama2binError(
            f"{where}: {' and '.join(departs)}, but llama2.c's run.c/runq.c compute RoPE at 10000 without scaling; "
            "pass --allow-rope-theta to export anyway (the C readers would then use the wrong rotary positions)"
        )
    return theta, tuple(([f"rope_theta={theta}"] if theta != ROPE_THETA else []) +
                        ([scaling.departure()] if scaling is not None else []))


# ---- field types: a config value is checked for its type before anything uses it -----------


def type_name(value: Any) -> str:
    return "null" if value is None else {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def int_field(where: str, field: str, value: Any) -> int:
    """`value` as an int: a bool, a string or a fractional number (64.9, never truncated) is refused.
    An integral float (4096.0) is accepted as the int it equals. Bounds are ModelConfig.validate's."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    raise Llama2binError(f"{where}: {field} must be an integer, got {type_name(value)} {value!r:.60}")


def optional_int_field(where: str, field: str, value: Any) -> int | None:
    return None if value is None else int_field(where, field, value)


def positive_float_field(where: str, field: str, value: Any) -> float:
    """A finite number > 0 (an epsilon, a rotary base): NaN, inf, 0, strings and bools are refused."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise Llama2binError(f"{where}: {field} must be a positive finite number, got {type_name(value)} {value!r:.60}")
    return float(value)


def object_field(where: str, field: str, value: Any) -> dict[str, Any]:
    """A JSON object (a dict): anything else is refused before a `.get` on it can fail."""
    if not isinstance(value, dict):
        raise Llama2binError(f"{where}: {field} must be an object, got {type_name(value)} {value!r:.60}")
    return value


def bool_field(where: str, field: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise Llama2binError(f"{where}: {field} must be true or false, got {type_name(value)} {value!r:.60}")
    return value
