"""Benchmark: aeflax against Keras (TensorFlow and JAX backends) and a PyTorch loop, one machine.

    python scripts/bench.py                  # the full table -> docs/benchmark.md (minutes)
    python scripts/bench.py --smoke          # tiny sizes, seconds (CI)
    python scripts/bench.py --readme         # also replace the <!-- bench --> block of README.md

Every framework trains the same three models on the same Fashion-MNIST arrays: the seed
dense AE (784-64-784, batch 256), the tutorial conv AE (batch 32 and 256) and the VAE of
`experiment=vae` (784-512-256-z32, batch 256). Each runs in its own process (Keras reads
its backend at import), trains EPOCHS epochs on the first N images and keeps its fastest
epoch after the first (which compiles), scaled to 60k images; the frameworks take turns,
`--rounds` times, and each keeps its best round. The "matmul limit" is the time the
model's own matmuls (forward and backward, the shapes its aeflax formulation runs) take
back to back in one compiled loop, timed in the aeflax worker after each of its epochs, so
that the ratio epoch / limit compares two figures taken on the same machine state. Needs
the [bench] extra (keras, tensorflow-cpu, torch, pythae), never needed to train.

The `peers` part trains the peers' own VAEs on dynamically binarized Fashion-MNIST, each
beside aeflax configured to the same architecture and batch (PEER_VAES): pythae 0.1.2's
default VAE and the official Flax VAE example; it reports their fastest epochs and the test
-ELBO after PEER_EPOCHS epochs over `--seeds` seeds, all on the same binarized test images.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FULL = 60000
MODELS = {  # name: (batch sizes, train images measured in the full run)
    "dense": ((256,), 60000), "conv": ((32, 256), 12000), "vae": ((256,), 60000)}
EPOCHS = 6  # timed epochs per framework and model; the first compiles and is not counted
FRAMEWORKS = ("aeflax", "keras-tensorflow", "keras-jax", "pytorch")


# --- workers: one framework, one model, in their own process ---------------------------

def load_images(n: int):
    from aeflax import data
    from aeflax.config import DataConfig

    return data.load(DataConfig(train_limit=n)).train.images


def timed_epochs(run_epoch, epochs: int = EPOCHS, between=None) -> tuple[float, ...]:
    """Wall and CPU seconds (all threads) of the fastest epoch after the first (which compiles).

    The best of several epochs, for every framework alike: on this shared 2-core VM a
    process's speed switches between levels up to ~2x apart for seconds at a time (the
    same for a bare matmul loop), and the minimum is the figure that repeats. `between`
    (the matmul limit) runs after every epoch, so both see the same machine; its fastest
    wall time is returned third.
    """
    times, probes = [], []
    for _ in range(epochs):
        t0, c0 = time.perf_counter(), time.process_time()
        run_epoch()
        times.append((time.perf_counter() - t0, time.process_time() - c0))
        if between is not None:
            t0 = time.perf_counter()
            between()
            probes.append(time.perf_counter() - t0)
    return (*min(times[1:]), *([min(probes[1:])] if probes else []))


def worker_aeflax(model: str, n: int, batch: int) -> tuple[float, float]:
    from aeflax import runtime

    runtime.configure()  # as experiments/train.py: before this process's first JAX computation

    from aeflax import training
    from aeflax.api import seed_config

    overrides = {"dense": [], "conv": ["model.architecture=conv", "bottleneck.kind=identity"],
                 "vae": ["model.hidden=[512,256]", "bottleneck.kind=gaussian", "bottleneck.code_size=32",
                         "loss.name=elbo"]}[model]
    run, *_ = aeflax_trainer(seed_config(*overrides, f"train.batch_size={batch}"), n)
    # the matmul limit of the same epoch, timed after each epoch in this process
    limit = matmul_loop(step_matmuls(model, batch), training.steps_per_epoch(n, batch))
    return timed_epochs(run, between=lambda: limit().block_until_ready())


def aeflax_trainer(cfg, n: int):
    """(run one epoch, [state], graphdef, hp): aeflax's compiled epoch on the first n images, as fit
    runs it (state donated, the metrics read once per epoch)."""
    import jax

    from aeflax import training

    images = jax.device_put(load_images(n))
    steps = training.steps_per_epoch(n, cfg.train.batch_size)
    graphdef, state = training.init_state(cfg, images.shape[1:], steps)
    hp = training.hyperparameters(cfg, steps)
    epoch = jax.jit(training.make_train_epoch(graphdef, cfg, n), donate_argnums=0)
    box = [state]

    def run():
        box[0], metrics = epoch(box[0], images, hp)
        jax.block_until_ready(metrics)

    return run, box, graphdef, hp


def keras_model(model: str):
    import keras
    from keras import layers, ops

    if model == "dense":  # the tutorial's Autoencoder
        m = keras.Sequential([keras.Input((28, 28, 1)), layers.Flatten(), layers.Dense(64, activation="relu"),
                              layers.Dense(784, activation="sigmoid"), layers.Reshape((28, 28, 1))])
        return m, "mse"
    if model == "conv":  # the tutorial's Denoise model
        m = keras.Sequential([
            keras.Input((28, 28, 1)),
            layers.Conv2D(16, 3, activation="relu", padding="same", strides=2),
            layers.Conv2D(8, 3, activation="relu", padding="same", strides=2),
            layers.Conv2DTranspose(8, 3, strides=2, activation="relu", padding="same"),
            layers.Conv2DTranspose(16, 3, strides=2, activation="relu", padding="same"),
            layers.Conv2D(1, 3, activation="sigmoid", padding="same")])
        return m, "mse"

    class Sample(layers.Layer):
        def __init__(self):
            super().__init__()
            self.seed = keras.random.SeedGenerator(0)

        def call(self, mean, logvar):
            return mean + ops.exp(0.5 * logvar) * keras.random.normal(ops.shape(mean), seed=self.seed)

    x = keras.Input((28, 28, 1))
    h = layers.Dense(256, activation="relu")(layers.Dense(512, activation="relu")(layers.Flatten()(x)))
    mean, logvar = layers.Dense(32)(h), layers.Dense(32)(h)
    z = Sample()(mean, logvar)
    logits = layers.Dense(784)(layers.Dense(512, activation="relu")(layers.Dense(256, activation="relu")(z)))

    def neg_elbo(y_true, y_pred):
        lg, mu, lv = y_pred[:, :784], y_pred[:, 784:816], y_pred[:, 816:]
        xt = ops.reshape(y_true, (-1, 784))
        nll = ops.sum(ops.maximum(lg, 0) - lg * xt + ops.log1p(ops.exp(-ops.abs(lg))), axis=-1)
        kl = 0.5 * ops.sum(ops.exp(lv) + mu**2 - 1.0 - lv, axis=-1)
        return nll + kl

    return keras.Model(x, layers.Concatenate()([logits, mean, logvar])), neg_elbo


def worker_keras(model: str, n: int, batch: int) -> tuple[float, float]:
    import keras

    x = load_images(n).astype("float32") / 255.0
    m, loss = keras_model(model)
    m.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss)
    return timed_epochs(lambda: m.fit(x, x, batch_size=batch, epochs=1, shuffle=True, verbose=0))


def torch_model(model: str):
    from torch import nn

    if model == "dense":
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 784), nn.Sigmoid())
    if model == "conv":
        return nn.Sequential(
            nn.Conv2d(1, 16, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(16, 8, 3, stride=2, padding=1), nn.ReLU(),
            nn.ConvTranspose2d(8, 8, 3, stride=2, padding=1, output_padding=1), nn.ReLU(),
            nn.ConvTranspose2d(8, 16, 3, stride=2, padding=1, output_padding=1), nn.ReLU(),
            nn.Conv2d(16, 1, 3, padding=1), nn.Sigmoid())
    return nn.ModuleDict(dict(
        enc=nn.Sequential(nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU()),
        mean=nn.Linear(256, 32), logvar=nn.Linear(256, 32),
        dec=nn.Sequential(nn.Linear(32, 256), nn.ReLU(), nn.Linear(256, 512), nn.ReLU(),
                          nn.Linear(512, 784))))


def worker_pytorch(model: str, n: int, batch: int) -> tuple[float, float]:
    import torch
    import torch.nn.functional as F

    x_all = torch.from_numpy(load_images(n)).float().div(255.0).permute(0, 3, 1, 2).contiguous()
    m = torch_model(model)
    opt = torch.optim.Adam(m.parameters(), lr=1e-3, eps=1e-7)

    def loss_fn(x):
        if model != "vae":
            return F.mse_loss(m(x).reshape(x.shape), x)
        h = m["enc"](x)
        mu, lv = m["mean"](h), m["logvar"](h)
        logits = m["dec"](mu + torch.exp(0.5 * lv) * torch.randn_like(mu))
        nll = F.binary_cross_entropy_with_logits(logits, x.flatten(1), reduction="none").sum(-1)
        return (nll + 0.5 * (lv.exp() + mu**2 - 1 - lv).sum(-1)).mean()

    def run():
        perm = torch.randperm(n)
        for i in range(n // batch):
            opt.zero_grad(set_to_none=True)
            loss_fn(x_all[perm[i * batch:(i + 1) * batch]]).backward()
            opt.step()

    return timed_epochs(run)


# --- the peers' VAEs: each trains its own architecture, aeflax configured alike -------------

# peer: (hidden units, code size, batch); each trained PEER_EPOCHS epochs with Adam(1e-3) on
# dynamically binarized Fashion-MNIST (a new Bernoulli draw of every image each time it is seen)
PEER_VAES = {"pythae": (512, 40, 100), "flax": (500, 20, 128)}
PEER_EPOCHS = 10
# aeflax's options for both peers' models besides their sizes and batch: PyTorch's nn.Linear
# initialisation; with Keras' Glorot kernels and zero biases (aeflax's default) the test -ELBO
# was 0.5 nats worse on pythae's model and 0.4 on the Flax example's (docs/performance.md)
PEER_OPTIONS = ["model.init=pytorch"]


def aeflax_vae_config(peer: str, seed: int, extra=()):
    """aeflax's config of the peer's VAE: `variant=vae_binarized` with its sizes, batch and PEER_OPTIONS."""
    from aeflax.api import seed_config

    hidden, code, batch = PEER_VAES[peer]
    return seed_config("model.architecture=dense", f"model.hidden=[{hidden}]", "bottleneck.kind=gaussian",
                       f"bottleneck.code_size={code}", "loss.name=elbo", "data.binarize=dynamic",
                       f"train.batch_size={batch}", f"seed={seed}", *PEER_OPTIONS, *extra)


def binarized_test(n: int):
    """The test images as float32 [n, 784], binarized once with a fixed seed: every framework's
    test -ELBO is measured on the same binary images."""
    import numpy as np

    from aeflax import data
    from aeflax.config import DataConfig

    x = data.load(DataConfig(test_limit=n)).test.images.reshape(n, 784).astype(np.float32) / 255.0
    return (np.random.default_rng(2026).random(x.shape, dtype=np.float32) < x).astype(np.float32)


def train_and_test(run_epoch, test_loss, epochs: int) -> dict:
    """Each epoch's wall seconds (the first compiles) and the test -ELBO after the last."""
    seconds = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        run_epoch()
        seconds.append(time.perf_counter() - t0)
    return {"epoch_seconds": seconds, "test_neg_elbo": float(test_loss())}


