#!/usr/bin/env bash
# Re-make samples/ (the simulated recordings shipped with chdl) through the real capture path:
#   bash tools/make_samples.sh [OUT_DIR]        (default: samples/; refuses to overwrite existing runs)
# Each run is captured from a sim camera with `chdl capture` (software trigger, one frame per stage
# position), then `chdl simulate truth` re-renders every frame, checks it matches, and writes <run>/truth/.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-$root/samples}"
chdl=(python -m chdl)
[ -n "${CHDL:-}" ] && chdl=($CHDL)
cfg="$root/samples/cameras.yaml"
cd "$root"
# 1. CHDL-sized: 800x600 Mono8, 3 lanes x 10 positions, 60 um steps, default 1.3 % fault rate; seed 122
#    (alias sim122) because its 30 frames happen to include 3 visible faults (blur, jitter, defocus)
"${chdl[@]}" capture --camera-config "$cfg" --camera sim122 --out "$out" --run-id sim-800x600 \
  --lanes 3 --positions 10 --step-um 60 --width 800 --height 600 --pixel-format Mono8 --fps 5 --quiet
# 2. small, for training a tiny model on a CPU: 200x150 (same 1.2 x 0.9 mm field at 6 um/px),
#    48 lanes x 10 positions, seed 1 (alias simqc), 3 % faults
"${chdl[@]}" capture --camera-config "$cfg" --camera simqc --out "$out" --run-id sim-200x150 \
  --lanes 48 --positions 10 --step-um 60 --width 200 --height 150 --pixel-format Mono8 --fps 5 --quiet
"${chdl[@]}" simulate truth "$out/sim-800x600" "$out/sim-200x150"
du -sh "$out"
