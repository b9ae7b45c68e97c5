"""The trainer: selection, early stopping, divergence guard, checkpoint/resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import needs_kernel, planted
from torchcf.data.split import leave_one_out
from torchcf.errors import ConfigError, TorchcfError
from torchcf.models.registry import build_model
from torchcf.training.config import TrainConfig, recipe
from torchcf.training.trainer import Trainer


def _setup(**overrides):
    data = planted(num_users=80, num_items=40, groups=4, per_user=8)
    split = leave_one_out(data, num_negatives=20, seed=0)
    name = overrides.pop("model", "gmf")
    config = TrainConfig(**{"epochs": 4, "batch_size": 32, "learning_rate": 0.01, **overrides})
    model = build_model(name, data.num_users, data.num_items, seed=0, embedding_dim=8)
    return model, split, config


def test_epoch_samples_are_exact_and_balanced():
    model, split, config = _setup(num_negatives=3)
    trainer = Trainer(model, split, config)
    users, items, labels = trainer.sampler.shuffled(1)
    assert len(users) == 4 * len(split.train)
    assert int(labels.sum()) == len(split.train)
    neg = labels == 0
    assert not split.train.contains(users[neg].numpy(), items[neg].numpy()).any()
    again = trainer.sampler.shuffled(1)
    assert torch.equal(again[1], items) and not torch.equal(trainer.sampler.shuffled(2)[1], items)


def test_sampling_by_user_weighs_every_user_the_same():
    """LightGCN's sampling: a uniform user, then one of their items; as many as there are pairs."""
    from torchcf.data.interactions import Interactions
    from torchcf.training.epochs import EpochSampler

    users = np.array([0] * 30 + [1] * 2 + [3])  # user 2 has no items: never drawn
    items = np.array(list(range(30)) + [5, 7] + [9])
    train = Interactions(users, items, 4, 40)
    sampler = EpochSampler(train, 1, seed=3, device=torch.device("cpu"), by_user=True, pairs=True)
    drawn_users, drawn_items, _ = sampler.shuffled(1)
    assert len(drawn_users) == len(train)
    counts = np.bincount(drawn_users[:, 0].numpy(), minlength=4)
    assert counts[2] == 0 and counts.sum() == 33
    many = np.concatenate([sampler.shuffled(e)[0][:, 0].numpy() for e in range(1, 200)])
    share = np.bincount(many, minlength=4) / len(many)
    np.testing.assert_allclose(share[[0, 1, 3]], 1 / 3, atol=0.02)  # not 30/33 for user 0
    assert train.contains(drawn_users[:, 0].numpy(), drawn_items[:, 0].numpy()).all()
    assert not train.contains(drawn_users[:, 0].numpy(), drawn_items[:, 1].numpy()).any()
    assert torch.equal(sampler.shuffled(1)[1], drawn_items)  # keyed by (seed, epoch)


def test_selection_records_both_views():
    model, split, config = _setup(epochs=5)
    fit = Trainer(model, split, config).fit()
    assert fit.selected_by == "validation"
    best_val = max(
        (r.metrics["validation"]["hr"], r.metrics["validation"]["ndcg"]) for r in fit.history
    )
    assert (
        fit.selected.metrics["validation"]["hr"],
        fit.selected.metrics["validation"]["ndcg"],
    ) == best_val
    assert fit.best_test.metrics["test"]["hr"] == max(r.metrics["test"]["hr"] for r in fit.history)
    assert len(fit.history) == 5


def test_early_stopping():
    model, split, config = _setup(epochs=30, patience=1, learning_rate=0.3)
    fit = Trainer(model, split, config).fit()
    assert fit.stopped_early and len(fit.history) < 30


def test_evaluating_every_n_epochs_trains_the_same_epochs():
    model, split, config = _setup(epochs=7)
    every = Trainer(model, split, config.replace(eval_every=3)).fit()
    assert [r.epoch for r in every.history] == [3, 6, 7]  # and the last
    straight_model, _, _ = _setup()
    straight = Trainer(straight_model, split, config).fit()
    by_epoch = {r.epoch: r for r in straight.history}
    for record in every.history:  # the same epochs, so the same figures where both evaluated
        assert record.metrics == by_epoch[record.epoch].metrics
        assert record.loss == by_epoch[record.epoch].loss
    # patience counts epochs since the best, not evaluations: 1 epoch of patience stops at the
    # first evaluation that does not improve
    model, split, config = _setup(epochs=30, patience=1, learning_rate=0.3)
    fit = Trainer(model, split, config.replace(eval_every=4)).fit()
    epochs = [r.epoch for r in fit.history]
    assert fit.stopped_early and epochs == list(range(4, epochs[-1] + 1, 4))
    assert fit.history[-1].score("validation") <= fit.selected.score("validation")


