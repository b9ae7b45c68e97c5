"""User-facing errors: one class whose message is printed as a single line by the CLI."""

from __future__ import annotations


class TorchcfError(Exception):
    """An error caused by the user's input (files, ids, options), not by a bug.

    The CLI prints ``error: <message>`` on one line and exits with status 2; library callers can
    catch it like any other exception.
    """


class DataError(TorchcfError, ValueError):
    """Malformed, empty or inconsistent data."""


class ConfigError(TorchcfError, ValueError):
    """An impossible or contradictory option."""


class UnknownIdError(DataError, KeyError):
    """An external user or item id the model does not know (HTTP 404 when served)."""

    def __init__(self, what: str, value: object) -> None:
        super().__init__(f"unknown {what} {value!r}")
        self.what = what
        self.value = value

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])
