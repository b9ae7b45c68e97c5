"""The models that exist, on the published LightGCN-format splits, beside the paper's rows.

For each model, a small grid of settings is trained with ``torchcf train --mask train`` (the
LightGCN code's masking); the epoch and the setting are both chosen on the validation file's
NDCG@20 (the default selection metric for held-out sets), and the chosen run's test figures
are printed with its wall time and peak memory (``/usr/bin/time``). Nothing is chosen on test.

    python benchmarks/published_tables.py --data ../shared/data/lightgcn/lastfm --out /tmp/pt
    python benchmarks/published_tables.py --data ../shared/data/lightgcn/gowalla --out /tmp/pt

Run it alone: two torch processes on a 2-core machine slow each other.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

# the paper's rows (LightGCN++, RecSys 2024, supplementary Tables 9 and 10): R@10 N@10 R@40 N@40
PAPER = {
    "lastfm": {
        "BPR-MF": (0.1361, 0.1532, 0.2784, 0.2235),
        "NeuMF": (0.1498, 0.1688, 0.3065, 0.2457),
        "LightGCN": (0.1741, 0.1996, 0.3481, 0.2854),
        "LightGCN++": (0.1889, 0.2171, 0.3745, 0.3083),
        "NCL++ (best R@10, N@10)": (0.1894, 0.2177, 0.3754, 0.3093),
    },
    "gowalla": {
        "BPR-MF": (0.0895, 0.0899, 0.1950, 0.1238),
        "NeuMF": (0.0842, 0.0871, 0.1767, 0.1163),
        "LightGCN": (0.1182, 0.1284, 0.2364, 0.1640),
        "LightGCN++": (0.1219, 0.1321, 0.2448, 0.1693),
        "NCL++ (best)": (0.1234, 0.1331, 0.2490, 0.1712),
    },
}

DOT = ["--factors", "64", "--batch-size", "2048", "--negatives", "1"]
# LightGCN at the paper's settings (its defaults), trained until validation stops improving
LONG = ["--epochs", "1000", "--patience", "100"]
PLUS = ["--norm-alpha", "0.6", "--norm-beta", "-0.1", "--gamma", "0.2", "--unit-norm"]
BY_PAIR = ["--sample-by", "positive"]
COSINE = ["--lr-schedule", "cosine", "--eval-every", "10"]
VAE = ["--epochs", "200", "--patience", "50"]
# XSimGCL (Yu et al. 2023) in its authors' range: 2 layers, mean of E¹…E^K, ε = λ = τ = 0.2, l* 1
XSIM = ["--gamma", "0", "--layers", "2", "--noise", "0.2", "--contrast", "0.2"]
XSIM_PLUS = [*PLUS, "--noise", "0.2", "--contrast", "0.2", "--layers", "3"]  # on LightGCN++
MODEL_OF = {"lightgcn++": "lightgcn", "xsimgcl": "lightgcn"}  # settings of another model
GRIDS: dict[str, dict[str, list[list[str]]]] = {
    "lastfm": {
        "pop": [[]],
        "itemknn": [["--neighbours", str(n)] for n in (50, 200, 1000, 3000)],
        "ease": [["--l2", str(v)] for v in (50, 100, 200, 1000, 5000)],
        "ials": [
            ["--factors", "128", "--l2", str(l2), "--unobserved-weight", str(a)]
            for l2 in (0.003, 0.01, 0.03)
            for a in (0.02, 0.05, 0.1, 0.3)
        ],
        "bpr": [[*DOT, "--lr", str(lr), "--epochs", "60"] for lr in (0.001, 0.003)],
        "mf": [[*DOT, "--lr", str(lr), "--epochs", "60"] for lr in (0.001, 0.003)],
        # (every training pair once an epoch: the reference's user-uniform sampling, lightgcn's
        # default since, is run for LightGCN++ only; one thread each, two runs side by side)
        "lightgcn": [[*LONG, *BY_PAIR]],
        "lightgcn++": [
            [*PLUS, *LONG, *BY_PAIR],
            [*PLUS, *LONG, *BY_PAIR, "--layers", "2", "--threads", "1"],  # the ++ code's default
            [*PLUS, *LONG, "--threads", "1"],  # the reference's sampling
            [*PLUS, *LONG, "--layers", "2", "--threads", "1"],  # both
            [*PLUS, "--fast"],  # Gowalla's recipe as it is
            # the paper's rate and batch, decaying to 0 by a cosine (no noisy last epochs)
            [*PLUS, *COSINE, "--epochs", "800"],
            [*PLUS, *COSINE, "--epochs", "600", "--lr", "0.002"],
        ],
        "xsimgcl": [
            [*XSIM, "--epochs", "100", "--eval-every", "10"],
            [*XSIM_PLUS, "--epochs", "100", "--eval-every", "10"],
        ],
        "multvae": [VAE, ["--fast"]],  # (the paper's β schedule: β ≈ 0.004 after 800 steps)
    },
    "gowalla": {
        "pop": [[]],
        "itemknn": [["--neighbours", str(n)] for n in (200, 1000)],
        "ials": [
            ["--factors", "128", "--l2", str(l2), "--unobserved-weight", "0.1"]
            for l2 in (0.003, 0.01, 0.03)
        ],
        "bpr": [[*DOT, "--batch-size", "8192", "--lr", "0.003", "--epochs", "40"]],
        "mf": [[*DOT, "--batch-size", "8192", "--lr", "0.003", "--epochs", "40"]],
        "ease": [["--l2", str(v)] for v in (100, 500)],  # ~10 min a fit: last
        "lightgcn": [["--fast"]],  # (chosen on validation: benchmarks/RESULTS.md, issue 26)
        "lightgcn++": [
            [*PLUS, "--fast"],
            [*PLUS, "--fast", "--epochs", "400"],
            [*PLUS, "--fast", "--epochs", "400", "--layers", "2"],  # the ++ code's default
        ],
        "xsimgcl": [[*XSIM, "--epochs", "80", "--eval-every", "5", "--patience", "15"]],
        "multvae": [["--fast"]],  # (~32 min; the paper's settings: RESULTS.md, issue 26)
    },
}

KEYS = ("recall@10", "ndcg@10", "recall@20", "ndcg@20", "recall@40", "ndcg@40")


def run(torchcf: str, data: str, model: str, flags: list[str], out: Path) -> dict:
    """One ``torchcf train`` under ``/usr/bin/time``: its summary, wall seconds, peak KB (a
    finished run of the same command in ``out`` is read, not trained again)."""
    record = out.parent / f"{out.name}.json"  # (not with_suffix: names hold "0.1")
    if record.exists() and json.loads(record.read_text())["flags"] == flags:
        return json.loads(record.read_text())
    timing = out.parent / f"{out.name}.time"
    command = [
        "/usr/bin/time", "-f", "%e %M", "-o", str(timing), torchcf, "train", "--data", data,
        "--model", model, "--mask", "train", "--no-progress", "--overwrite", "--out", str(out),
        *flags,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed: {done.stderr.strip()[-400:]}")
    wall, peak = timing.read_text().split()[-2:]
    summary = json.loads((out / "metrics.json").read_text())
    result = {
        "model": model,
        "flags": flags,
        "epoch": summary["selected"]["epoch"],
        "validation_ndcg@20": summary["full_ranking"]["validation"]["ndcg@20"],
        "test": {k: summary["full_ranking"][k] for k in KEYS},
        "wall_s": float(wall),
        "peak_mb": int(peak) / 1024,
        "command": " ".join(command[5:]),
    }
    record.write_text(json.dumps(result))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--models", default="")
    parser.add_argument("--torchcf", default=str(Path(sys.executable).parent / "torchcf"))
    args = parser.parse_args()
    name = Path(args.data).name
    out = Path(args.out) / name
    out.mkdir(parents=True, exist_ok=True)
    chosen = []
    wanted = args.models.split(",") if args.models else list(GRIDS[name])
    for model in wanted:
        runs = [
            run(
                args.torchcf,
                args.data,
                MODEL_OF.get(model, model),
                flags,
                out / f"{model}-{'_'.join(flags) or 0}",
            )
            for flags in GRIDS[name][model]
        ]
        for r in runs:
            print(
                f"  {model} {' '.join(r['flags'])}: epoch {r['epoch']}, validation NDCG@20 "
                f"{r['validation_ndcg@20']:.4f}, {r['wall_s']:.1f} s",
                flush=True,
            )
        best = max(runs, key=lambda r: r["validation_ndcg@20"])
        chosen.append({**best, "label": model})
    (out / "chosen.json").write_text(json.dumps(chosen, indent=1))
    print(f"\n{name}, --mask train, test (settings and epoch chosen on validation NDCG@20)\n")
    print("| model | settings | R@10 | N@10 | R@20 | N@20 | R@40 | N@40 | wall s | peak MB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in chosen:
        figures = " | ".join(f"{r['test'][k]:.4f}" for k in KEYS)
        settings = " ".join(r["flags"]) + f" (epoch {r['epoch']})"
        print(
            f"| torchcf {r['label']} | {settings} | {figures} | {r['wall_s']:.1f} | "
            f"{r['peak_mb']:.0f} |"
        )
    for row, (r10, n10, r40, n40) in PAPER[name].items():
        print(f"| paper: {row} | | {r10:.4f} | {n10:.4f} | | | {r40:.4f} | {n40:.4f} | | |")


if __name__ == "__main__":
    main()
