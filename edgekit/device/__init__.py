"""The device side of edgekit: what runs on an arm64 board (or its emulation).

  serve.py    `edgekit device serve`: a TVM RPC server that needs only Python,
              numpy and the TVM runtime on the board (no torch, no onnx).
  sysroot.py  host only: prepare and cache an arm64 Debian root + aarch64 wheels.
  emulate.py  host only: start serve.py under qemu-aarch64 in that root.

Keep this file free of imports: the board imports this package.
"""

# The files a board needs from edgekit (relative to the folder holding
# `edgekit/`): serve.py imports nothing else of ours.
DEVICE_FILES = ("edgekit/__init__.py", "edgekit/device/__init__.py", "edgekit/device/serve.py")
