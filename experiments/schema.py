"""Registers aeflax's dataclass config as Hydra's structured schema (`config_schema`).

Every group file in conf/ is merged into this typed node, so an unknown key or a value of
the wrong type fails at the command line with Hydra's message.
"""

from hydra.core.config_store import ConfigStore

from aeflax.config import Config


def register() -> None:
    ConfigStore.instance().store(name="config_schema", node=Config)
