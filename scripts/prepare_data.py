"""Prepare datasets ahead of time: `python scripts/prepare_data.py mnist cifar10 ...`.

Run it where there is internet (for fashion_mnist, Debian's files suffice); it leaves the
tfds array_record files and aeflax's .npz copy under the data dir, which can be copied to
an offline machine (`--data-dir`, default $TFDS_DATA_DIR or ~/tensorflow_datasets).
"""

import argparse
import sys
import time

from aeflax import data
from aeflax.config import DataConfig


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="+", help="tfds dataset names, e.g. fashion_mnist mnist cifar10")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    for name in args.names:
        start = time.perf_counter()
        try:
            ds = data.load(DataConfig(name=name, data_dir=args.data_dir))
        except data.DataError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        print(f"{name}: train {ds.train.images.shape}, test {ds.test.images.shape}, "
              f"{ds.num_classes} classes ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