def test_divergence_is_reported(monkeypatch):
    model, split, config = _setup(step="autograd")
    trainer = Trainer(model, split, config)
    with torch.no_grad():
        model.user_embedding.weight.fill_(float("nan"))
    with pytest.raises(TorchcfError, match="diverged at epoch 1"):
        trainer.fit()


def test_validation_selection_needs_validation():
    with pytest.raises(ConfigError):
        recipe("gmf", {"select_by": "validation", "validation": False})
    model, split, config = _setup()
    no_val = leave_one_out(
        planted(num_users=80, num_items=40, groups=4, per_user=8), 20, validation=False
    )
    with pytest.raises(ConfigError, match="validation"):
        Trainer(model, no_val, config.replace(select_by="validation"))


@pytest.mark.parametrize("step", ["analytic", "autograd"])
def test_resume_repeats_an_uninterrupted_run(tmp_path, step):
    model, split, config = _setup(epochs=4, step=step)
    straight = Trainer(model, split, config).fit()

    model2, _, _ = _setup(step=step)
    first = Trainer(model2, split, config.replace(epochs=2))
    first.fit()
    first.save_checkpoint(tmp_path / "ckpt.pt")

    model3, _, _ = _setup(step=step)
    resumed = Trainer(model3, split, config)
    resumed.load_checkpoint(tmp_path / "ckpt.pt")
    fit = resumed.fit()
    assert [r.epoch for r in fit.history] == [1, 2, 3, 4]
    assert np.allclose([r.loss for r in fit.history], [r.loss for r in straight.history], rtol=1e-6)
    for a, b in zip(model.state_dict().values(), model3.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_checkpoint_with_other_settings_is_refused(tmp_path):
    model, split, config = _setup(epochs=1)
    trainer = Trainer(model, split, config)
    trainer.fit()
    trainer.save_checkpoint(tmp_path / "c.pt")
    model2, _, _ = _setup()
    other = Trainer(model2, split, config.replace(learning_rate=0.5))
    with pytest.raises(ConfigError, match="learning_rate"):
        other.load_checkpoint(tmp_path / "c.pt")


def test_initial_evaluation_is_epoch_zero_and_can_be_selected():
    model, split, config = _setup(epochs=2, step="autograd")
    untrained = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = Trainer(model, split, config, evaluate_initial=True)

    def ruin(epoch: int) -> float:  # "training" that makes every score equal: HR = 0
        with torch.no_grad():
            for p in model.parameters():
                p.zero_()
        return 1.0

    trainer.train_epoch = ruin  # type: ignore[method-assign]
    fit = trainer.fit()
    assert [r.epoch for r in fit.history] == [0, 1, 2]
    assert np.isnan(fit.history[0].loss) and fit.history[0].train_seconds == 0.0
    assert (
        fit.history[1].metrics["test"]["hr"] == 0.0
        and fit.history[0].metrics["validation"]["hr"] > 0.0
    )
    assert fit.selected.epoch == 0
    assert all(torch.equal(fit.state[k], v) for k, v in untrained.items())
    assert not fit.stopped_early


def test_dropout_runs_repeat_and_leave_the_global_rng_alone():
    data = planted(num_users=60, num_items=30, groups=3, per_user=6)
    split = leave_one_out(data, 10, seed=0)
    config = TrainConfig(epochs=2, batch_size=32, learning_rate=0.01)
    states = []
    for torch_seed in (1, 2):  # different global RNG states must not matter
        torch.manual_seed(torch_seed)
        model = build_model(
            "mlp", data.num_users, data.num_items, seed=0, embedding_dim=4, layers=2, dropout=0.5
        )
        before = torch.random.get_rng_state()
        Trainer(model, split, config).fit()
        assert torch.equal(torch.random.get_rng_state(), before)
        states.append(model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_progress_reports_each_epoch_start_and_every_sample():
    model, split, config = _setup(epochs=2)
    calls: list[tuple[int, int, int]] = []
    Trainer(model, split, config, progress=lambda *a: calls.append(a)).fit()
    total = 5 * len(split.train)
    for epoch in (1, 2):
        mine = [c for c in calls if c[0] == epoch]
        assert mine[0] == (epoch, 0, total)
        assert sum(n for _, n, _ in mine) == total and all(t == total for *_, t in mine)


def _history(fit):
    return [
        (r.loss, r.metrics["test"]["hr"], r.metrics["test"]["ndcg"], r.metrics["validation"]["hr"])
        for r in fit.history
    ]


def test_prefetch_changes_no_result():
    """The background sampler draws exactly the epochs the trainer would draw itself."""
    runs = []
    for prefetch in (False, True):
        model, split, config = _setup(epochs=3, prefetch=prefetch)
        runs.append(_history(Trainer(model, split, config).fit()))
    assert runs[0] == runs[1]


def test_cosine_schedule_decays_the_learning_rate():
    config = TrainConfig(learning_rate=0.02, epochs=4, lr_schedule="cosine")
    rates = [config.epoch_learning_rate(e) for e in range(1, 5)]
    assert rates[0] == pytest.approx(0.02) and rates == sorted(rates, reverse=True)
    assert rates[-1] == pytest.approx(0.02 * 0.5 * (1 + np.cos(np.pi * 3 / 4)))
    assert TrainConfig(learning_rate=0.02).epoch_learning_rate(3) == 0.02
    model, split, config = _setup(epochs=2, lr_schedule="cosine", step="autograd")
    trainer = Trainer(model, split, config)
    trainer.fit()
    assert trainer.step.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.005)


@needs_kernel
@pytest.mark.parametrize("model", ["gmf", "mlp"])
def test_epoch_loss_is_the_mean_bce_of_the_epoch(model):
    """The compiled kernels (MF/GMF's, the towers') sum the loss themselves; it must equal the
    mean BCE that autograd's path computes from the logits."""
    losses, steps = [], []
    for step in ("auto", "autograd"):
        net, split, config = _setup(epochs=1, step=step, model=model)
        trainer = Trainer(net, split, config)
        steps.append(type(trainer.step).__name__)
        losses.append(trainer.train_epoch(1))
    assert steps[0].startswith("Native") and steps[1] == "AutogradStep"  # two different paths
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)


