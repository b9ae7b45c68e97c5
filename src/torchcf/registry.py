"""Every model by name: the neural models and the fitted baselines, and how to build one."""

from __future__ import annotations

import inspect
from typing import Any

import torch

from torchcf.baselines import EASE, IALS, ItemKNN, Pop
from torchcf.errors import ConfigError
from torchcf.models import NEURAL_MODELS, Blend, ScoringModel

__all__ = ["BASELINES", "MODELS", "TRAINABLE", "build_model", "model_kwargs"]

BASELINES: dict[str, type[ScoringModel]] = {
    "pop": Pop,
    "itemknn": ItemKNN,
    "ease": EASE,
    "ials": IALS,
}
# what train, tune and compare build from scratch; a blend is made of trained runs (torchcf blend)
TRAINABLE: dict[str, type[ScoringModel]] = {**NEURAL_MODELS, **BASELINES}
MODELS: dict[str, type[ScoringModel]] = {**TRAINABLE, "blend": Blend}


def build_model(
    name: str,
    num_users: int,
    num_items: int,
    seed: int | None = None,
    **hparams: Any,
) -> ScoringModel:
    """Instantiate a registered model; ``seed`` makes its initialisation reproducible."""
    if name not in TRAINABLE:
        raise ConfigError(f"unknown model {name!r} (known: {', '.join(TRAINABLE)})")
    cls: Any = MODELS[name]
    if "generator" in inspect.signature(cls.__init__).parameters:
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        hparams["generator"] = generator
    return cls(num_users, num_items, **hparams)


def model_kwargs(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``options`` (e.g. a training config) that model ``name`` takes."""
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r} (known: {', '.join(MODELS)})")
    accepted = inspect.signature(MODELS[name].__init__).parameters
    skip = {"self", "num_users", "num_items", "generator"}
    return {k: v for k, v in options.items() if k in accepted and k not in skip and v is not None}
