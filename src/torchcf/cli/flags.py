"""Flags shared by the commands: the data flags, and the settings flags generated from the
typed configs (every model's ``Config``, ``TrainConfig``, ``SplitConfig``).

A setting's flag, type, choices and help come from its field (``torchcf.settings.setting``);
a setting several configs share (``embedding_dim``, ``seed``, ``l2``) is one flag, whose help
lists each model's default. Parsed defaults are None ("not given"): each model's recipe fills
what the user left out, so a flag given explicitly always wins.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
from collections.abc import Iterable
from typing import Any

from torchcf.data.sources import DataSpec
from torchcf.data.split import SplitConfig, parse_cutoffs
from torchcf.models.registry import TRAINABLE, get_spec
from torchcf.settings import Settings
from torchcf.training.config import TrainConfig, recipe, takes

__all__ = [
    "add_data_flags",
    "add_setting_flags",
    "data_spec",
    "flag_of",
    "overrides",
    "setting_fields",
]


def setting_fields() -> dict[str, dataclasses.Field[Any]]:
    """Every setting by name, once: the split's, training's, then each model's own."""
    configs: list[type[Settings]] = [SplitConfig, TrainConfig]
    configs += [get_spec(name).config for name in TRAINABLE]
    fields: dict[str, dataclasses.Field[Any]] = {}
    for config in configs:
        for f in config.fields():
            fields.setdefault(f.name, f)
    return fields


def flag_of(name: str) -> str:
    """The command-line flag of setting ``name`` (``learning_rate``: ``--lr``)."""
    f = setting_fields()[name]
    if f.metadata.get("flag"):
        return str(f.metadata["flag"])
    if f.default is True:
        return "--no-" + name.replace("_", "-")
    return "--" + name.replace("_", "-")


def _kind(f: dataclasses.Field[Any]) -> Any:
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "str")
    return {"int": int, "float": float}.get(kind.split("|")[0].strip(), str)


@functools.cache
def _defaults(model: str) -> dict[str, Any]:
    """Every setting's default for ``model`` (its recipe with nothing given): once per model."""
    return recipe(model).settings()


def _help(name: str, models: Iterable[str]) -> str:
    """The setting's help per distinct text, each with its default and the models that differ."""
    groups: dict[str, dict[str, Any]] = {}
    for model in models:
        if not takes(model, name):
            continue
        f = dataclasses.fields(_owner(model, name))
        text = next(x.metadata.get("help", "") for x in f if x.name == name)
        groups.setdefault(text, {})[model] = _defaults(model)[name]
    parts = []
    for text, defaults in groups.items():
        values = list(defaults.values())
        common = max(values, key=values.count)
        others = ", ".join(f"{m}: {v}" for m, v in defaults.items() if v != common)
        default = f"default {common}" + (f"; {others}" if others else "")
        if isinstance(common, bool):
            default = ", ".join(m for m, v in defaults.items() if v) or "off by default"
            default = "on for " + default if any(values) else default
        parts.append(f"{text} ({default})")
    taking = [m for m in TRAINABLE if takes(m, name)]
    scope = "" if len(taking) == len(TRAINABLE) else f" [{', '.join(taking)}]"
    return "; ".join(parts) + scope


def _owner(model: str, name: str) -> type[Settings]:
    for config in (get_spec(model).config, TrainConfig, SplitConfig):
        if name in config.field_names():
            return config
    raise KeyError(name)


