"""Datasets through tensorflow-datasets, as uint8 arrays.

`load` returns host numpy arrays (images uint8 [N, H, W, C], labels int32); the training
code puts them on the device once and scales to [0, 1] inside the compiled step.

First use of a dataset prepares it with tfds (array_record files under the tfds data
dir) and writes a plain `.npz` copy beside it, so later runs read arrays without
importing TensorFlow or tfds at all. Offline, `fashion_mnist` is prepared from Debian's
`dataset-fashion-mnist` files; anything else that is not prepared fails within seconds
with one line that says how to get it.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

import numpy as np

from aeflax.config import DataConfig

DEBIAN_PACKAGE = "dataset-fashion-mnist"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
CACHE_FORMAT = 1  # bump when the .npz layout changes
CACHE_KEYS = ("train_images", "train_labels", "test_images", "test_labels", "class_names")
log = logging.getLogger(__name__)


class DataError(RuntimeError):
    """A dataset that cannot be had; the message says what was tried and how to get it."""


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # uint8 [N, H, W, C]
    labels: np.ndarray  # int32 [N]

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, n: Optional[int]) -> Split:
        return self if n is None else Split(self.images[:n], self.labels[:n])


@dataclass(frozen=True)
class Dataset:
    name: str
    train: Split
    test: Split
    val: Optional[Split]
    num_classes: int
    class_names: tuple[str, ...]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])

    @property
    def eval_split(self) -> tuple[str, Split]:
        """The split evaluated each epoch: validation if carved, else test (as Keras does)."""
        return ("val", self.val) if self.val is not None else ("test", self.test)


def default_data_dir() -> Path:
    return Path(os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")).expanduser()


def load(cfg: DataConfig) -> Dataset:
    """Load a dataset by its tfds name, applying the subset, validation and class options."""
    root = Path(cfg.data_dir).expanduser() if cfg.data_dir else default_data_dir()
    arrays = _read_cache(cfg.name, root)
    if arrays is None:
        _prepare(cfg.name, root)
        try:
            arrays = _export_cache(cfg.name, root)
        except DataError:
            raise
        except Exception as err:  # noqa: BLE001 - prepared files that cannot be read: one line, the way out
            where = root / cfg.name
            raise DataError(f"the prepared {cfg.name} data in {where} cannot be read ({type(err).__name__}: "
                            f"{' '.join(str(err).split())[:120]}); delete {where} and run again to prepare"
                            f" it anew (python scripts/prepare_data.py {cfg.name})") from None
    train = Split(arrays["train_images"], arrays["train_labels"])
    test = Split(arrays["test_images"], arrays["test_labels"])
    names = tuple(str(s) for s in arrays["class_names"])
    val = None
    if cfg.val_size:
        if cfg.val_size >= len(train):
            raise DataError(f"data.val_size={cfg.val_size} leaves no training data ({cfg.name} has "
                            f"{len(train)} train examples); choose a smaller val_size")
        cut = len(train) - cfg.val_size
        val = Split(train.images[cut:], train.labels[cut:])
        train = Split(train.images[:cut], train.labels[:cut])
    if cfg.normal_class is not None:
        if not 0 <= cfg.normal_class < len(names):
            raise DataError(f"data.normal_class={cfg.normal_class} is not a class of {cfg.name} "
                            f"(0..{len(names) - 1})")
        keep = train.labels == cfg.normal_class
        train = Split(train.images[keep], train.labels[keep])
        if val is not None:  # validation holds normal data only; test keeps every class
            keep = val.labels == cfg.normal_class
            val = Split(val.images[keep], val.labels[keep])
    train, test = train.take(cfg.train_limit), test.take(cfg.test_limit)
    if val is not None:
        val = val.take(cfg.test_limit)
    if cfg.binarize == "static":
        train, test = _binarize(train, 1), _binarize(test, 2)
        val = _binarize(val, 3) if val is not None else None
    return Dataset(cfg.name, train, test, val, len(names), names)


def _binarize(split: Split, seed: int) -> Split:
    """Bernoulli draw once per pixel with probability = intensity (fixed seed), as 0/255."""
    rng = np.random.default_rng(seed)
    on = rng.random(split.images.shape, dtype=np.float32) < split.images / 255.0
    return replace(split, images=(on * 255).astype(np.uint8))


# --- the .npz copy ---------------------------------------------------------------------

def _cache_path(name: str, root: Path) -> Path:
    return root / "aeflax_arrays" / f"{name.replace('/', '__')}.v{CACHE_FORMAT}.npz"


_last_read: dict = {}  # the arrays of the last .npz read, by (path, size, mtime): a sweep reads it once


def _read_cache(name: str, root: Path) -> Optional[dict]:
    """The .npz copy, or None when there is none or it is damaged (then it is rebuilt).

    The arrays are read-only and the last file's are kept, so the runs of one process (a sweep's
    jobs) read the file once; a file rewritten since is read again."""
    path = _cache_path(name, root)
    try:
        stat = path.stat()
    except OSError:
        return None
    key = (str(path.absolute()), stat.st_size, stat.st_mtime_ns)
    if key in _last_read:
        return _last_read[key]
    try:
        with np.load(path) as f:
            arrays = {k: f[k] for k in CACHE_KEYS}
        if len(arrays["train_images"]) != len(arrays["train_labels"]) or \
                len(arrays["test_images"]) != len(arrays["test_labels"]):
            raise ValueError("images and labels differ in number")
        for a in arrays.values():
            a.flags.writeable = False
        _last_read.clear()
        _last_read[key] = arrays
        return arrays
    except Exception as err:  # noqa: BLE001 - cut short (a full disk), garbled, an older layout
        log.warning("the cached copy %s is damaged (%s: %s); rebuilding it from the prepared tfds data",
                    path, type(err).__name__, " ".join(str(err).split())[:100])
        return None


def _export_cache(name: str, root: Path) -> dict:
    """Read the prepared tfds splits once and keep them as one uncompressed .npz."""
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=str(root), file_format="array_record")
    image_key, label_key = builder.info.supervised_keys or ("image", "label")
    arrays = {}
    known = list(builder.info.splits)
    for split in ("train", "test"):
        if known and split not in known:
            raise DataError(f"{name} has no '{split}' split (it has {', '.join(known)}); "
                            "aeflax needs train and test")
        images, labels = _read_split(builder, split, image_key, label_key)
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
    label_feature = builder.info.features[label_key]
    arrays["class_names"] = np.array(getattr(label_feature, "names", None)
                                     or [str(i) for i in range(int(arrays["train_labels"].max()) + 1)])
    path = _cache_path(name, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npz", delete=False) as tmp:
        np.savez(tmp, **arrays)
    os.replace(tmp.name, path)  # atomic: a concurrent reader never sees half a file
    return arrays


def _read_split(builder, split: str, image_key: str, label_key: str):
    import tensorflow_datasets as tfds

    if builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD:
        source = builder.as_data_source(split=split)
        try:
            records = source.__getitems__(list(range(len(source))))  # batched: ~2x faster
        except TypeError:  # tfds.testing.mock_data's __getitems__ is broken; read one by one
            records = [source[i] for i in range(len(source))]
        images = np.stack([r[image_key] for r in records])
        labels = np.array([r[label_key] for r in records], dtype=np.int32)
    else:  # prepared earlier as tfrecord: read through TensorFlow
        batch = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
        images, labels = batch[image_key], batch[label_key].astype(np.int32)
    if images.ndim == 3:
        images = images[..., None]
    return images.astype(np.uint8), labels


# --- preparation -----------------------------------------------------------------------

def _prepare(name: str, root: Path) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=str(root), file_format="array_record")
    except tfds.core.registered.DatasetNotFoundError:
        raise DataError(f"unknown dataset '{name}': tensorflow-datasets has no builder of that name "
                        "(python -c 'import tensorflow_datasets as t; print(t.list_builders())' lists them)"
                        ) from None
    if builder.is_prepared():
        return
    if name == "fashion_mnist":
        _prepare_fashion_mnist_offline(root)
        return
    host = _download_host(builder)
    if not _reachable(host):
        raise DataError(
            f"dataset '{name}' is not prepared in {root} and {host} cannot be reached (no network); "
            f"prepare it where there is internet (python scripts/prepare_data.py {name}) and copy "
            f"{root / name} here, or set data.data_dir to a directory that holds it")
    try:
        builder.download_and_prepare()
    except Exception as err:  # network failures deep in tfds: one line, not a wall
        raise DataError(f"dataset '{name}' could not be downloaded into {root}: {err}") from err


def _download_host(builder) -> str:
    urls = list(builder.url_infos or {})
    return urlparse(urls[0]).hostname if urls else "storage.googleapis.com"


def _reachable(host: str, timeout: float = 3.0) -> bool:
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _prepare_fashion_mnist_offline(root: Path) -> None:
    import tensorflow_datasets as tfds

    from aeflax.tfds_local.fashion_mnist_debian import FashionMnistDebian

    manual = _debian_fashion_mnist_files(root)
    builder = FashionMnistDebian(data_dir=str(root), file_format="array_record")
    builder.download_and_prepare(
        download_dir=str(root / "downloads"),
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))


def _debian_fashion_mnist_files(root: Path) -> Path:
    """The installed Debian package's IDX files, or fetch the package without root."""
    if (DEBIAN_DIR / "train-images-idx3-ubyte.gz").exists():
        return DEBIAN_DIR
    extracted = root / "downloads" / "manual" / DEBIAN_PACKAGE
    files = extracted / DEBIAN_DIR.relative_to("/")
    if (files / "train-images-idx3-ubyte.gz").exists():
        return files
    tried = f"{DEBIAN_DIR} (not installed), `apt-get download {DEBIAN_PACKAGE}`"
    if not (shutil.which("apt-get") and shutil.which("dpkg-deb")):
        raise DataError(f"fashion_mnist is not prepared and cannot be fetched: tried {tried} but apt-get/"
                        "dpkg-deb are missing; install the Debian package or run with internet")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            subprocess.run(["apt-get", "download", DEBIAN_PACKAGE], cwd=tmp, check=True,
                           capture_output=True, timeout=120)
            deb = next(Path(tmp).glob("*.deb"))
            extracted.mkdir(parents=True, exist_ok=True)
            subprocess.run(["dpkg-deb", "-x", str(deb), str(extracted)], check=True,
                           capture_output=True, timeout=120)
        except (subprocess.SubprocessError, StopIteration, OSError) as err:
            detail = getattr(err, "stderr", b"") or b""
            raise DataError(f"fashion_mnist is not prepared: tried {tried}, which failed "
                            f"({detail.decode(errors='replace').strip() or err}); "
                            f"`apt-get install {DEBIAN_PACKAGE}` or internet access fixes it") from None
    return files
