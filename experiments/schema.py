"""Registers aeflax's dataclass config as Hydra's structured schema (`config_schema`).

Every group file in conf/ is merged into this typed node, so an unknown key or a value of
the wrong type fails at the command line with Hydra's message.
"""

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from aeflax.config import Config, unnamed_keys


def register() -> None:
    """The schema, and `${aeflax.unnamed_keys:...}` (conf/config.yaml): the override keys left out
    of sweep job directory names, derived from the config's field metadata."""
    ConfigStore.instance().store(name="config_schema", node=Config)
    OmegaConf.register_new_resolver("aeflax.unnamed_keys", lambda *extra: [*extra, *unnamed_keys()],
                                    replace=True)
