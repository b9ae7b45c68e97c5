"""Typed settings: validation, per-model configs and recipes, the JSON round trip, and that an
option a model does not take is an error (never dropped)."""

from __future__ import annotations

import json
import math

import pytest

from torchcf import native
from torchcf.data.split import SplitConfig
from torchcf.errors import ConfigError
from torchcf.models.registry import SPECS, TRAINABLE, build_model
from torchcf.runs.train import pretrain_names, pretrain_recipe, recipe_names
from torchcf.training.config import Recipe, TrainConfig, recipe, takes


def test_fast_recipe():
    fast = recipe("gmf", recipes=("fast",))
    assert fast.train.batch_size == SPECS["gmf"].recipes["fast"]["batch_size"]
    assert fast.train.lr_schedule == "cosine" and fast.train.learning_rate == 0.03
    assert recipe("mf", recipes=("fast",)).train.learning_rate == 0.01
    assert recipe("gmf", {"epochs": 3}, recipes=("fast",)).train.epochs == 3  # explicit flags win
    listed = "fast recipe exists for mf, gmf, mlp, neumf, lightgcn and multvae, not"
    with pytest.raises(ConfigError, match=listed):
        recipe("ease", recipes=("fast",))
    # the towers' fast recipes take bfloat16 products where the CPU multiplies them natively
    for model in ("mlp", "neumf"):
        assert recipe(model, recipes=("fast",)).train.amp is native.bf16_products()
    assert recipe("gmf", recipes=("fast",)).train.amp is False


@pytest.mark.parametrize("key", ["mf", "gmf", "mlp", "neumf", "neumf-pre", "multvae"])
def test_what_fast_applies(key):
    """``--fast`` (train and compare) applies the model's fast recipe, every setting of it,
    on top of its own defaults; a setting given explicitly wins; neumf-pre is fine-tuned by
    ``fast-finetune`` from parts trained by their own fast recipes."""
    model = "neumf" if key == "neumf-pre" else key
    names = recipe_names(key, fast=True)
    assert names == (("finetune", "fast-finetune") if key == "neumf-pre" else ("fast",))
    assert recipe_names(key) == names[:-1]  # without --fast
    wanted = SPECS[model].recipes[names[-1]]
    settings = recipe(model, recipes=names).settings()
    assert {name: settings[name] for name in wanted} == wanted
    slow = recipe(model, recipes=names[:-1]).settings()
    assert any(slow[name] != value for name, value in wanted.items())  # it changes something
    explicit = recipe(model, {"epochs": 3, "batch_size": 77}, recipes=names).train
    assert (explicit.epochs, explicit.batch_size) == (3, 77)
    assert recipe_names("ease", fast=True) == ()  # no fast recipe: compare trains it as it is
    if key == "neumf-pre":
        for part in ("gmf", "mlp"):
            given = {"epochs": 2, "learning_rate": 0.5}  # fine-tuning's rate is not the parts'
            part_recipe = pretrain_recipe(part, given, fast=True)
            fast = SPECS[part].recipes["fast"]
            assert part_recipe.train.batch_size == fast["batch_size"]
            assert part_recipe.train.learning_rate == fast["learning_rate"]
            assert part_recipe.train.epochs == 2
        # without explicit settings the GMF part takes fast-pretrain on top of its fast recipe
        assert pretrain_names("gmf", fast=True) == ("fast", "fast-pretrain")
        assert pretrain_names("mlp", fast=True) == ("fast",)
        assert pretrain_names("gmf") == pretrain_names("mlp") == ()
        gmf_part = pretrain_recipe("gmf", {}, fast=True).settings()
        wanted = {**SPECS["gmf"].recipes["fast"], **SPECS["gmf"].recipes["fast-pretrain"]}
        assert {name: gmf_part[name] for name in wanted} == wanted
        assert gmf_part["epochs"] != SPECS["gmf"].recipes["fast"]["epochs"]
        assert pretrain_recipe("mlp", {}, fast=True) == recipe("mlp", recipes=("fast",))


