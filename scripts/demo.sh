#!/usr/bin/env bash
# Set up, then train on the bundled example data, evaluate, and predict a few images.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
PL=.venv/bin/photolabel
DATA=examples/fashion-tiny
OUT=${OUT:-models/fashion-tiny}
echo "== photolabel train $DATA --out $OUT"
$PL train "$DATA" --out "$OUT"
echo
echo "== photolabel evaluate $OUT $DATA/manifest.csv --report $OUT-report"
echo "   (all 300 images, 270 of which the model trained on: the held-out figure is the validation above)"
$PL evaluate "$OUT" "$DATA/manifest.csv" --report "$OUT-report"
echo
echo "== photolabel predict $OUT (one image of each label, top 3)"
$PL predict "$OUT" "$DATA/blouse/1042.jpg" "$DATA/halter/1042.jpg" "$DATA/sweater/1042.jpg" --top-k 3
echo
echo "== photolabel info $OUT"
$PL info "$OUT"
