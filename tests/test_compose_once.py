"""A sweep composes each job's config once (experiments/train.py's compose_each_job_once): the
launcher takes the config the sweeper's check composed, equal to a composition of its own."""

from pathlib import Path

from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.core_plugins import basic_sweeper
from hydra._internal.utils import create_config_search_path
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, RunMode
from omegaconf import OmegaConf

from experiments import train

CONF = Path(__file__).resolve().parent.parent / "conf"


def test_the_launcher_takes_the_config_the_check_composed(monkeypatch):
    compositions = []
    real = ConfigLoaderImpl.load_sweep_config

    def counted(self, master_config, sweep_overrides):
        compositions.append(list(sweep_overrides))
        return real(self, master_config, sweep_overrides)

    monkeypatch.setattr(Sweeper, "validate_batch_is_legal", Sweeper.validate_batch_is_legal)
    monkeypatch.setattr(ConfigLoaderImpl, "load_sweep_config", counted)  # restored after the test
    train.compose_each_job_once()
    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(str(CONF)))
    master = loader.load_configuration("config", overrides=["seed=0,1"], run_mode=RunMode.MULTIRUN)
    sweeper = basic_sweeper.BasicSweeper(max_batch_size=None, params=None)  # as Hydra's scan left it
    sweeper.config, sweeper.hydra_context = master, HydraContext(config_loader=loader, callbacks=None)

    sweeper.validate_batch_is_legal([["seed=1"], ["seed=2", "model.hidden=[32]"]])
    assert compositions == [["seed=1"], ["seed=2", "model.hidden=[32]"]]
    one = loader.load_sweep_config(master, ["seed=1"])
    two = loader.load_sweep_config(master, ["seed=2", "model.hidden=[32]"])
    assert len(compositions) == 2, "the launcher composed a checked job again"
    assert (one.seed, two.seed, list(two.model.hidden)) == (1, 2, [32])

    again = loader.load_sweep_config(master, ["seed=1"])  # taken once: a second launch composes
    assert len(compositions) == 3
    assert OmegaConf.to_container(again) == OmegaConf.to_container(one)
    other = loader.load_configuration("config", overrides=[], run_mode=RunMode.MULTIRUN)
    loader.load_sweep_config(other, ["seed=2", "model.hidden=[32]"])  # another master: composed
    assert len(compositions) == 4
