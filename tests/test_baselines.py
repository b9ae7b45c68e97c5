"""Baselines: the scoring contract, closed forms checked against their optimality conditions,
and each learns the planted structure (popularity does not)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import needs_kernel, planted
from torchcf.data.interactions import Interactions
from torchcf.data.split import leave_one_out
from torchcf.models.base import FittedModel
from torchcf.models.baselines import EASE, IALS, ItemKNN, Pop
from torchcf.models.registry import SPECS, build_model
from torchcf.serving.persistence import load_model, save_model
from torchcf.training.config import TrainConfig
from torchcf.training.trainer import Trainer


@pytest.fixture(scope="module")
def split():
    return leave_one_out(planted(num_users=120, num_items=60), num_negatives=20, seed=0)


def fitted(name: str, split, epochs: int = 4, **hparams):
    model = build_model(name, split.num_users, split.num_items, seed=0, **hparams)
    fit = Trainer(model, split, TrainConfig(epochs=epochs)).fit()
    return model, fit


BASELINES = [name for name, spec in SPECS.items() if issubclass(spec.model, FittedModel)]


@pytest.mark.parametrize("name", BASELINES)
def test_contract_shapes_agreement_and_round_trip(name, split, tmp_path):
    model, fit = fitted(name, split, **({"embedding_dim": 8} if name == "ials" else {}))
    model.load_state_dict(fit.state)  # the selected epoch, as saved
    users = torch.tensor([0, 5, 7])
    everything = model.score_all(users)
    assert everything.shape == (3, split.num_items)
    items = torch.tensor([[1, 2, 3], [4, 5, 6], [0, 0, 9]])
    torch.testing.assert_close(model(users[:, None], items), everything.gather(1, items))
    torch.testing.assert_close(model(users, items[:, 0]), everything[torch.arange(3), items[:, 0]])
    save_model(tmp_path / "m", model, split.train, state=fit.state)
    again = load_model(tmp_path / "m").model
    torch.testing.assert_close(again.score_all(users), model.score_all(users))
    expected_epochs = 4 if name == "ials" else 1  # closed forms fit once
    assert len(fit.history) == expected_epochs


@pytest.mark.parametrize("name", ["itemknn", "ease", "ials"])
def test_learns_the_planted_blocks_and_beats_popularity(name, split):
    _, fit = fitted(name, split, **({"embedding_dim": 8} if name == "ials" else {}))
    _, pop = fitted("pop", split)
    assert fit.best_test.metrics["test"]["hr"] >= pop.best_test.metrics["test"]["hr"] + 0.25, (
        fit.best_test,
        pop.best_test,
    )


def test_pop_counts_distinct_users_per_item(split):
    model, _ = fitted("pop", split)
    expected = np.bincount(split.train.deduplicate().items, minlength=split.num_items)
    assert model.counts.tolist() == expected.tolist()
    assert torch.equal(model.score_all(torch.tensor([0]))[0], model.score_all(torch.tensor([9]))[0])


def test_ease_satisfies_its_optimality_conditions(split):
    model, _ = fitted("ease", split, l2=7.0)
    x = torch.as_tensor(split.train.deduplicate().csr.toarray(), dtype=torch.float64)
    b = model.weights.double()
    assert torch.all(b.diagonal() == 0)
    # d/dB of ||X − XB||² + λ||B||² vanishes off the diagonal (the constraint holds on it)
    gradient = (x.T @ x + 7.0 * torch.eye(len(b), dtype=torch.float64)) @ b - x.T @ x
    off = gradient - torch.diag(gradient.diagonal())
    assert off.abs().max() < 1e-3 * (x.T @ x).abs().max()
    scores = model.score_all(torch.tensor([3]))[0].double()
    torch.testing.assert_close(scores, x[3] @ b, rtol=1e-4, atol=1e-4)


def test_itemknn_is_pruned_cosine(split):
    full, _ = fitted("itemknn", split, neighbours=59)
    x = split.train.deduplicate().csr.toarray().astype(np.float64)
    norms = np.linalg.norm(x, axis=0)
    cosine = (x.T @ x) / np.outer(norms, norms)
    np.fill_diagonal(cosine, 0.0)
    np.testing.assert_allclose(full.weights.numpy(), cosine, atol=1e-5)
    pruned, _ = fitted("itemknn", split, neighbours=5)
    assert ((pruned.weights > 0).sum(0) <= 5).all()  # at most 5 sources per target item
    column = cosine[:, 7]
    kept = set(np.flatnonzero(pruned.weights[:, 7].numpy()))
    assert kept <= set(np.argsort(-column)[:6])


def ials_objective(model: IALS, x: torch.Tensor) -> torch.Tensor:
    w, h = model.user_embedding.weight.double(), model.item_embedding.weight.double()
    a = model.unobserved_weight
    pred = w @ h.T
    observed = ((1 - pred) ** 2 * x).sum()
    unobserved = a * (pred**2).sum()
    reg_u = model.l2 * ((x.sum(1) + a * x.shape[1]) * (w**2).sum(1)).sum()
    reg_i = model.l2 * ((x.sum(0) + a * x.shape[0]) * (h**2).sum(1)).sum()
    return observed + unobserved + reg_u + reg_i


def test_ials_solves_are_exact_and_the_objective_falls(split):
    model = IALS(
        split.num_users,
        split.num_items,
        embedding_dim=6,
        l2=0.01,
        unobserved_weight=0.2,
        solver="exact",
    )
    x = torch.as_tensor(split.train.deduplicate().csr.toarray(), dtype=torch.float64)
    values = [float(ials_objective(model, x))]
    for epoch in range(1, 4):
        model.fit_epoch(split.train, epoch)
        values.append(float(ials_objective(model, x)))
    assert all(b < a for a, b in zip(values, values[1:], strict=False))
    # after the item solve, the objective's gradient in the item factors is zero
    h = model.item_embedding.weight.detach().double().requires_grad_(True)
    w = model.user_embedding.weight.detach().double()
    probe = IALS(split.num_users, split.num_items, embedding_dim=6, l2=0.01, unobserved_weight=0.2)
    a = probe.unobserved_weight
    pred = w @ h.T
    loss = ((1 - pred) ** 2 * x).sum() + a * (pred**2).sum()
    loss = loss + 0.01 * ((x.sum(0) + a * x.shape[0]) * (h**2).sum(1)).sum()
    loss.backward()
    assert h.grad.abs().max() < 1e-6 * max(1.0, float(loss.detach()))


def test_bad_hyperparameters_are_config_errors():
    from torchcf.errors import ConfigError

    with pytest.raises(ConfigError):
        EASE(3, 4, l2=0.0)
    with pytest.raises(ConfigError):
        ItemKNN(3, 4, neighbours=0)
    with pytest.raises(ConfigError):
        IALS(3, 4, l2=-1.0)
    assert Pop(3, 4).score_all(torch.tensor([0, 1])).shape == (2, 4)


def test_bpr_loss_closed_form_and_training_uses_pairs():
    from torchcf.training.losses import bpr, pairwise_bpr

    pos, neg = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 1.0])
    expected = (-np.log(1 / (1 + np.exp(-2.0))) - np.log(1 / (1 + np.exp(1.0)))) / 2
    assert float(bpr(pos, neg)) == pytest.approx(expected)
    assert float(pairwise_bpr(torch.stack([pos, neg], 1), torch.zeros(2))) == pytest.approx(
        expected
    )
    data = planted(num_users=40, num_items=20)
    split = leave_one_out(data, num_negatives=5, seed=0)
    from torchcf.training.config import recipe

    trainer = Trainer(build_model("bpr", 40, 20, seed=0), split, recipe("bpr", {"epochs": 1}).train)
    users, items, _ = trainer.sampler.shuffled(1)
    assert users.shape == (len(split.train) * 4, 1) and items.shape == (len(users), 2)
    seen = split.train.csr
    pairs = np.column_stack([users[:, 0].numpy(), items.numpy()])
    assert all(seen[u, i] and not seen[u, j] for u, i, j in pairs[:200])  # (positive, negative)


@pytest.mark.parametrize("name", ["pop", "itemknn", "ease"])
def test_fold_in_of_item_models_is_their_own_score(name, split, tmp_path):
    from torchcf.serving.recommender import Recommender

    model, fit = fitted(name, split)
    save_model(tmp_path / "m", model, split.train, state=fit.state)
    rec = Recommender.load(tmp_path / "m")
    history = split.train.csr[3].indices
    torch.testing.assert_close(
        rec.fold_in_scores(history), rec.model.score_all(torch.tensor([3]))[0]
    )


def test_ials_fold_in_solves_the_new_users_row(split, tmp_path):
    from torchcf.serving.recommender import Recommender

    model, fit = fitted("ials", split, embedding_dim=8)
    save_model(tmp_path / "m", model, split.train, state=fit.state)
    rec = Recommender.load(tmp_path / "m")
    history = split.train.csr[3].indices
    folded = rec.fold_in_scores(history)
    trained = rec.model.score_all(torch.tensor([3]))[0]
    assert torch.corrcoef(torch.stack([folded, trained]))[0, 1] > 0.95


def test_mf_with_biases_scores_trains_and_round_trips(split, tmp_path):
    from torchcf.training.config import recipe
    from torchcf.training.steps import AutogradStep, FlatAdamStep, make_step

    config = recipe("mf", {"biases": True, "embedding_dim": 8, "epochs": 3}).train
    model = build_model(
        "mf", split.num_users, split.num_items, seed=0, biases=True, embedding_dim=8
    )
    assert isinstance(make_step(model, config), FlatAdamStep | AutogradStep)  # not the analytic one
    with torch.no_grad():
        model.user_bias.weight.normal_()
        model.item_bias.weight.normal_()
        model.global_bias.fill_(0.3)
    users = torch.arange(5)
    every = model(users[:, None], torch.arange(split.num_items)[None, :])
    torch.testing.assert_close(model.score_all(users), every)
    Trainer(model, split, config).fit()
    save_model(tmp_path / "m", model, split.train)
    again = load_model(tmp_path / "m").model
    assert again.hparams()["biases"] is True
    torch.testing.assert_close(again.score_all(users), model.score_all(users))


@needs_kernel
@pytest.mark.parametrize("dim", [6, 32, 64])  # a run-time width, and compiled-in widths
def test_the_compiled_ials_sweep_equals_the_tensor_ops(split, dim):
    """The kernel's conjugate-gradient steps (rows in parallel) are the tensor-op steps."""
    settings = {"embedding_dim": dim, "l2": 0.01, "unobserved_weight": 0.2, "cg_steps": 3}
    compiled = IALS(split.num_users, split.num_items, **settings)
    tensors = IALS(split.num_users, split.num_items, **settings)
    tensors.load_state_dict(compiled.state_dict())
    tensors.use_kernel = False
    for epoch in (1, 2, 3):
        compiled.fit_epoch(split.train, epoch)
        tensors.fit_epoch(split.train, epoch)
    # three CG steps of three sweeps amplify summation-order differences: the vector width
    # (AVX-512 on Intel, AVX2 on this AMD box) moves a few entries by ~2e-5
    for name, value in tensors.state_dict().items():
        torch.testing.assert_close(compiled.state_dict()[name], value, rtol=1e-4, atol=1e-4)


