"""TrainConfig validation and the per-model recipes."""

from __future__ import annotations

import pytest

from torchcf.config import FAST_DEFAULTS, TrainConfig, recipe
from torchcf.errors import ConfigError


def test_fast_recipe():
    fast = recipe("gmf", fast=True)
    assert fast.batch_size == FAST_DEFAULTS["gmf"]["batch_size"] and fast.lr_schedule == "cosine"
    assert recipe("gmf", {"epochs": 3}, fast=True).epochs == 3  # explicit flags win
    with pytest.raises(ConfigError, match="fast mode has a recipe for gmf and mf, not mlp"):
        recipe("mlp", fast=True)
    with pytest.raises(ConfigError, match="beta1"):
        TrainConfig(beta1=1.0)
    with pytest.raises(ConfigError, match="lr_schedule"):
        TrainConfig(lr_schedule="step")
