"""Parts: every idea a variant is made of lives in one module that owns it.

An axis of variation is a sub-package here (bottleneck, loss, noise, penalty, eval); each
module in it defines one part as `PART`. A part owns

- its config fields: `Fields`, a dataclass of the keys it reads under `cfg.<axis>`;
- their validation: `validate(cfg)`, called for every part of every axis (a part checks
  its own fields' ranges always, and its combinations with the rest when it is active);
- its traced hyperparameters: fields declared with `traced(...)` travel as scalars in
  `hp`, so one compiled epoch serves every value and a vmapped sweep may vary them;
- its terms (training and per-image evaluation terms; per axis, see the base classes);
- the capabilities others ask of it (class attributes such as `Bottleneck.posterior`).

Everything else is derived from the registry: the axis config dataclasses (aeflax.config),
the "choose one of" lists, which parts a config switches on, `hyperparameters(cfg)` and the
fields a vmapped sweep varies. docs/extending.md walks through adding a part.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import pkgutil
import typing
from typing import Any, ClassVar, Optional

import jax
import jax.numpy as jnp

from aeflax.checks import ConfigError, check, one_of

AXES = ("bottleneck", "loss", "noise", "penalty", "eval")

# --- what a config field does to a run: the one source of truth -------------------------
# numbers: decides the trained numbers (resume check, vmap grouping, sweep directory names);
# evaluation: decides what is measured at the end, not the trained state;
# record: decides neither (names, logging, where files go).
NUMBERS, EVALUATION, RECORD = "numbers", "evaluation", "record"


def traced(default: Any, hp: Optional[str] = None) -> Any:
    """A field a compiled epoch reads as a traced scalar, `hp[hp or <field name>]`."""
    return dataclasses.field(default=default, metadata={"traced": hp or True})


def record(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING) -> Any:
    """A field that changes no number of the run (names, logging, paths)."""
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"role": RECORD})


def role_of(f: dataclasses.Field, section_role: str = NUMBERS) -> str:
    return f.metadata.get("role", section_role)


def hp_name(f: dataclasses.Field) -> Optional[str]:
    """The key of a traced field in `hp` (None: not traced)."""
    name = f.metadata.get("traced")
    return None if name is None else (f.name if name is True else name)


def traced_values(fields: type, section) -> dict[str, Any]:
    """{hp name: value} of the traced fields of the dataclass `fields`, read from a config section."""
    return {hp_name(f): getattr(section, f.name) for f in dataclasses.fields(fields) if hp_name(f)}


# --- the parts -------------------------------------------------------------------------

class Part:
    """One idea of one axis; subclasses set `name` and `Fields` and fill in what they do."""

    axis: ClassVar[str] = ""
    name: ClassVar[str] = ""
    selector: ClassVar[Optional[str]] = None  # the axis field naming the chosen part (e.g. kind)
    Fields: ClassVar[Optional[type]] = None

    def active(self, cfg) -> bool:
        """Whether `cfg` switches this part on (by default: the axis selector names it)."""
        return getattr(getattr(cfg, self.axis), self.selector) == self.name

    def validate(self, cfg) -> None:
        """Raise ConfigError (one line, with the fix) for a bad value or combination."""

    def hyperparameters(self, cfg, steps_per_epoch: int) -> dict[str, float]:
        """The traced values of an active part: its `traced(...)` fields by their hp names."""
        return traced_values(self.Fields, getattr(cfg, self.axis)) if self.Fields else {}

    def __repr__(self) -> str:
        return f"<{self.axis} part {self.name!r}>"


class Bottleneck(Part):
    """Encoder features -> the code the decoder reads (and, for some, a posterior and prior).

    `build` makes the nnx module; calling it returns a dict with at least `code`.
    """

    axis, selector = "bottleneck", "kind"
    posterior: ClassVar[bool] = False  # q(z|x) and a prior: an ELBO, a likelihood bound, prior samples
    activation_code: ClassVar[bool] = False  # emits `activation` (pre-sparsity code) for activity penalties
    smooth_code: ClassVar[bool] = True  # the code is differentiable in the input (a Jacobian penalty exists)
    gaussian_posterior: ClassVar[bool] = False  # out holds `mean`, `logvar` of a diagonal Gaussian q(z|x)
    exemplars: ClassVar[bool] = False  # keeps what it needs of the training images (the Exemplar prior)

    def build(self, b, in_features: int, map_channels: int, rngs, init: str):
        """(nnx module, size of the vector code it hands the decoder; 0 when the code is a map)."""
        raise NotImplementedError

    def attach(self, b, module, encoder, image_shape, rngs) -> None:
        """After `build`: give the module what only the whole model has (the VampPrior's prior
        encodes learned pseudo-inputs with the model's own encoder). By default nothing."""

    # with `exemplars`: models.build passes the training split's size, the compiled epoch calls
    # `refresh` before its first epoch and after each, and a training step reads the whole split
    def attach_exemplars(self, b, module, num_train: int) -> None:
        """After `attach`: variables sized by the training split (num_train images). By default none."""

    def refresh(self, model, images) -> None:
        """Recompute, inside the compiled epoch, what the module keeps of the training split (uint8
        `images`, all of it), e.g. the codes of the Exemplar prior's exemplars."""

    def train_outputs(self, batch) -> dict:
        """Outputs of a training step that need more than the batch (`batch.images`, the whole training
        split, and `batch.idx`, the batch's indices in it); they replace the module's own before any
        term reads them. By default none."""
        return {}

    def code_activation(self, cfg) -> Optional[str]:
        """The activation that made the code, for its sparsity metrics (mean activation, active
        fraction) in training and evaluation; None: the code has none."""
        return None

    def train_terms(self, batch, hp) -> tuple[list, dict]:
        """(terms added to the loss in this order, scalar metrics) of the bottleneck's own objective."""
        return [], {k: jnp.mean(v) for k, v in self.eval_terms(batch).items()}

    def eval_terms(self, batch) -> dict:
        """Per-image terms ([B] arrays) it adds to the evaluation of a split (traced values: batch.hp)."""
        from aeflax.objectives import sparsity_metrics  # objectives imports this package

        act = self.code_activation(batch.cfg)
        return {} if act is None else sparsity_metrics(batch.out["code"], act)

    # with `posterior`:
    def kl(self, out):
        """KL(q(z|x) || p(z)) per image."""
        raise NotImplementedError

    def prior_sample(self, key, n: int, b, model):
        """n codes drawn from the prior (`model`: the trained one, for a learned prior)."""
        raise NotImplementedError

    def importance_log_weights(self, model, x, key, k: int, likelihood: str, std: float = 1.0, target=None):
        """log p(x|z_i) + log p(z_i) - log q(z_i|x) for k draws z_i ~ q(z|x): [k, B] (the IWAE bound
        and the importance-sampled NLL); `target` is what p(.|z) scores when it is not `x`."""
        raise NotImplementedError


class Loss(Part):
    """The objective's data term: reconstruction error or a (negative) likelihood bound."""

    axis, selector = "loss", "name"
    needs_posterior: ClassVar[bool] = False  # a variational bound: needs a bottleneck with `posterior`
    exact_bce: ClassVar[bool] = False  # the logged train/bce is the loss itself (exact from logits)

    def bernoulli(self, cfg) -> bool:
        """Whether it reads the decoder's logits as Bernoulli means (needs a sigmoid output)."""
        return False

    def train_terms(self, batch, hp) -> tuple[Any, dict]:
        """(the loss, its scalar metrics); `batch.metrics` already holds mse and bce."""
        raise NotImplementedError

    def eval_terms(self, batch) -> dict:
        """Per-image terms, `loss` among them (the objective's data term per image); traced values
        from `batch.hp`, as in training (a vmapped group evaluates every member with one cfg)."""
        raise NotImplementedError


class Noise(Part):
    """Input corruption of denoising autoencoders, one key per image."""

    axis, selector = "noise", "kind"
    level: ClassVar[Optional[str]] = None  # the field a noise level sets (std | prob); None: no noise

    def corrupt(self, key, x, level):
        """One image `x` in [0, 1] corrupted at `level` (a traced scalar)."""
        return x

    def corrupt_batch(self, keys, x, hp):
        """Each image of `x` with its own key, at the level in `hp`."""
        if self.level is None:
            return x
        level = hp[f"noise_{self.level}"]
        return jax.vmap(lambda k, xi: self.corrupt(k, xi, level))(keys, x)


class Penalty(Part):
    """A term added to the loss, switched on by a weight > 0 (a different compiled program)."""

    axis = "penalty"
    weights: ClassVar[tuple[str, ...]] = ()  # the fields whose > 0 switches it on
    owns_module: ClassVar[bool] = False  # trains a module of its own beside the model (`module`, `optimizer`)

    def active(self, cfg) -> bool:
        return any(getattr(cfg.penalty, w) > 0 for w in self.weights)

    def validate(self, cfg) -> None:
        for key in dataclasses.fields(self.Fields):
            value = getattr(cfg.penalty, key.name)
            if key.name in self.weights:
                check(value >= 0, f"penalty.{key.name}={value} must be >= 0")

    def train_terms(self, batch, hp) -> tuple[list, dict]:
        """(terms added to the loss in this order, scalar metrics)."""
        raise NotImplementedError

    # with `owns_module`:
    def module(self, cfg, rngs):
        """The part's own nnx module (FactorVAE's discriminator), built after the model and held at
        `model.owned[<part name>]`: its parameters are checkpointed, resumed and vmapped with the
        model's, and only `optimizer` trains them."""
        raise NotImplementedError

    def optimizer(self, cfg):
        """The optax transform of the module's parameters, giving the whole update (its own learning
        rate): the model's traced learning rate and weight decay do not reach them."""
        raise NotImplementedError


class Evaluation(Part):
    """An end-of-run evaluation: when it is asked, whether it applies, its metrics and figures."""

    axis = "eval"

    def asked(self, cfg) -> bool:
        raise NotImplementedError

    def active(self, cfg) -> bool:
        return self.asked(cfg)

    def skip_reason(self, cfg) -> Optional[str]:
        """Why it does not apply to this run (logged as a note), or None."""
        return None

    def run(self, ctx) -> tuple[dict, dict]:
        """(metrics, figures {name: png path}) on the run in `ctx` (an evaluation.Context)."""
        raise NotImplementedError


# --- the registry and what is derived from it ------------------------------------------

@functools.cache
def registry() -> dict[str, dict[str, Part]]:
    """{axis: {name: part}}: every module of every axis package, in module-name order."""
    found: dict[str, dict[str, Part]] = {}
    for axis in AXES:
        package = importlib.import_module(f"{__name__}.{axis}")
        found[axis] = {}
        for info in pkgutil.iter_modules(package.__path__):
            part = importlib.import_module(f"{package.__name__}.{info.name}").PART
            if part.axis != axis or part.name in found[axis]:
                raise TypeError(f"{package.__name__}.{info.name}: PART {part!r} is not a new {axis} part")
            found[axis][part.name] = part
    _check_hp_names(found)
    return found


def _check_hp_names(found: dict[str, dict[str, Part]]) -> None:
    """`hp` is one flat dict: two different fields may not travel under one name (a field
    shared by parts, declared alike, is one field)."""
    owner: dict[str, str] = {}
    for axis, axis_parts in found.items():
        for part in axis_parts.values():
            for f in dataclasses.fields(part.Fields) if part.Fields else ():
                name = hp_name(f)
                if name and owner.setdefault(name, f"{axis}.{f.name}") != f"{axis}.{f.name}":
                    raise TypeError(f"{axis}.{f.name} ({part!r}) and {owner[name]} are both traced as "
                                    f"hp[{name!r}]; give one of them another name: traced(default, hp=...)")


def parts(axis: str) -> tuple[Part, ...]:
    return tuple(registry()[axis].values())


def names(axis: str) -> tuple[str, ...]:
    return tuple(registry()[axis])


def selected(cfg, axis: str) -> Part:
    """The part the axis selector names (bottleneck.kind, loss.name, noise.kind)."""
    first = parts(axis)[0]
    value = getattr(getattr(cfg, axis), first.selector)
    one_of(value, names(axis), f"{axis}.{first.selector}")
    return registry()[axis][value]


def bottleneck_of(cfg) -> Bottleneck:
    return selected(cfg, "bottleneck")


def loss_of(cfg) -> Loss:
    return selected(cfg, "loss")


def noise_of(cfg) -> Noise:
    return selected(cfg, "noise")


def active(cfg, axis: str) -> list[Part]:
    return [p for p in parts(axis) if p.active(cfg)]


def active_names(cfg) -> dict[str, list[str]]:
    """Which parts `cfg` switches on, per axis: configs that agree compile to the same epoch."""
    return {axis: [p.name for p in active(cfg, axis)] for axis in AXES if axis != "eval"}


SELECTOR_DEFAULTS = {"bottleneck": "deterministic", "loss": "mse", "noise": "none"}


def axis_config(axis: str, cls_name: str) -> type:
    """The dataclass of `cfg.<axis>`: its selector, then the union of its parts' fields.

    Parts may share a field (e.g. code_size) if they declare it alike.
    """
    fields: dict[str, tuple[Any, dataclasses.Field]] = {}
    first = parts(axis)[0]
    if first.selector:
        fields[first.selector] = (str, dataclasses.field(default=SELECTOR_DEFAULTS[axis]))
    for part in parts(axis):
        hints = typing.get_type_hints(part.Fields) if part.Fields else {}
        for f in dataclasses.fields(part.Fields) if part.Fields else ():
            new = (hints[f.name], dataclasses.field(default=f.default, default_factory=f.default_factory,
                                                     metadata=f.metadata))
            if f.name in fields:
                old = fields[f.name]
                same = (old[0] == new[0] and old[1].default == new[1].default
                        and old[1].default_factory == new[1].default_factory
                        and dict(old[1].metadata) == dict(new[1].metadata))
                if not same:
                    raise TypeError(f"{axis}.{f.name} is declared differently by two parts ({part!r})")
                continue
            fields[f.name] = new
    cls = dataclasses.make_dataclass(cls_name, [(k, t, f) for k, (t, f) in fields.items()])
    cls.__module__ = "aeflax.config"  # where it is bound, so configs holding it pickle by reference
    return cls


def validate(cfg) -> None:
    """Every part's own checks, and that the chosen bottleneck and loss fit together."""
    for axis in AXES:
        if parts(axis)[0].selector:
            selected(cfg, axis)  # a known name, or "choose one of ..."
        for part in parts(axis):
            part.validate(cfg)
    b, lo = bottleneck_of(cfg), loss_of(cfg)
    if lo.needs_posterior != b.posterior:
        with_posterior = " or ".join(n for n, p in registry()["bottleneck"].items() if p.posterior)
        bounds = " or ".join(n for n, p in registry()["loss"].items() if p.needs_posterior)
        raise ConfigError(
            f"loss.name={lo.name} needs bottleneck={with_posterior} and a bottleneck with a posterior needs "
            f"loss={bounds} (got bottleneck.kind={b.name}); pick a matching pair, e.g. experiment=vae")


def hyperparameters(cfg, steps_per_epoch: int) -> dict[str, float]:
    """The traced values of every part `cfg` switches on."""
    hp: dict[str, float] = {}
    for axis in AXES:
        for part in active(cfg, axis):
            hp.update(part.hyperparameters(cfg, steps_per_epoch))
    return hp


__all__ = ["AXES", "Bottleneck", "ConfigError", "Evaluation", "Loss", "Noise", "Part", "Penalty", "active",
           "axis_config", "bottleneck_of", "hyperparameters", "loss_of", "names", "noise_of", "parts",
           "registry", "selected", "traced", "validate"]
