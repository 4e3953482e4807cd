#!/usr/bin/env bash
# Set up (idempotent), then run the main demo on the built-in Fashion-MNIST dataset.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/launch/setup.sh"
cd "$ROOT"
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$ROOT/.venv/torch_extensions}"
exec "$ROOT/.venv/bin/ldm" demo "$@"