def peer_pythae(n: int, n_test: int, seed: int, epochs: int) -> dict:
    """pythae 0.1.2's default VAE (its MLP encoder and decoder, BCE reconstruction) trained by a plain
    loop of its forward pass, as its trainer does (Adam, torch's eps 1e-8), without the trainer's
    per-step logging; the test -ELBO is its own loss in eval mode."""
    import torch
    from pythae.models import VAE, VAEConfig

    hidden, code, batch = PEER_VAES["pythae"]
    assert hidden == 512, "pythae's default MLP has 512 hidden units"
    torch.manual_seed(seed)
    x_all = torch.from_numpy(load_images(n)).float().div(255.0).reshape(n, 1, 28, 28)
    model = VAE(VAEConfig(input_dim=(1, 28, 28), latent_dim=code, reconstruction_loss="bce"))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def run():
        model.train()
        perm = torch.randperm(n)
        for i in range(n // batch):
            x = torch.bernoulli(x_all[perm[i * batch:(i + 1) * batch]])
            opt.zero_grad(set_to_none=True)
            model({"data": x}).loss.backward()
            opt.step()

    def test_loss():
        model.eval()
        test = torch.from_numpy(binarized_test(n_test)).reshape(-1, 1, 28, 28)
        with torch.no_grad():
            return sum(model({"data": t}).loss.item() * len(t) for t in test.split(1000)) / len(test)

    return train_and_test(run, test_loss, epochs)


def peer_flax(n: int, n_test: int, seed: int, epochs: int) -> dict:
    """The official Flax VAE example (google/flax examples/vae: models.py and train.py) on Fashion-MNIST:
    Linen modules, its loss, `optax.adam(1e-3)`, one jitted step per batch; batches are drawn and
    binarized on the host (the example reads pre-binarized MNIST through tf.data). No aeflax
    runtime settings: the example's process as it runs."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from flax import linen as nn
    from flax.training import train_state

    hidden, latents, batch = PEER_VAES["flax"]

    class Encoder(nn.Module):
        latents: int

        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Dense(hidden, name="fc1")(x))
            return nn.Dense(self.latents, name="fc2_mean")(x), nn.Dense(self.latents, name="fc2_logvar")(x)

    class Decoder(nn.Module):
        @nn.compact
        def __call__(self, z):
            return nn.Dense(784, name="fc2")(nn.relu(nn.Dense(hidden, name="fc1")(z)))

    class VAE(nn.Module):
        latents: int = 20

        def setup(self):
            self.encoder, self.decoder = Encoder(self.latents), Decoder()

        def __call__(self, x, z_rng):
            mean, logvar = self.encoder(x)
            z = mean + jax.random.normal(z_rng, logvar.shape) * jnp.exp(0.5 * logvar)
            return self.decoder(z), mean, logvar

    @jax.vmap
    def kl_divergence(mean, logvar):
        return -0.5 * jnp.sum(1 + logvar - jnp.square(mean) - jnp.exp(logvar))

    @jax.vmap
    def binary_cross_entropy_with_logits(logits, labels):
        logits = nn.log_sigmoid(logits)
        return -jnp.sum(labels * logits + (1.0 - labels) * jnp.log(-jnp.expm1(logits)))

    def loss_of(params, images, z_rng):
        recon_x, mean, logvar = VAE(latents).apply({"params": params}, images, z_rng)
        return binary_cross_entropy_with_logits(recon_x, images).mean() + kl_divergence(mean, logvar).mean()

    @jax.jit
    def train_step(state, batch, z_rng):
        return state.apply_gradients(grads=jax.grad(loss_of)(state.params, batch, z_rng))

    rng = jax.random.key(seed)
    rng, key = jax.random.split(rng)
    params = VAE(latents).init(key, jnp.ones((batch, 784), jnp.float32), rng)["params"]
    state = train_state.TrainState.create(apply_fn=VAE(latents).apply, params=params, tx=optax.adam(1e-3))
    rng, eval_rng = jax.random.split(rng)
    x_all = load_images(n).reshape(n, 784).astype(np.float32) / 255.0
    host = np.random.default_rng(seed)
    box = [state, rng]

    def run():
        state, rng = box
        perm = host.permutation(n)
        for i in range(n // batch):
            x = x_all[perm[i * batch:(i + 1) * batch]]
            rng, key = jax.random.split(rng)
            state = train_step(state, (host.random(x.shape, dtype=np.float32) < x).astype(np.float32), key)
        jax.block_until_ready(state)
        box[:] = state, rng

    def test_loss():  # the example's eval_f: the whole test set at once, one draw of z
        return jax.jit(loss_of)(box[0].params, jnp.asarray(binarized_test(n_test)), eval_rng)

    return train_and_test(run, test_loss, epochs)


def peer_aeflax(peer: str, n: int, n_test: int, seed: int, epochs: int, extra=()) -> dict:
    """aeflax configured as the peer (aeflax_vae_config): its compiled epoch; the test -ELBO is its
    evaluation's `loss` term (one draw of z, closed-form KL) on the common binarized test images."""
    from aeflax import runtime

    runtime.configure()
    import jax
    import jax.numpy as jnp

    from aeflax import objectives, training

    cfg = aeflax_vae_config(peer, seed, extra)
    run, box, graphdef, hp = aeflax_trainer(cfg, n)

    @jax.jit
    def test_loss_of(state, x, key):
        model = training.merge(graphdef, state)
        return jnp.mean(objectives.eval_terms(model, x, x, key, cfg, hp)["loss"])

    def test_loss():
        x = jnp.asarray(binarized_test(n_test).reshape(-1, 28, 28, 1))
        return test_loss_of(box[0], x, jax.random.key(seed))

    return train_and_test(run, test_loss, epochs)


def run_peer_worker(name: str, n: int, n_test: int, seed: int, epochs: int, extra=(),
                    torch_threads: int | None = None) -> dict:
    """One peer VAE worker ('pythae', 'flax', 'aeflax-pythae', 'aeflax-flax') in its own process."""
    env = worker_env(name, torch_threads)
    command = [sys.executable, __file__, "--peer-worker", name, "--n", str(n), "--n-test", str(n_test),
               "--seed", str(seed), "--epochs", str(epochs), *[f"--set={o}" for o in extra]]
    out = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        print(f"  {name} failed: {out.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return {"epoch_seconds": [float("nan")] * 2, "test_neg_elbo": float("nan")}
    return json.loads(out.stdout.strip().splitlines()[-1])


def peer_rows(smoke: bool, seeds: int = 3, epochs: int = PEER_EPOCHS, torch_threads: int | None = None
              ) -> list[str]:
    """Each peer's VAE and aeflax configured alike, taking turns seed by seed: the fastest training
    epoch after the first (no per-epoch evaluation in any of them) and the test -ELBO after the
    last epoch (mean over the seeds)."""
    import statistics

    n, n_test, epochs, seeds = (512, 256, 2, 1) if smoke else (FULL, 10000, epochs, seeds)
    rows = [f"| peer VAE | batch | framework | s / epoch (60k) | x aeflax | x matmul limit "
            f"| test -ELBO, nats ({epochs} epochs, mean of {seeds} seeds) | per seed |",
            "|---|---:|---|---:|---:|---:|---:|---|"]
    for peer, (hidden, code, batch) in PEER_VAES.items():
        runs = {peer: [], f"aeflax-{peer}": []}
        for seed in range(seeds):
            for name in runs:
                r = run_peer_worker(name, n, n_test, seed, epochs, torch_threads=torch_threads)
                runs[name].append(r)
                print(f"  {name} seed {seed}: {min(r['epoch_seconds'][1:]) * FULL / n:.2f} s/epoch, "
                      f"test -ELBO {r['test_neg_elbo']:.2f}", file=sys.stderr, flush=True)
        best = {name: min(min(r["epoch_seconds"][1:]) for r in rs) * FULL / n for name, rs in runs.items()}
        # the same epoch's matmuls alone, in one compiled loop in this process, after the workers
        limit = matmul_seconds(peer_step_matmuls(hidden, code, batch), n // batch) * FULL / n
        for name, rs in runs.items():
            elbos = [r["test_neg_elbo"] for r in rs]
            framework = "aeflax" if name.startswith("aeflax") else name
            rows.append(f"| {peer}: 784-{hidden}-z{code} | {batch} | {framework} | {best[name]:.2f} "
                        f"| {best[name] / best[f'aeflax-{peer}']:.2f} | {best[name] / limit:.2f} "
                        f"| {statistics.mean(elbos):.2f} | {', '.join(f'{e:.2f}' for e in elbos)} |")
    return rows


# --- matmul limits ---------------------------------------------------------------------

def step_matmuls(model: str, b: int) -> list[tuple[int, int, int]]:
    """(M, K, N) of every matmul of one training step, forward and backward.

    Layers as aeflax runs them (the CPU conv formulations are matmuls too); backward:
    the weight gradient of every layer and the input gradient of all but the first.
    """
    if model == "conv":  # aeflax.models.conv's custom VJPs per layer: forward, input gradient, kernel's
        return [(b * 196, 9, 16), (9, b * 196, 16),  # im2col conv 1 -> 16 (no input gradient)
                (b * 49, 144, 8), (b * 49, 32, 64), (144, b * 49, 8),  # 16 -> 8: dx by phases
                (b * 49, 32, 32), (b * 49, 72, 8), (8, b * 49, 72),  # transposed 8 -> 8: dy's patches
                (b * 196, 32, 64), (b * 196, 144, 8), (8, b * 196, 144),  # transposed 8 -> 16
                (b * 784, 16, 9), (b * 784, 9, 16), (16, b * 784, 9)]  # shift-add 16 -> 1
    if model == "dense":
        return mlp_step_matmuls([(b, 784, 64), (b, 64, 784)])
    return mlp_step_matmuls([(b, 784, 512), (b, 512, 256), (b, 256, 64), (b, 32, 256), (b, 256, 512),
                             (b, 512, 784)])


def mlp_step_matmuls(layers) -> list[tuple[int, int, int]]:
    """A dense network's layers (M, K, N) -> its step's matmuls: each layer forward, its weight
    gradient, and its input gradient but for the first layer's."""
    out = []
    for i, (m, k, n) in enumerate(layers):
        out += [(m, k, n), (k, m, n)] + ([(m, n, k)] if i else [])
    return out


def peer_step_matmuls(hidden: int, code: int, b: int) -> list[tuple[int, int, int]]:
    """A peer's one-hidden-layer VAE (784-hidden-code, mean and log-variance from the same features)."""
    return mlp_step_matmuls([(b, 784, hidden), (b, hidden, 2 * code), (b, code, hidden), (b, hidden, 784)])


def matmul_loop(shapes, repeats: int):
    """A compiled loop of `repeats` rounds of the given matmuls (call it, then block), warmed up."""
    import jax
    import jax.numpy as jnp

    keys = jax.random.split(jax.random.key(0), len(shapes))
    ops = [(jax.random.normal(key, (m, k)), jax.random.normal(key, (k, n)))
           for key, (m, k, n) in zip(keys, shapes, strict=True)]

    @jax.jit
    def loop(ops):
        def body(c, _):  # the carry feeds every matmul, so none is hoisted out of the loop
            total = sum(jnp.sum((a + c) @ b) for a, b in ops)
            return c + 1e-30 * total, None
        return jax.lax.scan(body, jnp.zeros(()), None, length=repeats)[0]

    loop(ops).block_until_ready()
    return lambda: loop(ops)


def matmul_seconds(shapes, repeats: int, tries: int = 3) -> float:
    """Seconds for `repeats` rounds of the given matmuls in one compiled loop (best of `tries`)."""
    run = matmul_loop(shapes, repeats)
    best = float("inf")
    for _ in range(tries):
        t0 = time.perf_counter()
        run().block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return best


def flops(shapes) -> float:
    return float(sum(2 * m * k * n for m, k, n in shapes))


# --- the parts of the table ------------------------------------------------------------

def worker_env(framework: str, torch_threads: int | None = None) -> dict:
    """A worker's environment; `torch_threads` caps PyTorch's intra-op threads (OMP_NUM_THREADS): on
    this VM, shared, torch's two threads wait for each other when another process holds a core
    (pythae's epoch went from 17 s to 79 s, one thread kept 7.5 s)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", WANDB_MODE="disabled")
    if torch_threads and framework in ("pytorch", "pythae"):
        env["OMP_NUM_THREADS"] = str(torch_threads)
    return env


def run_worker(framework: str, model: str, n: int, batch: int, torch_threads: int | None = None
               ) -> tuple[float, ...]:
    """(wall, CPU) seconds of the worker's best epoch on n images; aeflax adds its matmul limit."""
    env = worker_env(framework, torch_threads)
    if framework.startswith("keras"):
        env["KERAS_BACKEND"] = framework.split("-")[1]
    out = subprocess.run([sys.executable, __file__, "--worker", framework, "--model", model, "--n", str(n),
                          "--batch", str(batch)], env=env, capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        print(f"  {framework} {model} failed: {out.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return float("nan"), float("nan"), float("nan")
    return tuple(json.loads(out.stdout.strip().splitlines()[-1])["seconds"])


def train_rows(smoke: bool, frameworks=FRAMEWORKS, rounds: int = 2, torch_threads: int | None = None,
               models=tuple(MODELS)) -> list[str]:
    """Epoch times of every framework, `rounds` times round-robin (best per framework), and
    aeflax's epoch against the matmul limit timed in the same process (between its epochs)."""
    import jax

    rows = ["| model | batch | framework | s / epoch (60k) | samples / s | x aeflax | CPU s / epoch "
            "| x aeflax (CPU) |",
            "|---|---:|---|---:|---:|---:|---:|---:|"]
    limits = ["| model | batch | GFLOP / epoch | matmul GFLOP/s (own shapes) | matmul limit s / epoch "
              "| aeflax s / epoch | aeflax / limit |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    nan = float("nan")
    for model, batch in [(m, b) for m in models for b in MODELS[m][0]]:
        n = 4 * batch if smoke else MODELS[model][1]
        scale = FULL / n
        per_epoch = {fw: float("inf") for fw in frameworks}
        cpu = dict(per_epoch)
        limit = aeflax_at_limit = float("inf")
        for r in range(rounds):
            for fw in frameworks:
                wall, cpu_s, *probe = run_worker(fw, model, n, batch, torch_threads)
                print(f"  {model} {batch} {fw} (round {r + 1}): {wall * scale:.2f} s/epoch, "
                      f"CPU {cpu_s * scale:.2f} s" + (f", limit {probe[0] * scale:.2f} s" if probe else ""),
                      file=sys.stderr, flush=True)
                per_epoch[fw], cpu[fw] = min(per_epoch[fw], wall * scale), min(cpu[fw], cpu_s * scale)
                if probe and probe[0] * scale < limit:
                    limit, aeflax_at_limit = probe[0] * scale, wall * scale
        for fw in frameworks:
            s, c = per_epoch[fw], cpu[fw]
            ratio, cpu_ratio = s / per_epoch.get("aeflax", nan), c / cpu.get("aeflax", nan)
            rows.append(f"| {model} | {batch} | {fw} | {s:.2f} | {FULL / s:,.0f} | {ratio:.2f} | {c:.2f} "
                        f"| {cpu_ratio:.2f} |")
        gflop = flops(step_matmuls(model, batch)) * (FULL // batch) / 1e9
        limits.append(f"| {model} | {batch} | {gflop:.1f} | {gflop / limit:.1f} | {limit:.2f} "
                      f"| {aeflax_at_limit:.2f} | {aeflax_at_limit / limit:.2f} |")
    big, rate = matmul_rate(smoke)
    limits.append(f"\nMatmul rate at {big}x{big}x{big}: {rate:.1f} GFLOP/s ({jax.devices()[0].device_kind}).")
    return rows + [""] + limits


def matmul_rate(smoke: bool) -> tuple[int, float]:
    """(size, GFLOP/s) of float32 size^3 matmuls on the default device: 2048 on a CPU, 8192 on an
    accelerator (a smaller one ends in microseconds there), repeated for at least 0.2 s."""
    import jax

    big = 256 if smoke else 2048 if jax.default_backend() == "cpu" else 8192
    shapes, repeats = [(big, big, big)], 5
    seconds = matmul_seconds(shapes, repeats)
    if seconds < 0.2:
        repeats = int(repeats * 0.2 / max(seconds, 1e-6)) + 1
        seconds = matmul_seconds(shapes, repeats)
    return big, flops(shapes) * repeats / seconds / 1e9


def run_cli(args: list[str], workdir: Path) -> float:
    """Seconds from the command `python experiments/train.py ARGS` to its exit (NaN if it failed)."""
    env = dict(os.environ, WANDB_MODE=os.environ.get("WANDB_MODE", "offline"), TF_CPP_MIN_LOG_LEVEL="3",
               XLA_PYTHON_CLIENT_PREALLOCATE="false")  # joblib's processes share one GPU
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # warm caches include Python's own .pyc files
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, str(ROOT / "experiments" / "train.py"), *args], cwd=workdir,
                         env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if out.returncode:
        print(f"  train.py {' '.join(args)} failed: {out.stderr.strip()[-500:]}", file=sys.stderr)
        return float("nan")
    return seconds


SWEEP_LRS = ("0.001", "0.002", "0.0015", "0.003", "0.004", "0.005", "0.006", "0.008")


def sweep_overrides(n: int) -> list[str]:
    """n configs of the seed model: seeds x learning rates (8: seed=0..3 x 1e-3, 2e-3; 64: 8 x 8)."""
    seeds = max(1, min(8, n // 2))
    lrs = SWEEP_LRS[:n // seeds]
    assert seeds * len(lrs) == n, f"{n} configs: choose 2, 4, 8, 16, ... 64"
    return [f"seed={','.join(str(i) for i in range(seeds))}", f"optimizer.learning_rate={','.join(lrs)}"]


def training_seconds(sweep_dir: Path) -> float:
    """The training in a sweep's records: every job's epoch seconds, a vmapped group's once (its
    members record the group's epoch times)."""
    points = [map(json.loads, path.read_text().splitlines()) for path in sweep_dir.glob("*/metrics.jsonl")]
    runs = [tuple(p["epoch_seconds"] for p in run if "epoch_seconds" in p) for run in points]
    return sum(sum(times) for times in set(runs))


def sweep_rows(smoke: bool, workdir: Path, sizes=(8,), launchers=("basic", "joblib", "vmap")) -> list[str]:
    """Each sweep of the seed model with each launcher: its wall time against the training it holds
    (issue 18: within 1.2x with the launchers that run the jobs in one process, basic and vmap)."""
    small = ["data.train_limit=512", "data.test_limit=256", "train.epochs=1"] if smoke else []
    rows = ["| sweep of the seed model | launcher | wall s | training s | wall / training | x basic |",
            "|---|---|---:|---:|---:|---:|"]
    for n in sizes:
        overrides = sweep_overrides(n)
        walls, trains = {}, {}
        for launcher in launchers:
            sweep_dir = workdir / f"sweep{n}_{launcher}"
            walls[launcher] = run_cli(["-m", f"hydra/launcher={launcher}", *overrides, *small,
                                       f"hydra.sweep.dir={sweep_dir}"], workdir)
            trains[launcher] = training_seconds(sweep_dir)
            print(f"  {n}-config sweep, {launcher}: {walls[launcher]:.1f} s, training "
                  f"{trains[launcher]:.1f} s", file=sys.stderr, flush=True)
        for launcher in launchers:
            wall, train = walls[launcher], trains[launcher]
            rows.append(f"| {n} configs ({' x '.join(o.split('=')[0] for o in overrides)}) | {launcher} "
                        f"| {wall:.1f} | {train:.1f} | {wall / train if train else float('nan'):.2f} "
                        f"| {walls.get('basic', float('nan')) / wall:.2f} |")
    return rows


def run_rows(smoke: bool, workdir: Path, repeats: int = 3) -> list[str]:
    """The default run's phases, the median of `repeats` runs, from each run's own record: start-up
    (process start -> data and model ready), training (the epochs with their records and
    checkpoints), and the end of the run (evaluation, figures, the last checkpoint, W&B's finish,
    the exit) as the rest of the command's time."""
    import statistics

    small = ["data.train_limit=512", "data.test_limit=256", "train.epochs=1"] if smoke else []
    keys = ("time/startup_seconds", "time/first_epoch_seconds", "time/epoch_seconds", "time/train_seconds")
    runs = []
    for i in range(1 if smoke else repeats):
        run_dir = workdir / f"default_run_{i}"
        wall = run_cli([*small, f"hydra.run.dir={run_dir}"], workdir)
        path = run_dir / "summary.json"
        summary = json.loads(path.read_text()) if path.exists() else {}
        run = {k: summary.get(k, float("nan")) for k in keys}
        run.update(wall=wall, end=wall - run["time/startup_seconds"] - run["time/train_seconds"])
        runs.append(run)
        print(f"  default run {i + 1}: {wall:.1f} s", file=sys.stderr, flush=True)
    get = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    return [f"| default run (`python experiments/train.py`), median of {len(runs)} | seconds | issue 18 |",
            "|---|---:|---:|",
            f"| start-up (process start -> data and model ready) | {get['time/startup_seconds']:.2f} | 1.5 |",
            f"| first epoch (compiles, or loads from the cache) | {get['time/first_epoch_seconds']:.2f} | |",
            f"| later epochs (mean) | {get['time/epoch_seconds']:.2f} | |",
            f"| training (the epochs, their records and checkpoints) | {get['time/train_seconds']:.2f} | |",
            f"| end of the run (evaluation, figures, last checkpoint, W&B, exit) | {get['end']:.2f} | 1.0 |",
            f"| whole run, command to exit | {get['wall']:.1f} | 5.0 |"]


def nll_rows(smoke: bool) -> list[str]:
    import jax
    import numpy as np

    from aeflax import evaluation, runtime, training
    from aeflax.api import seed_config
    from aeflax.parts.bottleneck.gaussian import importance_log_weights

    runtime.configure()  # JAX already runs in this process (machine()): the cache applies, not the XLA flags
    k, n_images, batch, chunk = (50, 20, 10, 25) if smoke else (5000, 200, 100, 250)
    cfg = seed_config("model.hidden=[512,256]", "bottleneck.kind=gaussian", "bottleneck.code_size=32",
                   "loss.name=elbo")
    model = training.make_model(cfg, (28, 28, 1), 0)
    x = jax.numpy.asarray(np.random.default_rng(0).random((batch, 28, 28, 1), np.float32))
    nll = jax.jit(lambda x, key: evaluation.importance_nll(importance_log_weights, model, x, key, k, chunk,
                                                           "bernoulli"))
    nll(x, jax.random.key(0)).block_until_ready()
    t0 = time.perf_counter()
    for i in range(n_images // batch):
        nll(x, jax.random.key(i)).block_until_ready()
    per_image = (time.perf_counter() - t0) / n_images
    shapes = [(chunk * batch, 32, 256), (chunk * batch, 256, 512), (chunk * batch, 512, 784)]
    limit = matmul_seconds(shapes, 3) / 3 * (k / chunk) / batch
    return [f"| importance-sampled NLL, k={k}, VAE 784-512-256-z32 | value |", "|---|---:|",
            f"| images / s (measured on {n_images}) | {1 / per_image:.1f} |",
            f"| 10k test images, s (extrapolated) | {per_image * 10000:.0f} |",
            f"| decoder-matmul limit, s per 10k | {limit * 10000:.0f} |",
            f"| time / limit | {per_image / limit:.2f} |"]


def machine() -> str:
    import jax

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    device = "" if jax.default_backend() == "cpu" else f" ({jax.devices()[0].device_kind})"
    return (f"{cpu}, {os.cpu_count()} cores, {jax.default_backend()} backend{device}, jax {jax.__version__}; "
            f"load average at start {load:.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes: checks that every part runs")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmark.md")
    p.add_argument("--readme", action="store_true", help="also put the table into README.md")
    p.add_argument("--only", default="train,sweep,run,nll,peers", help="comma-separated parts")
    p.add_argument("--frameworks", default=",".join(FRAMEWORKS), help="comma-separated, aeflax first")
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated models of the train part")
    p.add_argument("--rounds", type=int, default=2, help="round-robin repeats of the framework workers")
    p.add_argument("--sweeps", default="8", help="comma-separated sweep sizes (configs), e.g. 8,64")
    p.add_argument("--launchers", default="basic,joblib,vmap", help="comma-separated launchers of the sweeps")
    p.add_argument("--seeds", type=int, default=3, help="seeds of each peer VAE and of aeflax alike")
    p.add_argument("--worker", choices=FRAMEWORKS)
    p.add_argument("--peer-worker", choices=(*PEER_VAES, *(f"aeflax-{p}" for p in PEER_VAES)))
    p.add_argument("--n-test", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=PEER_EPOCHS, help="epochs of each peer VAE run")
    p.add_argument("--torch-threads", type=int, help="PyTorch threads per worker (default: its own)")
    p.add_argument("--set", action="append", default=[], help="an aeflax config override (peer workers)")
    p.add_argument("--model", choices=tuple(MODELS))
    p.add_argument("--n", type=int)
    p.add_argument("--batch", type=int)
    a = p.parse_args()
    if a.worker:
        fn = {"aeflax": worker_aeflax, "pytorch": worker_pytorch}.get(a.worker, worker_keras)
        print(json.dumps({"seconds": fn(a.model, a.n, a.batch)}))
        return
    if a.peer_worker:
        if a.peer_worker.startswith("aeflax-"):
            out = peer_aeflax(a.peer_worker.split("-", 1)[1], a.n, a.n_test, a.seed, a.epochs, a.set)
        else:
            out = {"pythae": peer_pythae, "flax": peer_flax}[a.peer_worker](a.n, a.n_test, a.seed, a.epochs)
        print(json.dumps(out))
        return
    parts, frameworks = a.only.split(","), a.frameworks.split(",")
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    command = " ".join(["python scripts/bench.py", *sys.argv[1:]])
    lines = [f"Measured {started} with `{command}` on {machine()}.", ""]
    workdir = Path(tempfile.mkdtemp(prefix="aeflax_bench_"))
    try:
        for part, fn in (("train", lambda: train_rows(a.smoke, frameworks, 1 if a.smoke else a.rounds,
                                                          a.torch_threads, a.models.split(","))),
                         ("sweep", lambda: sweep_rows(a.smoke, workdir, [int(n) for n in a.sweeps.split(",")],
                                                      a.launchers.split(","))),
                         ("run", lambda: run_rows(a.smoke, workdir)), ("nll", lambda: nll_rows(a.smoke)),
                         ("peers", lambda: peer_rows(a.smoke, a.seeds, a.epochs, a.torch_threads))):
            if part in parts:
                print(f"bench: {part}", file=sys.stderr, flush=True)
                lines += fn() + [""]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    table = "\n".join(lines)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("# Benchmark\n\n" + table)
    if a.readme:
        readme = ROOT / "README.md"
        text = readme.read_text()
        start, end = "<!-- bench -->", "<!-- /bench -->"
        if start in text and end in text:
            text = text[:text.index(start) + len(start)] + "\n" + table + "\n" + text[text.index(end):]
        else:
            text += f"\n## Benchmark\n\n{start}\n{table}\n{end}\n"
        readme.write_text(text)
    print(table)


if __name__ == "__main__":
    main()
