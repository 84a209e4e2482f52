"""Evaluation for every use of an autoencoder, as papers measure it, and the pictures.

- reconstruction: SSIM and BCE in nats per image beside the epoch's test MSE / BCE / PSNR;
- likelihood (VAE family): importance-sampled NLL with k samples in chunks, active units
  (Burda et al.'s covariance criterion), KL per latent dimension;
- noise removal: PSNR / MSE of the reconstruction of a noisy input against the clean image,
  beside the noisy input's own PSNR, per noise level;
- anomaly detection: one-class AUROC, score = reconstruction error or negative ELBO;
- feature extraction: linear probe and k-NN on frozen codes, the same probe on raw pixels;
- generation and the latent space: the figures.

This module holds the metrics and batched passes; each use is an evaluation part
(aeflax/parts/eval/) that says when it applies and returns its metrics and figures.
`evaluate_run` runs the parts `cfg.eval` asks for, at the end of training and from
experiments/evaluate.py; `test_metrics` is the final test evaluation of a run. Test inputs
are drawn exactly as `training.make_evaluate` draws them (same binarization and noise
keys), so the numbers sit beside the run's own.
"""

from __future__ import annotations

import functools
import logging
import math
import time
import warnings
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from aeflax import kept, objectives, parts, programs, training
from aeflax.kept import KeptBatches
from aeflax.tracking import RunRecord

# fold_in constants of evaluation's own random streams (beside training's)
LIKELIHOOD_STREAM, DENOISE_STREAM, SAMPLE_STREAM = 2**30 + 10, 2**30 + 11, 2**30 + 12


# --- metrics of arrays -----------------------------------------------------------------
# (scikit-learn runs on one BLAS thread: beside JAX's threads, more made lbfgs ~100x slower here)

def psnr(recon, x):
    """PSNR in dB per image for images in [0, 1]: 10 log10(1 / MSE)."""
    return objectives.psnr(recon, x)


def _gaussian_1d(size: int, sigma: float = 1.5) -> np.ndarray:
    g = np.exp(-((np.arange(size) - (size - 1) / 2) ** 2) / (2 * sigma**2))
    return g / np.sum(g)


def _valid_filter_matrix(n: int, g: np.ndarray) -> np.ndarray:
    """[n - len(g) + 1, n]: row i holds g at columns i..i+len(g)-1 (a 'valid' 1-D filter as a matmul)."""
    m = np.zeros((n - len(g) + 1, n), np.float32)
    for i in range(m.shape[0]):
        m[i, i:i + len(g)] = g
    return m


def ssim(recon, x, max_val: float = 1.0):
    """Mean SSIM per image (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03).

    Each channel separately over the window's valid region, as scikit-image's
    `structural_similarity(..., gaussian_weights=True, use_sample_covariance=False)`.
    The Gaussian window is separable, so each filtering is two small matmuls (rows, then
    columns) instead of a depthwise convolution: 22x faster on XLA:CPU, same values.
    """
    size = min(11, x.shape[1], x.shape[2])
    g = _gaussian_1d(size)
    rows = jnp.asarray(_valid_filter_matrix(x.shape[1], g), x.dtype)
    cols = jnp.asarray(_valid_filter_matrix(x.shape[2], g), x.dtype)

    def filt(a):
        return jnp.einsum("ih,nhwc,jw->nijc", rows, a, cols)

    c1, c2 = (0.01 * max_val) ** 2, (0.03 * max_val) ** 2
    mu_x, mu_y = filt(recon), filt(x)
    sxx = filt(recon * recon) - mu_x**2
    syy = filt(x * x) - mu_y**2
    sxy = filt(recon * x) - mu_x * mu_y
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return jnp.mean(s.reshape(s.shape[0], -1), axis=-1)


