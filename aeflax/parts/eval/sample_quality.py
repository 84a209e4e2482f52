"""How good a generator's samples are: `gen/fd_<dataset>`, `gen/precision`, `gen/recall`.

Inception weights cannot be had offline, so the feature space is the penultimate layer (128
ReLU units) of a small CNN (FeatureNet: 0.8885 test accuracy on Fashion-MNIST after 3 epochs,
~11 s on 2 CPU cores) that aeflax trains itself on the dataset's full training split and
caches beside the data (<data dir>/aeflax_features/<dataset>.<recipe hash>.npz, with its test
accuracy in the file's metadata); every run of that dataset reuses it. The Fréchet distance is
therefore *not* FID (another network, another scale): compare it only within one dataset and
one feature network.

The samples: `eval.quality_samples` images decoded (the decoder's mean, clipped to [0, 1]) from
codes drawn from the prior for bottlenecks with one (the VAE family), and for the others from the
ex-post density `eval.sampler` (diagonal Gaussian or Gaussian mixture) fit to the codes of the
run's first `quality_samples` training images (training codes: the reference is the test split,
so the fit does not see it). The reference: the first `quality_samples` images of the dataset's
test split, never a subset or binarized copy, so numbers of one dataset compare across runs.

- Fréchet distance (Heusel et al. 2017's formula) between Gaussian fits of the two feature sets;
- precision / recall (Kynkäänniemi et al. 2019): the share of generated features inside the real
  features' k-NN manifold (each real point's ball reaches its k-th nearest real neighbour, k = 3),
  and of real features inside the generated manifold.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from aeflax import evaluation, parts
from aeflax.checks import check
from aeflax.parts import Evaluation

QUALITY_STREAM = 2**30 + 13  # fold_in constant of this evaluation's samples (beside evaluation.py's)
K_NEAREST = 3
# The feature network's recipe: changing any of it (or VERSION) makes a new cache file.
# One convolution: on 2 CPU cores a second (32 channels) tripled the time for +0.007 accuracy.
RECIPE = {"version": 1, "conv": [16], "features": 128, "epochs": 3, "batch_size": 128,
          "learning_rate": 1e-3, "seed": 0}
log = logging.getLogger(__name__)


# --- the distances ---------------------------------------------------------------------

def gaussian_fit(features) -> tuple[np.ndarray, np.ndarray]:
    """(mean, covariance) of features [N, D], in float64."""
    f = np.asarray(features, np.float64)
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """||mu1 - mu2||^2 + Tr(cov1 + cov2 - 2 (cov1 cov2)^(1/2)) between two Gaussians.

    Tr (cov1 cov2)^(1/2) is the sum of the square roots of the eigenvalues of the symmetric
    PSD matrix cov1^(1/2) cov2 cov1^(1/2) (similar to cov1 cov2): two symmetric
    eigendecompositions, real and stable where scipy.linalg.sqrtm of a singular product is not.
    """
    w, v = np.linalg.eigh(cov1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    middle = root1 @ cov2 @ root1
    tr_sqrt = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)))
    diff = np.asarray(mu1) - np.asarray(mu2)
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2 * tr_sqrt)


def feature_frechet_distance(a, b) -> float:
    """The Fréchet distance between Gaussian fits of two feature sets [N, D] and [M, D]."""
    return frechet_distance(*gaussian_fit(a), *gaussian_fit(b))


def _sq_dists(a, b) -> np.ndarray:
    """Squared Euclidean distances [len(a), len(b)] (float64)."""
    return np.maximum((a * a).sum(1)[:, None] - 2 * a @ b.T + (b * b).sum(1)[None], 0.0)


def knn_radii(x, k: int = K_NEAREST, chunk: int = 1000) -> np.ndarray:
    """Distance from each row of x [N, D] to its k-th nearest other row (rows in chunks)."""
    x = np.asarray(x, np.float64)
    k = min(k, len(x) - 1)
    out = [np.partition(_sq_dists(x[s:s + chunk], x), k, axis=1)[:, k] for s in range(0, len(x), chunk)]
    return np.sqrt(np.concatenate(out))  # index 0 of each row is the row itself (distance 0)


def coverage(queries, refs, radii, chunk: int = 1000) -> float:
    """The share of `queries` within radii[j] of some refs[j]: inside the refs' k-NN manifold."""
    q, r = np.asarray(queries, np.float64), np.asarray(refs, np.float64)
    r2 = np.asarray(radii, np.float64)[None] ** 2
    inside = [np.any(_sq_dists(q[s:s + chunk], r) <= r2, axis=1) for s in range(0, len(q), chunk)]
    return float(np.mean(np.concatenate(inside)))


