"""The compiled MLP/NeuMF step: lazy-adam as torch.optim.SparseAdam, dropout replayed by
autograd, state round trip, the step chosen. (Dense Adam against torch.optim.Adam and whole
shuffled epochs per call: ``test_steps.py``, with the MF/GMF kernel.)"""

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
from torchcf.models.layers import Dropout, dropout_keep
from torchcf.models.registry import SPECS, build_model
from torchcf.training.config import TrainConfig
from torchcf.training.steps import (
    AutogradStep,
    FlatAdamStep,
    NativeTowerAdamStep,
    TowerOptimizer,
    make_step,
)

pytestmark = needs_kernel

# embeddings 16 wide, tower 32-16-8-4, no dropout (the equivalence tests replay it by hand)
KWARGS = {"embedding_dim": 4, "layers": 3, "dropout": 0.0, "init_std": 0.1}


@pytest.mark.parametrize("name", ["mlp", "neumf"])
def test_lazy_adam_kernel_matches_sparse_adam(name):
    """lazy-adam: only the rows a batch touched move, as torch.optim.SparseAdam (+ dense Adam
    for the tower and head) moves them; rows never sampled keep their initial values."""
    config = TrainConfig(learning_rate=0.01, optimizer="lazy-adam")
    batches = random_batches(200, batch=16)
    reference = build_model(name, 30, 25, seed=0, **KWARGS)
    slow = AutogradStep(reference, config)
    fast = build_model(name, 30, 25, seed=0, **KWARGS)
    step = make_step(fast, config)
    assert isinstance(step, NativeTowerAdamStep)
    assert step.optimizer is TowerOptimizer.LAZY_ADAM
    for users, items, labels in batches:
        assert torch.allclose(
            step(users, items, labels), slow(users, items, labels), rtol=1e-4, atol=1e-5
        )
    assert_same_parameters(reference, fast)
    # a user no batch sampled: its rows are where they started
    seen = torch.cat([b[0] for b in batches]).unique()
    fresh = build_model(name, 31, 25, seed=0, **KWARGS)  # one more user, never sampled
    fresh_step = make_step(fresh, config)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    for users, items, labels in batches[:5]:
        fresh_step(users, items, labels)
    table = "user_embedding.weight" if name == "mlp" else "mlp_user_embedding.weight"
    assert torch.equal(fresh.state_dict()[table][30], before[table][30])
    assert not torch.equal(fresh.state_dict()[table][seen[0]], before[table][seen[0]])


