"""The page ``torchcf serve`` answers ``GET /`` with: one HTML document with its style and script
inline (``static/page.html``, ``page.css``, ``page.js``: nothing fetched from elsewhere, no build
step). The script reads the same JSON API as any client (``/explore/*``, ``/recommend``,
``/similar``, ``/model``) and writes every value with ``textContent`` (never as HTML). Views by URL
fragment: ``#user/ID``, ``#new``, ``#item/ID``, ``#run``; every control is a link, button or field,
so the keyboard alone works it."""

from __future__ import annotations

import functools
import html
from importlib import resources

__all__ = ["page"]


@functools.cache
def _asset(name: str) -> str:
    return (resources.files("torchcf.serving") / "static" / name).read_text(encoding="utf-8")


def page(model: str) -> str:
    """The whole page, for a model named ``model``."""
    return (
        _asset("page.html")
        .replace("{{style}}", _asset("page.css"))
        .replace("{{script}}", _asset("page.js"))
        .replace("{{model}}", html.escape(model))
    )
