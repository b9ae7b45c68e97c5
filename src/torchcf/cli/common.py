"""What the command modules share: the error-exiting parser, torch set-up, id lists, tables."""

from __future__ import annotations

import argparse
import json
import sys
from typing import NoReturn

from torchcf.errors import TorchcfError

__all__ = ["Parser", "command_line", "id_list", "print_rows", "setup_torch"]


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def setup_torch(args: argparse.Namespace) -> None:
    import torch

    if not 0 <= args.threads <= 4096:
        raise TorchcfError(f"--threads must be in [0, 4096], got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # Adam's moments of rarely-seen rows decay into denormals


def command_line() -> list[str]:
    return ["torchcf", *sys.argv[1:]]


def id_list(text: str, flag: str) -> list[str]:
    ids = [part.strip() for part in text.split(",") if part.strip()]
    if not ids:
        raise TorchcfError(f"{flag} needs at least one id")
    return ids


def print_rows(header: dict[str, object], rows: list[dict[str, object]], as_json: bool) -> None:
    if as_json:
        print(json.dumps({**header, "items": rows}))
        return
    shown = "  ".join(f"{key} {value}" for key, value in header.items() if value is not None)
    print(shown or "new user (fold-in from the given items)")
    titled = any(row["title"] is not None for row in rows)
    width = max([len(str(row["item"])) for row in rows] + [4])
    print(f"{'rank':>4}  {'item':>{width}}  {'score':>8}" + ("  title" if titled else ""))
    for rank, row in enumerate(rows, start=1):
        line = f"{rank:>4}  {row['item']!s:>{width}}  {row['score']:>8.4f}"
        print(line + (f"  {row['title'] or ''}" if titled else ""))