def add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per setting of any trainable model, in groups: evaluation, training, model."""
    groups: dict[type[Settings], Any] = {
        SplitConfig: parser.add_argument_group("split and evaluation"),
        TrainConfig: parser.add_argument_group("training"),
    }
    models = parser.add_argument_group("model settings (each model takes its own)")
    for name, f in setting_fields().items():
        group = next((g for c, g in groups.items() if name in c.field_names()), models)
        flag = flag_of(name)
        flags = [flag, "--" + flag[1:]] if len(flag) == 2 else [flag]
        help = _help(name, TRAINABLE)
        if isinstance(f.default, bool):
            # off by default: --amp and --no-amp (a recipe may turn it on); on: --no-validation
            action: Any = "store_false" if f.default else argparse.BooleanOptionalAction
            group.add_argument(*flags, dest=name, action=action, default=None, help=help)
            continue
        choices = f.metadata.get("choices")
        group.add_argument(
            *flags,
            dest=name,
            type=_cut_offs if name == "k" else _kind(f),
            choices=list(choices) if choices else None,
            default=None,
            metavar=None if choices else name.upper(),
            help=help,
        )


def _cut_offs(text: str) -> str:
    """``-k``: one cut-off or several (``10,20,40``)."""
    try:
        parse_cutoffs(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a cut-off in [1, 100000] or several separated by commas, got {text!r}"
        ) from None
    return text


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the user gave on the command line. ``-k 10,20,40``: the first is the
    cut-off of sampled metrics, all are held-out sets' cut-offs (unless ``--cutoffs``)."""
    given = {
        name: getattr(args, name)
        for name in setting_fields()
        if getattr(args, name, None) is not None
    }
    if isinstance(given.get("k"), str):
        text = given["k"]
        given["k"] = parse_cutoffs(text)[0]
        given.setdefault("cutoffs", text)
    return given


def add_data_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    source = group.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--dataset",
        metavar="NAME",
        help="a named dataset, downloaded on first use: ml-1m, ml-100k",
    )
    source.add_argument(
        "--data",
        metavar="PATH",
        help="an NCF split directory, a MovieLens ratings.dat/u.data (or its "
        "directory), or a CSV/TSV/Parquet table",
    )
    group.add_argument(
        "--data-dir",
        metavar="DIR",
        help="where named datasets are stored (default: $TORCHCF_DATA_DIR or ~/.cache/torchcf)",
    )
    group.add_argument("--no-download", action="store_true", help="never download; fail instead")
    group.add_argument("--user-col", default="user", help="table column of user ids (default user)")
    group.add_argument("--item-col", default="item", help="table column of item ids (default item)")
    group.add_argument("--rating-col", help="table column of ratings (optional)")
    group.add_argument("--time-col", help="table column of timestamps (optional)")
    group.add_argument("--sep", help="field separator of a CSV/TSV table (default by extension)")
    group.add_argument(
        "--min-rating", type=float, help="count only ratings ≥ this as positive interactions"
    )
    group.add_argument(
        "--allow-cold-items",
        action="store_true",
        help="NCF files: accept test items and negatives that the training file never names",
    )
    group.add_argument(
        "--min-user-interactions",
        type=int,
        default=0,
        metavar="N",
        help="drop users with fewer than N distinct items before splitting",
    )


def data_spec(args: argparse.Namespace) -> DataSpec:
    """The ``DataSpec`` of the data flags (``--data`` is its path, ``--no-download`` the
    opposite of its download; every other flag has its field's name)."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(DataSpec) if f.name in args}
    return DataSpec(**{**given, "path": args.data, "download": not args.no_download})


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of every training command: data, settings, threads, progress."""
    add_data_flags(parser)
    add_setting_flags(parser)
    parser.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (default: torch's)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_seed_flags(parser: argparse.ArgumentParser) -> None:
    """``--seeds`` and ``--split-seeds``: train once per seed and report the spread."""
    group = parser.add_argument_group("seeds")
    group.add_argument(
        "--seeds",
        metavar="N|S,S,...",
        help="train once per seed (5: seeds 0..4; 0,3,7: those) and report every metric as "
        "mean ± std with a 95%% CI over seeds, and each pair's test over seeds; the split stays "
        "fixed at --split-seed/--seed (default 0)",
    )
    group.add_argument(
        "--split-seeds",
        action="store_true",
        help="with --seeds: vary the split's seed with the model's",
    )


__all__ += ["add_run_flags", "add_seed_flags"]
