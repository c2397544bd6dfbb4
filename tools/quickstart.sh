#!/usr/bin/env bash
# The main job on the bundled samples, end to end on a CPU (a few minutes). Run after tools/install.sh:
#   bash tools/install.sh && bash tools/quickstart.sh
# 1. capture: replay the recorded simulator stream through the real capture pipeline
# 2. curate:  QC flags, motion-compensated reconstruction, sharded zarr + HTML QC report
# 3. train:   a tiny DIFFUMA for a few epochs (5 frames in -> 5 out)
# 4. eval:    MSE / MAE / SSIM / PSNR per frame, next to copy-last-frame and constant-motion
# 5. predict: PNG frames, side-by-side GIFs and a grid of predictions
# Everything lands in demo/ (or $CHDL_DEMO_DIR); rerunning starts afresh.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# CHDL may be a command with arguments, e.g. CHDL="python -m chdl" (split on spaces)
read -r -a chdl <<< "${CHDL:-$root/.venv/bin/chdl}"
demo="$(realpath -m "${CHDL_DEMO_DIR:-$root/demo}")"  # a symlink: the folder it points to (as chdl's --out)
epochs="${CHDL_DEMO_EPOCHS:-6}"
# rerunning starts afresh, but only a folder an earlier quickstart made (it holds .chdl-demo) is deleted:
# CHDL_DEMO_DIR=~/thesis must not wipe a thesis
if [ -e "$demo" ] && ! [ -f "$demo/.chdl-demo" ] && [ -n "$(ls -A "$demo" 2>/dev/null || echo x)" ]; then
  echo "quickstart: $demo exists and is not an earlier demo (no .chdl-demo in it); choose another CHDL_DEMO_DIR" >&2
  exit 1
fi
rm -rf "$demo"
mkdir -p "$demo"
echo "made by tools/quickstart.sh; the next run deletes this folder" > "$demo/.chdl-demo"
step() { printf '\n== %s\n' "$*" >&2; }

step "1/5 capture: replay samples/sim-200x150"
"${chdl[@]}" capture --replay "$root/samples/sim-200x150" --out "$demo/raw" --as-fast-as-possible

step "2/5 curate"
"${chdl[@]}" curate "$demo/raw" "$demo/data.zarr" --workers 2
"${chdl[@]}" info "$demo/data.zarr"

step "3/5 train: tiny DIFFUMA, $epochs epochs"
"${chdl[@]}" train --data "$demo/data.zarr" --config diffuma_tiny --set run.epochs="$epochs" --out "$demo/run"

step "4/5 eval"
"${chdl[@]}" eval --checkpoint "$demo/run/checkpoints/last.pt" --data "$demo/data.zarr" --out "$demo/eval"

step "5/5 predict"
"${chdl[@]}" predict --checkpoint "$demo/run/checkpoints/last.pt" --input "$demo/data.zarr" --out "$demo/predictions"

cat >&2 <<MSG

Done. Open:
  $demo/data.qc.html               QC report (flags, score histograms, reconstructions)
  $demo/run/                       training log (CSV), curves (PNG), checkpoints
  $demo/eval/                      metrics (JSON, Markdown table)
  $demo/predictions/               PNG frames, side-by-side GIFs, prediction grid
MSG
