#!/usr/bin/env bash
# Issue 15's recorded comparisons on the NCF split (benchmarks/RESULTS.md): MF vs GMF over five
# seeds, the five NCF models over three seeds (reusing MF's and GMF's runs of seeds 0-2), and
# the best blend (iALS 512 + EASE + GMF) against its best part (iALS 512), paired over users.
# usage: bash benchmarks/significance.sh [DATA] [OUT]   (about 70 minutes on 2 cores)
set -euo pipefail
data=${1:-../shared/data/ml-1m/ncf}
out=${2:-/tmp/significance}
cf=${TORCHCF:-.venv/bin/torchcf}
mkdir -p "$out"
timed() { /usr/bin/time -f "%e s %M KB" "$@"; }

timed "$cf" compare --data "$data" --models mf,gmf --seeds 5 --out "$out/compare" --no-progress
mkdir -p "$out/mf-gmf"  # the five-model compare below rewrites the report files
cp "$out"/compare/{report.md,results.json,curves.png,differences.png} "$out/mf-gmf/"
timed "$cf" compare --data "$data" --models mf,gmf,mlp,neumf,neumf-pre --seeds 3 \
    --out "$out/compare" --no-progress

timed "$cf" train --data "$data" --no-progress --overwrite --model ials --factors 512 \
    --l2 0.009145 --unobserved-weight 0.1142 --epochs 10 --out "$out/ials-512"
timed "$cf" train --data "$data" --no-progress --overwrite --model ease --l2 1000 --out "$out/ease-1000"
timed "$cf" train --data "$data" --no-progress --overwrite --model gmf --out "$out/gmf"
timed "$cf" blend "$out/ials-512" "$out/ease-1000" "$out/gmf" --out "$out/blend3" --no-progress --overwrite
timed "$cf" evaluate "$out/blend3" --against "$out/ials-512"
timed "$cf" evaluate "$out/blend3" --against "$out/ease-1000"