@pytest.mark.parametrize("step", ["auto", "autograd"])
def test_large_epochs_are_drawn_in_parts(monkeypatch, step):
    """Past CHUNK_SAMPLES an epoch comes in parts: every positive once, exact negatives."""
    import torchcf.training.epochs as epochs

    monkeypatch.setattr(epochs, "CHUNK_SAMPLES", 500)
    model, split, config = _setup(epochs=2, num_negatives=3, step=step)
    trainer = Trainer(model, split, config)
    parts = list(trainer.sampler.epoch(1))
    assert trainer.sampler.parts() == len(parts) > 1
    positives = []
    for users, items, labels, order in parts:
        assert len(users) <= 500 and sorted(order.tolist()) == list(range(len(users)))
        neg = labels == 0
        assert int((~neg).sum()) * 3 == int(neg.sum())
        assert not split.train.contains(users[neg].numpy(), items[neg].numpy()).any()
        positives += (users[~neg] * split.num_items + items[~neg]).tolist()
    train = split.train
    assert sorted(positives) == sorted((train.users * split.num_items + train.items).tolist())
    again = [p[1] for p in trainer.sampler.epoch(1)]
    assert all(torch.equal(a, p[1]) for a, p in zip(again, parts, strict=True))
    fit = trainer.fit()
    assert np.isfinite(fit.history[-1].loss) and fit.history[-1].metrics["test"]["hr"] > 0


def test_device_draw_path(monkeypatch):
    """The GPU's epoch draw (negatives by sorted-key rejection on the device), run on the CPU."""
    model, split, config = _setup(num_negatives=3)
    trainer = Trainer(model, split, config)
    trainer.sampler._known_keys = torch.as_tensor(split.train.pair_keys)
    users, items, labels = trainer.sampler.shuffled(1)
    neg = labels == 0
    assert int(neg.sum()) == 3 * len(split.train)
    assert not split.train.contains(users[neg].numpy(), items[neg].numpy()).any()
    assert torch.equal(trainer.sampler.shuffled(1)[1], items)