def precision_recall(real, fake, k: int = K_NEAREST) -> tuple[float, float]:
    """Kynkäänniemi et al. 2019: (share of fake inside the real manifold, share of real inside the
    fake manifold), manifolds the unions of k-NN balls."""
    return coverage(fake, real, knn_radii(real, k)), coverage(real, fake, knn_radii(fake, k))


# --- the feature network ---------------------------------------------------------------

class FeatureNet(nnx.Module):
    """3x3 stride-2 ReLU convolutions (RECIPE: one, 16 channels), a 128-unit ReLU dense layer (the
    features), a linear head."""

    def __init__(self, image_shape, num_classes: int, rngs: nnx.Rngs, conv=(16,), features: int = 128):
        h, w, c = image_shape
        self.convs = nnx.List()
        for out in conv:
            self.convs.append(nnx.Conv(c, out, (3, 3), strides=2, rngs=rngs))
            h, w, c = -(-h // 2), -(-w // 2), out
        self.dense = nnx.Linear(h * w * c, features, rngs=rngs)
        self.head = nnx.Linear(features, num_classes, rngs=rngs)

    def features(self, x):
        for conv in self.convs:
            x = jax.nn.relu(conv(x))
        return jax.nn.relu(self.dense(x.reshape(x.shape[0], -1)))

    def __call__(self, x):
        return self.head(self.features(x))


def _new_net(image_shape, num_classes: int) -> FeatureNet:
    return FeatureNet(image_shape, num_classes, nnx.Rngs(RECIPE["seed"]), RECIPE["conv"], RECIPE["features"])


def accuracy(net: FeatureNet, images, labels, batch_size: int = 1000) -> float:
    f = evaluation.jit_model_fn(lambda m, xb: {"y": jnp.argmax(m(xb.astype(jnp.float32) / 255.0), -1)}, net)
    return float(np.mean(evaluation.map_batches(f, (images,), batch_size)["y"] == labels))


def train_net(train, test, num_classes: int, epochs: int = RECIPE["epochs"]) -> tuple[FeatureNet, dict]:
    """The classifier trained with Adam on uint8 splits (each epoch one compiled lax.scan); its
    metadata: test accuracy, training seconds, the recipe."""
    started = time.perf_counter()
    net = _new_net(train.images.shape[1:], num_classes)
    bs = min(RECIPE["batch_size"], len(train))
    n_steps = len(train) // bs
    tx = optax.adam(RECIPE["learning_rate"])
    graphdef, params = nnx.split(net)
    images, labels = jnp.asarray(train.images), jnp.asarray(train.labels)

    def loss_fn(p, idx):
        logits = nnx.merge(graphdef, p)(images[idx].astype(jnp.float32) / 255.0)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels[idx]).mean()

    @jax.jit
    def epoch(p, opt_state, key):
        def step(carry, idx):
            p, opt_state = carry
            grads = jax.grad(loss_fn)(p, idx)
            updates, opt_state = tx.update(grads, opt_state, p)
            return (optax.apply_updates(p, updates), opt_state), None

        batches = jax.random.permutation(key, len(train))[:n_steps * bs].reshape(n_steps, bs)
        return jax.lax.scan(step, (p, opt_state), batches)[0]

    opt_state = tx.init(params)
    for e in range(epochs):
        params, opt_state = epoch(params, opt_state, jax.random.key(RECIPE["seed"] * 1000 + e))
    net = nnx.merge(graphdef, params)
    meta = {"test_accuracy": accuracy(net, test.images, test.labels),
            "train_seconds": round(time.perf_counter() - started, 1), "epochs": epochs,
            "train_images": len(train), "recipe": RECIPE}
    return net, meta


def recipe_hash() -> str:
    return hashlib.sha1(json.dumps(RECIPE, sort_keys=True).encode()).hexdigest()[:10]


def cache_path(name: str, root: Path) -> Path:
    return Path(root) / "aeflax_features" / f"{name.replace('/', '__')}.{recipe_hash()}.npz"


def save_net(net: FeatureNet, meta: dict, path: Path) -> None:
    leaves = jax.tree_util.tree_flatten_with_path(nnx.state(net, nnx.Param))[0]
    arrays = {jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves}
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npz", delete=False) as tmp:
        np.savez(tmp, meta=np.array(json.dumps(meta)), **arrays)
    os.replace(tmp.name, path)  # atomic: a concurrent reader never sees half a file


