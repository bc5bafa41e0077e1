"""Prepare and cache an arm64 root in which qemu-aarch64 runs a device Python.

The root is Debian's arm64 Python 3.11 (the .debs extracted with `dpkg -x`,
nothing installed system-wide) plus the aarch64 wheels of the TVM runtime
and numpy unzipped into `opt/edgekit/site-packages`. It is cached under
`~/.cache/edgekit/arm64-sysroot/<key>`, the key naming every version that
goes in, so a TVM upgrade on the host prepares a matching new root.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from edgekit.errors import EdgekitError
from edgekit.fileio import atomic_dir
from edgekit.progress import progress

LAYOUT_VERSION = 1
PYTHON_VERSION = "3.11"
SITE_PACKAGES = "opt/edgekit/site-packages"
MANIFEST = "edgekit-sysroot.json"

# Debian arm64 packages that make a working python3.11 (environment.md).
DEBIAN_PACKAGES = (
    "python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib", "libc6",
    "zlib1g", "libexpat1", "libffi8", "libssl3", "libbz2-1.0", "liblzma5", "libgcc-s1",
    "libstdc++6", "libsqlite3-0", "libuuid1", "libncursesw6", "libtinfo6", "libcrypt1",
    "libtirpc3", "libnsl2",
)
# Wheels pinned to the host's versions (the device TVM must equal the host's);
# psutil/cloudpickle/typing_extensions are imported by tvm's RPC helpers.
PINNED_WHEELS = ("apache-tvm", "apache-tvm-ffi", "numpy")
UNPINNED_WHEELS = ("psutil", "cloudpickle", "typing_extensions")
WHEEL_PLATFORMS = ("manylinux_2_28_aarch64", "manylinux2014_aarch64")


def default_cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or (Path.home() / ".cache")
    return Path(base) / "edgekit" / "arm64-sysroot"


def wanted_versions() -> dict[str, str]:
    """The host's versions of the packages the device must match."""
    versions = {}
    for name in PINNED_WHEELS:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            raise EdgekitError(f"{name} is not installed on the host: install edgekit[tvm] first") from None
    return versions


def cache_key(versions: dict[str, str]) -> str:
    parts = [f"py{PYTHON_VERSION.replace('.', '')}"]
    parts += [f"{name.replace('apache-', '')}{ver}" for name, ver in versions.items()]
    return "-".join(parts) + f"-v{LAYOUT_VERSION}"


def sysroot_path(cache_root: str | os.PathLike | None = None) -> Path:
    """Where the root for the host's versions lives (prepared or not)."""
    root = Path(cache_root) if cache_root else default_cache_root()
    return root / cache_key(wanted_versions())


def is_prepared(path: Path) -> bool:
    return (path / MANIFEST).is_file() and (path / "usr/bin/python3.11").is_file()


def python_in(root: Path) -> Path:
    return root / "usr/bin/python3.11"


