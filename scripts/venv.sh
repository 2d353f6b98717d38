#!/usr/bin/env bash
# venv.sh - make the development virtualenv (.venv in the checkout) if missing and
# install the project into it, editable, with its [dev] extras. Idempotent: pip runs
# again only when pyproject.toml changed (code changes need nothing: editable).
# Prints the venv's path on stdout; progress goes to stderr.
# Env: HSM_VENV (default <checkout>/.venv), PYTHON (default python3) to create it.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${HSM_VENV:-$ROOT/.venv}
PY=${PYTHON:-python3}

if ! [ -x "$VENV/bin/python" ]; then
    echo "[venv] creating $VENV with $("$PY" --version 2>&1)" >&2
    "$PY" -m venv "$VENV"
fi
want=$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)
have=$(cat "$VENV/.hsm-pyproject-hash" 2>/dev/null || true)
if [ "$want" != "$have" ] || ! "$VENV/bin/python" -c 'import hsm_core' 2>/dev/null; then
    echo "[venv] pip install -e '.[dev]'" >&2
    t0=$(date +%s)
    # -qq: errors only (hides warnings about this machine's extra package indexes)
    "$VENV/bin/python" -m pip install -qq -e "${ROOT}[dev]"
    echo "$want" >"$VENV/.hsm-pyproject-hash"
    echo "[venv] installed in $(( $(date +%s) - t0 )) s" >&2
fi
echo "$VENV"