def load_net(path: Path, image_shape, num_classes: int) -> tuple[FeatureNet, dict]:
    net = _new_net(image_shape, num_classes)
    state = nnx.state(net, nnx.Param)
    paths, treedef = jax.tree_util.tree_flatten_with_path(state)
    with np.load(path) as f:
        leaves = [jnp.asarray(f[jax.tree_util.keystr(p)]) for p, _ in paths]
        meta = json.loads(str(f["meta"]))
    nnx.update(net, jax.tree_util.tree_unflatten(treedef, leaves))
    return net, meta


def feature_net(dataset, root: Path) -> tuple[FeatureNet, dict]:
    """The cached classifier of this dataset (`dataset`: the full one), trained on first use."""
    path = cache_path(dataset.name, root)
    if path.exists():
        try:
            return load_net(path, dataset.image_shape, dataset.num_classes)
        except Exception as err:  # noqa: BLE001 - damaged or of another shape: train it anew
            log.warning("feature network %s cannot be read (%s); training it anew", path, err)
    log.info("training the feature network of %s (once; cached in %s)", dataset.name, path)
    net, meta = train_net(dataset.train, dataset.test, dataset.num_classes)
    save_net(net, meta, path)
    log.info("feature network of %s: test accuracy %.4f, %.0f s", dataset.name, meta["test_accuracy"],
             meta["train_seconds"])
    return net, meta


def features(net: FeatureNet, images, batch_size: int = 1000) -> np.ndarray:
    """Penultimate-layer features [N, 128] of images (uint8, or float in [0, 1])."""
    scale = 255.0 if np.asarray(images[:1]).dtype == np.uint8 else 1.0
    f = evaluation.jit_model_fn(lambda m, xb: {"f": m.features(xb.astype(jnp.float32) / scale)}, net)
    return evaluation.map_batches(f, (images,), batch_size, "features")["f"]


# --- the evaluation --------------------------------------------------------------------

def generate(cfg, model, state, train_images, key, n: int) -> np.ndarray:
    """n decoded samples in [0, 1]: from the prior, or from `eval.sampler` fit to training codes."""
    codes = None
    if not parts.bottleneck_of(cfg).posterior:
        codes = evaluation.encoder(model, cfg.train.eval_batch_size)(train_images[:n])
    z = np.asarray(evaluation.sample_codes(cfg, model, codes, key, n))
    decode = evaluation.jit_model_fn(lambda m, zb: {"x": jnp.clip(m.decode(zb), 0.0, 1.0)}, model)
    return evaluation.map_batches(decode, (z,), cfg.train.eval_batch_size, "samples")["x"]


@dataclass
class Fields:
    sample_quality: bool = False  # gen/fd_<dataset>, gen/precision, gen/recall (a cached feature CNN)
    quality_samples: int = 10000  # generated and test images compared


class SampleQuality(Evaluation):
    name = "sample_quality"
    Fields = Fields

    def asked(self, cfg) -> bool:
        return cfg.eval.sample_quality

    def validate(self, cfg) -> None:
        n = cfg.eval.quality_samples
        check(n >= K_NEAREST + 1, f"eval.quality_samples={n} must be >= {K_NEAREST + 1} (k-NN manifolds)")

    def run(self, ctx):
        from aeflax import data
        from aeflax.config import DataConfig

        t0 = time.perf_counter()
        cfg = ctx.cfg
        full = data.load(DataConfig(name=cfg.data.name, data_dir=cfg.data.data_dir))
        root = Path(cfg.data.data_dir).expanduser() if cfg.data.data_dir else data.default_data_dir()
        net, meta = feature_net(full, root)
        n = min(cfg.eval.quality_samples, len(full.test))
        key = jax.random.fold_in(evaluation.eval_key(ctx.state), QUALITY_STREAM)
        fake = features(net, generate(cfg, ctx.model, ctx.state, ctx.dataset.train.images, key, n))
        real = features(net, full.test.images[:n])
        precision, recall = precision_recall(real, fake)
        return {f"gen/fd_{full.name.replace('/', '_')}": feature_frechet_distance(fake, real),
                "gen/precision": precision, "gen/recall": recall,
                "gen/feature_net_accuracy": meta["test_accuracy"],
                "time/eval/sample_quality_seconds": time.perf_counter() - t0}, {}


PART = SampleQuality()
