"""The contractive AE at small code sizes. Its sigmoid code used to saturate at 1 (the mean image,
test MSE 0.0871 at code sizes 2 and 8, results/sweep_latent) with or without the penalty: Glorot's
decoder weights, std sqrt(2 / (code + pixels)), let a small code barely move the output, so the
units became biases. LeCun's, std sqrt(1 / code), give the code its say: the variant's default."""

import pytest
from test_variants import _compose

from aeflax import training
from aeflax.config import validate


@pytest.mark.slow
@pytest.mark.parametrize("code_size", [2, 8])
def test_the_contractive_variant_trains_at_small_code_sizes(code_size, fmnist_small):
    def fit(*overrides):
        cfg = _compose("variant=contractive", f"bottleneck.code_size={code_size}", "train.epochs=3",
                       "train.batch_size=32", "eval.figures=false", *overrides)
        validate(cfg)
        return training.fit(cfg, fmnist_small, progress=False).history[-1]

    fixed, glorot = fit(), fit("model.init=glorot_uniform")
    assert glorot["train/mean_activation"] > 0.99  # the collapse, reproduced: every unit saturated at 1
    # not saturated (its lower MSE takes more steps: 0.058 / 0.037 against 0.087 after 10 full epochs)
    assert fixed["train/mean_activation"] < 0.9
    assert fixed["train/contractive"] > 10 * glorot["train/contractive"]  # a code that still moves
