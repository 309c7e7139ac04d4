"""The rotary settings of a Hugging Face config.json, read as transformers reads them.

transformers < 5 wrote top-level `rope_theta` and `rope_scaling` (null when plain); transformers 5
writes `rope_parameters` {rope_theta, rope_type, ...}. Both spellings are read; the rope types
llama2bin computes are default, linear and llama3 (rope_freqs.py); others are refused by name.
"""

from __future__ import annotations

from typing import Any

from ..errors import Llama2binError
from ..rope_freqs import LINEAR, LLAMA3, RopeScaling
from .policy import int_field, positive_float_field, type_name

# Keys each rope type may carry (transformers' _validate_*_rope_parameters), besides
# rope_type/type, rope_theta and a partial_rotary_factor of 1.
_ROPE_KEYS = {
    "default": (),
    LINEAR: ("factor",),
    LLAMA3: ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
}
_ROPE_COMMON_KEYS = {"rope_type", "type", "rope_theta", "partial_rotary_factor"}


def rope_settings(cfg: dict[str, Any], path: str) -> tuple[Any, str, RopeScaling | None, str]:
    """(rope_theta, the field it came from, the scaling, the field that holds it), read as
    transformers does. transformers < 5 wrote top-level rope_theta and rope_scaling (null when
    plain); transformers 5 writes rope_parameters {rope_theta, rope_type, ...}. A non-empty
    rope_scaling wins over rope_parameters (`convert_rope_params_to_dict`), `rope_type` over
    the older `type`, a rope_theta inside the dict over the top-level one. Where transformers
    would silently prefer one of two contradicting values, we refuse instead."""
    theta = cfg.get("rope_theta")
    theta_field = "rope_theta"
    dicts: dict[str, dict[str, Any]] = {}
    for key in ("rope_scaling", "rope_parameters"):
        params = cfg.get(key)
        if params is None or params == {}:
            continue
        if not isinstance(params, dict):
            raise Llama2binError(f"{path}: {key} must be an object, got {type_name(params)} {params!r:.60}")
        dicts[key] = params
    if len(dicts) == 2 and _without_theta(dicts["rope_scaling"]) != _without_theta(dicts["rope_parameters"]):
        raise Llama2binError(f"{path}: rope_scaling and rope_parameters disagree: which rotary embedding is meant?")
    key = next(iter(dicts), "rope_parameters")
    params = dicts.get(key, {})
    if "rope_theta" in params:
        if theta is not None and params["rope_theta"] != theta:
            raise Llama2binError(f"{path}: {key}.rope_theta = {params['rope_theta']!r} contradicts rope_theta = {theta!r}")
        theta, theta_field = params["rope_theta"], f"{key}.rope_theta"
    rope_type = params.get("rope_type", params.get("type", "default"))
    if not isinstance(rope_type, str) or rope_type not in _ROPE_KEYS:
        raise Llama2binError(f"{path}: {key} has rope_type {rope_type!r}: llama2bin computes the default, linear and "
                             "llama3 rotary embeddings only")
    partial = params.get("partial_rotary_factor")
    if partial not in (None, 1, 1.0):
        raise Llama2binError(f"{path}: {key}.partial_rotary_factor = {partial!r}: llama2.c rotates whole heads")
    allowed = _ROPE_KEYS[rope_type]
    extra = sorted(set(params) - _ROPE_COMMON_KEYS - set(allowed))
    if extra:
        raise Llama2binError(f"{path}: {key}.{extra[0]} = {params[extra[0]]!r:.60} is not a parameter of rope_type "
                             f"{rope_type!r}: rope scaling llama2bin does not compute")
    theta = 10000.0 if theta is None else theta
    if rope_type == "default":
        return theta, theta_field, None, key
    values = dict(params)
    if rope_type == LLAMA3 and "original_max_position_embeddings" not in values:  # transformers' default
        values["original_max_position_embeddings"] = cfg.get("max_position_embeddings")
    for name in allowed:
        if values.get(name) is None:
            raise Llama2binError(f"{path}: {key} has rope_type {rope_type!r} but no {name}")
    where = f"{key}."
    factor = positive_float_field(path, where + "factor", values["factor"])
    if rope_type == LINEAR:
        return theta, theta_field, RopeScaling(LINEAR, factor), key
    low = positive_float_field(path, where + "low_freq_factor", values["low_freq_factor"])
    high = positive_float_field(path, where + "high_freq_factor", values["high_freq_factor"])
    if high <= low:
        raise Llama2binError(f"{path}: {key}.high_freq_factor = {high:g} is not above low_freq_factor = {low:g}: "
                             "llama3 scaling interpolates between them")
    original = int_field(path, where + "original_max_position_embeddings", values["original_max_position_embeddings"])
    if original <= 0:
        raise Llama2binError(f"{path}: {key}.original_max_position_embeddings must be positive, got {original}")
    return theta, theta_field, RopeScaling(LLAMA3, factor, low, high, original), key


def _without_theta(params: dict[str, Any]) -> dict[str, Any]:
    rest = {k: v for k, v in params.items() if k not in ("rope_theta", "type")}
    rest.setdefault("rope_type", params.get("type", "default"))
    return rest
