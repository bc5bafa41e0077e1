"""Assembler / disassembler for the accelerator ISA (text <-> 128-bit words).

Text form, one instruction per line, `#` starts a comment:

    load buf=act sram=0 dram=0x100 ysize=4 xsize=4 xstride=4 pad_top=1
    gemm reset=1 outer=4 inner=4 acc=0 act=0 acc_so=4 acc_si=1 act_so=6 act_si=1
    finish
    .insn 0x0000000000000000000000000000000f   # raw word (e.g. an illegal one)

Fields left out are zero; enumerated fields take names (buf=act, op=max,
out_type=uint8) or numbers. `disassemble(assemble(t))` is canonical text and
`assemble(disassemble(words))` returns the same words.
"""
from __future__ import annotations

from edgekit.errors import EdgekitError

from . import isa


def encode(name: str, **fields) -> int:
    """One instruction -> 128-bit integer. Signed fields take negative values."""
    op = isa.BY_NAME.get(name)
    if op is None:
        raise EdgekitError(f"unknown accelerator instruction '{name}' (known: {', '.join(isa.BY_NAME)})")
    word = op.code
    known = {f.name for f in op.fields}
    for key in fields:
        if key not in known:
            raise EdgekitError(f"instruction {name} has no field '{key}' "
                               f"(fields: {', '.join(sorted(known)) or 'none'})")
    for f, lsb in op.layout():
        value = fields.get(f.name, 0)
        if f.enum is not None and isinstance(value, str):
            if value not in f.enum:
                raise EdgekitError(f"{name} {f.name}={value}: expected one of {', '.join(f.enum)}")
            value = f.enum[value]
        value = int(value)
        if not f.lo <= value <= f.hi:
            raise EdgekitError(f"{name} {f.name}={value} out of range [{f.lo}, {f.hi}]")
        word |= (value & ((1 << f.width) - 1)) << lsb
    return word


def decode(word: int) -> tuple[str | None, dict[str, int], int]:
    """128-bit integer -> (name or None if the opcode is illegal, fields, reserved bits value)."""
    op = isa.BY_CODE.get(word & 0xF)
    if op is None:
        return None, {}, 0
    fields = {}
    for f, lsb in op.layout():
        raw = (word >> lsb) & ((1 << f.width) - 1)
        if f.signed and raw >> (f.width - 1):
            raw -= 1 << f.width
        fields[f.name] = raw
    return op.name, fields, word >> op.used_bits


def _parse_value(text: str) -> int | str:
    try:
        return int(text, 0)
    except ValueError:
        return text


def assemble(text: str) -> list[int]:
    words = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        try:
            if parts[0] == ".insn":
                words.append(int(parts[1], 0) & ((1 << isa.INSN_BITS) - 1))
                continue
            fields = {}
            for p in parts[1:]:
                if "=" not in p:
                    raise EdgekitError(f"expected field=value, got '{p}'")
                key, value = p.split("=", 1)
                fields[key] = _parse_value(value)
            words.append(encode(parts[0], **fields))
        except EdgekitError as exc:
            raise EdgekitError(f"line {lineno}: {exc}") from None
        except (ValueError, IndexError):  # int() of a bad number, `.insn` without its word
            raise EdgekitError(f"line {lineno}: cannot parse {line[:60]!r} (a value is missing or is "
                               "not a number)") from None
    return words


def disassemble_one(word: int) -> str:
    name, fields, reserved = decode(word)
    if name is None or reserved:
        return f".insn 0x{word:032x}"
    parts = [name]
    for key, value in fields.items():
        if value == 0:
            continue
        if key in isa.ENUM_FIELDS:
            names = {v: k for k, v in isa.ENUM_FIELDS[key].items()}
            value = names.get(value, value)
        parts.append(f"{key}={value}")
    return " ".join(parts)


def disassemble(words) -> str:
    return "\n".join(disassemble_one(int(w)) for w in words) + "\n"


def to_bytes(words) -> bytes:
    return b"".join(int(w).to_bytes(isa.INSN_BYTES, "little") for w in words)


def from_bytes(data: bytes) -> list[int]:
    if len(data) % isa.INSN_BYTES:
        raise EdgekitError(f"instruction stream of {len(data)} bytes is not a multiple of {isa.INSN_BYTES}")
    return [int.from_bytes(data[i:i + isa.INSN_BYTES], "little") for i in range(0, len(data), isa.INSN_BYTES)]