def auroc(is_anomaly, scores) -> float:
    """Area under the ROC curve of `scores` (higher = more anomalous) against 0/1 labels."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.asarray(is_anomaly).astype(int), np.asarray(scores)))


def linear_probe(train_x, train_y, test_x, test_y) -> float:
    """Test accuracy of multinomial logistic regression fit on standardized train features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    with warnings.catch_warnings(), threadpool_limits(1):  # lbfgs may stop at max_iter: still the protocol
        warnings.simplefilter("ignore")
        clf.fit(flat(train_x), train_y)
        return float(clf.score(flat(test_x), test_y))


def knn_accuracy(train_x, train_y, test_x, test_y, k: int = 5) -> float:
    """Test accuracy of k-nearest-neighbours (Euclidean) on the features."""
    from sklearn.neighbors import KNeighborsClassifier

    with threadpool_limits(1):
        knn = KNeighborsClassifier(n_neighbors=k).fit(flat(train_x), train_y)
        return float(knn.score(flat(test_x), test_y))


def active_units(means, threshold: float = 1e-2) -> int:
    """Burda et al.: unit u is active if Cov_x(E_q[z_u | x]) > threshold; `means` is [N, D]."""
    return int(np.sum(np.var(np.asarray(means, np.float64), axis=0) > threshold))


def kl_per_dim(mean, logvar) -> np.ndarray:
    """KL(q(z_u|x) || N(0, 1)) per latent dimension u, averaged over the images ([D], nats)."""
    mean, logvar = np.asarray(mean, np.float64), np.asarray(logvar, np.float64)
    return np.mean(0.5 * (np.exp(logvar) + mean**2 - 1.0 - logvar), axis=0)


def importance_nll(log_weights: Callable, model, x, key, k: int, chunk: int, likelihood: str,
                   std: float = 1.0):
    """-log p(x) per image, importance-sampled with k draws from q(z|x), `chunk` at a time.

    `log_weights` is the bottleneck part's `importance_log_weights` (it knows q and the prior).
    log p(x) ~ logsumexp_i log w_i - log k; each chunk is reduced by logsumexp before the
    next is drawn (lax.map), so memory grows with `chunk`, not k. Samples past k are masked.
    """
    chunk = min(chunk, k)
    n_chunks = math.ceil(k / chunk)

    def one(c):
        key_c = jax.random.fold_in(key, c)
        log_w = log_weights(model, x, key_c, chunk, likelihood, std)
        valid = c * chunk + jnp.arange(chunk) < k
        return jax.nn.logsumexp(jnp.where(valid[:, None], log_w, -jnp.inf), axis=0)

    per_chunk = jax.lax.map(one, jnp.arange(n_chunks))  # [n_chunks, B]
    return -(jax.nn.logsumexp(per_chunk, axis=0) - math.log(k))


def flat(a):
    """[N, ...] -> [N, features] as numpy (codes and images for scikit-learn)."""
    a = np.asarray(a)
    return a.reshape(a.shape[0], -1)


# --- batched passes over a split -------------------------------------------------------

def jit_model_fn(fn: Callable, model) -> Callable:
    """`fn(model, *batch)` compiled once, with the model's current variables bound."""
    graphdef, state = nnx.split(model)
    jfn = jax.jit(lambda st, *b: fn(nnx.merge(graphdef, st), *b))
    return lambda *batch: jfn(state, *batch)


def shared_model_fn(name: str, cfg, model, build: Callable[[], Callable], *static) -> Callable:
    """`build()(model, *args)` compiled once per program (aeflax.programs.shared) and bound to the
    model's current variables: the runs of a sweep share the compilation. `build` reads nothing
    of the run but `cfg` (None: the model alone) and `static`; keys and levels are arguments."""
    graphdef, variables = nnx.split(model)

    def build_jitted():
        fn = build()
        return lambda v, *args: fn(nnx.merge(graphdef, v), *args)

    jfn = programs.shared(name, cfg, graphdef, build_jitted, *static)
    return lambda *args: jfn(variables, *args)


