"""Trained runs for notebooks and downstream code, without Hydra.

    run = aeflax.load_run("outputs/default/2026-11-25_03-41-27")
    codes = run.encode(images)          # uint8 [N, H, W(, C)] or float in [0, 1]
    images = run.decode(codes)          # float [N, H, W, C] in [0, 1]
    recon = run.reconstruct(images)
    new = run.sample(16)                # VAEs: from the prior

A run directory holds Hydra's resolved config (.hydra/config.yaml) and Orbax checkpoints
(checkpoints/); `load_run` rebuilds the model from the config and restores its variables.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Optional

import jax
import numpy as np
from flax import nnx
from numpy.typing import ArrayLike
from omegaconf import OmegaConf

from aeflax import checkpoint, evaluation, parts, training
from aeflax.config import Config
from aeflax.tracking import read_summary

CONFIG = Path(".hydra") / "config.yaml"
# image shapes of the datasets aeflax knows, so loading a run needs no data on disk
IMAGE_SHAPES = {"mnist": (28, 28, 1), "fashion_mnist": (28, 28, 1), "kmnist": (28, 28, 1),
                "cifar10": (32, 32, 3), "svhn_cropped": (32, 32, 3)}


def seed_config(*overrides: str) -> Config:
    """The seed config (Config's defaults, what `experiments/train.py` composes with no
    overrides) with `key=value` overrides, without Hydra: for scripts, notebooks and tests."""
    cfg = OmegaConf.structured(Config)
    cfg.merge_with_dotlist(list(overrides))
    return cfg


def load_config(run_dir: str | Path, overrides: Sequence[str] = ()) -> Config:
    """The run's resolved config as a typed OmegaConf node, with `key=value` overrides applied."""
    path = Path(run_dir) / CONFIG
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: {run_dir} is not a run directory of "
                                "experiments/train.py (it needs .hydra/config.yaml and checkpoints/)")
    cfg = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.load(path))
    cfg.merge_with_dotlist(list(overrides))
    return cfg


def image_shape(cfg: Config) -> tuple[int, int, int]:
    """The dataset's image shape: known by name, else read from the dataset itself."""
    if cfg.data.name in IMAGE_SHAPES:
        return IMAGE_SHAPES[cfg.data.name]
    from aeflax import data

    return data.load(cfg.data).image_shape


def train_size(cfg: Config) -> int:
    """The training split's size where the model keeps something of every training image (the
    Exemplar prior's codes: its checkpoint holds them), read from the run's data; else 0."""
    if not parts.bottleneck_of(cfg).exemplars:
        return 0
    from aeflax import data

    return len(data.load(cfg.data).train)


def restore(cfg: Config, run_dir: str | Path, shape: Sequence[int], epoch: Optional[int] = None,
            num_train: Optional[int] = None) -> tuple[nnx.GraphDef, training.TrainState]:
    """(graphdef, TrainState) restored from the run's checkpoint (the latest unless `epoch`);
    `num_train` (the training split's size, for bottleneck=exemplar) defaults to `train_size(cfg)`."""
    if not (Path(run_dir) / checkpoint.DIRNAME).is_dir():
        raise checkpoint.CheckpointError(f"{run_dir} has no {checkpoint.DIRNAME}/: nothing to load")
    num_train = train_size(cfg) if num_train is None else num_train
    graphdef, target = training.init_state(cfg, shape, steps_per_epoch=1, num_train=num_train)
    return graphdef, checkpoint.restore(checkpoint.manager(run_dir), target, epoch)


class Run:
    """A trained autoencoder with its config; every method takes and returns numpy arrays."""

    def __init__(self, run_dir: str | Path, cfg: Config, graphdef: nnx.GraphDef, state: training.TrainState,
                 shape: Sequence[int], batch_size: int = 1000):
        self.run_dir, self.cfg, self.graphdef, self.state = Path(run_dir), cfg, graphdef, state
        self.image_shape = tuple(shape)
        self.batch_size = batch_size
        self.model = training.merge(graphdef, state)
        model = self.model
        self._encode = evaluation.jit_model_fn(lambda m, x: {"code": m.encode(x)["code"]}, model)
        self._decode = evaluation.jit_model_fn(lambda m, z: {"image": m.decode(z)}, model)
        self._recon = evaluation.jit_model_fn(lambda m, x: {"image": m(x)["recon"]}, model)

    @property
    def summary(self) -> Optional[dict]:
        """The run's summary.json (final metrics), if any."""
        return read_summary(self.run_dir)

    @property
    def epoch(self) -> int:
        return int(self.state.epoch)

    def images(self, images: ArrayLike) -> np.ndarray:
        """Float [N, H, W, C] in [0, 1] from uint8 or float images, [N, H, W] or flat [N, H*W*C]."""
        x = np.asarray(images)
        x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
        if x.ndim == 2 or (x.ndim == 3 and self.image_shape[-1] == 1):
            x = x.reshape(len(x), *self.image_shape)
        if x.shape[1:] != self.image_shape:
            raise ValueError(f"images of shape {x.shape[1:]} do not fit the model's {self.image_shape}")
        return x

    def encode(self, images: ArrayLike) -> np.ndarray:
        """The codes (the posterior mean for VAEs, the quantized vectors for VQ)."""
        return self._map(self._encode, self.images(images))["code"]

    def decode(self, codes: ArrayLike) -> np.ndarray:
        """Images in [0, 1] decoded from codes."""
        return self._map(self._decode, np.asarray(codes, np.float32))["image"]

    def reconstruct(self, images: ArrayLike) -> np.ndarray:
        """decode(encode(images)), in one compiled pass."""
        return self._map(self._recon, self.images(images))["image"]

    def sample(self, n: int, seed: int = 0, like: Optional[ArrayLike] = None) -> np.ndarray:
        """n generated images: from the prior for the VAE family; for other models from a
        density fit to the codes of the images `like` (which must then be given): eval.sampler, a
        diagonal Gaussian or a Gaussian mixture."""
        if not parts.bottleneck_of(self.cfg).posterior and like is None:
            raise ValueError(f"a {self.cfg.bottleneck.kind} autoencoder has no prior: pass like=<images> "
                             "to sample from a Gaussian fit to their codes")
        codes = None if like is None else self.encode(like)
        z = evaluation.sample_codes(self.cfg, self.model, codes, jax.random.key(seed), n)
        return self.decode(np.asarray(z))

    def _map(self, f: Callable, x: np.ndarray) -> dict[str, np.ndarray]:
        return evaluation.map_batches(f, (x,), self.batch_size)

    def __repr__(self) -> str:
        c = self.cfg
        return (f"Run({str(self.run_dir)!r}, {c.model.architecture}/{c.bottleneck.kind} code "
                f"{c.bottleneck.code_size}, loss {c.loss.name}, epoch {self.epoch}, "
                f"{math.prod(self.image_shape)} pixels)")


def load_run(run_dir: str | Path, epoch: Optional[int] = None, overrides: Sequence[str] = ()) -> Run:
    """Load a trained run directory (config + checkpoint): the latest checkpoint unless `epoch`."""
    cfg = load_config(run_dir, overrides)
    shape = image_shape(cfg)
    graphdef, state = restore(cfg, run_dir, shape, epoch)
    return Run(run_dir, cfg, graphdef, state, shape)


__all__ = ["Run", "load_config", "load_run", "seed_config"]
