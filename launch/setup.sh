#!/usr/bin/env bash
# Idempotent set-up: .venv, the package (editable) with test extras, and the built-in dataset.
# On machines without CUDA torch is pinned to a CPU build through launch/constraints-cpu.txt,
# so pip never pulls a multi-GB CUDA wheel.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
VENV="$ROOT/.venv"

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PY" -m venv "$VENV"
fi

CONSTRAINTS=()
if ! command -v nvidia-smi >/dev/null 2>&1; then
  CONSTRAINTS=(-c "$ROOT/launch/constraints-cpu.txt")
fi

# Re-install only when the dependency list changed (keeps repeated runs fast).
STAMP="$VENV/.ldm-installed"
WANT="$(cat pyproject.toml launch/constraints-cpu.txt | sha256sum | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  echo "[setup] installing ldm-system and its dependencies into $VENV"
  "$VENV/bin/pip" install -q --upgrade pip >/dev/null
  "$VENV/bin/pip" install -q "${CONSTRAINTS[@]}" -e ".[test]"
  echo "$WANT" > "$STAMP"
fi
# Hugging Face's `kernels` distribution shares the import name of our `kernels` package (see
# ldm_system/deps.py); an older venv may still hold it as a leftover dependency of transformers.
if "$VENV/bin/pip" show kernels >/dev/null 2>&1; then
  echo "[setup] removing the foreign 'kernels' distribution (it shadows ldm-system's kernels package)"
  "$VENV/bin/pip" uninstall -y -q kernels
fi

FMNIST=/usr/share/datasets/fashion-mnist
if [ ! -f "$FMNIST/train-images-idx3-ubyte.gz" ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "[setup] installing Debian's dataset-fashion-mnist"
    apt-get update -qq >/dev/null && apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "[setup] Fashion-MNIST is missing: run 'sudo apt-get install dataset-fashion-mnist'" >&2
    echo "        (or pack your own folder with: ldm data pack path/to/images data/shards)" >&2
  fi
fi
