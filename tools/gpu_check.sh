#!/usr/bin/env bash
# The CUDA checks of issue 12, as one script for a lent GPU machine (the `device` tool): < 8 minutes.
#
#   bash tools/gpu_check.sh prepare     # HERE (network to PyPI): wheels the GPU image lacks -> .whl/ (git-ignored
#                                       # through .git/info/exclude), for its Python 3.12
#   bash tools/gpu_check.sh             # THERE: carry [".whl", "quality/opencv.zarr"]; results -> $OUT (or gpu-check/)
#
# What it runs, each step logged to $OUT/<step>.log and skipped (not failed) when its prerequisite is missing:
#   1. the fused-vs-PyTorch parity tests (`pytest -k "fused or parity"`): need mamba-ssm, a CUDA source build that
#      the GPU image does not have; they report "skipped" unless a [cuda] build was carried;
#   2. tools/bench_model.py: chdl-full at 600x800 in bf16 with both scan backends (its CUDA section);
#   3. tools/bench_train_gpu.py: training samples/s and peak memory at batch 4, one-sequence inference latency
#      against the 50 ms target;
#   4. the equal-budget quality table at 120x160 (real footage, `chdl bench --budget-minutes`, DIFFUMA tiny and
#      SimVP tiny) if quality/opencv.zarr was carried (made here by `bash tools/model_quality.sh quality/ opencv`,
#      31 MB) and the time allows (CHDL_GPU_QUALITY_MINUTES per model, default 1).
# The step timeouts add up to 500 s (90 + 120 + 90 + 200) plus the wheel install: run it with timeout_s 600.
# The figures go into docs/model-quality.md / docs/bench.md with the GPU named (see $OUT/env.txt).
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# the GPU image's Python lacks these runtime dependencies of chdl (its torch, timm, numpy, scikit-* are used)
wheels=(zarr numcodecs donfig crc32c blake3 isal universal-pathlib harvesters genicam pydantic pydantic-core
        annotated-types typing-inspection)

if [ "${1:-}" = "prepare" ]; then
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  mkdir -p .whl
  for w in "${wheels[@]}"; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      --platform any -d .whl "$w" || echo "prepare: no wheel for $w" >&2
  done
  du -sh .whl
  exit 0
fi

out="${OUT:-$root/gpu-check}"
mkdir -p "$out"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site:$root"
else
  export PYTHONPATH="$root"
fi
export PYTHONUNBUFFERED=1
step() { printf '\n== %s (%s)\n' "$1" "$(date -u +%H:%M:%S)"; }

step env
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
  python3 -c "import mamba_ssm; print('mamba_ssm', mamba_ssm.__version__)" 2>&1 | tail -1
  date -u; } 2>&1 | tee "$out/env.txt"

step "1 fused parity"
timeout 90 python3 -m pytest -q -rs tests/diffuma/test_diffuma.py tests/diffuma/test_ssm.py -k "fused or parity" \
  2>&1 | tee "$out/parity.log" | tail -5

step "2 bench_model chdl-full bf16"
timeout 120 python3 tools/bench_model.py --presets tiny --repeats 1 --cuda-batch 2 --json "$out/bench_model.json" \
  2>&1 | tee "$out/bench_model.log" | tail -15

step "3 bench_train_gpu"
timeout 90 python3 tools/bench_train_gpu.py --batch-size 4 2>&1 | tee "$out/bench_train_gpu.json" | tail -3

if [ -d quality/opencv.zarr ]; then
  step "4 equal-budget table, real footage 120x160"
  m="${CHDL_GPU_QUALITY_MINUTES:-1}"
  timeout 200 python3 -m chdl bench --data quality/opencv.zarr --models diffuma:tiny,simvp:tiny \
    --budget-minutes "$m" --out /tmp/bench-opencv --set run.batch_size=4 --set run.lr=1e-3 \
    --set run.warmup_steps=20 --set run.num_workers=0 --set run.val_every_epochs=0 --quiet \
    2>&1 | tee "$out/bench_opencv.log" | tail -20
  cp /tmp/bench-opencv/bench.md "$out/bench_opencv.md" 2>/dev/null  # not the checkpoints: 8 files come back
fi
step done
