"""Shared fixtures: tiny hand-written datasets and a synthetic planted-structure dataset."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from torchcf.data.interactions import Interactions

REPO = Path(__file__).resolve().parents[1]


def shared_data() -> Path:
    """``../shared/data`` beside the checkout (or ``$TORCHCF_SHARED_DATA``)."""
    env = os.environ.get("TORCHCF_SHARED_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)


def planted(
    num_users: int = 120,
    num_items: int = 60,
    groups: int = 4,
    per_user: int = 12,
    seed: int = 0,
) -> Interactions:
    """Users and items in ``groups`` blocks; each user interacts only with items of its block.

    Timestamps are random, so the leave-one-out test item is a random in-block item. Popularity
    knows nothing of the blocks, so a model that learns them must beat it.
    """
    rng = np.random.default_rng(seed)
    user_group = np.arange(num_users) % groups
    item_group = np.arange(num_items) % groups
    users, items = [], []
    for u in range(num_users):
        pool = np.flatnonzero(item_group == user_group[u])
        chosen = rng.choice(pool, size=min(per_user, len(pool)), replace=False)
        users.extend([u] * len(chosen))
        items.extend(chosen)
    users_arr = np.array(users)
    return Interactions(
        users_arr,
        np.array(items),
        num_users,
        num_items,
        timestamps=rng.permutation(len(users_arr)).astype(np.int64),
    )


def write_ml1m(path: Path, rows: list[tuple[int, int, int, int]]) -> Path:
    path.write_text("".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in rows))
    return path


def tiny_rows(
    num_users: int = 8, num_items: int = 12, per_user: int = 5, seed: int = 0
) -> list[tuple[int, int, int, int]]:
    """MovieLens-style rows (1-based ids, ratings 1..5, increasing timestamps)."""
    rng = np.random.default_rng(seed)
    rows = []
    t = 978300000
    for u in range(1, num_users + 1):
        for i in rng.choice(np.arange(1, num_items + 1), size=per_user, replace=False):
            t += int(rng.integers(1, 100))
            rows.append((u, int(i), int(rng.integers(1, 6)), t))
    return rows


def adam_reference(name, config, batches, forward=None, num_users=30, num_items=25, **kwargs):
    """autograd + torch.optim.Adam on ``batches``: (model, every batch's logits).

    ``forward(model, users, items, step)`` (step counted from 1) replaces ``model(users, items)``.
    """
    from torchcf.models.registry import build_model
    from torchcf.training.losses import bce_with_logits

    reference = build_model(name, num_users, num_items, seed=0, **kwargs)
    optimizer = torch.optim.Adam(
        reference.parameters(),
        lr=config.learning_rate,
        betas=(config.beta1, config.beta2),
        weight_decay=config.weight_decay,
    )
    out = []
    for step, (users, items, labels) in enumerate(batches, start=1):
        if forward is None:
            logits = reference(users, items)
        else:
            logits = forward(reference, users, items, step)
        loss = bce_with_logits(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        out.append(logits.detach())
    return reference, out


def assert_same_parameters(reference, model, tol=1e-4):
    """Every parameter within ``tol`` relative (Frobenius) error of the reference's."""
    for want, got in zip(reference.parameters(), model.parameters(), strict=True):
        rel = (got - want).norm() / want.norm()
        assert rel < tol, float(rel)


def tower_forward(model, users, items, keeps=None):
    """An MLP's / NeuMF's score written as the NCF formula (the tower on the concatenated rows,
    as the compiled kernel computes it), with dropout factors ``keeps[l]`` (or none) after each
    ReLU. (The models split the first layer instead; Adam's sign-like first steps turn the
    different float rounding of near-zero gradient sums into visible drift over many steps.)"""
    linears = [m for m in model.tower if isinstance(m, nn.Linear)]
    if model.name == "mlp":
        tables = (model.user_embedding, model.item_embedding)
    else:
        tables = (model.mlp_user_embedding, model.mlp_item_embedding)
    h = torch.cat([tables[0](users), tables[1](items)], dim=-1)
    for layer, linear in enumerate(linears):
        h = torch.relu(linear(h))
        if keeps is not None:
            h = h * keeps[layer]
    if model.name == "neumf":
        gmf = model.gmf_user_embedding(users) * model.gmf_item_embedding(items)
        h = torch.cat([gmf, h], dim=-1)
    return h @ model.head.weight[0] + model.head.bias[0]


def random_batches(steps=300, batch=32, users=30, items=25, seed=0):
    """``steps`` batches of random (user, item, 0/1 label) triples, from one seeded generator."""
    gen = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randint(0, users, (batch,), generator=gen),
            torch.randint(0, items, (batch,), generator=gen),
            torch.randint(0, 2, (batch,), generator=gen).float(),
        )
        for _ in range(steps)
    ]


@pytest.fixture()
def kernel():
    """The compiled kernel module. Where it does not build, the test is skipped with the
    build's own error, or, where the README promises the kernel (``TORCHCF_REQUIRE_KERNEL=1``,
    as ``.ci/run`` sets), it fails with it."""
    from torchcf import native

    module = native.load()
    if module is None:
        error = f"the compiled kernel did not build: {native.build_error()}"
        if os.environ.get("TORCHCF_REQUIRE_KERNEL") == "1":
            pytest.fail(f"{error} (TORCHCF_REQUIRE_KERNEL=1)", pytrace=False)
        pytest.skip(error)
    return module


needs_kernel = pytest.mark.usefixtures("kernel")

# skips allowed when TORCHCF_NO_SKIPS=1 (.ci/run): what CI's machine cannot have
ALLOWED_SKIPS = ("CUDA",)


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session, exitstatus) -> None:
    """With ``TORCHCF_NO_SKIPS=1``, a skipped test whose reason is not allowed fails the run:
    CI must not be green while the code behind a claim went untested."""
    terminalreporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if os.environ.get("TORCHCF_NO_SKIPS") != "1" or terminalreporter is None:
        return
    skipped = terminalreporter.stats.get("skipped", [])
    reasons = [str(report.longrepr[-1]) if report.longrepr else "" for report in skipped]
    unexpected = [r for r in reasons if not any(a in r for a in ALLOWED_SKIPS)]
    if unexpected:
        terminalreporter.write_line(
            f"TORCHCF_NO_SKIPS: {len(unexpected)} test(s) skipped on CI: "
            + "; ".join(sorted(set(unexpected))),
            red=True,
        )
        session.exitstatus = 1
