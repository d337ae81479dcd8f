#!/usr/bin/env bash
# The main job on the built-in photos (held-out test split: chelsea, coffee, flower,
# grace_hopper), with the shipped checkpoints: the full cascade (LAINR conditioning, then the
# two x2 diffusion stages) at x4 with N=4 samples and their std maps (checked against the
# ground truth: scripts/uncertainty_report.py), the evaluation against bicubic and LAINR,
# and the leaderboard. Centre crops of 256x256 keep it to a few minutes on
# 2 CPU cores; the same commands take whole photos or any folder (README, docs/pipeline.md).
#   CASCADE_DEMO_OUT   where the results go (default outputs/demo)
#   CASCADE_DEMO_CROP  crop side in HR pixels (default 256; larger is slower)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
venv="${CASCADE_VENV:-.venv}"
cascade="$venv/bin/cascade"
python="$venv/bin/python"
out="${CASCADE_DEMO_OUT:-outputs/demo}"
crop="${CASCADE_DEMO_CROP:-256}"
knobs=(--stages auto --samples 4 --steps 10)  # the diffusion stages (cascade upscale alone runs
# LAINR only: README, "Defaults"); DPM-Solver++ 10 steps (docs/diffusion.md: sampling benchmark)

echo "== 1. the test photos: ${crop}x${crop} centre crops (ground truth) and their x4 inputs"
"$python" scripts/make_crops.py builtin "$crop" "$out/photos"
"$python" scripts/make_crops.py builtin "$crop" "$out/inputs_x4" --downscale 4
echo
echo "== 2. upscale x4 through the cascade, 4 samples each: mean, samples, std map, plan"
"$cascade" upscale "$out/inputs_x4" --scale 4 "${knobs[@]}" --out "$out/upscale"
echo
echo "== 3. where is the detail invented? the std maps against the ground truth"
"$python" scripts/uncertainty_report.py "$out/upscale" --truth "$out/photos" \
  --out "$out/uncertainty" --crop 128
echo
echo "== 4. any real scale: x3 (LAINR x1.5, then one x2 stage), 2 samples"
"$cascade" upscale "$out/inputs_x4" --scale 3 --stages auto --samples 2 --steps 10 \
  --out "$out/upscale_x3"
echo
echo "== 5. evaluate bicubic, LAINR and the cascade (mean of 4 samples) at x4"
"$cascade" evaluate --methods bicubic,lainr,cascade --data "$out/photos" --scales 4 \
  --metrics psnr,ssim,lr_psnr,swd,hf_ratio --out "$out/eval" --save-images --no-resume \
  settings.cascade.num_samples=4 settings.cascade.steps=10
echo
echo "== 6. the leaderboard (LPIPS/FID columns need their weights: docs/evaluation.md)"
"$cascade" leaderboard "$out/eval"
echo
echo "demo: results in $out/ (upscale/*_x4.png, *_x4_std.png, *_x4_interval.png, *_x4_samples/,"
echo "      run.json; uncertainty/*_panel.png; upscale_x3/; eval/summary.csv, eval/images/;"
echo "      eval/leaderboard.md|html, pd_plot.png)"
