"""Typed settings: frozen dataclasses whose fields carry their help, flag and check.

Every configurable thing (each model's ``Config``, ``TrainConfig``, ``SplitConfig``) is a
``Settings`` subclass whose fields are declared with ``setting(...)``. The same declaration gives
the default, the validation (run once, in the constructor), the command-line flag and its help
text (``torchcf.cli.flags`` generates the flags from it), and the JSON round trip.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar, TypeVar

from torchcf.errors import ConfigError

__all__ = [
    "Settings",
    "above",
    "at_least",
    "below_one",
    "between",
    "non_negative",
    "one_of",
    "positive",
    "setting",
    "unit_interval",
]

Check = Callable[[Any], str | None]  # the problem with a value, in words, or None
S = TypeVar("S", bound="Settings")


def setting(
    default: Any,
    help: str,
    *,
    flag: str | None = None,
    check: Check | None = None,
    choices: tuple[Any, ...] | None = None,
) -> Any:
    """A settings field: its default, one line of help, the flag (default ``--field-name``), a
    check returning what is wrong with a value (or None), and the allowed ``choices``."""
    if choices is not None and check is None:
        check = one_of(*choices)
    metadata = {"help": help, "flag": flag, "check": check, "choices": choices}
    return dataclasses.field(default=default, metadata=metadata)


def positive(value: Any) -> str | None:
    return None if value > 0 else f"must be positive, got {value}"


def non_negative(value: Any) -> str | None:
    return None if value >= 0 else f"must be non-negative, got {value}"


def at_least(low: float) -> Check:
    def check(value: Any) -> str | None:
        return None if value >= low else f"must be at least {low}, got {value}"

    return check


def between(low: float, high: float) -> Check:
    """``[low, high]``: a count with a sane ceiling (a huge value is a typo, not a plan)."""

    def check(value: Any) -> str | None:
        return None if low <= value <= high else f"must be in [{low}, {high}], got {value}"

    return check


def above(low: float, high: float) -> Check:
    """``(low, high]``: a positive quantity with a sane ceiling."""

    def check(value: Any) -> str | None:
        return None if low < value <= high else f"must be in ({low}, {high}], got {value}"

    return check


def below_one(value: Any) -> str | None:
    """``[0, 1)``: a probability that cannot be 1 (dropout, Adam's β)."""
    return None if 0.0 <= value < 1.0 else f"must be in [0, 1), got {value}"


def unit_interval(value: Any) -> str | None:
    return None if 0.0 <= value <= 1.0 else f"must be in [0, 1], got {value}"


def one_of(*allowed: Any) -> Check:
    def check(value: Any) -> str | None:
        if value in allowed:
            return None
        return f"must be one of {', '.join(map(str, allowed))}, got {value!r}"

    return check


def _type_problem(kind: str, value: Any) -> str | None:
    """What is wrong with ``value`` for a field annotated ``kind`` (``int``, ``float | None``)."""
    if value is None:
        return None if "None" in kind else "must be given"
    base = kind.split("|")[0].strip()
    if base == "bool":
        return None if isinstance(value, bool) else f"must be true or false, got {value!r}"
    if base == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
        return None if ok else f"must be an integer, got {value!r}"
    if base == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"must be a number, got {value!r}"
        return None if math.isfinite(value) else f"must be finite, got {value}"
    if base == "str":
        return None if isinstance(value, str) else f"must be text, got {value!r}"
    return None


@dataclasses.dataclass(frozen=True)
class Settings:
    """Base of every typed config: validated on construction, JSON round trip, ``replace``."""

    # what the settings are of, for messages ("gmf", "training", "the split")
    owner: ClassVar[str] = "settings"

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
            if isinstance(value, int) and not isinstance(value, bool) and kind.startswith("float"):
                value = float(value)  # JSON and flags give 3 for 3.0
                object.__setattr__(self, f.name, value)
            problem = _type_problem(kind, value)
            check = f.metadata.get("check")
            if problem is None and check is not None and value is not None:
                problem = check(value)
            if problem is not None:
                raise ConfigError(f"{self.owner}: {f.name} {problem}")

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def fields(cls) -> Iterator[dataclasses.Field[Any]]:
        yield from dataclasses.fields(cls)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[S], values: Mapping[str, Any]) -> S:
        """Settings from a mapping; a key that is not a field is an error naming it."""
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            raise ConfigError(
                f"{cls.owner} does not take {', '.join(unknown)} "
                f"(it takes {', '.join(cls.field_names()) or 'nothing'})"
            )
        return cls(**values)

    def replace(self: S, **changes: Any) -> S:
        return type(self).from_dict({**self.to_dict(), **changes})
