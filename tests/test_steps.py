"""The analytic MF/GMF step equals autograd + torch.optim.Adam: speed never changes results."""

from __future__ import annotations

import pytest
import torch

from conftest import (
    adam_reference,
    assert_same_parameters,
    needs_kernel,
    random_batches,
    tower_forward,
)
from torchcf import native
from torchcf.models.registry import SPECS, build_model
from torchcf.training.config import TrainConfig
from torchcf.training.losses import bce_with_logits
from torchcf.training.steps import (
    AutogradStep,
    DotProductAdamStep,
    FlatAdamStep,
    NativeDotProductAdamStep,
    NativeTowerAdamStep,
    make_step,
)

# small models for the kernels: MF/GMF rows of 8; towers 4 factors, 3 layers (rows of 16)
KERNEL_KWARGS = {
    "mf": {"embedding_dim": 8, "init_std": 0.1},
    "gmf": {"embedding_dim": 8, "init_std": 0.1},
    "mlp": {"embedding_dim": 4, "layers": 3, "dropout": 0.0, "init_std": 0.1},
    "neumf": {"embedding_dim": 4, "layers": 3, "dropout": 0.0, "init_std": 0.1},
}
KERNEL_STEPS = {
    "mf": NativeDotProductAdamStep,
    "gmf": NativeDotProductAdamStep,
    "mlp": NativeTowerAdamStep,
    "neumf": NativeTowerAdamStep,
}


