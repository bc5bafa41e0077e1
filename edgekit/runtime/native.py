"""Check a native shared library before anything maps it (dlopen, an RPC upload).

dlopen maps a library's segments straight from the file: a truncated or
malformed ELF file makes the process die of SIGBUS/SIGSEGV when the loader
touches a page past the end of the file, long before any Python exception can
be raised. `check_library` reads the ELF headers with the standard library
only and refuses, with one line naming the file, anything the loader could
trip on: wrong magic, class, byte order, type or machine, and program
headers, segments, section headers or sections that do not lie inside the
file.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path

from edgekit.errors import EdgekitError

ELF_MAGIC = b"\x7fELF"
ELFCLASS64 = 2
ELFDATA2LSB = 1
ET_DYN = 3
PT_LOAD = 1
SHT_NOBITS = 8
EHDR_SIZE = 64
PHDR_SIZE = 56
SHDR_SIZE = 64

# ELF e_machine codes of the architectures edgekit compiles for (artifact `target.arch`).
MACHINES = {"x86_64": 62, "aarch64": 183}
MACHINE_NAMES = {62: "x86_64", 183: "aarch64", 3: "x86 (32-bit)", 40: "arm (32-bit)", 243: "riscv"}
ALIASES = {"AMD64": "x86_64", "amd64": "x86_64", "arm64": "aarch64", "ARM64": "aarch64"}


def normalise_arch(machine: str | None) -> str | None:
    return ALIASES.get(machine, machine) if machine else machine


def check_library(path, arch: str | None = None, host: str | None = None) -> None:
    """Raise EdgekitError unless `path` is a well-formed 64-bit little-endian ELF shared
    library for `arch` (the artifact's) and, when given, `host` (the machine that loads it)."""
    path = Path(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            header = fh.read(EHDR_SIZE)
            _check(path, fh, header, size, normalise_arch(arch), normalise_arch(host))
    except OSError as exc:
        raise EdgekitError(f"{path}: cannot read the library ({exc.strerror or exc})") from None


def _bad(path, why: str):
    raise EdgekitError(f"{path}: not a valid shared library ({why}): the artifact is corrupted; recompile")


def _check(path, fh, header: bytes, size: int, arch, host) -> None:
    if header[:4] != ELF_MAGIC:
        _bad(path, "no ELF magic number" if len(header) >= 4 else f"a file of {size} bytes, no ELF header")
    if len(header) < EHDR_SIZE:
        _bad(path, f"a file of {size} bytes is shorter than an ELF header: truncated")
    if header[4] != ELFCLASS64:
        _bad(path, f"ELF class {header[4]}, expected 64-bit")
    if header[5] != ELFDATA2LSB:
        _bad(path, "big-endian or unknown byte order, expected little-endian")
    (e_type, e_machine, _version, _entry, e_phoff, e_shoff, _flags, e_ehsize, e_phentsize, e_phnum,
     e_shentsize, e_shnum, e_shstrndx) = struct.unpack_from("<HHIQQQIHHHHHH", header, 16)
    if e_type != ET_DYN:
        _bad(path, f"ELF type {e_type}, expected a shared object")
    machine = MACHINE_NAMES.get(e_machine, f"machine {e_machine}")
    if arch is not None:
        if arch not in MACHINES:
            raise EdgekitError(f"{path}: the artifact's target.arch {arch!r} is not one edgekit builds for "
                               f"({', '.join(MACHINES)})")
        if e_machine != MACHINES[arch]:
            raise EdgekitError(f"{path}: the library is built for {machine} but the metadata says target.arch "
                               f"{arch}: the artifact is inconsistent; recompile")
    if host is not None and host in MACHINES and e_machine != MACHINES[host]:
        raise EdgekitError(f"{path}: the library is built for {machine}, this machine is {host}: "
                           "run it on such a device (--device HOST:PORT) or recompile for this machine")
    if e_ehsize < EHDR_SIZE:
        _bad(path, f"ELF header size {e_ehsize}")
    # Program headers: the segments dlopen maps.
    if e_phnum == 0:
        _bad(path, "no program headers")
    if e_phentsize != PHDR_SIZE:
        _bad(path, f"program header entry size {e_phentsize}, expected {PHDR_SIZE}")
    if e_phoff + e_phnum * PHDR_SIZE > size:
        _bad(path, f"the program header table ends past the end of the file ({size} bytes): truncated")
    fh.seek(e_phoff)
    table = fh.read(e_phnum * PHDR_SIZE)
    loads = 0
    for i in range(e_phnum):
        p_type, _flags, p_offset, _vaddr, _paddr, p_filesz, p_memsz, _align = struct.unpack_from(
            "<IIQQQQQQ", table, i * PHDR_SIZE)
        if p_type == PT_LOAD:
            loads += 1
            if p_filesz > p_memsz:
                _bad(path, f"segment {i} is larger in the file than in memory")
        if p_filesz and p_offset + p_filesz > size:
            _bad(path, f"segment {i} ends at byte {p_offset + p_filesz}, past the end of the file "
                       f"({size} bytes): truncated")
    if loads == 0:
        _bad(path, "no loadable segment")
    # Section headers: the linker writes them last, so a truncated file loses them first.
    if e_shnum == 0 and e_shoff == 0:
        return
    if e_shentsize != SHDR_SIZE:
        _bad(path, f"section header entry size {e_shentsize}, expected {SHDR_SIZE}")
    if e_shoff + e_shnum * SHDR_SIZE > size:
        _bad(path, f"the section header table ends past the end of the file ({size} bytes): truncated")
    if e_shnum and e_shstrndx >= e_shnum:
        _bad(path, f"section name table index {e_shstrndx} out of range")
    fh.seek(e_shoff)
    table = fh.read(e_shnum * SHDR_SIZE)
    for i in range(e_shnum):
        _name, sh_type, _flags, _addr, sh_offset, sh_size = struct.unpack_from("<IIQQQQ", table, i * SHDR_SIZE)
        if sh_type != SHT_NOBITS and sh_size and sh_offset + sh_size > size:
            _bad(path, f"section {i} ends at byte {sh_offset + sh_size}, past the end of the file "
                       f"({size} bytes): truncated")
