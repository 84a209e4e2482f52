"""The error a bad configuration raises, and the two checks every part's validation uses.

Kept free of JAX and of the config itself, so parts, the config and the entry points can
all raise the same error without importing each other.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class ConfigError(ValueError):
    """A configuration value outside its allowed range; the message names the fix."""


def check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def one_of(value: Any, allowed: Iterable, key: str) -> None:
    allowed = tuple(allowed)
    check(value in allowed, f"{key}={value!r} is not known; choose one of {', '.join(map(str, allowed))}")
