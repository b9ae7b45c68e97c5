"""``torchcf recommend RUN --all-users`` on trained runs: the whole command's time and peak
memory, and its lists checked against ``Recommender.recommend(user)`` for sampled users.

    .venv/bin/python benchmarks/all_users.py RUN [RUN ...] [-k 10] [--check 500]

Run it alone (another torch process on the two cores distorts the times).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from catalogue_scale import child  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--check", type=int, default=500, help="users compared one at a time")
    args = parser.parse_args()
    from torchcf.serving.recommender import Recommender

    with tempfile.TemporaryDirectory() as tmp:
        for run in args.runs:
            out = Path(tmp) / "recs.parquet"
            command = [sys.executable, "-m", "torchcf", "recommend", run, "--all-users"]
            seconds, peak = child([*command, "--out", str(out), "-k", str(args.k), "--overwrite"])
            table = pd.read_parquet(out)
            rec = Recommender.load(run)
            rng = np.random.default_rng(0)
            users = rng.choice(rec.user_map.ids, size=min(args.check, len(rec.user_map.ids)))
            mismatched = 0
            for user in users:
                ids, _ = rec.recommend(user, k=args.k)
                mine = table[table["user"] == user].sort_values("rank")["item"].to_numpy()
                mismatched += not np.array_equal(mine, ids[: len(mine)]) or len(mine) != len(ids)
            print(
                f"{rec.name:8s} {run}: {table['user'].nunique():,} users x top {args.k} "
                f"({len(table):,} rows) in {seconds:.1f} s, peak {peak:.2f} GB (whole command); "
                f"{len(users)} sampled users equal to recommend --user: "
                f"{len(users) - mismatched}/{len(users)}"
            )


if __name__ == "__main__":
    main()
