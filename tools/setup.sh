#!/usr/bin/env bash
# Idempotent setup for a fresh clone: system packages (when root), a venv in
# .venv, and edgekit installed editable with every extra (tvm, hw, eval, dev).
#   bash tools/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."

# Cross toolchain + qemu-user for the arm64 target and its emulated device;
# Icarus Verilog as the second simulator the RTL must be accepted by.
SYSTEM_PACKAGES="qemu-user gcc-aarch64-linux-gnu g++-aarch64-linux-gnu iverilog"
missing=""
for pkg in $SYSTEM_PACKAGES; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing system packages:$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
  else
    echo "setup: warning: missing system packages:$missing (install them with apt-get as root;" \
         "the arm64 and Icarus tests will be skipped)" >&2
  fi
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
echo "setup: installing edgekit and its pinned dependencies into .venv"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[all]" 2>&1 \
  | grep -v "is ignored: it is neither a file nor a directory" || true
.venv/bin/python -c "import edgekit, torch, onnx, onnxruntime, tvm; print('setup: ok, edgekit', edgekit.__version__, '| torch', torch.__version__, '| tvm', tvm.__version__)"