def test_amp_forward_runs_in_bfloat16(monkeypatch):
    """--amp on the autograd steps: the forward pass under bfloat16 autocast (without the
    compiled kernel, which takes bfloat16 products itself: test_tower_kernel.py)."""
    from torchcf import native

    monkeypatch.setattr(native, "load", lambda: None)
    model, split, config = _setup(model="mlp", amp=True, epochs=1)
    model = build_model("mlp", split.num_users, split.num_items, seed=0, embedding_dim=8)
    trainer = Trainer(model, split, config)
    assert type(trainer.step).__name__ == "FlatAdamStep"
    seen = []
    last = [m for m in model.tower if isinstance(m, torch.nn.Linear)][-1]
    last.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    trainer.train_epoch(1)
    assert seen and seen[0] == torch.bfloat16


def test_resume_with_a_cosine_schedule_keeps_its_epochs(tmp_path):
    """Under a cosine schedule the epoch count sets every epoch's rate: resuming with another
    count would silently change them, so it is refused; a constant rate may run longer."""
    model, split, config = _setup(epochs=2, lr_schedule="cosine")
    trainer = Trainer(model, split, config)
    trainer.fit()
    trainer.save_checkpoint(tmp_path / "c.pt")
    longer = Trainer(model, split, config.replace(epochs=4))
    with pytest.raises(ConfigError, match="epochs"):
        longer.load_checkpoint(tmp_path / "c.pt")
    model, split, config = _setup(epochs=2)
    trainer = Trainer(model, split, config)
    trainer.fit()
    trainer.save_checkpoint(tmp_path / "k.pt")
    Trainer(model, split, config.replace(epochs=4)).load_checkpoint(tmp_path / "k.pt")


RESUMABLE = {
    # the tower kernel with dropout (keyed by step: the resumed run draws the same masks)
    "mlp": {"embedding_dim": 4, "layers": 2, "dropout": 0.3, "batch_size": 64},
    "neumf": {"embedding_dim": 4, "layers": 2, "dropout": 0.2, "batch_size": 64},
    "ials": {"embedding_dim": 8},
    # a graph model: the whole graph propagated every step, the L2 penalty, fused Adam
    "lightgcn": {"embedding_dim": 8, "layers": 2, "batch_size": 64},
    # XSimGCL's noise (keyed by step) and contrastive loss
    "lightgcn-xsimgcl": {
        "embedding_dim": 8,
        "layers": 2,
        "batch_size": 64,
        "noise": 0.1,
        "contrast": 0.2,
    },
    # rows as samples, keyed input dropout and noise, the annealed KL weight
    "multvae": {"hidden": 16, "latent": 4, "batch_size": 16, "anneal_steps": 10},
    # the fast recipe: prefetching sampler, cosine schedule, large batches
    "gmf-fast": {"embedding_dim": 8, "batch_size": 512},
}


@pytest.mark.parametrize("name", list(RESUMABLE))
def test_resume_equals_an_uninterrupted_run(tmp_path, name):
    model_name = name.removesuffix("-fast").removesuffix("-xsimgcl")
    config = recipe(
        model_name,
        {**RESUMABLE[name], "epochs": 4},
        recipes=("fast",) if name.endswith("-fast") else (),
    )
    split = leave_one_out(planted(num_users=80, num_items=40, per_user=8), 20, seed=0)

    def build():
        return build_model(
            model_name, split.num_users, split.num_items, seed=0, config=config.model_config
        )

    straight_model = build()
    straight = Trainer(straight_model, split, config.train).fit()
    # a run killed after two epochs: the checkpoint written after epoch 2 is all that is left
    # (the epochs run as fit runs them, the prefetching sampler included)
    killed = Trainer(build(), split, config.train)
    for epoch in (1, 2):
        loss = killed.train_epoch(epoch)
        killed._accept(killed._record(epoch, loss, 0.0), killed.selection)
    killed.save_checkpoint(tmp_path / "c.pt")
    killed.sampler.close()
    resumed_model = build()
    resumed = Trainer(resumed_model, split, config.train)
    resumed.load_checkpoint(tmp_path / "c.pt")
    fit = resumed.fit()
    assert [r.epoch for r in fit.history] == [1, 2, 3, 4]
    for a, b in zip(fit.history, straight.history, strict=True):
        same_loss = a.loss == b.loss or (np.isnan(a.loss) and np.isnan(b.loss))
        assert a.metrics == b.metrics and same_loss, (a, b)
    for key, value in straight_model.state_dict().items():
        assert torch.equal(value, resumed_model.state_dict()[key]), key
