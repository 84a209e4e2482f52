"""Binary cross-entropy per pixel, the decoder's logits read as Bernoulli means."""

from __future__ import annotations

from aeflax.parts import Loss


class BCE(Loss):
    name = "bce"
    exact_bce = True  # train/bce is the loss: computed from the logits, not the cheaper sigmoid form

    def bernoulli(self, cfg) -> bool:
        return True

    def train_terms(self, batch, hp):
        return batch.metrics["bce"], {}

    def eval_terms(self, batch):
        return {"loss": batch.terms["bce"]}


PART = BCE()
