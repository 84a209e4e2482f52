"""Mean squared error per pixel (Keras' `mse`): the plain autoencoder's loss."""

from __future__ import annotations

from aeflax.parts import Loss


class MSE(Loss):
    name = "mse"

    def train_terms(self, batch, hp):
        return batch.metrics["mse"], {}

    def eval_terms(self, batch):
        return {"loss": batch.terms["mse"]}


PART = MSE()