def map_batches(f: Callable, arrays: tuple, batch_size: int, desc: Optional[str] = None,
                long: bool = False, keep: Optional[KeptBatches] = None) -> dict:
    """Apply `f(*batch) -> dict of [B, ...]` batch by batch and concatenate on the host.

    The tail batch is padded to the full size (one compiled shape) and cut afterwards.
    Shows a progress bar when stderr is a terminal, and always for `long` passes (into logs).
    With `keep`, batches an earlier attempt finished are read back, not computed, and the
    finished ones are written as it goes (aeflax.kept: a stop signal raises kept.Stopped).
    """
    n = len(arrays[0])
    bs = min(batch_size, n)
    done, earlier = keep.load() if keep is not None else (0, {})
    outs = [earlier] if done else []
    concat = lambda: {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}  # noqa: E731
    bar = tqdm(range(done, n, bs), desc=desc, disable=False if long else None, leave=long, unit="batch",
               mininterval=10 if long else 0.1, initial=done // bs, total=math.ceil(n / bs))
    for start in bar:
        batch = [np.asarray(a[start:start + bs]) for a in arrays]
        m = len(batch[0])
        if m < bs:
            batch = [np.concatenate([b, np.repeat(b[-1:], bs - m, axis=0)]) for b in batch]
        outs.append({k: np.asarray(v)[:m] for k, v in f(*batch).items()})
        if keep is not None:
            keep.after_batch(concat, start + m, n, desc or "a kept pass")
    return concat()


def eval_key(state):
    """The key training.make_evaluate derives its test inputs from."""
    return _eval_key(state.key)


def _eval_key(raw_key):
    """eval_key from the state's raw key data (inside a compiled program, where it is an argument)."""
    return jax.random.fold_in(jax.random.wrap_key_data(raw_key), training.EVAL_STREAM)


def noise_levels(cfg) -> dict:
    """The training noise's traced levels, as test_inputs reads them."""
    return {k: np.float32(v) for k, v in parts.noise_of(cfg).hyperparameters(cfg, 1).items()}


def test_inputs(cfg, key, images, idx, levels: dict):
    """(encoder input, clean target) of the images at `idx`, drawn as training.make_evaluate does;
    `levels` is noise_levels(cfg) (an argument, so that one compiled program serves every level)."""
    x = images.astype(jnp.float32) / 255.0
    if cfg.data.binarize == "dynamic":
        bkeys = jax.vmap(lambda i: jax.random.fold_in(key, i))(idx)
        x = jax.vmap(lambda k, xi: jax.random.bernoulli(k, xi))(bkeys, x).astype(jnp.float32)
    nkeys = jax.vmap(lambda i: jax.random.fold_in(jax.random.fold_in(key, training.NOISE_STREAM), i))(idx)
    return parts.noise_of(cfg).corrupt_batch(nkeys, x, levels), x


def test_terms(cfg, model, state, images, with_ssim: bool = True) -> dict:
    """Per-image terms on the test inputs: the objective's terms, SSIM, and q(z|x) for VAEs."""
    bs = min(cfg.train.eval_batch_size, len(images))
    posterior = parts.bottleneck_of(cfg).posterior

    def build():
        def fn(model, raw_key, hp, levels, xb, idx):
            key = _eval_key(raw_key)
            x_in, x = test_inputs(cfg, key, xb, idx, levels)
            terms = objectives.eval_terms(model, x_in, x, jax.random.fold_in(key, idx[0] // bs), cfg, hp)
            if with_ssim or posterior:  # a second pass: eval_terms keeps its outputs to itself
                out = model(x_in, train=False)
                if with_ssim:
                    terms["ssim"] = ssim(out["recon"], x)
                if posterior:
                    terms.update(mean=out["mean"], logvar=out["logvar"])
            return terms

        return fn

    f = shared_model_fn("test_terms", cfg, model, build, bs, with_ssim)
    run = (state.key, training.hyperparameters(cfg, 1), noise_levels(cfg))
    return map_batches(lambda xb, idx: f(*run, xb, idx), (images, np.arange(len(images))), bs, "test terms")


def encoder(model, batch_size: int = 1000) -> Callable:
    """`encode(uint8 images) -> codes [N, ...]` of clean images (the mean for VAEs), compiled once
    per model graph and batch size."""
    build = lambda: lambda m, xb: {"code": m.encode(xb.astype(jnp.float32) / 255.0)["code"]}  # noqa: E731
    f = shared_model_fn("encode", None, model, build)
    return lambda images: map_batches(f, (images,), batch_size, "codes")["code"]


def decoder(model) -> Callable:
    """`decode(codes) -> images`, compiled once per model graph (and shape of the codes)."""
    f = shared_model_fn("decode", None, model, lambda: lambda m, z: m.decode(z))
    return lambda z: np.asarray(f(z))


def likelihood_nll(cfg, model, state, images, run_dir: Optional[Path] = None,
                   stop: Optional[Callable[[], bool]] = None) -> np.ndarray:
    """Importance-sampled NLL per test image (nats), k = eval.importance_samples.

    A long pass with a `run_dir` keeps its finished batches there (aeflax.kept): `stop()` is
    asked between batches, and the same call after a stop or a crash continues the pass."""
    ev = cfg.eval
    bs = min(cfg.train.eval_batch_size, 500, len(images))

    def build():
        def fn(model, raw_key, levels, xb, idx):
            _, x = test_inputs(cfg, _eval_key(raw_key), xb, idx, levels)
            key = jax.random.fold_in(_eval_key(raw_key), LIKELIHOOD_STREAM)
            return {"nll": importance_nll(parts.bottleneck_of(cfg).importance_log_weights, model, x,
                                          jax.random.fold_in(key, idx[0]), ev.importance_samples,
                                          ev.importance_chunk, cfg.loss.likelihood, cfg.loss.likelihood_std)}

        return fn

    f = shared_model_fn("likelihood_nll", cfg, model, build, bs)
    run = (state.key, noise_levels(cfg))
    long = len(images) * ev.importance_samples > 10**6
    keep = None
    if long and run_dir is not None:
        fingerprint = {"epoch": int(state.epoch), "step": int(state.step), "images": len(images),
                       "batch_size": bs, "importance_samples": ev.importance_samples,
                       "importance_chunk": ev.importance_chunk}
        keep = KeptBatches(run_dir, "likelihood_nll", fingerprint, stop)
    return map_batches(lambda xb, idx: f(*run, xb, idx), (images, np.arange(len(images))), bs,
                       f"NLL k={ev.importance_samples}", long=long, keep=keep)["nll"]


def denoiser(cfg, model, state) -> Callable:
    """`denoise(level) -> dict`: clean, noisy and denoised test images at a noise level, with
    their per-image MSE and PSNR. Noise is drawn once per image; one compiled program serves
    every level and run (the level and the key are arguments)."""
    noise = parts.registry()["noise"][cfg.eval.denoising_kind]

    def build():
        def fn(model, raw_key, xb, idx, level):
            x = xb.astype(jnp.float32) / 255.0
            key = jax.random.fold_in(_eval_key(raw_key), DENOISE_STREAM)
            level_key = jax.random.fold_in(key, jnp.round(level * 1e6).astype(jnp.int32))
            keys = jax.vmap(lambda i: jax.random.fold_in(level_key, i))(idx)
            noisy = noise.corrupt_batch(keys, x, {f"noise_{noise.level}": level})
            recon = model(noisy, train=False)["recon"]
            return {"clean": x, "noisy": noisy, "recon": recon,
                    "mse": objectives.mse(recon, x), "psnr": psnr(recon, x), "noisy_psnr": psnr(noisy, x)}

        return fn

    f = shared_model_fn("denoise", cfg, model, build)

    def denoise(images, level: float) -> dict:
        return map_batches(lambda xb, idx: f(state.key, xb, idx, np.float32(level)),
                           (images, np.arange(len(images))), cfg.train.eval_batch_size, f"denoise@{level:g}")

    return denoise


# --- the whole evaluation of a run -----------------------------------------------------

class Context:
    """A trained run as the evaluation parts read it; the per-image test terms are computed once,
    when a part first reads them. `draw` draws a picture on a thread of its own (matplotlib
    there too), beside the parts that compute; `evaluate_run` waits for the pictures."""

    def __init__(self, cfg, model, state, dataset, figdir: Optional[Path], run_dir: Optional[Path] = None,
                 stop: Optional[Callable[[], bool]] = None):
        self.cfg, self.model, self.state, self.dataset, self.figdir = cfg, model, state, dataset, figdir
        self.run_dir, self.stop = run_dir, stop  # where long passes keep their batches; asked between them
        self._drawing: Optional[ThreadPoolExecutor] = None

    @functools.cached_property
    def terms(self) -> dict:
        return test_terms(self.cfg, self.model, self.state, self.dataset.test.images,
                          with_ssim=self.cfg.eval.reconstruction)

    def draw(self, kind: str, *args) -> Future:
        """A Future of the path `aeflax.figures.<kind>(*args)` writes (args: numpy arrays and names)."""
        if self._drawing is None:
            self._drawing = ThreadPoolExecutor(1, thread_name_prefix="aeflax-figures")
        return self._drawing.submit(draw, kind, *args)

    def drawn(self, paths: dict) -> dict[str, Path]:
        """`paths` with every picture drawn (a Future replaced by its path); the drawing thread ends."""
        try:
            return {name: p.result() if isinstance(p, Future) else p for name, p in paths.items()}
        finally:
            if self._drawing is not None:
                self._drawing.shutdown(wait=True)
                self._drawing = None


def draw(kind: str, *args) -> Path:
    """`aeflax.figures.<kind>(*args)`: the picture drawn and written where this is called."""
    from aeflax import figures  # matplotlib loads when a figure is drawn, not at start-up

    return getattr(figures, kind)(*args)


def evaluate_run(cfg, result, dataset, workdir: Path, tracker, also_log: Optional[dict] = None,
                 stop: Optional[Callable[[], bool]] = None) -> dict:
    """Run every end-of-run evaluation part `cfg.eval` asks for; log the metrics and figures
    (metrics.jsonl, W&B) and return the metrics.

    `result` has `.model` and `.state` (a training.FitResult). Metrics use slash names;
    figures go to workdir/figures and to W&B under figures/<name>; `also_log` joins the
    logged point. A part that does not apply to the run is skipped with a note. Long passes
    keep their finished batches in workdir until the metrics are logged; `stop()`, asked
    between their batches, ends them with aeflax.kept.Stopped (the same call continues them).
    """
    started = time.perf_counter()
    workdir = Path(workdir)
    ctx = Context(cfg, result.model, result.state, dataset, workdir / "figures" if cfg.eval.figures else None,
                  workdir, stop)
    metrics: dict = {}
    paths: dict = {}
    try:
        for part in parts.active(cfg, "eval"):
            why = part.skip_reason(cfg)
            if why:
                logging.getLogger(__name__).warning(f"eval.{part.name} skipped: {why}")
                continue
            more, figures = part.run(ctx)
            metrics.update(more)
            paths.update(figures)
    finally:
        paths = ctx.drawn(paths)

    metrics["time/eval_seconds"] = time.perf_counter() - started
    scalars = {**(also_log or {}), **{k: v for k, v in metrics.items() if not isinstance(v, list)}}
    epoch, step = int(result.state.epoch), int(result.state.step)
    RunRecord(workdir).log({**scalars, "epoch": epoch, "step": step})
    kept.remove(workdir)
    if tracker:
        tracker.log(scalars, step=epoch)
        for name, path in paths.items():
            tracker.log_image(f"figures/{name}", path, step=epoch)
    return metrics


def test_metrics(cfg, graphdef, state, test) -> dict:
    """The epoch's evaluation (training.make_evaluate) on the test split: test/mse, test/loss, ...

    Runs evaluated on a validation split each epoch get their test numbers here, once, at the end.
    """
    hp = training.hyperparameters(cfg, 1)
    evaluate = training.compiled_evaluate(graphdef, cfg, len(test), "test")
    return {k: float(v) for k, v in evaluate(state, test.images, hp).items()}


def pictures(cfg, model, state, dataset, figdir: Path, draw: Callable = draw) -> dict:
    """Original vs reconstruction, samples, interpolations and the 2-D code map.

    The arrays are computed here; `draw(kind, *args)` draws each picture (at once by default;
    Context.draw hands it to a thread and returns a Future of its path)."""
    test = dataset.test
    n = min(10, len(test))
    x_in, x, recon = shared_model_fn("picture_inputs", cfg, model, lambda: _picture_inputs(cfg))(
        state.key, noise_levels(cfg), test.images[:n], np.arange(n))
    rows = [("original", np.asarray(x))]
    if cfg.noise.kind != "none":
        rows.append(("input", np.asarray(x_in)))
    paths = {"reconstructions": draw("image_rows", rows + [("reconstructed", np.asarray(recon))],
                                     figdir / "reconstructions.png", "originals and reconstructions")}
    m = min(len(test), 2000)
    test_codes = encoder(model, cfg.train.eval_batch_size)(test.images[:m])
    z = sample_codes(cfg, model, test_codes, jax.random.fold_in(eval_key(state), SAMPLE_STREAM), 16)
    from aeflax.parts.eval.sampler import DESCRIPTION
    density = DESCRIPTION[cfg.eval.sampler]
    decode = decoder(model)
    paths["samples"] = draw("image_grid", decode(z), figdir / "samples.png",
                            "samples from the prior" if parts.bottleneck_of(cfg).posterior
                            else f"samples from {density} fit to the test codes")
    rows = interpolation_rows(decode, test_codes, test.images[:m], test.labels[:m], dataset.class_names)
    paths["interpolation"] = draw("image_rows", rows, figdir / "interpolation.png",
                                  "interpolation in code space between test images (ends)")
    paths["latent_map"] = draw("code_map", flat(test_codes), test.labels[:m], dataset.class_names,
                               figdir / "latent_map.png")
    return paths


def _picture_inputs(cfg):
    def fn(model, raw_key, levels, xb, idx):
        x_in, x = test_inputs(cfg, _eval_key(raw_key), xb, idx, levels)
        return x_in, x, model(x_in, train=False)["recon"]

    return fn


def sample_codes(cfg, model, test_codes, key, n: int):
    """Codes to decode: from the prior where the bottleneck has one, else from the ex-post density
    `eval.sampler` fit to the test codes (aeflax/parts/eval/sampler.py)."""
    from aeflax.parts.eval import sampler

    b = parts.bottleneck_of(cfg)
    if b.posterior:
        return b.prior_sample(key, n, cfg.bottleneck, model)
    return sampler.sample(cfg, test_codes, key, n)


def interpolation_rows(decode, test_codes, images, labels, class_names, pairs: int = 4, steps: int = 8):
    """Rows: test image a, decodings of (1 - t) z_a + t z_b, test image b (a, b of other classes);
    `decode(codes) -> images` (decoder(model))."""
    firsts = [int(np.argmax(labels == c)) for c in np.unique(labels)]
    if len(firsts) < 2:
        firsts = list(range(min(len(labels), 2 * pairs)))
    ends = [(firsts[(2 * i) % len(firsts)], firsts[(2 * i + 1) % len(firsts)]) for i in range(pairs)]
    t = np.linspace(0, 1, steps, dtype=np.float32).reshape(-1, *[1] * (test_codes.ndim - 1))
    rows = []
    for a, b in ends:
        z = (1 - t) * test_codes[a] + t * test_codes[b]
        row = np.concatenate([images[a:a + 1] / 255.0, decode(z), images[b:b + 1] / 255.0])
        name = lambda i: class_names[labels[i]] if labels[i] < len(class_names) else str(labels[i])
        rows.append((f"{name(a)} -> {name(b)}", row))
    return rows
