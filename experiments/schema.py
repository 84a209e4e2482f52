"""Registers aeflax's dataclass config as Hydra's structured schema (`config_schema`), and
`experiment=<variant>` as another name for `variant=<variant>`.

Every group file in conf/ is merged into this typed node, so an unknown key or a value of
the wrong type fails at the command line with Hydra's message.

conf/variant/ holds the named variants (what a model is), conf/experiment/ what to run with
them (sweeps, reproductions, anomaly runs). `experiment=vae` kept working when the variants
left conf/experiment/: each variant is also an `experiment` option whose defaults list
picks it (`override /variant: vae`), so both spellings compose the same config.
"""

from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from aeflax.config import Config, unnamed_keys

CONF = Path(__file__).resolve().parent.parent / "conf"


def variants() -> list[str]:
    """The named variants: the files of conf/variant/."""
    return sorted(p.stem for p in (CONF / "variant").glob("*.yaml"))


def register() -> None:
    """The schema, the variants as `experiment` options (the old spelling), and
    `${aeflax.unnamed_keys:...}` (conf/config.yaml): the override keys left out of sweep job
    directory names, derived from the config's field metadata."""
    store = ConfigStore.instance()
    store.store(name="config_schema", node=Config)
    for name in variants():
        store.store(group="experiment", name=name, package="_global_",
                    node={"defaults": [{"override /variant": name}]})
    OmegaConf.register_new_resolver("aeflax.unnamed_keys", lambda *extra: [*extra, *unnamed_keys()],
                                    replace=True)