def test_ials_conjugate_gradient_converges_to_the_exact_solve(split):
    exact = IALS(
        split.num_users, split.num_items, embedding_dim=6, l2=0.01, unobserved_weight=0.2,
        solver="exact",
    )  # fmt: skip
    cg = IALS(
        split.num_users, split.num_items, embedding_dim=6, l2=0.01, unobserved_weight=0.2,
        solver="cg", cg_steps=30,
    )  # fmt: skip
    cg.load_state_dict(exact.state_dict())
    for epoch in (1, 2):
        exact.fit_epoch(split.train, epoch)
        cg.fit_epoch(split.train, epoch)
    torch.testing.assert_close(cg.score_all(torch.arange(9)), exact.score_all(torch.arange(9)),
                               rtol=1e-3, atol=1e-4)  # fmt: skip
    few = IALS(split.num_users, split.num_items, embedding_dim=6, solver="cg", cg_steps=2)
    x = torch.as_tensor(split.train.deduplicate().csr.toarray(), dtype=torch.float64)
    before = float(ials_objective(few, x))
    few.fit_epoch(split.train, 1)
    assert float(ials_objective(few, x)) < before  # even two steps descend


@pytest.mark.parametrize("name", ["itemknn", "ease"])
def test_large_catalogues_score_through_sparse_histories(name, monkeypatch):
    """Above ``SPARSE_FROM`` items a history multiplies W as a sparse row: the same scores."""
    from torchcf.models.baselines import history

    rng = np.random.default_rng(0)
    data = Interactions(rng.integers(0, 30, 400), rng.integers(0, 60, 400), 30, 60)
    model = build_model(name, 30, 60, seed=0)
    model.fit_epoch(data, 1)
    users = torch.arange(30)
    dense = model.score_all(users)
    monkeypatch.setattr(history, "SPARSE_FROM", 10)
    sparse = model.score_all(users)
    torch.testing.assert_close(sparse, dense, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "patched, tolerance",
    [(("SPARSE_FROM",), 1e-5), (("SPARSE_FROM", "FLOAT64_UP_TO"), 1e-4)],
    ids=["cholesky", "cholesky-float32"],
)
def test_ease_on_large_catalogues_solves_to_the_same_weights(patched, tolerance, monkeypatch):
    """Beyond ``SPARSE_FROM`` items EASE solves by Cholesky in place, beyond ``FLOAT64_UP_TO``
    in float32: the weights of the exact LU solve, to float tolerance."""
    from torchcf.models.baselines import history

    rng = np.random.default_rng(1)
    data = Interactions(rng.integers(0, 40, 600), rng.integers(0, 50, 600), 40, 50)
    exact = build_model("ease", 40, 50, seed=0, l2=20.0)
    exact.fit_epoch(data, 1)
    for name in patched:
        monkeypatch.setattr(history, name, 10)
    large = build_model("ease", 40, 50, seed=0, l2=20.0)
    large.fit_epoch(data, 1)
    torch.testing.assert_close(large.weights, exact.weights, rtol=tolerance, atol=tolerance / 10)
    assert float(large.weights.diagonal().abs().max()) == 0.0


