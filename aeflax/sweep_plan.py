"""What a multirun planned: the values each swept key takes, read from its multirun.yaml.

Free of pandas, so a training job (tracking: the order of a run id's keys) reads it without
loading what tables need.
"""

from __future__ import annotations

from pathlib import Path

import yaml

BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def planned_values(sweep_dir: str | Path) -> dict[str, list]:
    """The values each swept key takes in a basic-sweeper multirun (its multirun.yaml)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import Transformer

    path = Path(sweep_dir) / "multirun.yaml"
    if not path.exists():
        return {}
    hydra_cfg = (yaml.safe_load(path.read_text()) or {}).get("hydra", {})
    sweeper = hydra_cfg.get("sweeper") or {}
    if sweeper.get("_target_") != BASIC_SWEEPER:
        return {}  # a search (Optuna) plans no grid
    lines = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
    lines += hydra_cfg.get("overrides", {}).get("task", [])
    planned = {}
    for override in OverridesParser.create().parse_overrides(lines):
        if override.is_sweep_override() and override.is_discrete_sweep():
            planned[override.key_or_group] = list(override.sweep_iterator(transformer=Transformer.identity))
        elif not override.is_sweep_override():
            planned.pop(override.key_or_group, None)  # the command line fixed a swept key
    return planned