def prepare(cache_root: str | os.PathLike | None = None, *, force: bool = False,
            log=print) -> Path:
    """Return the cached root for the host's versions, preparing it if absent."""
    path = sysroot_path(cache_root)
    if is_prepared(path) and not force:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(path.parent / f".{path.name}.lock"):
        if is_prepared(path) and not force:  # another process finished it meanwhile
            return path
        versions = wanted_versions()
        log(f"edgekit: preparing arm64 root {path} (once; cached afterwards)")
        with tempfile.TemporaryDirectory(prefix="edgekit-arm64-dl-") as downloads:
            debs = _download_debs(Path(downloads) / "debs")
            wheels = _download_wheels(Path(downloads) / "wheels", versions)
            with atomic_dir(path) as tmp:
                for deb in progress(debs, desc="extract .debs", unit="pkg"):
                    _run(["dpkg", "-x", str(deb), str(tmp)], f"extracting {deb.name}")
                site = tmp / SITE_PACKAGES
                site.mkdir(parents=True)
                for wheel in progress(wheels, desc="unzip wheels", unit="whl"):
                    with zipfile.ZipFile(wheel) as zf:
                        zf.extractall(site)
                _restore_exec_bits(site)
                manifest = {"layout": LAYOUT_VERSION, "python": PYTHON_VERSION,
                            "versions": versions, "debs": [d.name for d in debs],
                            "wheels": [w.name for w in wheels]}
                (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        log(f"edgekit: arm64 root ready at {path}")
    return path


def _download_debs(dest: Path) -> list[Path]:
    dest.mkdir(parents=True)
    _ensure_arm64_apt()
    names = [f"{pkg}:arm64" for pkg in DEBIAN_PACKAGES]
    # -o APT::Sandbox::User=root: the _apt user cannot write into our temp dir.
    _run(["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", *names],
         "downloading Debian arm64 packages", cwd=dest)
    debs = sorted(dest.glob("*.deb"))
    if len(debs) != len(DEBIAN_PACKAGES):
        raise EdgekitError(f"apt-get download gave {len(debs)} of {len(DEBIAN_PACKAGES)} arm64 "
                           f"packages in {dest}")
    return debs


def _ensure_arm64_apt() -> None:
    """Make apt know arm64 packages; this needs root once per machine."""
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        raise EdgekitError("preparing the arm64 root needs a Debian/Ubuntu host (apt-get, dpkg); "
                           "or point EDGEKIT_ARM64_SYSROOT at a prepared root")
    foreign = subprocess.run(["dpkg", "--print-foreign-architectures"], capture_output=True,
                             text=True).stdout.split()
    if "arm64" in foreign and _apt_has_candidate("python3.11-minimal:arm64"):
        return
    if os.geteuid() != 0:
        raise EdgekitError("apt does not know arm64 packages yet: run once as root "
                           "`dpkg --add-architecture arm64 && apt-get update`, then retry")
    if "arm64" not in foreign:
        _run(["dpkg", "--add-architecture", "arm64"], "adding the arm64 dpkg architecture")
    _run(["apt-get", "update", "-qq"], "apt-get update (for arm64 package lists)")
    if not _apt_has_candidate("python3.11-minimal:arm64"):
        raise EdgekitError("apt has no arm64 python3.11-minimal after apt-get update: this host's "
                           "apt sources must serve Debian 12 (bookworm) arm64 packages")


def _apt_has_candidate(package: str) -> bool:
    out = subprocess.run(["apt-cache", "policy", package], capture_output=True, text=True).stdout
    return "Candidate:" in out and "Candidate: (none)" not in out


def _download_wheels(dest: Path, versions: dict[str, str]) -> list[Path]:
    dest.mkdir(parents=True)
    specs = [f"{name}=={versions[name]}" for name in PINNED_WHEELS] + list(UNPINNED_WHEELS)
    platforms = [arg for plat in WHEEL_PLATFORMS for arg in ("--platform", plat)]
    _run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
          "--no-deps", "--only-binary=:all:", *platforms, "--python-version", PYTHON_VERSION,
          "--implementation", "cp", "-d", str(dest), *specs],
         "downloading aarch64 wheels (" + ", ".join(specs) + ")")
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != len(specs):
        raise EdgekitError(f"pip download gave {len(wheels)} of {len(specs)} aarch64 wheels in "
                           f"{dest}")
    return wheels


def _restore_exec_bits(site: Path) -> None:
    # zipfile drops permissions; shared libraries must stay loadable/executable.
    for lib in site.rglob("*.so*"):
        lib.chmod(0o755)


def _run(cmd: list[str], what: str, cwd: Path | None = None) -> None:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=1800)
    except FileNotFoundError:
        raise EdgekitError(f"{what}: {cmd[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise EdgekitError(f"{what}: {cmd[0]} did not finish in 30 minutes") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise EdgekitError(f"{what} failed (exit {proc.returncode}): {last[0]}")


@contextlib.contextmanager
def _file_lock(path: Path):
    """Serialise preparation between processes (xdist workers, two shells)."""
    import fcntl

    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
