"""What Meta and Hugging Face sources share: reading their JSON configs, and the one departure
from the formats a user may accept knowingly (a rotary base other than llama2.c's 10000)."""

from __future__ import annotations

import json
import math
import os
from typing import Any

from ..constants import ROPE_THETA
from ..errors import Llama2binError


def load_json_object(path: str, what: str) -> dict[str, Any]:
    """A JSON file that must hold an object; `what` says what the directory is missing otherwise."""
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise Llama2binError(f"{path}: no such file ({what})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise Llama2binError(f"{path}: not valid JSON: {e}") from None
    except OSError as e:
        raise Llama2binError(f"{path}: cannot read: {e.strerror}") from None
    if not isinstance(data, dict):
        raise Llama2binError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def require_dir(path: str, kind: str) -> None:
    if not os.path.exists(path):
        raise Llama2binError(f"{path}: no such directory")
    if not os.path.isdir(path):
        raise Llama2binError(f"{path}: not a directory (a {kind} checkpoint is a directory)")


def rope_theta_departure(where: str, field: str, value: Any, allow: bool) -> tuple[float, tuple[str, ...]]:
    """(theta, accepted departures). run.c/runq.c hard-code a rotary base of 10000: a model trained
    with another base runs there with wrong positions, so we refuse unless told `allow`."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise Llama2binError(f"{where}: {field} must be a positive number, got {value!r}")
    theta = float(value)
    if theta == ROPE_THETA:
        return theta, ()
    if not allow:
        raise Llama2binError(
            f"{where}: {field} = {theta:g}, but llama2.c's run.c/runq.c hard-code 10000; "
            "pass --allow-rope-theta to export anyway (the C readers would then use the wrong rotary base)"
        )
    return theta, (f"rope_theta={theta}",)