def test_settings_are_validated_with_the_field_named():
    with pytest.raises(ConfigError, match="beta1"):
        TrainConfig(beta1=1.0)
    with pytest.raises(ConfigError, match="lr_schedule"):
        TrainConfig(lr_schedule="step")
    with pytest.raises(ConfigError, match="learning_rate must be finite"):
        TrainConfig(learning_rate=math.inf)
    with pytest.raises(ConfigError, match="epochs must be an integer"):
        TrainConfig(epochs=2.5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="validation must be true or false"):
        SplitConfig(validation="yes")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="dropout must be in"):
        recipe("mlp", {"dropout": 1.0})
    with pytest.raises(ConfigError, match=r"ease: l2 must be in \(0, "):
        recipe("ease", {"l2": 0.0})
    assert TrainConfig(learning_rate=1).learning_rate == 1.0  # JSON's 1 for 1.0


def test_a_setting_the_model_does_not_take_is_an_error_naming_both():
    with pytest.raises(ConfigError, match="gmf does not take l2"):
        recipe("gmf", {"l2": 100.0})
    with pytest.raises(ConfigError, match="ease does not take learning_rate"):
        recipe("ease", {"learning_rate": 0.1})  # a closed form has no learning rate
    with pytest.raises(ConfigError, match="gmf does not take biases"):
        build_model("gmf", 5, 5, biases=True)
    with pytest.raises(ConfigError, match="mf does not take dropout"):
        build_model("mf", 5, 5, dropout=0.1)
    assert takes("mf", "biases") and not takes("gmf", "biases") and takes("ials", "seed")


def test_each_model_owns_its_defaults():
    assert recipe("mlp").model_config.dropout == 0.2 and recipe("mlp").train.epochs == 20
    assert recipe("neumf").train.epochs == 12
    assert recipe("ials").model_config.solver == "cg" and recipe("ials").train.epochs == 15
    assert recipe("ease").model_config.l2 == 500.0 and recipe("ials").model_config.l2 == 0.002
    assert recipe("bpr").train.loss == "bpr"
    assert recipe("gmf").train == TrainConfig()  # the seed's settings
    tuned = recipe("neumf", {"epochs": 5}, recipes=("finetune",))
    assert (tuned.train.learning_rate, tuned.train.epochs) == (1e-5, 5)


@pytest.mark.parametrize("name", list(TRAINABLE))
def test_every_spec_names_only_settings_its_model_takes(name):
    spec = SPECS[name]
    named = set(spec.defaults) | set(spec.search)
    for values in spec.recipes.values():
        named |= set(values)
    assert all(takes(name, setting) for setting in named), named
    assert spec.model.Config is spec.config and spec.model.name == name


@pytest.mark.parametrize("name", list(TRAINABLE))
def test_recipes_round_trip_through_json(name):
    original = recipe(name, {"seed": 3, "k": 5})
    again = Recipe.from_dict(json.loads(json.dumps(original.to_dict())))
    assert again == original and again.split.seed == again.train.seed == 3
    assert again.replace(epochs=2).train.epochs == 2
    model = build_model(name, 6, 7, seed=0, config=again.model_config)
    assert model.config == again.model_config  # the model is built from exactly these settings


def test_selecting_by_validation_needs_the_validation_holdout():
    with pytest.raises(ConfigError, match="validation"):
        recipe("gmf", {"select_by": "validation", "validation": False})


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        ({"epochs": 10**30}, "epochs must be in [1, 100000]"),
        ({"seed": -1}, "seed must be in [0,"),
        ({"seed": 2**70}, "seed must be in [0,"),
        ({"embedding_dim": 10**9}, "embedding_dim must be in"),
        ({"num_negatives": 10**12}, "num_negatives must be in"),
        ({"eval_negatives": -5}, "eval_negatives must be in"),
        ({"k": 0}, "k must be in"),
        ({"weight_decay": -1e30}, "weight_decay must be in [0, 1000000.0]"),
        ({"weight_decay": 1e20}, "weight_decay must be in"),
        ({"learning_rate": 1e20}, "learning_rate must be in (0, 1000.0]"),
        ({"learning_rate": float("nan")}, "learning_rate must be finite"),
        ({"beta2": float("inf")}, "beta2 must be finite"),
        ({"layers": 10**6}, "layers must be in"),
    ],
)
def test_huge_and_non_finite_settings_are_refused(settings, fragment):
    with pytest.raises(ConfigError) as error:
        recipe("mlp", settings)
    assert fragment in str(error.value)
