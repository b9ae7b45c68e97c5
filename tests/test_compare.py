"""compare on a tiny dataset: the three files, table = results.json, reuse, failures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import tiny_rows, write_ml1m
from torchcf.data.sources import DataSpec
from torchcf.errors import ConfigError
from torchcf.models.registry import SPECS
from torchcf.runs.compare import run_compare


@pytest.fixture()
def spec(tmp_path):
    write_ml1m(tmp_path / "ratings.dat", tiny_rows(num_users=14, num_items=24, per_user=7))
    return DataSpec(path=str(tmp_path / "ratings.dat"))


CONFIG = {"embedding_dim": 4, "layers": 2, "epochs": 2, "batch_size": 64, "eval_negatives": 8}


def test_compare_writes_report_curves_and_results(spec, tmp_path):
    out = tmp_path / "cmp"
    logs: list[str] = []
    report = run_compare(
        spec,
        CONFIG,
        ["mf", "gmf", "mlp", "neumf", "neumf-pre"],
        out,
        progress=False,
        echo=logs.append,
        command=["torchcf", "compare"],
    )
    assert not report["failed"]
    for name in ("report.md", "curves.png", "results.json"):
        assert (out / name).is_file()
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    results = json.loads((out / "results.json").read_text())
    table = (out / "report.md").read_text()
    for key, row in results["models"].items():
        line = next(line for line in table.splitlines() if line.startswith(f"| {key} |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[1] == row["selected_by"] == "validation"
        assert int(cells[2]) == row["selected_epoch"]
        assert float(cells[3]) == pytest.approx(row["hr@10"], abs=5e-5)
        assert float(cells[4]) == pytest.approx(row["ndcg@10"], abs=5e-5)
        assert float(cells[6]) == pytest.approx(row["best_test_hr@10"], abs=5e-5)
        assert float(cells[8]) == pytest.approx(row["full_hr@10"], abs=5e-5)
        assert int(cells[13].replace(",", "")) == row["parameters"]
    assert "## Protocol" in table and "torchcf compare" in table and "torch:" in table
    # each model's recipe under the explicit settings (CONFIG)
    settings = results["settings"]
    assert {s["batch_size"] for s in settings.values()} == {64}
    assert settings["mlp"]["dropout"] == settings["neumf"]["dropout"] == 0.2
    assert "dropout" not in settings["gmf"] and settings["gmf"]["optimizer"] == "adam"
    finetune = (settings["neumf-pre"]["optimizer"], settings["neumf-pre"]["learning_rate"])
    assert finetune == ("adam", 1e-5) and settings["neumf-pre"]["epochs"] == 2
    assert "- mlp: " in table and "dropout=0.2" in table
    # neumf-pre started from this compare's own gmf and mlp runs
    neumf_pre = json.loads((out / "runs" / "neumf-pre" / "config.json").read_text())
    assert neumf_pre["pretrained"]["gmf"] == str(out / "runs" / "gmf")

    logs.clear()
    again = run_compare(spec, CONFIG, ["mf", "neumf-pre"], out, progress=False, echo=logs.append)
    assert sum("reusing" in line for line in logs) == 4  # mf, gmf, mlp, neumf-pre
    assert not any(line.startswith("epoch ") for line in logs)  # nothing retrained
    assert again["models"]["mf"] == results["models"]["mf"]


def test_a_failing_model_keeps_the_others(spec, tmp_path, monkeypatch):
    import torchcf.runs.compare as compare

    real = compare.ensure_run

    def broken(spec_, config, out, **options):
        if config.model == "mlp":
            raise RuntimeError("simulated crash")
        return real(spec_, config, out, **options)

    monkeypatch.setattr(compare, "ensure_run", broken)
    report = run_compare(
        spec, CONFIG, ["gmf", "mlp"], tmp_path / "c", progress=False, echo=lambda _: None
    )
    assert list(report["models"]) == ["gmf"]
    assert "simulated crash" in report["failed"]["mlp"]
    assert "simulated crash" in (tmp_path / "c" / "report.md").read_text()


def test_unknown_model_and_settings_no_model_takes(spec, tmp_path):
    with pytest.raises(ConfigError, match="unknown model"):
        run_compare(spec, CONFIG, ["gmf", "bert4rec"], tmp_path / "c")
    with pytest.raises(ConfigError, match="no compared model takes l2"):
        run_compare(spec, {**CONFIG, "l2": 5.0}, ["gmf", "mlp"], tmp_path / "c")
    with pytest.raises(ConfigError, match="alpha"):
        run_compare(spec, CONFIG, ["neumf-pre"], tmp_path / "c", alpha=2.0)
    assert not (tmp_path / "c").exists()  # refused before anything was trained


def test_compare_fast_applies_each_models_fast_recipe(spec, tmp_path):
    """``compare --fast``: each model's fast recipe (every setting of it, explicit settings on
    top), none for a model without one, the report naming them; neumf-pre is fine-tuned by
    ``fast-finetune`` from the compare's own fast MLP and a GMF trained by its fast recipe (and
    ``fast-pretrain``, here overridden by the explicit epochs)."""
    out = tmp_path / "fast"
    given = {"embedding_dim": 4, "layers": 2, "eval_negatives": 8, "epochs": 1}
    models = ["mf", "mlp", "ease", "neumf-pre"]
    report = run_compare(spec, given, models, out, fast=True, progress=False, echo=print)
    assert not report["failed"]
    assert report["recipes"] == {
        "mf": ["fast"],
        "mlp": ["fast"],
        "ease": [],
        "neumf-pre": ["finetune", "fast-finetune"],
    }

    def ran(run):  # the settings a run directory records
        config = json.loads((run / "config.json").read_text())
        return {**config["train"], **config["model_config"]}

    for key in ("mf", "mlp", "neumf-pre"):
        names = report["recipes"][key]
        wanted = {**SPECS["neumf" if key == "neumf-pre" else key].recipes[names[-1]], "epochs": 1}
        settings = ran(out / "runs" / key)
        assert {name: settings[name] for name in wanted} == wanted, key
        assert report["settings"][key] | wanted == report["settings"][key]
    pretrained = json.loads((out / "runs" / "neumf-pre" / "config.json").read_text())["pretrained"]
    assert pretrained["mlp"] == str(out / "runs" / "mlp")  # the compare's own fast MLP
    gmf = ran(Path(pretrained["gmf"]))
    fast_gmf = {**SPECS["gmf"].recipes["fast"], "epochs": 1}
    assert {name: gmf[name] for name in fast_gmf} == fast_gmf
    assert report["pretrain_recipes"] == {"gmf": ["fast", "fast-pretrain"], "mlp": ["fast"]}
    assert "gmf (fast + fast-pretrain recipe)" in (out / "report.md").read_text()
