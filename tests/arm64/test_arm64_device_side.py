"""The device side stays installable on a bare board, and the arm64 root is
keyed and prepared as documented (fast checks: no qemu, no network)."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import edgekit
from edgekit.device import DEVICE_FILES, sysroot
from edgekit.errors import EdgekitError

SOURCE_ROOT = Path(edgekit.__file__).resolve().parent.parent
BOARD_MODULES = {"numpy", "tvm", "tvm_ffi", "edgekit"}


def _imported_top_level(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_device_files_import_only_stdlib_numpy_and_tvm():
    for rel in DEVICE_FILES:
        foreign = _imported_top_level(SOURCE_ROOT / rel) - set(sys.stdlib_module_names) \
            - BOARD_MODULES - {"__future__"}
        assert not foreign, f"{rel} imports {sorted(foreign)}: a board only has numpy + TVM"


def test_serve_module_runs_standalone_help():
    out = subprocess.run([sys.executable, "-m", "edgekit.device.serve", "--help"],
                         capture_output=True, text=True, timeout=60, cwd=SOURCE_ROOT)
    assert out.returncode == 0 and "--tracker" in out.stdout and "--key" in out.stdout


def test_cache_key_names_every_pinned_version(tmp_path):
    versions = sysroot.wanted_versions()
    key = sysroot.cache_key(versions)
    for version in versions.values():
        assert version in key
    assert sysroot.sysroot_path(tmp_path).parent == tmp_path
    assert not sysroot.is_prepared(sysroot.sysroot_path(tmp_path))


def test_prepare_without_root_says_what_to_run(monkeypatch):
    monkeypatch.setattr(sysroot, "_apt_has_candidate", lambda package: False)
    monkeypatch.setattr(sysroot.os, "geteuid", lambda: 1000)
    with pytest.raises(EdgekitError, match="dpkg --add-architecture arm64 && apt-get update"):
        sysroot._ensure_arm64_apt()
