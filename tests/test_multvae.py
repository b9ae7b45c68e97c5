"""Mult-VAE: its loss against a direct dense computation, the annealing schedule, fold-in equal to
scoring the same row, training end to end on held-out sets, hostile settings."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from test_cli import run_cli
from test_multi_item import train, write_split
from torchcf.data.interactions import Interactions
from torchcf.errors import ConfigError
from torchcf.models.multvae import MultVAE, kl_weight
from torchcf.serving.http import create_app
from torchcf.serving.recommender import Recommender
from torchcf.training.config import TrainConfig, recipe
from torchcf.training.steps import FlatAdamStep

USERS, ITEMS, HIDDEN, LATENT = 12, 20, 8, 3


def rows(seed: int = 0) -> Interactions:
    rng = np.random.default_rng(seed)
    users = np.concatenate([np.arange(USERS), rng.integers(0, USERS - 1, 80)])  # user 11: one item
    return Interactions(users, rng.integers(0, ITEMS, len(users)), USERS, ITEMS)


def model(data: Interactions, **settings) -> MultVAE:
    built = MultVAE(
        USERS, ITEMS, hidden=HIDDEN, latent=LATENT, generator=torch.Generator().manual_seed(0),
        **settings,
    )  # fmt: skip
    built.observe(data)
    return built


def dense_loss(built: MultVAE, x: torch.Tensor, beta: float, keep: torch.Tensor, noise):
    """The negative ELBO written with dense rows: dropout ``keep`` (0 or 1/(1-p)) on the
    normalised row, ``z = μ + σ·noise``, ``−Σ x log softmax + β·KL``."""
    h = x / x.norm(dim=1, keepdim=True) * keep
    h = built.encoder_out(torch.tanh(h @ built.encoder_items + built.encoder_bias))
    mu, logvar = h[:, :LATENT], h[:, LATENT:]
    z = mu + noise * torch.exp(0.5 * logvar)
    log_probs = torch.log_softmax(built.decode(z), dim=1)
    kl = 0.5 * (torch.exp(logvar) + mu**2 - 1 - logvar).sum(1)
    return -(log_probs * x).sum(1) + beta * kl


def test_the_loss_equals_a_direct_computation():
    data = rows()
    built = model(data, anneal_cap=0.3, anneal_steps=100)
    x = torch.as_tensor(data.deduplicate().csr.toarray() > 0, dtype=torch.float32)
    users = torch.arange(USERS)
    built.eval()  # no dropout, z = μ
    got = built.row_loss(users, step=10)
    zero = torch.zeros(USERS, LATENT)
    torch.testing.assert_close(got, dense_loss(built, x, 0.1, torch.ones_like(x), zero))
    # training: the keyed dropout and noise, drawn again from the same key, give the same loss
    built.train()
    built.input_dropout.key = (5, 3, 0)
    noisy = built.row_loss(users, step=1000)
    assert torch.equal(noisy, built.row_loss(users, step=1000))
    assert not torch.allclose(noisy, built.row_loss(users, step=0))  # β 0.3 → 0: KL dropped
    built.input_dropout.key = (5, 4, 0)
    assert not torch.allclose(noisy, built.row_loss(users, step=1000))  # another step's draw
    noisy.mean().backward()
    assert built.encoder_items.grad is not None and built.decoder_out.weight.grad.abs().sum() > 0


def test_the_annealing_schedule_follows_the_optimizer_steps(monkeypatch):
    assert [kl_weight(s, 0.2, 10) for s in (0, 1, 2, 5, 100)] == [0.0, 0.1, 0.2, 0.2, 0.2]
    assert kl_weight(0, 0.2, 0) == 0.2  # no annealing: the cap from the first step
    built = model(rows())
    seen: list[int] = []
    original = built.row_loss

    def record(users, step):
        seen.append(step)
        return original(users, step)

    monkeypatch.setattr(built, "row_loss", record)
    step = FlatAdamStep(built, TrainConfig(loss="multinomial", batch_size=4))
    for _ in range(3):
        step(torch.arange(4), torch.zeros(4, dtype=torch.long), torch.zeros(4))
    assert seen == [0, 1, 2]  # β = min(cap, step / anneal_steps) before each update


def test_fold_in_equals_scoring_the_same_row():
    data = rows()
    built = model(data).eval()
    with torch.no_grad():
        csr = data.deduplicate().csr
        for user in (0, 4, 11):
            items = torch.as_tensor(csr[user].indices)
            scores = built.score_all(torch.tensor([user]))[0]
            torch.testing.assert_close(built.fold_in_scores(items), scores)
            # repeated items are one interaction, as in training
            torch.testing.assert_close(built.fold_in_scores(items.repeat(2)), scores)


def test_multvae_trains_on_held_out_sets_and_serves_new_users(tmp_path):
    directory = write_split(tmp_path / "s")
    out = tmp_path / "run"
    done = train(directory, out, "multvae", "--epochs", "3", "--hidden", "16", "--latent", "4",
                 "--batch-size", "2", "--eval-every", "2")  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["epochs_run"] == 3 and summary["selected"]["epoch"] in (2, 3)
    assert [line.split(",")[0] for line in (out / "metrics.csv").read_text().split()[1:]] == [
        "2",
        "3",
    ]  # evaluated every 2 epochs and after the last
    assert 0.0 <= summary["full_ranking"]["recall@20"] <= 1.0
    rec = Recommender.load(out)
    assert run_cli("recommend", str(out), "--user", "0").returncode == 0
    folded = run_cli("recommend", str(out), "--items", "1,2", "-k", "3", "--json")
    assert folded.returncode == 0, folded.stderr
    ids, _ = rec.recommend_for_items([1, 2], k=3)
    assert [row["item"] for row in json.loads(folded.stdout)["items"]] == ids.tolist()
    client = TestClient(create_app(rec, max_k=10))  # what the page's fold-in calls
    body = client.post("/recommend", json={"items": [1, 2], "k": 3}).json()
    assert [row["item"] for row in body[0]["items"]] == ids.tolist()
    assert run_cli("similar", str(out), "--item", "1").returncode == 0
    assert run_cli("evaluate", str(out)).returncode == 0


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--anneal-cap", "-0.1"], "anneal_cap must be in [0, 100]"),
        (["--anneal-cap", "nan"], "anneal_cap must be finite"),
        (["--anneal-steps", "-5"], "anneal_steps must be in"),
        (["--dropout", "1.5"], "dropout"),
        (["--hidden", "0"], "hidden must be in"),
        (["--loss", "bce"], "multvae trains on whole user rows (--loss multinomial), not bce"),
        (["--negatives", "4"], "multvae does not take num_negatives"),
        (["--nproc", "2"], "trains in one process"),
    ],
)
def test_hostile_settings_are_one_line_errors(tmp_path, flags, message):
    out = tmp_path / "run"
    done = train(write_split(tmp_path / "s"), out, "multvae", "--epochs", "1", *flags)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not out.exists()


def test_the_multinomial_loss_belongs_to_row_models():
    with pytest.raises(ConfigError, match="whole user rows"):
        recipe("gmf", {"loss": "multinomial"})
    assert recipe("multvae").train.loss == "multinomial"
