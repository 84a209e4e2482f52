"""Nested config trees as flat dotted keys: the one flattening every part of aeflax uses (run
settings, vmap grouping, tables). Free of JAX, so tables load fast."""

from __future__ import annotations


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}; leaves (lists included) are kept as they are."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
