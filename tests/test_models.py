"""The model contract, applied to every registered model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import planted
from torchcf.data.split import leave_one_out
from torchcf.evaluation.metrics import hit_rate, positive_ranks
from torchcf.evaluation.protocols import holdout_ranks
from torchcf.models import GMF, MF, ScoringModel
from torchcf.models.registry import SPECS, build_model
from torchcf.serving.persistence import load_model, save_model
from torchcf.training.config import recipe, takes
from torchcf.training.trainer import Trainer

# the neural models; the baselines have their own contract test (test_baselines)
ALL = sorted(n for n, s in SPECS.items() if s.trainable and s.training is None)


@pytest.mark.parametrize("name", ALL)
def test_shapes_and_broadcasting(name):
    model = build_model(name, 7, 11, seed=0, embedding_dim=4).eval()  # eval: no dropout
    users = torch.tensor([0, 3, 6])
    assert model(users, torch.tensor([1, 2, 10])).shape == (3,)
    assert model(users[:, None], torch.randint(0, 11, (3, 5))).shape == (3, 5)
    assert model.score_all(users).shape == (3, 11)


@pytest.mark.parametrize("name", ALL)
def test_score_all_agrees_with_forward(name):
    model = build_model(name, 7, 11, seed=0, embedding_dim=4).eval()  # eval: no dropout
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    users = torch.arange(7)
    every = model(users[:, None], torch.arange(11)[None, :])
    assert torch.allclose(model.score_all(users), every, atol=1e-5)
    single = torch.stack([model(users[u : u + 1], torch.tensor([3]))[0] for u in range(7)])
    assert torch.allclose(single, every[:, 3], atol=1e-6)  # batch == single
    generic = ScoringModel.score_all(model, users, chunk=3)  # the generic fallback
    assert torch.allclose(generic, every, atol=1e-5)


def test_initialisation_follows_the_paper():
    model = GMF(2000, 2000, embedding_dim=32, generator=torch.Generator().manual_seed(0))
    assert abs(model.user_embedding.weight.std().item() - 0.01) < 0.001
    bound = 1.0 * (3.0 / 32) ** 0.5  # kaiming uniform, a=1 → gain 1 for sigmoid, fan_in 32
    assert model.head.weight.abs().max() <= bound and model.head.bias.item() == 0.0
    assert not hasattr(MF(3, 3), "head")
    a = build_model("gmf", 5, 5, seed=1)
    b = build_model("gmf", 5, 5, seed=1)
    assert all(
        torch.equal(x, y)
        for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


@pytest.mark.parametrize("name", ALL)
def test_save_load_round_trip(tmp_path, name):
    data = planted()
    split = leave_one_out(data, num_negatives=10)
    model = build_model(name, data.num_users, data.num_items, seed=0, embedding_dim=8).eval()
    save_model(tmp_path / "m", model, split.train, metadata={"note": "x"})
    loaded = load_model(tmp_path / "m")
    users = torch.arange(data.num_users)
    assert torch.equal(loaded.model.score_all(users), model.score_all(users))
    assert loaded.metadata["note"] == "x" and loaded.metadata["model"] == name
    assert (loaded.seen != split.train.csr).nnz == 0


def _popularity_hr(split, k):
    counts = torch.as_tensor(split.train.item_counts(), dtype=torch.float32)
    cand = torch.as_tensor(split.test.candidates())
    return hit_rate(positive_ranks(counts[cand.clamp(min=0)], cand >= 0), k)


@pytest.mark.parametrize("name", ALL)
def test_learns_planted_structure_and_beats_popularity(name):
    data = planted(num_users=200, num_items=80, groups=4, per_user=10)
    split = leave_one_out(data, num_negatives=40, seed=0)
    settings = {
        "embedding_dim": 8,
        "epochs": 15,
        "batch_size": 64,
        "learning_rate": 0.01,
        "k": 5,
        "layers": 2,
        "dropout": 0.0,
    }
    # each model's own recipe (bpr: the BPR loss) under the settings it takes
    config = recipe(name, {k: v for k, v in settings.items() if takes(name, k)})
    model = build_model(name, data.num_users, data.num_items, seed=0, config=config.model_config)
    Trainer(model, split, config.train, k=5).fit()
    hr = hit_rate(holdout_ranks(model, split.test), 5)
    pop = _popularity_hr(split, 5)
    # 40 negatives, 30 of them out of block: a model that knows the blocks ranks in-block first
    assert hr > 0.45 and hr > pop + 0.2, (hr, pop)
    assert np.isfinite(hr)
