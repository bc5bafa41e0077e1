"""Compilation targets for the TVM back-end: x86-64 (host), arm64, android-arm64.

TVM 0.27 takes targets as dicts and rejects ``mcpu=native``, so the host CPU
is asked from LLVM (the same name ``-mcpu=native`` would resolve to).
Each target also knows how to link its shared library (host compiler, the
aarch64 cross toolchain, or the Android NDK's clang).
"""
from __future__ import annotations

import os
import platform
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from edgekit.errors import EdgekitError

DEFAULT_NUM_CORES = 2


@dataclass
class TargetSpec:
    """What edgekit needs to compile and link for one kind of machine."""

    name: str            # edgekit's name: x86-64, arm64, android-arm64
    arch: str            # platform.machine() of a device that can run it
    triple: str
    mcpu: str | None = None
    mattr: list[str] = field(default_factory=list)
    num_cores: int = DEFAULT_NUM_CORES
    cross_cc: str | None = None  # None: the host's compiler

    def tvm_target(self):
        from tvm.target import Target

        config = {"kind": "llvm", "mtriple": self.triple, "num-cores": int(self.num_cores)}
        if self.mcpu:
            config["mcpu"] = self.mcpu
        if self.mattr:
            config["mattr"] = list(self.mattr)
        return Target(config)

    def describe(self) -> dict:
        return {"name": self.name, "arch": self.arch, "triple": self.triple, "mcpu": self.mcpu,
                "mattr": list(self.mattr), "num_cores": self.num_cores}

    def export_kwargs(self) -> dict:
        """Keyword arguments for ``Executable.export_library``."""
        if self.cross_cc is None:
            return {}
        from tvm.support import cc

        return {"fcompile": cc.cross_compiler(self.cross_cc)}


def host_cpu() -> str:
    """The host CPU name as LLVM knows it (what -mcpu=native would pick)."""
    from tvm.target import codegen

    name = str(codegen.llvm_get_system_cpu())
    return name if name and name != "generic" else "x86-64"


def parse_target_opts(opts: str | None) -> dict:
    """'cortex-a76,+dotprod,+i8mm,num-cores=4' -> {'mcpu':..., 'mattr':[...], 'num_cores':...}."""
    parsed: dict = {"mattr": []}
    for item in (opts or "").replace(" ", "").split(","):
        if not item:
            continue
        if item.startswith(("+", "-")):
            parsed["mattr"].append(item)
        elif item in ("dotprod", "i8mm", "neon", "fp16", "bf16", "sve", "avx512vnni", "avx512f"):
            parsed["mattr"].append("+" + item)
        elif "=" in item:
            key, value = item.split("=", 1)
            key = key.replace("_", "-")
            if key == "mcpu":
                parsed["mcpu"] = value
            elif key == "num-cores":
                if not value.isdigit() or int(value) < 1:
                    raise EdgekitError(f"--target-opts: num-cores must be a positive integer, got {value!r}")
                parsed["num_cores"] = int(value)
            elif key == "mattr":
                parsed["mattr"] += [a if a[:1] in "+-" else "+" + a for a in value.split("+") if a]
            else:
                raise EdgekitError(f"--target-opts: unknown option {key!r} (use mcpu=, num-cores=, +feature)")
        else:
            parsed["mcpu"] = item
    return parsed


def _find_cross_compiler(names: list[str], hint: str) -> str:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    raise EdgekitError(f"no cross compiler found ({' or '.join(names)} not on PATH): {hint}")


def _android_compiler(api: int) -> str:
    ndk = os.environ.get("ANDROID_NDK_HOME") or os.environ.get("ANDROID_NDK_ROOT")
    if not ndk:
        raise EdgekitError("target android-arm64 needs the Android NDK: set ANDROID_NDK_HOME to its folder")
    bins = sorted(Path(ndk).glob("toolchains/llvm/prebuilt/*/bin"))
    for folder in bins:
        clang = folder / f"aarch64-linux-android{api}-clang++"
        if clang.exists():
            return str(clang)
    raise EdgekitError(f"ANDROID_NDK_HOME={ndk}: no aarch64-linux-android{api}-clang++ "
                       "under toolchains/llvm/prebuilt/*/bin")


def _check_llvm_cpu(spec: TargetSpec) -> None:
    """Fail early, in one line, on a CPU name LLVM does not know for this triple."""
    if not spec.mcpu:
        return
    try:
        from tvm.target import codegen

        known = codegen.llvm_get_cpu_archlist(spec.tvm_target())
        if known and spec.mcpu not in [str(k) for k in known]:
            raise EdgekitError(f"unknown CPU {spec.mcpu!r} for {spec.name} (LLVM knows e.g. "
                               f"{', '.join(sorted(str(k) for k in known)[:8])}, ...)")
    except (ImportError, AttributeError):
        pass


def resolve(name: str, target_opts: str | None = None, num_cores: int | None = None) -> TargetSpec:
    """edgekit target name (+ options) -> TargetSpec."""
    opts = parse_target_opts(target_opts)
    cores = num_cores or opts.get("num_cores") or DEFAULT_NUM_CORES
    if name in ("x86-64", "x86_64", "host"):
        if platform.machine() not in ("x86_64", "AMD64"):
            raise EdgekitError(f"target x86-64 is compiled for this host's CPU, but this host is {platform.machine()}")
        spec = TargetSpec("x86-64", "x86_64", "x86_64-linux-gnu", mcpu=opts.get("mcpu") or host_cpu(),
                          mattr=opts["mattr"], num_cores=cores)
    elif name in ("arm64", "aarch64"):
        cc = None
        if platform.machine() not in ("aarch64", "arm64"):
            cc = _find_cross_compiler(["aarch64-linux-gnu-g++"],
                                      "apt-get install g++-aarch64-linux-gnu")
        spec = TargetSpec("arm64", "aarch64", "aarch64-linux-gnu", mcpu=opts.get("mcpu"),
                          mattr=["+neon"] + [a for a in opts["mattr"] if a != "+neon"],
                          num_cores=num_cores or opts.get("num_cores") or 4, cross_cc=cc)
    elif name == "android-arm64":
        api = int(os.environ.get("ANDROID_API", "28"))
        spec = TargetSpec("android-arm64", "aarch64", "aarch64-linux-android", mcpu=opts.get("mcpu"),
                          mattr=["+neon"] + [a for a in opts["mattr"] if a != "+neon"],
                          num_cores=num_cores or opts.get("num_cores") or 4,
                          cross_cc=_android_compiler(api))
    else:
        raise EdgekitError(f"unknown target {name!r} (choose x86-64, arm64, android-arm64 or accel)")
    _check_llvm_cpu(spec)
    return spec