@pytest.mark.parametrize("name", ["mf", "gmf"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
@pytest.mark.parametrize("fused", [True, False])
def test_analytic_step_matches_torch_adam(name, weight_decay, fused):
    config = TrainConfig(learning_rate=0.01, weight_decay=weight_decay)
    reference = build_model(name, 30, 25, seed=0, embedding_dim=8, init_std=0.1)
    fast = build_model(name, 30, 25, seed=0, embedding_dim=8, init_std=0.1)
    optimizer = torch.optim.Adam(reference.parameters(), lr=0.01, weight_decay=weight_decay)
    step = DotProductAdamStep(fast, config)
    step._fused = fused and step._fused
    for users, items, labels in random_batches():
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


def test_make_step_choice(monkeypatch):
    gmf = build_model("gmf", 3, 3, seed=0)
    expected = DotProductAdamStep if native.load() is None else NativeDotProductAdamStep
    assert type(make_step(gmf, TrainConfig())) is expected
    assert isinstance(make_step(gmf, TrainConfig(step="autograd")), AutogradStep)
    monkeypatch.setattr(native, "load", lambda: None)  # no compiler: the tensor-op step
    assert type(make_step(gmf, TrainConfig())) is DotProductAdamStep


def _concatenating(name):
    """The towers' reference: the NCF formula as the kernel computes it (``tower_forward``)."""
    if name not in ("mlp", "neumf"):
        return None
    return lambda model, users, items, step: tower_forward(model, users, items)


@needs_kernel
@pytest.mark.parametrize("name", ["mf", "gmf", "mlp", "neumf"])
@pytest.mark.parametrize(
    "settings",
    [{}, {"weight_decay": 0.01}, {"beta1": 0.8, "beta2": 0.95}],
    ids=["adam", "weight-decay", "betas"],
)
def test_compiled_kernel_matches_torch_adam(name, settings):
    """Several hundred steps, one call per batch: logits and parameters as torch.optim.Adam."""
    config = TrainConfig(learning_rate=0.01, **settings)
    batches = random_batches(steps=400)
    kwargs = KERNEL_KWARGS[name]
    forward = _concatenating(name)
    reference, want = adam_reference(name, config, batches, forward=forward, **kwargs)
    fast = build_model(name, 30, 25, seed=0, **kwargs)
    step = make_step(fast, config)
    assert type(step) is KERNEL_STEPS[name]
    for (users, items, labels), logits in zip(batches, want, strict=True):
        assert torch.allclose(step(users, items, labels), logits, rtol=1e-4, atol=1e-5)
    assert_same_parameters(reference, fast)


# the batch of the towers' fast recipe: the tower kernel's first layer by distinct rows
FAST_BATCH = SPECS["mlp"].recipes["fast"]["batch_size"]


@needs_kernel
@pytest.mark.parametrize("name", ["gmf", "mlp", "neumf"])
@pytest.mark.parametrize(
    ("batch", "catalogue"),
    # 32: one thread; 4096 and the fast recipe's batch: the multi-threaded forward and scatter,
    # the towers' first layer by distinct rows; 512 of 400 x 300: per sample (more rows than
    # samples), multi-threaded
    [(32, (30, 25)), (4096, (30, 25)), (FAST_BATCH, (30, 25)), (512, (400, 300))],
    ids=["32", "4096", "fast", "512-wide"],
)
def test_compiled_kernel_runs_a_shuffled_epoch_in_one_call(name, batch, catalogue):
    """``run`` over an order = the same batches one by one; logits land at their samples, and
    the loss it returns is theirs: torch.optim.Adam's steps at every batch size."""
    gen = torch.Generator().manual_seed(1)
    n = batch * 6 + 5  # a short last batch
    num_users, num_items = catalogue
    users = torch.randint(0, num_users, (n,), generator=gen)
    items = torch.randint(0, num_items, (n,), generator=gen)
    labels = torch.randint(0, 2, (n,), generator=gen).float()
    order = torch.randperm(n, generator=gen)
    config = TrainConfig(learning_rate=0.01, batch_size=batch)
    batches = [(users[part], items[part], labels[part]) for part in order.split(batch)]
    kwargs = {**KERNEL_KWARGS[name], "num_users": num_users, "num_items": num_items}
    forward = _concatenating(name)
    reference, want = adam_reference(name, config, batches, forward=forward, **kwargs)
    fast = build_model(name, seed=0, **kwargs)
    step = make_step(fast, config)
    logits = torch.zeros(n)
    loss = 0.0
    for part in order.split(batch * 4):  # several batches per call, as the trainer does
        loss += step.run(users, items, labels, order=part, logits=logits)
    got, wanted = logits[order], torch.cat(want)
    # the first three batches (two Adam steps) equal to float rounding; later, Adam's
    # per-coordinate normalisation can amplify the last bits of near-zero gradients summed in
    # another order (on the AMD box, 4096-neumf: 4e-7 for three batches, then up to 6e-3)
    early = 3 * batch
    assert torch.allclose(got[:early], wanted[:early], rtol=1e-4, atol=1e-5)
    assert torch.allclose(got, wanted, rtol=1e-3, atol=1e-2)
    expected = float(bce_with_logits(wanted.double(), labels[order].double()))
    assert loss / n == pytest.approx(expected, rel=1e-3)
    # Adam moves a coordinate by about lr a step: amplified rounding stays well within two steps
    for ref, got_param in zip(reference.parameters(), fast.parameters(), strict=True):
        assert float((ref - got_param).detach().abs().max()) < 2 * config.learning_rate


@needs_kernel
def test_compiled_kernel_state_round_trip():
    """The kernel keeps sqrt(v); its state_dict speaks Adam's v, and loading it back resumes."""
    config = TrainConfig(learning_rate=0.01)
    batches = random_batches(steps=60)
    kwargs = {"embedding_dim": 8, "init_std": 0.1}
    reference, _ = adam_reference("gmf", config, batches, **kwargs)
    first = build_model("gmf", 30, 25, seed=0, **kwargs)
    step = make_step(first, config)
    for batch in batches[:30]:
        step(*batch)
    plain = DotProductAdamStep(build_model("gmf", 30, 25, seed=0, **kwargs), config)
    plain.model.load_state_dict(first.state_dict())
    plain.load_state_dict(step.state_dict())  # the tensor-op step continues from the kernel
    for batch in batches[30:]:
        plain(*batch)
    assert_same_parameters(reference, plain.model)


@needs_kernel
def test_kernel_bad_input_is_an_error():
    step = make_step(build_model("gmf", 3, 3, seed=0), TrainConfig())
    with pytest.raises(RuntimeError, match="index out of range"):
        step(torch.tensor([5]), torch.tensor([0]), torch.tensor([1.0]))


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
    config = TrainConfig(learning_rate=0.01, weight_decay=weight_decay)
    kwargs = {"embedding_dim": 4, "layers": 2, "dropout": 0.0, "init_std": 0.1}
    reference = build_model(name, 30, 25, seed=0, **kwargs)
    fast = build_model(name, 30, 25, seed=0, **kwargs)
    optimizer = torch.optim.Adam(reference.parameters(), lr=0.01, weight_decay=weight_decay)
    step = FlatAdamStep(fast, config)  # the autograd path (make_step prefers the kernel)
    for users, items, labels in random_batches(steps=200):
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


def test_kernel_build_failure_falls_back_with_a_warning(monkeypatch):
    """No compiler (or any build error): one warning, and torchcf trains with tensor ops."""
    from torch.utils import cpp_extension

    def broken(**kwargs):
        raise OSError("g++: command not found")

    monkeypatch.setattr(native, "_tried", False)
    monkeypatch.setattr(native, "_module", None)
    monkeypatch.setattr(native, "_error", None)
    monkeypatch.setattr(cpp_extension, "load", broken)
    with pytest.warns(RuntimeWarning, match="g\\+\\+: command not found"):
        assert native.load() is None
    assert "g++: command not found" in native.build_error()  # the build's own error
    assert native.load() is None  # tried once per process
    assert type(make_step(build_model("gmf", 3, 3, seed=0), TrainConfig())) is DotProductAdamStep
    monkeypatch.setattr(native, "_tried", False)
    monkeypatch.setenv("TORCHCF_NATIVE", "0")
    assert native.load() is None
