"""``torchcf export``: the vectors' inner products are the model's scores, for every model that
has the form; the others are refused in one line."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from conftest import planted
from test_cli import run_cli
from test_recommend import train_run, write_planted
from torchcf.data.interactions import Interactions
from torchcf.models.registry import build_model
from torchcf.serving.persistence import load_model
from torchcf.serving.vectors import inner_product_models

USERS, ITEMS = 9, 13
FORMS = {
    "mf": {"embedding_dim": 4},
    "mf+biases": {"embedding_dim": 4, "biases": True},
    "bpr": {"embedding_dim": 4},
    "gmf": {"embedding_dim": 4},
    "ials": {"embedding_dim": 4},
    "lightgcn": {"embedding_dim": 4, "layers": 2},
}


@pytest.mark.parametrize("name", list(FORMS))
def test_inner_products_of_the_vectors_are_the_scores(name):
    model = build_model(name.split("+")[0], USERS, ITEMS, seed=0, **FORMS[name]).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()  # (biases and heads away from their zero initialisation)
    rng = np.random.default_rng(0)
    model.observe(
        Interactions(rng.integers(0, USERS, 40), rng.integers(0, ITEMS, 40), USERS, ITEMS)
    )
    users, items = model.dot_vectors()
    with torch.no_grad():
        torch.testing.assert_close(users @ items.T, model.score_all(torch.arange(USERS)))


def test_the_models_without_the_form_say_so():
    assert set(inner_product_models()) == {"mf", "bpr", "gmf", "ials", "lightgcn"}
    for name in ("ease", "itemknn", "pop", "mlp", "neumf", "multvae"):
        assert build_model(name, USERS, ITEMS, seed=0).dot_vectors() is None


def test_export_writes_vectors_that_reproduce_the_run(tmp_path):
    data = write_planted(tmp_path / "data", planted(num_users=30, num_items=20, per_user=5))
    run = train_run(data, tmp_path / "gmf", epochs=1)
    out = tmp_path / "vectors"
    done = run_cli("export", str(run), "--out", str(out))
    assert done.returncode == 0, done.stderr
    card = json.loads((out / "export.json").read_text())
    assert card["model"] == "gmf" and card["dimensions"] == 9  # 8 factors + the bias column
    loaded = load_model(run)
    users, items = pq.read_table(out / "users.parquet"), pq.read_table(out / "items.parquet")
    assert users.column("user").to_pylist() == loaded.user_map.ids.tolist()
    assert items.column("item").to_pylist() == loaded.item_map.ids.tolist()
    u = np.stack(users.column("vector").to_numpy(zero_copy_only=False))
    i = np.load(out / "items.npy")
    np.testing.assert_array_equal(u, np.load(out / "users.npy"))
    np.testing.assert_array_equal(np.load(out / "item_ids.npy"), loaded.item_map.ids)
    with torch.no_grad():
        scores = loaded.model.score_all(torch.arange(loaded.model.num_users)).numpy()
    np.testing.assert_allclose(u @ i.T, scores, rtol=1e-5, atol=1e-5)
    again = run_cli("export", str(run), "--out", str(out))  # never over an existing directory
    assert again.returncode == 2 and "--overwrite" in again.stderr
    assert run_cli("export", str(run), "--out", str(out), "--overwrite").returncode == 0


def test_a_model_without_inner_products_is_a_one_line_error(tmp_path):
    data = write_planted(tmp_path / "data", planted(num_users=30, num_items=20, per_user=5))
    run = tmp_path / "ease"
    trained = run_cli("train", "--data", str(data), "--model", "ease", "--no-progress",
                      "--out", str(run))  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    done = run_cli("export", str(run), "--out", str(tmp_path / "v"))
    assert done.returncode == 2 and "not inner products" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "v").exists()
