#!/usr/bin/env bash
# The main job on the built-in photos (held-out test split: chelsea, coffee, flower,
# grace_hopper): the shipped LAINR stage against MATLAB bicubic at x2/x3/x4, with the
# table, the output images, a side-by-side crop and the spectral diagnostic in outputs/demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
venv="${CASCADE_VENV:-.venv}"
cascade="$venv/bin/cascade"
out="${CASCADE_DEMO_OUT:-outputs/demo}"

echo "== 1. evaluate bicubic and LAINR on the built-in test photos"
"$cascade" evaluate --methods bicubic,lainr --data builtin --scales 2,3,4 \
  --out "$out/eval" --save-images --no-resume
echo
echo "== 2. upscale the built-in test photos by x2.5 with LAINR (any real scale works)"
"$cascade" upscale builtin --scale 2.5 --stages inr --out "$out/upscale"
echo
echo "== 3. spectral diagnostic at x4: true SR or resampling?"
"$cascade" diagnose spectrum builtin --scale 4 --methods bicubic,lainr --out "$out/spectrum"
echo
echo "== 4. side-by-side crops (ground truth | bicubic | LAINR) at x4"
"$cascade" compare builtin --scale 4 --methods bicubic,lainr --out "$out/compare"
echo
echo "demo: results in $out/ (eval/summary.csv, eval/images/, upscale/, spectrum/, compare/)"
