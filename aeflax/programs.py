"""Compiled programs shared by the runs of one process (the jobs of a sweep).

Runs that differ only in the seed and in traced values (`hp`, keys, noise levels) run the same
program when those values reach it as arguments: `shared` hands every such run the jitted
function built for the first one, so XLA compiles it once per sweep instead of once per run.
Two runs share a program when their configs agree on every field but the seed and the traced
ones, switch on the same parts, and their models have the same graph.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Callable, Hashable
from typing import Any

import jax

from aeflax import parts
from aeflax.flat import flatten

LIMIT = 64  # programs kept (each holds its compiled executables); the least recently used go first
_programs: collections.OrderedDict = collections.OrderedDict()


def program_key(cfg: Any) -> str:
    """What a run's programs depend on: the config but for the seed and the traced fields (which
    travel as arguments), and the parts it switches on (a zero weight removes a term)."""
    from aeflax.config import as_dict, traced_fields  # here: the config imports the parts, which import this

    varied = {"seed", *traced_fields()}
    fields = {k: v for k, v in flatten(as_dict(cfg)).items() if k not in varied}
    return json.dumps({"config": fields, "parts": parts.active_names(cfg)}, sort_keys=True, default=str)


def shared(name: str, cfg: Any, graphdef: Hashable, build: Callable[[], Callable], *static: Hashable,
           **jit_kwargs) -> Callable:
    """`jax.jit(build(), **jit_kwargs)`, built once per program and reused by later runs.

    `build` must read nothing of the run but `cfg` (None: a program of the model alone),
    `graphdef` and `static` (sizes, flags): every value that differs between runs of one
    program is an argument of the function.
    """
    key = (name, None if cfg is None else program_key(cfg), graphdef, static)
    if key in _programs:
        _programs.move_to_end(key)
        return _programs[key]
    fn = _programs[key] = jax.jit(build(), **jit_kwargs)
    if len(_programs) > LIMIT:
        _programs.popitem(last=False)
    return fn