@pytest.mark.parametrize("name", ["mlp", "neumf"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_sgd_kernel_matches_torch_sgd(name, weight_decay):
    """sgd (NeuMF's fine-tuning): torch.optim.SGD without momentum, step for step."""
    config = TrainConfig(optimizer="sgd", learning_rate=0.3, weight_decay=weight_decay)
    reference = build_model(name, 30, 25, seed=0, **KWARGS)
    slow = AutogradStep(reference, config)
    fast = build_model(name, 30, 25, seed=0, **KWARGS)
    step = make_step(fast, config)
    assert step.optimizer is TowerOptimizer.SGD
    for users, items, labels in random_batches(200):
        assert torch.allclose(
            step(users, items, labels), slow(users, items, labels), rtol=1e-4, atol=1e-5
        )
    assert_same_parameters(reference, fast)


@pytest.mark.parametrize("name", ["mlp", "neumf"])
@pytest.mark.parametrize(
    ("steps", "batch"), [(60, 32), (6, SPECS["mlp"].recipes["fast"]["batch_size"])]
)
def test_tower_kernel_dropout_replayed_by_autograd(name, steps, batch):
    """With dropout, each step of the kernel equals autograd on the Python generator's masks
    (``layers.dropout_keep``), which are the kernel's (the test above); also at the fast
    recipe's batch (the first layer by distinct rows, masks filled in parallel pieces)."""
    config = TrainConfig(learning_rate=0.01, seed=7)
    drop = Dropout(0.25)
    widths = [16, 8, 4]  # KWARGS' tower

    def keeps_of(step, n):  # the Python generator's masks: the kernel's own (one generator)
        return [
            dropout_keep(7, step, layer, n * w, drop.threshold, drop.scale).view(n, w)
            for layer, w in enumerate(widths)
        ]

    def forward(model, users, items, step):
        return tower_forward(model, users, items, keeps_of(step, len(users)))

    batches = random_batches(steps, batch)
    reference, want = adam_reference(
        name, config, batches, forward=forward, **{**KWARGS, "dropout": 0.0}
    )
    fast = build_model(name, 30, 25, seed=0, **{**KWARGS, "dropout": 0.25})
    step = make_step(fast, config)
    for (users, items, labels), logits in zip(batches, want, strict=True):
        assert torch.allclose(step(users, items, labels), logits, rtol=1e-4, atol=1e-5)
    assert_same_parameters(reference, fast)


@pytest.mark.parametrize("seed", [0, 7, 2**40 + 3, 2**62 + 11])
def test_one_dropout_generator_for_the_kernel_and_the_python_path(seed):
    """The Python masks (``layers.dropout_keep``: the autograd path's) are the kernel's, bit
    for bit, at any count (not only multiples of the 8 bytes a draw gives) and key."""
    kernel = native.load()
    drop = Dropout(0.3)
    for step, layer, count in ((1, 0, 1), (2, 1, 7), (3, 2, 1000), (1234567, 3, 4099)):
        mine = dropout_keep(seed, step, layer, count, drop.threshold, drop.scale)
        theirs = kernel.dropout_keep(seed, step, layer, count, drop.threshold, drop.scale)
        assert torch.equal(mine, theirs), (seed, step, layer, count)
    # a slice starting anywhere is the same units' factors (a rank's share of a global batch)
    whole = dropout_keep(seed, 4, 1, 1000, drop.threshold, drop.scale)
    for start, count in ((0, 1000), (3, 17), (8, 40), (333, 667), (999, 1)):
        part = dropout_keep(seed, 4, 1, count, drop.threshold, drop.scale, start=start)
        assert torch.equal(part, whole[start : start + count]), (start, count)
    # a keyed module applies exactly these factors
    module = Dropout(0.3, layer=2)
    module.key = (seed, 5, 0)
    x = torch.ones(16, 24)
    expected = dropout_keep(seed, 5, 2, x.numel(), drop.threshold, drop.scale).view(16, 24)
    assert torch.equal(module(x), expected)


def test_the_kernels_optimizer_enum_is_the_declared_one():
    kernel = native.load()
    assert {m.name.lower(): int(m) for m in TowerOptimizer} == {
        name: int(value) for name, value in kernel.Optimizer.__members__.items()
    }


def test_dropout_masks_are_random_and_keyed():
    kernel = native.load()
    drop = Dropout(0.2)
    keep = kernel.dropout_keep(0, 1, 0, 200_000, drop.threshold, drop.scale)
    assert set(keep.unique().tolist()) == {0.0, float(torch.tensor(drop.scale))}
    assert float((keep == 0).float().mean()) == pytest.approx(drop.threshold / 256, abs=0.005)
    assert float(keep.mean()) == pytest.approx(1.0, abs=0.01)  # inverted dropout: E = 1
    same = kernel.dropout_keep(0, 1, 0, 200_000, drop.threshold, drop.scale)
    assert torch.equal(keep, same)
    for other in ((1, 1, 0), (0, 2, 0), (0, 1, 1)):  # seed, step, layer
        mask = kernel.dropout_keep(*other, 200_000, drop.threshold, drop.scale)
        agree = float((mask == keep).float().mean())
        assert agree < 0.75  # independent masks agree on ~68 % of units (0.8² + 0.2²)


def test_tower_kernel_state_round_trip():
    """The kernel keeps sqrt(v); its state_dict speaks Adam's v: autograd resumes from it."""
    config = TrainConfig(learning_rate=0.01)
    batches = random_batches(60)
    reference, _ = adam_reference("neumf", config, batches, **KWARGS)
    first = build_model("neumf", 30, 25, seed=0, **KWARGS)
    step = make_step(first, config)
    for batch in batches[:30]:
        step(*batch)
    plain = FlatAdamStep(build_model("neumf", 30, 25, seed=0, **KWARGS), config)
    plain.model.load_state_dict(first.state_dict())
    plain.load_state_dict(step.state_dict())
    for batch in batches[30:]:
        plain(*batch)
    assert_same_parameters(reference, plain.model)


def test_make_step_choice_for_towers(monkeypatch):
    mlp = build_model("mlp", 3, 3, seed=0, **KWARGS)
    assert type(make_step(mlp, TrainConfig())) is NativeTowerAdamStep
    assert type(make_step(mlp, TrainConfig(step="analytic"))) is NativeTowerAdamStep
    assert type(make_step(mlp, TrainConfig(step="autograd"))) is AutogradStep
    assert type(make_step(mlp, TrainConfig(optimizer="sgd"))) is NativeTowerAdamStep
    assert type(make_step(mlp, TrainConfig(optimizer="adagrad"))) is AutogradStep
    assert type(make_step(mlp, TrainConfig(amp=True))) is NativeTowerAdamStep  # bf16 products
    monkeypatch.setattr(native, "load", lambda: None)
    assert type(make_step(mlp, TrainConfig())) is FlatAdamStep


def test_tower_kernel_bad_input_is_an_error():
    step = make_step(build_model("mlp", 3, 3, seed=0, **KWARGS), TrainConfig())
    with pytest.raises(RuntimeError, match="item index out of range"):
        step(torch.tensor([0]), torch.tensor([3]), torch.tensor([1.0]))


def test_autograd_steps_key_the_dropout_by_seed_and_step(monkeypatch):
    """The autograd path draws the kernel's masks: its steps key every dropout layer by
    (seed, optimizer step), counted on across a state round trip (resume)."""
    monkeypatch.setattr(native, "load", lambda: None)  # "auto": Adam fused over a flat buffer
    for kind in ("autograd", "auto"):  # torch.optim's Adam; FlatAdamStep
        model = build_model("mlp", 30, 25, seed=0, **{**KWARGS, "dropout": 0.25})
        config = TrainConfig(step=kind, seed=9)
        step = make_step(model, config)
        for users, items, labels in random_batches(3):
            step(users, items, labels)
        drops = [m for m in model.modules() if isinstance(m, Dropout)]
        assert len(drops) == 3 and all(m.key == (9, 3, 0) for m in drops)
        again = make_step(build_model("mlp", 30, 25, seed=0, **{**KWARGS, "dropout": 0.25}), config)
        again.load_state_dict(step.state_dict())
        assert again.forward_loss.keys.taken == 3


def _moves(name, config, batch):
    """Each parameter's move in one step of ``config`` from the same model and batch."""
    model = build_model(name, 30, 25, seed=0, **KWARGS)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    step = make_step(model, config)
    step(*batch)
    return step, {n: before[n] - p.detach() for n, p in model.named_parameters()}


@pytest.mark.parametrize("name", ["mlp", "neumf"])
@pytest.mark.parametrize("batch", [32, 512])  # samples gathered; the first layer by distinct rows
def test_amp_kernel_takes_the_gradient_in_bfloat16_products(name, batch):
    """``--amp`` in the kernel: the tower's products in bfloat16. One SGD step of rate 1 moves
    each parameter by its gradient: the kernel's is autograd's under bfloat16 autocast to
    bfloat16's precision (< 1 %; rounding alone moves this small tower's gradients by up to
    25 % from float's), except the head, which the kernel keeps in float (autocast does not:
    3 % off)."""
    data = random_batches(1, batch)[0]
    sgd = {"optimizer": "sgd", "learning_rate": 1.0, "step": "analytic"}
    step, amp = _moves(name, TrainConfig(**sgd, amp=True), data)
    assert isinstance(step, NativeTowerAdamStep) and step.amp
    _, autocast = _moves(name, TrainConfig(**{**sgd, "step": "autograd"}, amp=True), data)
    _, exact = _moves(name, TrainConfig(**sgd), data)
    for key, move in amp.items():
        scale = exact[key].norm()
        assert scale > 0, key
        reference = exact[key] if key.startswith("head") else autocast[key]
        assert (move - reference).norm() <= 0.01 * scale, key
    # the towers' weights took bfloat16 products: not the float kernel's bits
    assert any(not torch.equal(amp[k], exact[k]) for k in amp if k.startswith("tower"))


def test_amp_kernel_keeps_a_nan_visible():
    """A NaN in the tower stays a NaN through bfloat16 rounding (it reaches the logits and the
    loss, where training stops on it), whatever its payload."""
    for payload in (0x7FC00000, 0x7FFFFFFF, 0xFFFFFFFF):  # quiet, all-ones mantissa, negative
        model = build_model("mlp", 30, 25, seed=0, **KWARGS)
        with torch.no_grad():
            model.tower[0].weight[:, 0] = (
                torch.tensor([payload], dtype=torch.int64).to(torch.int32).view(torch.float32)
            )
        step = make_step(model, TrainConfig(amp=True))
        users, items, labels = random_batches(1, 512)[0]
        assert torch.isnan(step(users, items, labels)).all()
