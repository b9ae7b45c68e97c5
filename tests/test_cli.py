"""The CLI end to end on a tiny dataset (subprocess), and its one-line errors."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import tiny_rows, write_ml1m

FAST = [
    "--epochs",
    "2",
    "--factors",
    "4",
    "--batch-size",
    "64",
    "--eval-negatives",
    "5",
    "--no-progress",
]


def run_cli(
    *args: str, cwd: Path | None = None, env: dict | None = None
) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "torchcf", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=full_env,
        timeout=300,
    )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("ml")
    write_ml1m(directory / "ratings.dat", tiny_rows(num_users=12, num_items=20, per_user=6))
    (directory / "movies.dat").write_text(
        "".join(f"{i}::Movie {i} (2000)::Drama\n" for i in range(1, 21))
    )
    return directory


def test_train_end_to_end(tiny, tmp_path):
    out = tmp_path / "run"
    result = run_cli("train", "--data", str(tiny), "--model", "gmf", "--out", str(out), *FAST)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert sum(line.startswith("epoch ") for line in lines) == 2
    assert any(line.startswith("selected epoch") and "by validation" in line for line in lines)
    assert any(line.startswith("best test epoch") for line in lines)
    for name in (
        "config.json",
        "metrics.csv",
        "metrics.json",
        "learning_curve.png",
        "model/weights.pt",
        "model/config.json",
        "model/user_ids.json",
        "model/item_ids.json",
        "model/seen.npz",
        "per_user.parquet",
    ):
        assert (out / name).is_file(), name
    assert not (out / "checkpoint.pt").exists()
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]  # no temp leftovers
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert {
        "loss",
        "test_hr@10",
        "test_ndcg@10",
        "val_hr@10",
        "train_seconds",
        "eval_seconds",
    } <= set(rows[0])
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["selected"]["by"] == "validation"
    assert summary["protocol"]["split"] == "leave-one-out" and summary["protocol"]["k"] == 10
    assert summary["source"]["titles"].endswith("movies.dat")
    config = json.loads((out / "config.json").read_text())
    assert config["model_config"]["embedding_dim"] == 4 and config["train"]["epochs"] == 2
    assert (out / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"
    full = summary["full_ranking"]
    assert full["users"] == 12 and 0.0 <= full["hr@10"] <= 1.0 and "coverage@20" in full
    assert any(line.startswith("full ranking") for line in lines)
    # evaluate rebuilds the split from the run's record: the same numbers again
    again = run_cli("evaluate", str(out), "--json")
    assert again.returncode == 0, again.stderr
    result = json.loads(again.stdout)
    sampled = result["sampled"]["test"]
    selected = summary["selected"]["test"]
    assert sampled["hr@10"] == pytest.approx(selected["hr@10"])
    assert sampled["ndcg@10"] == pytest.approx(selected["ndcg@10"])
    assert result["full"]["ndcg@10"] == pytest.approx(full["ndcg@10"])
    table = run_cli("evaluate", str(out), "--protocol", "full").stdout
    assert "full ranking" in table and "coverage" in table and "sampled" not in table


def test_per_user_results_sum_back_to_the_reported_metrics(tiny, tmp_path):
    """per_user.parquet: one row per user, holdout and protocol; the library's metrics of its
    ranks are exactly the run's reported figures, and its columns average to them."""
    import pandas as pd
    import torch

    from torchcf.evaluation.metrics import hit_rate, ndcg

    out = tmp_path / "run"
    assert run_cli("train", "--data", str(tiny), "--out", str(out), *FAST).returncode == 0
    summary = json.loads((out / "metrics.json").read_text())
    table = pd.read_parquet(out / "per_user.parquet")
    assert set(table.groupby(["holdout", "protocol"]).size().items()) == {
        (("test", "sampled"), 12),
        (("validation", "sampled"), 12),
        (("test", "full"), 12),
    }
    reported = {
        ("test", "sampled"): summary["selected"]["test"],
        ("validation", "sampled"): summary["selected"]["validation"],
        ("test", "full"): summary["full_ranking"],
    }
    for (holdout, protocol), rows in table.groupby(["holdout", "protocol"]):
        ranks = torch.as_tensor(rows["rank"].to_numpy().copy())
        want = reported[(holdout, protocol)]
        assert hit_rate(ranks, 10) == want["hr@10"] and ndcg(ranks, 10) == want["ndcg@10"]
        assert rows["hit"].mean() == pytest.approx(want["hr@10"], abs=1e-12)
        assert rows["ndcg"].mean() == pytest.approx(want["ndcg@10"], abs=1e-12)
    assert set(table["user_id"]) == set(range(1, 13))  # the data's own ids (1-based here)


