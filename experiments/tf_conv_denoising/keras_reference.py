"""The TensorFlow tutorial's own Keras code, seeded, on aeflax's Fashion-MNIST: the spread of the
reference that `experiments/tf_conv_denoising` compares with (issue: is 0.00720 vs 0.0068 seed noise?).

The model, noise, optimizer and fit call are the tutorial's ("Intro to Autoencoders", second
example) line for line; what is added: `keras.utils.set_random_seed(seed)` (it seeds the noise
draw, the initialisers and the shuffling) and a run record per seed that scripts/report.py
reads beside aeflax's runs (`<out>/seed=<s>/summary.json`: status, test/mse = the last epoch's
validation loss, time/epoch_seconds, wall_seconds). Needs TensorFlow (a dependency of the
project's data preparation) and Keras 3 on its TensorFlow backend.

    python experiments/tf_conv_denoising/keras_reference.py --seeds 0 1 2 3 4 \
        --out results/keras_tf_conv_denoising
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def run(seed: int, out: Path, epochs: int, train_limit: int | None) -> dict:
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras
    import tensorflow as tf
    from keras import layers, losses

    from aeflax import data
    from aeflax.config import DataConfig

    start = time.perf_counter()
    ds = data.load(DataConfig(name="fashion_mnist"))
    x_train = ds.train.images[:train_limit].astype("float32") / 255.0  # [N, 28, 28, 1] already
    x_test = ds.test.images.astype("float32") / 255.0
    keras.utils.set_random_seed(seed)

    # --- the tutorial, unchanged ---
    noise_factor = 0.2
    x_train_noisy = x_train + noise_factor * tf.random.normal(shape=x_train.shape)
    x_test_noisy = x_test + noise_factor * tf.random.normal(shape=x_test.shape)
    x_train_noisy = tf.clip_by_value(x_train_noisy, clip_value_min=0.0, clip_value_max=1.0)
    x_test_noisy = tf.clip_by_value(x_test_noisy, clip_value_min=0.0, clip_value_max=1.0)

    class Denoise(keras.Model):
        def __init__(self):
            super().__init__()
            self.encoder = keras.Sequential([
                layers.Input(shape=(28, 28, 1)),
                layers.Conv2D(16, (3, 3), activation="relu", padding="same", strides=2),
                layers.Conv2D(8, (3, 3), activation="relu", padding="same", strides=2)])
            self.decoder = keras.Sequential([
                layers.Conv2DTranspose(8, kernel_size=3, strides=2, activation="relu", padding="same"),
                layers.Conv2DTranspose(16, kernel_size=3, strides=2, activation="relu", padding="same"),
                layers.Conv2D(1, kernel_size=(3, 3), activation="sigmoid", padding="same")])

        def call(self, x):
            return self.decoder(self.encoder(x))

    autoencoder = Denoise()
    autoencoder.compile(optimizer="adam", loss=losses.MeanSquaredError())
    fit_start = time.perf_counter()
    history = autoencoder.fit(x_train_noisy, x_train, epochs=epochs, shuffle=True,
                              validation_data=(x_test_noisy, x_test), verbose=2)
    # --- end of the tutorial ---

    fit_seconds = time.perf_counter() - fit_start
    summary = {"status": "finished", "seed": seed, "framework": f"keras {keras.__version__} "
               f"(tensorflow {tf.__version__})", "epochs": epochs,
               "test/mse": float(history.history["val_loss"][-1]),
               "train/loss": float(history.history["loss"][-1]),
               "time/epoch_seconds": fit_seconds / epochs,
               "wall_seconds": time.perf_counter() - start,
               "history/val_loss": [float(v) for v in history.history["val_loss"]]}
    run_dir = out / f"seed={seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--out", type=Path, default=Path("results/keras_tf_conv_denoising"))
    p.add_argument("--epochs", type=int, default=10, help="the tutorial's 10")
    p.add_argument("--train-limit", type=int, default=None, help="the first N training images (tests)")
    a = p.parse_args()
    for seed in a.seeds:
        if (a.out / f"seed={seed}" / "summary.json").exists():
            print(f"seed {seed}: done before, kept")
            continue
        s = run(seed, a.out, a.epochs, a.train_limit)
        print(f"seed {seed}: test/mse {s['test/mse']:.6f}, {s['time/epoch_seconds']:.1f} s/epoch")


if __name__ == "__main__":
    main()
