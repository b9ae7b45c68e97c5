"""``torchcf`` command line: a thin shell that parses flags and calls the library and the run
layer; one module per command.

User errors (bad files, unknown ids, impossible options) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from torchcf.cli import blend, compare, evaluate, export, recommend, serve, train, tune
from torchcf.cli.common import Parser
from torchcf.errors import TorchcfError

__all__ = ["build_parser", "main"]

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "train": train.run,
    "compare": compare.run,
    "tune": tune.run,
    "blend": blend.run,
    "evaluate": evaluate.run,
    "recommend": recommend.recommend,
    "similar": recommend.similar,
    "index": recommend.index,
    "serve": serve.run,
    "export": export.run,
}


def build_parser() -> argparse.ArgumentParser:
    from torchcf import __version__

    parser = Parser(prog="torchcf", description="Collaborative filtering from implicit feedback.")
    parser.add_argument("--version", action="version", version=f"torchcf {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for module in (train, compare, tune, blend, evaluate):
        module.add_parser(sub)
    recommend.add_parsers(sub)
    serve.add_parser(sub)
    export.add_parser(sub)
    return parser


def _tame_malloc() -> None:
    """Fix glibc's malloc thresholds for this process (Linux only; a no-op elsewhere).

    With its default *dynamic* mmap threshold, glibc serves the tower models' ~100 KB–100 MB
    temporaries from a heap it then cannot trim: full-ranking evaluation of an MLP/NeuMF on
    ML-1M grew to 4–15 GB RSS (480 MB with fixed thresholds; benchmarks/RESULTS.md). The mmap
    threshold is 32 MB: below it, the towers' evaluation blocks (a few MB, allocated thousands
    of times an evaluation) are reused from the heap instead of mapped and faulted in afresh
    each time, which made evaluation 2-3x slower with a 1 MB threshold (issue 17).
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not sys.platform.startswith("linux") or name is None:
        return
    try:
        libc = ctypes.CDLL(name)
        m_trim_threshold, m_mmap_threshold = -1, -3
        libc.mallopt(m_mmap_threshold, 1 << 25)
        libc.mallopt(m_trim_threshold, 1 << 27)
    except (OSError, AttributeError):  # not glibc
        return


def _printable(message: str) -> str:
    """``message`` on one line: control characters (from ids, paths) escaped, not printed."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)


def main(argv: Sequence[str] | None = None) -> int:
    _tame_malloc()
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except TorchcfError as exc:
        print(f"torchcf: error: {_printable(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("torchcf: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # unwritable output directory, full disk, ...
        where = f": {exc.filename}" if exc.filename else ""
        print(f"torchcf: error: {_printable(f'{exc.strerror or exc}{where}')}", file=sys.stderr)
        return 2