def test_itemknn_beyond_float64_memory_fits_in_blocks_to_the_same_weights(monkeypatch):
    from torchcf.models.baselines import history

    rng = np.random.default_rng(3)
    data = Interactions(rng.integers(0, 40, 700), rng.integers(0, 60, 700), 40, 60)
    for shrink in (0.0, 5.0):
        dense = build_model("itemknn", 40, 60, seed=0, neighbours=7, shrink=shrink)
        dense.fit_epoch(data, 1)
        with monkeypatch.context() as patch:
            patch.setattr(history, "FLOAT64_UP_TO", 10)
            blocked = build_model("itemknn", 40, 60, seed=0, neighbours=7, shrink=shrink)
            blocked.fit_epoch(data, 1)
        torch.testing.assert_close(blocked.weights, dense.weights, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["itemknn", "ease"])
def test_item_item_weights_are_row_major_on_large_catalogues(name, monkeypatch):
    """SciPy reads W a row per history item: a column-major W made every call copy it."""
    from torchcf.models.baselines import history

    monkeypatch.setattr(history, "SPARSE_FROM", 10)
    monkeypatch.setattr(history, "FLOAT64_UP_TO", 10)
    rng = np.random.default_rng(4)
    data = Interactions(rng.integers(0, 30, 400), rng.integers(0, 60, 400), 30, 60)
    model = build_model(name, 30, 60, seed=0)
    model.fit_epoch(data, 1)
    assert model.weights.is_contiguous()
