"""MLP and NeuMF specifics: tower shape, pretraining initialisation, the pretrain chain."""

from __future__ import annotations

import pytest
import torch

from conftest import planted
from torchcf.data.sources import DataSpec
from torchcf.errors import ConfigError
from torchcf.models import GMF, MLP, NeuMF
from torchcf.models.layers import Dropout
from torchcf.models.registry import build_model
from torchcf.runs.train import Pretrained, pretrain_recipe, run_training
from torchcf.training.config import TrainConfig, recipe


def test_mlp_tower_halves_down_to_the_factors():
    model = MLP(10, 20, embedding_dim=8, layers=3)
    assert model.user_embedding.weight.shape == (10, 32)  # 8 · 2^(3-1)
    widths = [m.out_features for m in model.tower if isinstance(m, torch.nn.Linear)]
    assert widths == [32, 16, 8]
    assert model.tower[0].in_features == 64
    with_dropout = MLP(10, 20, embedding_dim=8, layers=2, dropout=0.2)
    assert any(isinstance(m, Dropout) for m in with_dropout.tower)
    with pytest.raises(ConfigError):
        MLP(10, 20, layers=0)


def test_dropout_drops_at_rate_keeps_expectation_and_repeats_under_seed():
    layer = Dropout(0.2)
    x = torch.ones(400, 500, requires_grad=True)
    torch.manual_seed(3)
    out = layer(x)
    dropped = float((out.detach() == 0).float().mean())
    assert abs(dropped - 51 / 256) < 0.005
    assert abs(float(out.detach().mean()) - 1.0) < 0.01  # inverted scaling keeps the expectation
    out.sum().backward()  # the gradient flows through kept units only, scaled the same
    assert torch.equal(x.grad, out.detach())
    torch.manual_seed(3)
    assert torch.equal(layer(x), out)  # seeded by torch's generator
    assert not torch.equal(layer(x), out)  # and fresh masks on every call
    layer.eval()
    assert torch.equal(layer(x), x)


def test_pretrained_neumf_scores_alpha_mix_of_its_parts():
    gmf = build_model("gmf", 9, 13, seed=1, embedding_dim=4)
    mlp = build_model("mlp", 9, 13, seed=2, embedding_dim=4, layers=2).eval()
    with torch.no_grad():  # make the parts distinct and non-trivial
        for p in [*gmf.parameters(), *mlp.parameters()]:
            p.normal_()
    alpha = 0.3
    neumf = NeuMF(9, 13, embedding_dim=4, layers=2).init_from_pretrained(gmf, mlp, alpha).eval()
    users = torch.arange(9)[:, None]
    items = torch.arange(13)[None, :]
    # the parts' logits without their heads' bias, then the bias mixed the same way
    expected = alpha * gmf(users, items) + (1 - alpha) * mlp(users, items)
    assert torch.allclose(neumf(users, items), expected, atol=1e-5)
    assert torch.allclose(neumf.score_all(torch.arange(9)), expected, atol=1e-5)


def test_pretraining_refuses_mismatched_parts():
    gmf = GMF(9, 13, embedding_dim=4)
    with pytest.raises(ConfigError, match="factors"):
        NeuMF(9, 13, embedding_dim=8).init_from_pretrained(gmf, MLP(9, 13, embedding_dim=8))
    with pytest.raises(ConfigError, match="layers"):
        NeuMF(9, 13, embedding_dim=4, layers=3).init_from_pretrained(
            gmf, MLP(9, 13, embedding_dim=4, layers=2)
        )
    with pytest.raises(ConfigError, match="same data"):
        NeuMF(9, 13, embedding_dim=4).init_from_pretrained(
            GMF(9, 14, embedding_dim=4), MLP(9, 13, embedding_dim=4)
        )
    with pytest.raises(ConfigError, match="alpha"):
        Pretrained("a", "b", alpha=1.5)


def test_pretrain_chain_from_run_directories(tmp_path):
    from conftest import tiny_rows, write_ml1m

    write_ml1m(tmp_path / "ratings.dat", tiny_rows(num_users=15, num_items=25, per_user=7))
    spec = DataSpec(path=str(tmp_path / "ratings.dat"))
    shape = {"embedding_dim": 4, "layers": 2, "epochs": 2, "batch_size": 64, "eval_negatives": 8}
    base = recipe("neumf", {**shape, "learning_rate": 1e-3})
    quiet = {"progress": False, "echo": lambda _: None}
    for part in ("gmf", "mlp"):
        run_training(spec, pretrain_recipe(part, shape), tmp_path / part, **quiet)
    pretrained = Pretrained(str(tmp_path / "gmf"), str(tmp_path / "mlp"), 0.5)
    one_epoch = base.replace(epochs=1, learning_rate=1e-12)  # a no-op fine-tune
    summary = run_training(spec, one_epoch, tmp_path / "neumf", pretrained=pretrained, **quiet)
    # with no fine-tuning, NeuMF's test metrics are those of the 0.5/0.5 mix of its parts
    from torchcf.data.sources import load_split
    from torchcf.evaluation.metrics import hit_rate
    from torchcf.evaluation.protocols import holdout_ranks
    from torchcf.serving.persistence import load_model

    split, _ = load_split(spec, one_epoch.split)
    gmf, mlp = load_model(tmp_path / "gmf").model, load_model(tmp_path / "mlp").model
    mixed = NeuMF(split.num_users, split.num_items, embedding_dim=4, layers=2, dropout=0.2)
    mixed.init_from_pretrained(gmf, mlp, 0.5)
    expected = hit_rate(holdout_ranks(mixed, split.test), 10)
    assert summary["selected"]["test"]["hr@10"] == pytest.approx(expected)
    # epoch 0 is the untouched mix, evaluated before fine-tuning
    rows = (tmp_path / "neumf" / "metrics.csv").read_text().splitlines()
    assert rows[1].startswith("0,nan,") and rows[2].startswith("1,")
    config = __import__("json").loads((tmp_path / "neumf" / "config.json").read_text())
    assert config["pretrained"]["gmf"].endswith("gmf")
    with pytest.raises(ConfigError, match="other data"):
        other = DataSpec(path=str(tmp_path / "ratings.dat"), min_user_interactions=7)
        write_ml1m(tmp_path / "ratings.dat", tiny_rows(num_users=16, num_items=25, per_user=7))
        run_training(other, one_epoch, tmp_path / "neumf2", pretrained=pretrained, **quiet)


def test_sgd_and_adagrad_optimizers_train():
    data = planted(num_users=60, num_items=30, groups=3, per_user=6)
    from torchcf.data.split import leave_one_out
    from torchcf.training.trainer import Trainer

    split = leave_one_out(data, 10)
    for optimizer in ("sgd", "adagrad", "lazy-adam"):
        config = TrainConfig(epochs=2, batch_size=32, learning_rate=0.05, optimizer=optimizer)
        model = build_model(
            "mlp", data.num_users, data.num_items, seed=0, embedding_dim=4, layers=2
        )
        before = [p.detach().clone() for p in model.parameters()]
        Trainer(model, split, config).fit()
        assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
