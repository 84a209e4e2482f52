"""Feature extraction: a linear probe and k-NN on the frozen codes (fit on train, scored on test),
and the same probe on raw pixels beside it."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

from aeflax import evaluation
from aeflax.checks import check
from aeflax.parts import Evaluation


@dataclass
class Fields:
    probe: bool = False  # probe/accuracy, probe/knn_accuracy
    probe_raw: bool = True  # the same probe on raw pixels beside it (probe/raw_accuracy)
    probe_limit: Optional[int] = None  # train examples the probe is fit on; null = all
    knn_k: int = 5


class Probe(Evaluation):
    name = "probe"
    Fields = Fields

    def asked(self, cfg) -> bool:
        return cfg.eval.probe

    def skip_reason(self, cfg) -> Optional[str]:
        return "a one-class run has one training label" if cfg.data.normal_class is not None else None

    def validate(self, cfg) -> None:
        ev = cfg.eval
        check(ev.knn_k >= 1, f"eval.knn_k={ev.knn_k} must be >= 1")
        check(ev.probe_limit is None or ev.probe_limit >= 1,
              f"eval.probe_limit={ev.probe_limit} must be >= 1 (or null for all)")

    def run(self, ctx):
        t0 = time.perf_counter()
        ev, flat = ctx.cfg.eval, evaluation.flat
        train, test = ctx.dataset.train.take(ev.probe_limit), ctx.dataset.test
        encode = evaluation.encoder(ctx.model, ctx.cfg.train.eval_batch_size)
        c_train, c_test = flat(encode(train.images)), flat(encode(test.images))
        out = {"probe/accuracy": evaluation.linear_probe(c_train, train.labels, c_test, test.labels),
               "probe/knn_accuracy": evaluation.knn_accuracy(c_train, train.labels, c_test, test.labels,
                                                             ev.knn_k)}
        raw = 0.0
        if ev.probe_raw:
            t1 = time.perf_counter()
            out["probe/raw_accuracy"] = evaluation.linear_probe(train.images / 255.0, train.labels,
                                                                test.images / 255.0, test.labels)
            raw = out["time/eval/raw_probe_seconds"] = time.perf_counter() - t1
        out["time/eval/probe_seconds"] = time.perf_counter() - t0 - raw
        return out, {}


PART = Probe()
