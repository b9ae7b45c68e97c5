"""Every model by name: its ``ModelSpec`` (declared in the model's own module), and how to
build a fresh model or restore a saved one."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch

from torchcf.errors import ConfigError
from torchcf.models import blend, gmf, lightgcn, mf, mlp, multvae, neumf
from torchcf.models.base import ModelConfig, ModelSpec, ScoringModel
from torchcf.models.baselines import ease, ials, itemknn, pop

__all__ = ["MODELS", "SPECS", "TRAINABLE", "build_model", "get_spec", "restore"]

# one line per model: adding a model is its module plus its SPEC here
SPECS: dict[str, ModelSpec] = {
    s.name: s
    for s in (
        mf.SPEC,
        gmf.SPEC,
        mlp.SPEC,
        neumf.SPEC,
        mf.BPR_SPEC,
        pop.SPEC,
        itemknn.SPEC,
        ease.SPEC,
        ials.SPEC,
        lightgcn.SPEC,
        multvae.SPEC,
        blend.SPEC,
    )
}
# what train, tune and compare build from scratch; a blend is made of trained runs (torchcf blend)
TRAINABLE: dict[str, type[ScoringModel]] = {n: s.model for n, s in SPECS.items() if s.trainable}
MODELS: dict[str, type[ScoringModel]] = {n: s.model for n, s in SPECS.items()}


def get_spec(name: str, trainable: bool = True) -> ModelSpec:
    """The spec of model ``name``; ``ConfigError`` naming the known ones if there is none."""
    known = TRAINABLE if trainable else MODELS
    if name not in known:
        raise ConfigError(f"unknown model {name!r} (known: {', '.join(known)})")
    return SPECS[name]


def build_model(
    name: str,
    num_users: int,
    num_items: int,
    seed: int | None = None,
    config: ModelConfig | None = None,
    **settings: Any,
) -> ScoringModel:
    """A fresh model ``name`` with ``config`` (default: its own) and ``settings`` on top;
    ``seed`` makes its initialisation reproducible."""
    cls: Any = get_spec(name).model
    if "generator" in inspect.signature(cls.__init__).parameters:
        settings["generator"] = None if seed is None else torch.Generator().manual_seed(seed)
    return cls(num_users, num_items, config, **settings)


def restore(name: str, num_users: int, num_items: int, hparams: Mapping[str, Any]) -> ScoringModel:
    """A model of the saved ``hparams`` (its weights are loaded after)."""
    cls = get_spec(name, trainable=False).model
    return cls.from_hparams(num_users, num_items, hparams, restore)
