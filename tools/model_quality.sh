#!/usr/bin/env bash
# The model-quality table of docs/model-quality.md: three data families, every model trained for the same
# wall-clock budget on this machine, one after the other (chdl bench --budget-minutes), each evaluated with
# copy-last-frame and constant-motion rows by the same metric code.
#
#   bash tools/model_quality.sh [OUT_DIR] [FAMILIES]
#
# OUT_DIR (default quality/, git-ignored) receives the datasets and one bench folder per family.
# FAMILIES (default "lanes opencv mmnist") chooses which to run. Environment:
#   CHDL_QUALITY_MINUTES  training minutes per model (default 3, as in docs/model-quality.md)
#   CHDL_QUALITY_MODELS   models (default: chosen DIFFUMA, the paper's literal reading, SimVP, PredRNN-v2; on
#                         Moving MNIST also DIFFUMA tiny-mmnist, the preset for scenes without global motion)
#   CHDL_QUALITY_THREADS  torch threads (default 2 = this machine's cores)
# Datasets (made once, reused on a rerun):
#   lanes   the simulator, 600 lane passes of 10 positions at 150x200 (chdl simulate corpus), curated
#           with chdl curate; 5 -> 5, split 300/300 by the curator
#   opencv  real footage: Debian opencv-doc's tree.avi, box.mp4, cup.mp4, Megamind.avi only (the package's
#           other videos are held out for independent evaluation), 120x160 gray, 5 -> 5 (chdl import video)
#   mmnist  Moving MNIST 64x64, 10 -> 10, 1024 train / 256 val sequences (chdl import mnist)
#   lanes-test  held-out check of the lane figures: a simulator corpus with a seed nothing was tuned on (71),
#           600 lane passes at 150x200, curated with split val 0.1 / test 0.4 (train 0.5: the 300 sequences of
#           "lanes"); the bench scores the test split, which no preset, default or checkpoint choice has seen
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# CHDL may be a command with arguments, e.g. CHDL="python -m chdl" (split on spaces)
read -r -a chdl <<< "${CHDL:-$root/.venv/bin/chdl}"
out="${1:-$root/quality}"
families="${2:-lanes opencv mmnist}"
minutes="${CHDL_QUALITY_MINUTES:-3}"
models_default="diffuma:tiny,diffuma:paper-tiny,simvp:tiny,predrnn_v2:tiny"
export OMP_NUM_THREADS="${CHDL_QUALITY_THREADS:-2}"
mkdir -p "$out"
step() { printf '\n== %s\n' "$*" >&2; }

for fam in $families; do  # all names checked before anything runs (a typo stopped the script after an hour)
  case "$fam" in lanes|opencv|mmnist|lanes-test) ;; *) echo "unknown family $fam (lanes, opencv, mmnist, lanes-test)" >&2; exit 2 ;; esac
done

dataset() {  # makes $out/<family>.zarr unless it is there complete; an interrupted one is resumed or made again
  local fam="$1" z="$out/$1.zarr" again=()
  if [ -d "$z" ]; then
    "${chdl[@]}" info "$z" > /dev/null 2>&1 && return 0
    again=(--overwrite)  # incomplete (or damaged): curate resumes it, an import (which does not resume) starts over
  fi
  case "$fam" in
    lanes)
      if [ ! -d "$z" ] || [ ! -d "$out/lanes-raw" ]; then
        rm -rf "$out/lanes-raw" "$z"
        "${chdl[@]}" simulate corpus "$out/lanes-raw" --sequences 600 --width 200 --height 150 --seed 7 --workers 2
      fi
      "${chdl[@]}" curate "$out/lanes-raw" "$z" --workers 2 ;;
    lanes-test)
      if [ ! -d "$z" ] || [ ! -d "$out/lanes-test-raw" ]; then
        rm -rf "$out/lanes-test-raw" "$z"
        "${chdl[@]}" simulate corpus "$out/lanes-test-raw" --sequences 600 --width 200 --height 150 --seed 71 --workers 2
      fi
      printf 'split: {val_fraction: 0.1, test_fraction: 0.4}\n' > "$out/lanes-test.curate.yaml"
      "${chdl[@]}" curate "$out/lanes-test-raw" "$z" --workers 2 --config "$out/lanes-test.curate.yaml" ;;
    opencv)
      bash "$root/tools/fetch_opencv_videos.sh" "$out/opencv-videos"
      "${chdl[@]}" import video "$out"/opencv-videos/{tree.avi,box.mp4,cup.mp4,Megamind.avi} --out "$z" \
        --size 120x160 --in-frames 5 --out-frames 5 --train-stride 3 --val-stride 5 "${again[@]}" ;;
    mmnist)
      "${chdl[@]}" import mnist --out "$z" --train 1024 --val 256 "${again[@]}" ;;
  esac
}

for fam in $families; do
  models="${CHDL_QUALITY_MODELS:-$models_default}"
  [ -z "${CHDL_QUALITY_MODELS:-}" ] && [ "$fam" = mmnist ] && models="diffuma:tiny-mmnist,$models"
  step "$fam: dataset"
  dataset "$fam"
  "${chdl[@]}" info "$out/$fam.zarr"
  step "$fam: $models, $minutes min each"
  # an earlier bench of this family is continued, never deleted (a rerun with other models or minutes is refused
  # by chdl bench --resume, naming the difference: move that folder away to start afresh)
  resume=()
  [ -e "$out/bench-$fam" ] && resume=(--resume)
  split=()
  [ "$fam" = lanes-test ] && split=(--split test)
  "${chdl[@]}" bench --data "$out/$fam.zarr" --models "$models" --budget-minutes "$minutes" --out "$out/bench-$fam" "${resume[@]}" "${split[@]}" \
    --set run.batch_size=4 --set run.lr=1e-3 --set run.warmup_steps=20 --set run.num_workers=0 \
    --set run.val_every_epochs=0 --quiet \
    --max-eval-sequences 256
done
step "done: $out/bench-*/bench.md"
