#!/usr/bin/env bash
# Set up (idempotent), then run the default test suite. Extra arguments go to pytest,
# e.g. `bash launch/test.sh -m slow` or `bash launch/test.sh tests/kernels`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/launch/setup.sh"
cd "$ROOT"
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$ROOT/.venv/torch_extensions}"
set +e
"$ROOT/.venv/bin/python" -m pytest "$@"
code=$?
set -e
if [ "$code" = "5" ]; then
  echo "error: pytest collected no tests" >&2
  exit 1
fi
exit "$code"
