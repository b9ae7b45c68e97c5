"""LightGCN and LightGCN++: the propagation and its gradient against dense matrix products, the
settings that reduce to LightGCN and to BPR-MF, training steps, persistence, hostile settings."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from conftest import needs_kernel
from test_cli import run_cli
from test_multi_item import train, write_split
from torchcf.data.interactions import Interactions
from torchcf.errors import ConfigError
from torchcf.models.lightgcn import LightGCN
from torchcf.serving.persistence import load_model, save_model
from torchcf.training.config import TrainConfig
from torchcf.training.steps import AutogradStep, FlatAdamStep

USERS, ITEMS = 7, 9


def graph_data(seed: int = 0) -> Interactions:
    rng = np.random.default_rng(seed)
    return Interactions(rng.integers(0, USERS, 30), rng.integers(0, ITEMS, 30), USERS, ITEMS)


def model(data: Interactions, **settings) -> LightGCN:
    built = LightGCN(
        USERS, ITEMS, embedding_dim=4, generator=torch.Generator().manual_seed(0), **settings
    )
    built.observe(data)
    return built


def dense_final(built: LightGCN, data: Interactions, e0: torch.Tensor) -> torch.Tensor:
    """The propagation written with a dense ``D^-α A D^-β`` (float64)."""
    c = built.config
    r = torch.as_tensor(data.deduplicate().csr.toarray() > 0, dtype=torch.float64)
    a = torch.zeros(USERS + ITEMS, USERS + ITEMS, dtype=torch.float64)
    a[:USERS, USERS:], a[USERS:, :USERS] = r, r.T
    degree = a.sum(1)
    safe = degree.clamp(min=1)
    left = torch.where(degree > 0, safe**-c.norm_alpha, 0.0)
    right = torch.where(degree > 0, safe**-c.norm_beta, 0.0)
    norm = left[:, None] * a * right[None, :]
    layers, x = [], e0
    for _ in range(c.layers):
        if c.unit_norm:
            x = x / (x.norm(dim=1, keepdim=True) + 1e-12)
        x = norm @ x
        layers.append(x)
    if not layers:
        return e0
    gamma = 1 / (c.layers + 1) if c.gamma is None else c.gamma
    return gamma * e0 + (1 - gamma) * torch.stack(layers).mean(0)


SETTINGS = [
    {},  # LightGCN: α = β = 0.5, mean of all layers
    {"layers": 1},
    {"norm_alpha": 0.6, "norm_beta": -0.1, "gamma": 0.2, "unit_norm": True},  # LightGCN++
    {"norm_alpha": 0.3, "norm_beta": 0.7, "layers": 2},  # Â not symmetric: Âᵀ in backward
    {"layers": 0},  # BPR-MF
]


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: ",".join(map(str, s)) or "lightgcn")
def test_propagation_and_its_gradient_equal_dense_products(settings):
    data = graph_data()
    built = model(data, **settings)
    e0 = torch.cat([built.user_embedding.weight, built.item_embedding.weight]).detach()
    reference = e0.double().requires_grad_()
    want = dense_final(built, data, reference)
    got = built.final()
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    weights = torch.randn(USERS + ITEMS, 4, dtype=torch.float64)
    (want * weights).sum().backward()
    (got.double() * weights).sum().backward()
    grads = torch.cat([built.user_embedding.weight.grad, built.item_embedding.weight.grad])
    torch.testing.assert_close(grads.double(), reference.grad, rtol=1e-4, atol=1e-5)


def test_zero_layers_is_bpr_mf_and_explicit_lightgcn_settings_change_nothing():
    data = graph_data()
    flat = model(data, layers=0).eval()
    users = torch.arange(USERS)
    dots = flat.user_embedding.weight @ flat.item_embedding.weight.T
    torch.testing.assert_close(flat.score_all(users), dots)
    default = model(data).eval()
    spelled = model(data, gamma=0.25, norm_alpha=0.5, norm_beta=0.5, unit_norm=False).eval()
    assert torch.equal(default.score_all(users), spelled.score_all(users))


def test_scores_follow_the_weights_and_survive_save_and_load(tmp_path):
    data = graph_data()
    built = model(data).eval()
    users = torch.arange(USERS)
    before = built.score_all(users)
    with torch.no_grad():
        built.user_embedding.weight.mul_(2.0)  # the cached propagation must not be reused
        built.item_embedding.weight.mul_(2.0)  # (propagation is linear: scores × 4)
    after = built.score_all(users)
    torch.testing.assert_close(after, 4.0 * before)
    save_model(tmp_path / "m", built, data)
    loaded = load_model(tmp_path / "m").model
    assert torch.equal(loaded.score_all(users), after)


def test_the_fused_adam_step_equals_torch_adam_with_the_penalty():
    data = graph_data()
    config = TrainConfig(loss="bpr", learning_rate=0.01, num_negatives=1)
    a, b = model(data, decay=0.1), model(data, decay=0.1)
    fused, plain = FlatAdamStep(a, config), AutogradStep(b, config.replace(step="autograd"))
    rng = np.random.default_rng(1)
    for _ in range(5):
        users = torch.as_tensor(rng.integers(0, USERS, (16, 1)))
        items = torch.as_tensor(rng.integers(0, ITEMS, (16, 2)))
        labels = torch.zeros(16)
        fused(users, items, labels)
        plain(users, items, labels)
    for x, y in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)
    penalty = b.penalty(users, items)
    e0 = b.user_embedding.weight[users].pow(2).sum() + b.item_embedding.weight[items].pow(2).sum()
    torch.testing.assert_close(penalty, 0.5 * 0.1 * e0 / 16)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--layers", "-1"], "layers must be in [0, 16]"),
        (["--gamma", "1.5"], "gamma must be in [0, 1]"),
        (["--norm-alpha", "nan"], "norm_alpha must be finite"),
        (["--norm-beta", "inf"], "norm_beta must be finite"),
        (["--decay", "-1"], "decay must be in"),
        (["--lr", "nan"], "learning_rate must be finite"),
        # XSimGCL's settings (their other checks: below, in process)
        (["--contrast", "0.2", "--contrast-layer", "4"], "contrast_layer 4 is above the 3"),
    ],
)
def test_hostile_settings_are_one_line_errors(tmp_path, flags, message):
    out = tmp_path / "run"
    done = train(write_split(tmp_path / "s"), out, "lightgcn", *flags)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not out.exists()


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"noise": -0.1}, "noise must be in"),
        ({"temperature": 0.0}, "temperature must be in"),
        ({"contrast": float("inf")}, "contrast must be finite"),
        ({"contrast_layer": 0}, "contrast_layer must be in"),
    ],
)
def test_hostile_xsimgcl_settings_are_config_errors(settings, message):
    """(The CLI turns a ConfigError into one line and exit status 2: the cases above.)"""
    with pytest.raises(ConfigError, match=message):
        LightGCN(USERS, ITEMS, **settings)


def test_lightgcn_trains_serves_and_refuses_several_processes(tmp_path):
    """(Resume after a kill: tests/test_training.py's RESUMABLE.)"""
    directory = write_split(tmp_path / "s")
    done = train(directory, tmp_path / "a", "lightgcn", "--epochs", "2", "--factors", "8")
    assert done.returncode == 0, done.stderr
    assert run_cli("recommend", str(tmp_path / "a"), "--user", "0").returncode == 0
    assert run_cli("evaluate", str(tmp_path / "a")).returncode == 0
    folded = run_cli("recommend", str(tmp_path / "a"), "--items", "1,2")
    assert folded.returncode == 2 and "cannot score a new user" in folded.stderr
    assert len(folded.stderr.strip().splitlines()) == 1
    several = train(directory, tmp_path / "c", "lightgcn", "--nproc", "2")
    assert several.returncode == 2 and "trains in one process" in several.stderr
    with pytest.raises(ConfigError, match="does not take"):
        LightGCN(USERS, ITEMS, dropout=0.1)


@needs_kernel
@pytest.mark.parametrize("dim", [64, 32, 5])
def test_the_compiled_graph_product_equals_scipy(dim):
    from torchcf import native

    rng = np.random.default_rng(dim)
    matrix = sp.random(300, 200, density=0.03, format="csr", random_state=rng, dtype=np.float32)
    matrix.sort_indices()
    x = torch.randn(200, dim)
    got = native.load().csr_spmm(
        torch.from_numpy(matrix.indptr.astype(np.int64)),
        torch.from_numpy(matrix.indices.astype(np.int64)),
        torch.from_numpy(matrix.data),
        x,
    )
    torch.testing.assert_close(got, torch.from_numpy(matrix @ x.numpy()), rtol=1e-5, atol=1e-5)


def test_without_the_kernel_torch_sparse_gives_the_same_propagation(monkeypatch):
    from torchcf import native

    data = graph_data()
    built = model(data, norm_alpha=0.3, norm_beta=0.7)
    compiled = built.final().detach()
    monkeypatch.setattr(native, "load", lambda *a, **k: None)
    torch.testing.assert_close(built.final().detach(), compiled, rtol=1e-5, atol=1e-6)


def test_xsimgcl_noise_has_norm_epsilon_and_scoring_is_noise_free():
    data = graph_data()
    plain = model(data, layers=1, gamma=0.0)
    noisy = model(data, layers=1, gamma=0.0, noise=0.3)
    users = torch.arange(USERS)
    assert torch.equal(plain.eval().score_all(users), noisy.eval().score_all(users))
    noisy.train()
    noisy.noise_key.key = (0, 1, 0)
    with torch.no_grad():
        clean = noisy.final()
        first = noisy._training_final()
        again = noisy._training_final()
    # each row of the noise is sign(E)·ε·u/‖u‖: norm ε where the row has no zero entry
    rows = (clean != 0).all(1)
    norms = (first - clean).norm(dim=1)
    torch.testing.assert_close(norms[rows], torch.full_like(norms[rows], 0.3))
    assert ((first - clean) * clean >= 0).all()  # the noise keeps each entry's sign
    assert torch.equal(first, again)  # keyed by the step: the same draw
    noisy.noise_key.key = (0, 2, 0)
    with torch.no_grad():
        assert not torch.equal(noisy._training_final(), first)


def simgcl_info_nce(a: torch.Tensor, b: torch.Tensor, tau: float) -> torch.Tensor:
    """SimGCL's formula, written out: −log(exp(cos(aᵢ, bᵢ)/τ) / Σⱼ exp(cos(aᵢ, bⱼ)/τ))."""
    a = a / a.norm(dim=1, keepdim=True)
    b = b / b.norm(dim=1, keepdim=True)
    positive = torch.exp((a * b).sum(1) / tau)
    total = torch.exp(a @ b.T / tau).sum(1)
    return (-torch.log(positive / total)).mean()


def test_xsimgcl_contrastive_loss_equals_a_direct_computation():
    data = graph_data()
    built = model(data, layers=2, contrast=0.5, temperature=0.3, contrast_layer=2, decay=0.0)
    built.train()
    users = torch.tensor([[0], [2], [0], [5]])
    items = torch.tensor([[1, 3], [4, 0], [1, 8], [6, 6]])
    built(users, items)
    got = built.penalty(users, items)
    assert built._views is None  # consumed: the next step propagates again
    e0 = torch.cat([built.user_embedding.weight, built.item_embedding.weight]).detach().double()
    c = built.config
    with torch.no_grad():
        outputs = [dense_final(model(data, layers=k, gamma=0.0), data, e0) for k in (1, 2)]
        layer2 = (2 * outputs[1] - outputs[0]).float()  # mean(E¹, E²) → E²
        final = dense_final(built, data, e0).float()
    u, i = torch.tensor([0, 2, 5]), USERS + torch.tensor([1, 4, 6])
    want = c.contrast * (
        simgcl_info_nce(final[u], layer2[u], 0.3) + simgcl_info_nce(final[i], layer2[i], 0.3)
    )
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
