"""The analytic MF/GMF step equals autograd + torch.optim.Adam: speed never changes results."""

from __future__ import annotations

import pytest
import torch

from torchcf.config import TrainConfig
from torchcf.losses import bce_with_logits
from torchcf.registry import build_model
from torchcf.steps import AutogradStep, DotProductAdamStep, FlatAdamStep, make_step


def _batches(steps=300, batch=32, users=30, items=25, seed=0):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        yield (
            torch.randint(0, users, (batch,), generator=gen),
            torch.randint(0, items, (batch,), generator=gen),
            torch.randint(0, 2, (batch,), generator=gen).float(),
        )


@pytest.mark.parametrize("name", ["mf", "gmf"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
@pytest.mark.parametrize("fused", [True, False])
def test_analytic_step_matches_torch_adam(name, weight_decay, fused):
    config = TrainConfig(model=name, learning_rate=0.01, weight_decay=weight_decay)
    reference = build_model(name, 30, 25, seed=0, embedding_dim=8, init_std=0.1)
    fast = build_model(name, 30, 25, seed=0, embedding_dim=8, init_std=0.1)
    optimizer = torch.optim.Adam(reference.parameters(), lr=0.01, weight_decay=weight_decay)
    step = DotProductAdamStep(fast, config)
    step._fused = fused and step._fused
    for users, items, labels in _batches():
        logits = reference(users, items)
        loss = bce_with_logits(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        fast_logits = step(users, items, labels)
        assert torch.allclose(fast_logits, logits.detach(), rtol=1e-4, atol=1e-6)
    for (key, want), got in zip(
        reference.state_dict().items(), fast.state_dict().values(), strict=True
    ):
        rel = (got - want).norm() / want.norm()
        assert rel < 1e-4, (key, float(rel))


def test_make_step_choice():
    gmf = build_model("gmf", 3, 3, seed=0)
    assert isinstance(make_step(gmf, TrainConfig()), DotProductAdamStep)
    assert isinstance(make_step(gmf, TrainConfig(step="autograd")), AutogradStep)


def test_bce_with_logits_closed_form():
    logits = torch.tensor([0.0, 2.0, -1.0])
    labels = torch.tensor([1.0, 0.0, 1.0])
    expected = (
        torch.log(torch.tensor(2.0))
        + torch.log1p(torch.exp(torch.tensor(2.0)))
        + torch.log1p(torch.exp(torch.tensor(1.0)))
    ) / 3
    assert torch.isclose(bce_with_logits(logits, labels), expected)


@pytest.mark.parametrize("name", ["mlp", "neumf"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_flat_adam_step_matches_torch_adam(name, weight_decay):
    config = TrainConfig(model=name, learning_rate=0.01, weight_decay=weight_decay)
    kwargs = {"embedding_dim": 4, "layers": 2, "init_std": 0.1}
    reference = build_model(name, 30, 25, seed=0, **kwargs)
    fast = build_model(name, 30, 25, seed=0, **kwargs)
    optimizer = torch.optim.Adam(reference.parameters(), lr=0.01, weight_decay=weight_decay)
    step = make_step(fast, config)
    assert isinstance(step, FlatAdamStep)
    for users, items, labels in _batches(steps=200):
        logits = reference(users, items)
        loss = bce_with_logits(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert torch.allclose(step(users, items, labels), logits.detach(), rtol=1e-4, atol=1e-6)
    for (key, want), got in zip(
        reference.state_dict().items(), fast.state_dict().values(), strict=True
    ):
        assert (got - want).norm() / want.norm() < 1e-4, key