@pytest.mark.parametrize("model", ["pop", "itemknn", "ease", "ials", "bpr"])
def test_train_baselines_end_to_end(tiny, tmp_path, model):
    out = tmp_path / model
    # each takes its own settings: no factors or batches for the item-item models
    flags = {"ials": ["--factors", "4"], "bpr": FAST}.get(model, [])
    base = ["--epochs", "2", "--eval-negatives", "5", "--no-progress"]
    result = run_cli(
        "train", "--data", str(tiny), "--model", model, "--out", str(out), *base, *flags
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "metrics.json").read_text())
    closed_form = model in ("pop", "itemknn", "ease")
    assert summary["epochs_run"] == (1 if closed_form else 2)
    assert "epoch   1/" in result.stdout and "nan" not in result.stdout  # no NaN loss shown
    recommended = run_cli("recommend", str(out), "--user", "1", "-k", "3", "--json")
    assert recommended.returncode == 0 and len(json.loads(recommended.stdout)["items"]) == 3


def test_runs_written_before_per_model_configs_still_evaluate(tiny, tmp_path):
    """A run directory whose config.json has the old flat ``train`` dict (every setting of every
    model, ``model`` among them) is read as today's parts; evaluate gives its metrics."""
    out = tmp_path / "run"
    assert run_cli("train", "--data", str(tiny), "--out", str(out), *FAST).returncode == 0
    config = json.loads((out / "config.json").read_text())
    flat = {**config["train"], **config["model_config"], **config["split"], "model": "gmf"}
    flat.update(l2=None, dropout=0.0, layers=3, solver="exact", neighbours=100)  # others' keys
    legacy = {k: v for k, v in config.items() if k not in ("model", "model_config", "split")}
    (out / "config.json").write_text(json.dumps({**legacy, "train": flat}))
    result = run_cli("evaluate", str(out), "--json", "--protocol", "sampled")
    assert result.returncode == 0, result.stderr
    selected = json.loads((out / "metrics.json").read_text())["selected"]["test"]
    assert json.loads(result.stdout)["sampled"]["test"]["hr@10"] == pytest.approx(selected["hr@10"])


