"""The training settings (``TrainConfig``) and the ``Recipe`` of a run: which model, its own
settings, the training settings and the split's, resolved from the model's spec.

The defaults of ``TrainConfig`` are the seed's (BCE, Adam lr 0.001, batch 256, 4 negatives,
20 epochs); a model's spec overrides what does not suit it, a named recipe (``fast``,
``finetune``) goes on top when asked for, and what the user set explicitly wins over all.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from torchcf.data.split import SEED, SplitConfig
from torchcf.errors import ConfigError
from torchcf.models.base import ModelConfig, ModelSpec, ScoringModel
from torchcf.models.registry import SPECS, get_spec
from torchcf.settings import Settings, above, below_one, between, setting

__all__ = ["OPTIMIZERS", "Recipe", "TrainConfig", "applicable", "check_loss", "recipe", "takes"]

OPTIMIZERS = ("adam", "lazy-adam", "sgd", "adagrad")


SELECTABLE = ("hr", "ndcg", "recall", "precision", "mrr", "map")


def selection_problem(value: str) -> str | None:
    """What is wrong with a ``select_metric`` value (``auto`` or ``name@k``), or None."""
    if value == "auto":
        return None
    name, _, k = value.partition("@")
    if name in SELECTABLE and k.isdigit() and 1 <= int(k) <= 100_000:
        return None
    return f"must be auto or NAME@K with NAME one of {', '.join(SELECTABLE)}, got {value!r}"


@dataclass(frozen=True)
class TrainConfig(Settings):
    """How a model is trained (the seed's settings are the defaults)."""

    owner: ClassVar[str] = "training"

    epochs: int = setting(20, "training epochs", check=between(1, 100_000))
    batch_size: int = setting(256, "samples per step", check=between(1, 2**31 - 1))
    learning_rate: float = setting(0.001, "learning rate", flag="--lr", check=above(0, 1e3))
    beta1: float = setting(0.9, "Adam's β₁", check=below_one)
    beta2: float = setting(0.999, "Adam's β₂", check=below_one)
    lr_schedule: str = setting(
        "constant",
        "constant, or cosine: epoch e of E trains at lr·½(1 + cos(π(e−1)/E))",
        choices=("constant", "cosine"),
    )
    weight_decay: float = setting(0.0, "L2 penalty", check=between(0, 1e6))
    num_negatives: int = setting(
        4,
        "training negatives per positive, drawn afresh every epoch",
        flag="--negatives",
        check=between(1, 10_000),
    )
    sample_by: str = setting(
        "positive",
        "what a training sample starts from: positive (every training pair once an epoch) or "
        "user (LightGCN's code: a uniformly drawn user, then one of their items; as many as "
        "there are pairs, every user weighing the same)",
        choices=("positive", "user"),
    )
    optimizer: str = setting(
        "adam", "adam, lazy-adam (sparse rows), sgd or adagrad", choices=OPTIMIZERS
    )
    loss: str = setting(
        "bce",
        "bce (pointwise, the NCF loss), bpr (pairwise −log σ(s⁺ − s⁻)) or multinomial (over "
        "whole user rows: multvae's)",
        choices=("bce", "bpr", "multinomial"),
    )
    step: str = setting(
        "auto",
        "training step: auto (the compiled kernel where the model declares one), analytic "
        "(require it) or autograd",
        choices=("auto", "analytic", "autograd"),
    )
    prefetch: bool = setting(
        False, "draw the next epoch's samples in the background (large batches)"
    )
    amp: bool = setting(
        False,
        "bfloat16 matrix products: autocast of the forward pass on autograd steps, bfloat16 "
        "products in the compiled MLP/NeuMF kernel",
    )
    patience: int = setting(
        0, "stop after this many epochs without improvement (0: never)", check=between(0, 100_000)
    )
    eval_every: int = setting(
        1,
        "evaluate (log, checkpoint, select) every N epochs and after the last: long runs on "
        "large catalogues spend less time ranking",
        check=between(1, 100_000),
    )
    select_by: str = setting(
        "auto",
        "holdout that selects the reported epoch (auto: validation when there is one)",
        flag="--select",
        choices=("auto", "validation", "test"),
    )
    select_metric: str = setting(
        "auto",
        "the metric and cut-off that select the epoch, e.g. ndcg@20 (auto: hr@k, NDCG breaking "
        "ties, for sampled candidates; ndcg@20, recall@20 breaking ties, for held-out sets)",
        check=lambda v: selection_problem(v),
    )
    seed: int = setting(
        0, "random seed (initialisation, negatives, order; and the split)", check=SEED
    )
    device: str = setting("auto", "auto (CUDA when available), cpu, cuda or cuda:N")

    def epoch_learning_rate(self, epoch: int) -> float:
        """The learning rate of 1-based ``epoch`` under ``lr_schedule``."""
        if self.lr_schedule == "cosine":
            progress = (epoch - 1) / self.epochs
            return self.learning_rate * 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.learning_rate


@dataclass(frozen=True)
class Recipe:
    """Everything a training run is made of: the model's name and settings, the training
    settings and the split's. ``to_dict``/``from_dict`` round-trip it through JSON."""

    model: str
    model_config: ModelConfig
    train: TrainConfig
    split: SplitConfig

    def __post_init__(self) -> None:
        if self.train.select_by == "validation" and not self.split.validation:
            raise ConfigError("selecting by validation needs the validation holdout")
        if not isinstance(self.model_config, get_spec(self.model).config):
            raise ConfigError(f"{self.model} takes a {get_spec(self.model).config.__name__}")

    @property
    def spec(self) -> ModelSpec:
        return get_spec(self.model)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "model_config": self.model_config.to_dict(),
            "train": self.train.to_dict(),
            "split": self.split.to_dict(),
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Recipe:
        spec = get_spec(values["model"])
        return cls(
            spec.name,
            spec.config.from_dict(values.get("model_config", {})),
            TrainConfig.from_dict(values.get("train", {})),
            SplitConfig.from_dict(values.get("split", {})),
        )

    def settings(self) -> dict[str, Any]:
        """Every setting by name, flat (model, training, split)."""
        return {**self.split.to_dict(), **self.train.to_dict(), **self.model_config.to_dict()}

    def replace(self, **changes: Any) -> Recipe:
        """The same recipe with ``changes`` (setting names of any of its parts)."""
        return _assemble(self.spec, {**self._given(), **changes})

    def _given(self) -> dict[str, Any]:
        return {name: v for name, v in self.settings().items() if takes(self.model, name)}


def _training_fields(spec: ModelSpec) -> tuple[str, ...]:
    names = TrainConfig.field_names()
    return names if spec.training is None else tuple(n for n in names if n in spec.training)


def takes(model: str, name: str) -> bool:
    """Does ``model`` take the setting ``name`` (its own, a training or a split setting)?"""
    spec = get_spec(model)
    return (
        name in spec.config.field_names()
        or name in _training_fields(spec)
        or name in SplitConfig.field_names()
    )


def applicable(model: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``settings`` that ``model`` takes (what a comparison of several models
    applies to each)."""
    return {name: value for name, value in settings.items() if takes(model, name)}


def check_loss(model: type[ScoringModel], loss: str) -> None:
    """A row model (Mult-VAE) trains on its rows' multinomial loss and only it does."""
    if model.row_training and loss != "multinomial":
        raise ConfigError(
            f"{model.name} trains on whole user rows (--loss multinomial), not {loss}"
        )
    if loss == "multinomial" and not model.row_training:
        raise ConfigError(f"--loss multinomial is over whole user rows (multvae), not {model.name}")


def _assemble(spec: ModelSpec, values: Mapping[str, Any]) -> Recipe:
    refused = sorted(name for name in values if not takes(spec.name, name))
    if refused:
        raise ConfigError(
            f"{spec.name} does not take {', '.join(refused)} (its settings: "
            f"{', '.join(spec.config.field_names()) or 'none of its own'}; training: "
            f"{', '.join(_training_fields(spec))})"
        )

    check_loss(spec.model, values.get("loss", "bce"))

    def part(names: Sequence[str]) -> dict[str, Any]:
        return {name: values[name] for name in names if name in values}

    return Recipe(
        spec.name,
        spec.config.from_dict(part(spec.config.field_names())),
        TrainConfig.from_dict(part(TrainConfig.field_names())),
        SplitConfig.from_dict(part(SplitConfig.field_names())),
    )


def recipe(
    model: str,
    overrides: Mapping[str, Any] | None = None,
    recipes: Sequence[str] = (),
) -> Recipe:
    """The recipe of ``model``: the seed's training settings, the model's own settings and
    defaults, the named ``recipes`` (``fast``, ``finetune``) in order, then ``overrides`` (what
    the user set explicitly) on top. A setting the model does not take is an error naming it."""
    spec = get_spec(model)
    values: dict[str, Any] = dict(spec.defaults)
    for name in recipes:
        if name not in spec.recipes:
            having = [s.name for s in SPECS.values() if name in s.recipes]
            listed = " and ".join(filter(None, (", ".join(having[:-1]), "".join(having[-1:]))))
            raise ConfigError(f"the {name} recipe exists for {listed or 'no model'}, not {model}")
        values.update(spec.recipes[name])
    values.update(overrides or {})
    return _assemble(spec, values)