def test_runs_travel_between_directories_and_path_spellings(tiny, tmp_path):
    """A run records where its data is (absolute) and what its split is (a fingerprint):
    evaluate works from anywhere, and two runs on the same files blend however the paths were
    spelled."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "data").mkdir()
    (work / "data" / "ratings.dat").write_text((tiny / "ratings.dat").read_text())
    relative = run_cli(
        "train", "--data", "data/ratings.dat", "--out", "a", "--model", "ials", "--factors", "4",
        "--epochs", "2", "--eval-negatives", "5", "--no-progress", cwd=work,
    )  # fmt: skip
    assert relative.returncode == 0, relative.stderr
    absolute = run_cli(
        "train", "--data", str(work / "data" / "ratings.dat"), "--out", str(work / "b"),
        "--model", "ease", "--eval-negatives", "5", "--no-progress",
    )  # fmt: skip
    assert absolute.returncode == 0, absolute.stderr
    config = json.loads((work / "a" / "config.json").read_text())
    assert Path(config["data"]["path"]).is_absolute() and len(config["fingerprint"]) == 64
    elsewhere = run_cli("evaluate", str(work / "a"), "--json", cwd=tmp_path)
    assert elsewhere.returncode == 0, elsewhere.stderr
    blended = run_cli(
        "blend", str(work / "a"), str(work / "b"), "--out", str(work / "blend"), "--no-progress"
    )
    assert blended.returncode == 0, blended.stderr


def test_evaluate_refuses_a_run_whose_data_changed(tiny, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "ratings.dat").write_text((tiny / "ratings.dat").read_text())
    out = tmp_path / "run"
    assert run_cli("train", "--data", str(data), "--out", str(out), *FAST).returncode == 0
    with (data / "ratings.dat").open("a") as handle:
        handle.write("99::1::5::978300999\n99::2::5::978301000\n99::3::5::978301001\n")
    result = run_cli("evaluate", str(out))
    assert result.returncode == 2 and "changed since training" in result.stderr
    assert "ratings.dat has other content now" in result.stderr  # says which file
    missing = run_cli("evaluate", str(tmp_path / "nothing"))
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1


def test_python_dash_m_and_ncf_dir_select_by_test(tmp_path):
    ncf = tmp_path / "ncf"
    ncf.mkdir()
    train = [(u, i) for u in range(6) for i in range(8) if (u + i) % 3]
    (ncf / "t.train.rating").write_text("".join(f"{u}\t{i}\t5\n" for u, i in train))
    (ncf / "t.test.rating").write_text(
        "".join(
            f"{u}\t{(u * 3) % 8 if (u + (u * 3) % 8) % 3 == 0 else 9}\t5\t1\n" for u in range(6)
        )
    )
    tests = [line.split("\t")[:2] for line in (ncf / "t.test.rating").read_text().splitlines()]
    (ncf / "t.test.negative").write_text("".join(f"({u},{i})\t10\t11\t10\n" for u, i in tests))
    out = tmp_path / "run"
    result = run_cli(
        "train", "--data", str(ncf), "--model", "mf", "--out", str(out), "--no-validation",
        "--allow-cold-items", *FAST,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["selected"]["by"] == "test"
    assert any("duplicate" in note for note in summary["protocol"]["notes"])


def test_resume_continues_a_run(tiny, tmp_path):
    out = tmp_path / "run"
    first = run_cli("train", "--data", str(tiny), "--out", str(out), *FAST)
    assert first.returncode == 0, first.stderr
    again = run_cli("train", "--data", str(tiny), "--out", str(out), *FAST)
    assert again.returncode == 2 and "exists" in again.stderr
    # simulate a killed run: a checkpoint after epoch 1 is all that remains
    import torch

    from torchcf.data.sources import DataSpec, load_split
    from torchcf.models.registry import build_model
    from torchcf.training.config import recipe
    from torchcf.training.trainer import Trainer

    config = recipe("gmf", {"epochs": 2, "embedding_dim": 4, "batch_size": 64, "eval_negatives": 5})
    split, _ = load_split(DataSpec(path=str(tiny)), config.split)
    model = build_model("gmf", split.num_users, split.num_items, seed=0, embedding_dim=4)
    trainer = Trainer(model, split, config.train.replace(epochs=1))
    trainer.fit()
    killed = tmp_path / "killed"
    killed.mkdir()
    trainer.save_checkpoint(killed / "checkpoint.pt")
    resumed = run_cli("train", "--data", str(tiny), "--out", str(killed), "--resume", *FAST)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed after epoch 1" in resumed.stdout
    assert [
        line.split()[1] for line in resumed.stdout.splitlines() if line.startswith("epoch ")
    ] == ["2/2"]
    a = json.loads((out / "metrics.json").read_text())["selected"]
    b = json.loads((killed / "metrics.json").read_text())["selected"]
    assert a == b
    assert torch.equal(
        torch.load(out / "model" / "weights.pt", weights_only=True)["user_embedding.weight"],
        torch.load(killed / "model" / "weights.pt", weights_only=True)["user_embedding.weight"],
    )


def test_a_run_killed_mid_training_resumes_to_the_same_result(tiny, tmp_path):
    """SIGKILL a training process once it has checkpointed, then ``--resume``: the metrics of
    every epoch and the saved weights equal an uninterrupted run's."""
    import signal
    import time

    import torch

    args = ["--data", str(tiny), "--model", "mlp", "--factors", "4", "--layers", "2"]
    args += ["--epochs", "150", "--batch-size", "16", "--eval-negatives", "5", "--no-progress"]
    straight = run_cli("train", *args, "--out", str(tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    process = subprocess.Popen(
        [sys.executable, "-m", "torchcf", "train", *args, "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    deadline = time.monotonic() + 120
    while not (out / "checkpoint.pt").exists() or len(_epochs(out)) < 3:
        assert process.poll() is None, "finished before it could be killed"
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert not (out / "metrics.json").exists()  # it did not finish
    resumed = run_cli("train", *args, "--out", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed after epoch" in resumed.stdout
    assert _epochs(out) == _epochs(tmp_path / "straight")
    for name in ("straight", "killed"):
        assert not list((tmp_path / name).glob(".*.tmp"))  # nothing half-written
    weights = [torch.load(tmp_path / n / "model" / "weights.pt") for n in ("straight", "killed")]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def _epochs(run: Path) -> list[tuple[str, ...]]:
    """metrics.csv's rows without the timings."""
    if not (run / "metrics.csv").exists():
        return []
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    return [tuple(v for k, v in row.items() if not k.endswith("seconds")) for row in rows]


def _assert_one_line_error(result: subprocess.CompletedProcess, fragment: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    err = result.stderr.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert fragment in err, err


def test_bad_inputs_give_one_line_errors(tmp_path):
    malformed = tmp_path / "bad" / "ratings.dat"
    malformed.parent.mkdir()
    malformed.write_text("1::1::5::1\n1::2::5\n1::3::4::3::9\n")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    single = tmp_path / "single" / "ratings.dat"
    single.parent.mkdir()
    single.write_text("1::1::5::1\n1::2::5::2\n2::1::4::3\n")
    out = str(tmp_path / "o")
    cases = [
        (("--data", str(malformed)), "line 3: expected at most 4 fields, saw 5"),
        (("--data", str(empty)), "empty"),
        (("--data", str(tmp_path / "missing.csv")), "file not found"),
        (("--dataset", "ml-2m"), "unknown dataset 'ml-2m'"),
        (("--data", str(single)), "user 2 has a single interaction"),
        (("--data", str(single), "--epochs", "0"), "epochs must be in [1, 100000]"),
        (("--data", str(single), "--epochs", "x"), "invalid int value"),
        (("--data", str(single), "--device", "cuda:7"), "device"),
        (("--data", str(single), "--no-validation", "--select", "validation"), "validation"),
        (("--data", str(single), "--model", "ease", "--lr", "0.1"), "ease does not take"),
        (("--data", str(single), "--model", "gmf", "--l2", "5"), "gmf does not take l2"),
        (("--data", str(single), "--lr", "nan"), "learning_rate must be finite"),
        (("--data", str(single), "--model", "ease", "--fast"), "--fast: ease has no fast recipe"),
        # refused before the two pretraining runs (it used to train both first)
        (("--data", str(single), "--model", "neumf", "--pretrain", "--alpha", "2"), "--alpha"),
        (("--data", str(single), "--threads", "99999"), "--threads must be in"),
    ]
    for args, fragment in cases:
        _assert_one_line_error(run_cli("train", *args, "--out", out, "--no-progress"), fragment)


def test_offline_named_dataset_says_where_to_put_it(tmp_path):
    result = run_cli(
        "train",
        "--dataset",
        "ml-100k",
        "--no-download",
        "--no-progress",
        "--out",
        str(tmp_path / "o"),
        env={"TORCHCF_DATA_DIR": str(tmp_path / "cache")},
    )
    _assert_one_line_error(result, "put ml-100k.zip there")
    assert str(tmp_path / "cache") in result.stderr


def test_named_dataset_from_data_dir(tmp_path, tiny):
    cache = tmp_path / "cache" / "ml-100k"
    cache.mkdir(parents=True)
    rows = (tiny / "ratings.dat").read_text().replace("::", "\t")
    (cache / "u.data").write_text(rows)
    result = run_cli(
        "train",
        "--dataset",
        "ml-100k",
        "--out",
        str(tmp_path / "run"),
        *FAST,
        env={"TORCHCF_DATA_DIR": str(tmp_path / "cache")},
    )
    assert result.returncode == 0, result.stderr
    assert (
        json.loads((tmp_path / "run" / "metrics.json").read_text())["source"]["dataset"]
        == "ml-100k"
    )


def _settings(*argv: str, model: str, recipes: tuple[str, ...] = ()):
    from torchcf.cli.flags import overrides
    from torchcf.cli.main import build_parser
    from torchcf.training.config import applicable, recipe

    args = build_parser().parse_args(list(argv))
    return recipe(model, applicable(model, overrides(args)), recipes=recipes)


def test_flags_override_each_models_recipe():
    from torchcf.models.registry import SPECS

    mlp = _settings("train", "--data", "x", "--model", "mlp", "--epochs", "3", model="mlp")
    assert (mlp.train.epochs, mlp.train.batch_size, mlp.model_config.dropout) == (3, 256, 0.2)
    dropout = _settings("train", "--data", "x", "--dropout", "0.1", model="neumf")
    assert (dropout.model_config.dropout, dropout.train.epochs) == (0.1, 12)
    gmf = _settings("train", "--data", "x", "--epochs", "3", model="gmf")
    assert (gmf.train.epochs, gmf.train.batch_size, gmf.train.optimizer) == (3, 256, "adam")
    finetune = _settings("train", "--data", "x", model="neumf", recipes=("finetune",))
    assert (finetune.train.optimizer, finetune.train.learning_rate) == ("adam", 1e-5)
    given = _settings("compare", "--data", "x", "--out", "o", "--dropout", "0", model="mlp")
    assert given.model_config.dropout == 0.0 and given.split.validation is True
    seeded = _settings("train", "--data", "x", "--seed", "4", "-k", "5", model="ials")
    assert seeded.train.seed == seeded.split.seed == 4 and seeded.split.k == 5
    # a switch a recipe turns on can be turned off: --no-amp, --no-prefetch
    fast = {"model": "mlp", "recipes": ("fast",)}
    amp = _settings("train", "--data", "x", "--amp", **fast).train
    assert amp.amp is True and amp.batch_size == 16384
    off = _settings("train", "--data", "x", "--no-amp", "--no-prefetch", model="gmf")
    assert off.train.amp is False and off.train.prefetch is False
    fast_gmf = _settings("train", "--data", "x", "--no-prefetch", model="gmf", recipes=("fast",))
    assert fast_gmf.train.prefetch is False and SPECS["gmf"].recipes["fast"]["prefetch"] is True
    assert _settings("train", "--data", "x", "--no-amp", **fast).train.amp is False


def test_train_flags_are_exactly_the_settings_of_the_configs():
    """Every setting of every model, of training and of the split has one flag, and every other
    flag of ``train`` is one of the few that are not settings."""
    from torchcf.cli.flags import flag_of
    from torchcf.cli.main import build_parser
    from torchcf.data.split import SplitConfig
    from torchcf.models.registry import TRAINABLE, get_spec
    from torchcf.training.config import TrainConfig

    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]  # type: ignore[union-attr]
    dests = {a.dest for a in train._actions if a.option_strings}
    settings = set(SplitConfig.field_names()) | set(TrainConfig.field_names())
    for name in TRAINABLE:
        settings |= set(get_spec(name).config.field_names())
    others = {"help", "model", "fast", "pretrain", "pretrain_gmf", "pretrain_mlp", "alpha", "out"}
    others |= {"resume", "overwrite", "threads", "no_progress", "dataset", "data", "data_dir"}
    others |= {"no_download", "user_col", "item_col", "rating_col", "time_col", "sep"}
    others |= {"min_rating", "min_user_interactions", "allow_cold_items", "seeds", "split_seeds"}
    others |= {"nproc", "backend", "dist_timeout"}  # several processes (torch.distributed)
    assert dests - others == settings
    help_text = train.format_help()
    for name in settings:
        assert flag_of(name) in help_text, name
    # the flags people use keep their names
    for flag in ("--factors", "--lr", "--negatives", "--select", "--no-validation", "-k"):
        assert flag in help_text
