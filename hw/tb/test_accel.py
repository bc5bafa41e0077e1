"""cocotb tests for accel_top: every test compares the RTL with the golden model bit for bit.

Run through pytest (tests/hw/test_hw_rtl.py) or `edgekit.hw.tb.runner`. Knobs:
  EDGEKIT_HW_RANDOM   number of constrained-random programs (default 200)
  EDGEKIT_HW_SEED     base seed of the random programs (default 20261127; logged)
  EDGEKIT_HW_REPORT   folder to write measurements (JSON) into
"""
from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import cocotb
from cocotb.triggers import ClockCycles, FallingEdge

from edgekit.compile.accel import golden, isa
from edgekit.hw.tb import programs as P
from edgekit.hw.tb.components import Harness, MemoryTiming


def report(name: str, data: dict) -> None:
    folder = os.environ.get("EDGEKIT_HW_REPORT")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")


def finish(h: Harness) -> None:
    assert not h.monitor.errors, "protocol violations: " + "; ".join(h.monitor.errors)
    assert not h.scoreboard.mismatches, "RTL != golden: " + "; ".join(h.scoreboard.mismatches[:10])


async def make(dut, seed=0, timing=None, dram_size=P.DRAM) -> Harness:
    h = Harness(dut, seed=seed, timing=timing, dram_size=dram_size)
    await h.start()
    return h


def random_timing(seed: int) -> MemoryTiming:
    return MemoryTiming.random(random.Random(seed))


def store_starved(timing: MemoryTiming) -> MemoryTiming:
    """The same timing with WREADY rarely offered, so store beats wait on the bus."""
    timing.w.p_offer = 0.15
    return timing


async def soft_reset_when_store_waits(h: Harness, max_cycles: int = 50_000) -> bool:
    """Write ctrl.soft_reset at an edge where a W beat is valid and WREADY is low, then wait until idle.

    The CSR write is driven from the harness's per-cycle hook, after the memory has chosen this
    cycle's WREADY, so the reset lands exactly while the beat waits (a coroutine could be a cycle
    late). Returns False when no store beat waited within `max_cycles` (the program has no store)."""
    ctrl_addr = isa.CSRS["ctrl"][0]
    state = {"armed": True, "fired_at": None}

    def hook(cycle: int) -> None:
        if state["fired_at"] is not None:
            if cycle > state["fired_at"]:
                h.sig.set("csr_valid", 0)
                h.hooks.remove(hook)
            return
        if h.sig.get("m_axi_wvalid") and not h.mem.out["m_axi_wready"]:
            soft_reset = 1 << isa.CTRL_BITS["soft_reset"]
            for name, value in (("csr_write", 1), ("csr_addr", ctrl_addr), ("csr_wdata", soft_reset), ("csr_valid", 1)):
                h.sig.set(name, value)
            state["fired_at"] = cycle

    h.hooks.append(hook)
    for _ in range(max_cycles):
        await FallingEdge(h.dut.clk)
        if state["fired_at"] is not None and hook not in h.hooks:
            break
        if int(h.dut.irq.value) and state["fired_at"] is None:
            break
    if hook in h.hooks:
        h.hooks.remove(hook)
        h.sig.set("csr_valid", 0)
    await h.ctrl.soft_reset()
    return state["fired_at"] is not None


@cocotb.test()
async def test_each_instruction(dut):
    h = await make(dut, seed=1)
    for k, (label, program) in enumerate(P.each_instruction()):
        h.mem.timing = random_timing(k)
        h.mem.seed = k
        await h.check_program(label, program)
    finish(h)


@cocotb.test()
async def test_errors(dut):
    """Every error code with its faulting PC, nothing written after the fault, soft reset recovers."""
    h = await make(dut, seed=2)
    recover, _ = P.matmul()
    for k, (label, expected, program) in enumerate(P.error_programs()):
        h.mem.timing = random_timing(100 + k)
        rtl, gold = await h.check_program(label, program, max_cycles=50_000)
        assert gold.error == expected, f"{label}: golden says {gold.error}"
        assert rtl.error == expected, f"{label}: RTL says {rtl.error}@{rtl.error_pc}"
        await h.check_program(f"{label}/recover", recover)
    finish(h)


@cocotb.test()
async def test_corner_cases(dut):
    h = await make(dut, seed=3)
    for k, (label, program) in enumerate(P.corner_programs()):
        h.mem.timing = random_timing(200 + k)
        await h.check_program(label, program)
    finish(h)


@cocotb.test()
async def test_conv_and_matmul(dut):
    """A fused conv layer (bias + requant + ReLU + residual) and a matmul: RTL == golden == numpy."""
    h = await make(dut, seed=4, timing=random_timing(4))
    conv, conv_expected = P.conv_layer()
    rtl, gold = await h.check_program("conv3x3", conv)
    assert (conv.outputs[0].read(gold.dram) == conv_expected).all(), "golden conv != numpy reference"
    assert (conv.outputs[0].read(rtl.dram) == conv_expected).all(), "RTL conv != numpy reference"
    conv2, conv2_expected = P.conv_layer(seed=8, h=9, w=7, cin=16, cout=16, stride=2)
    rtl, gold = await h.check_program("conv3x3 16->16 stride 2", conv2)
    assert (conv2.outputs[0].read(rtl.dram) == conv2_expected).all(), "RTL strided conv != numpy reference"
    mm, mm_expected = P.matmul()
    rtl, gold = await h.check_program("matmul", mm)
    assert (mm.outputs[0].read(rtl.dram) == mm_expected).all(), "RTL matmul != numpy"
    # exact counters, from first principles
    m, k, n, N = 16, 32, 16, isa.HW_DEFAULTS["N"]
    assert rtl.counters["macs"] == m * (k // N) * (n // N) * N * N
    assert rtl.counters["dram_rd_bytes"] == m * k + k * n
    assert rtl.counters["dram_wr_bytes"] == m * n * 4
    assert rtl.counters["fetch_bytes"] == mm.insn_count * isa.INSN_BYTES
    finish(h)


@cocotb.test()
async def test_reset_mid_program_and_burst(dut):
    """Soft reset in the middle of a program, of a read burst and of a write burst; hard reset too.
    The bus stays legal (bursts complete, WSTRB=0 after reset) and a rerun gives identical results."""
    h = await make(dut, seed=5, timing=MemoryTiming.random(random.Random(5)))
    program = P.gemm_sequence(tiles=2, m=16, kb=2, nb=2)
    gold = golden.simulate(program.dram, program.insn_addr, program.insn_count)

    async def interrupt(when: str, hard: bool = False):
        h.mem.load_image(program.dram)
        await h.ctrl.start(program.insn_addr, program.insn_count)
        for _ in range(20_000):
            await FallingEdge(dut.clk)
            s = {n: int(getattr(dut, n).value) for n in ("m_axi_rvalid", "m_axi_rready", "m_axi_wvalid")}
            if (when == "read" and s["m_axi_rvalid"] and s["m_axi_rready"]) or \
               (when == "write" and s["m_axi_wvalid"]) or when == "program":
                break
        if when == "program":
            for _ in range(150):
                await FallingEdge(dut.clk)
        if hard:
            await h.hard_reset()
        else:
            await h.ctrl.write(isa.CSRS["ctrl"][0], 1 << isa.CTRL_BITS["soft_reset"])
            reset_cycle = h.mem.cycle            # the reset took effect at the edge just before
            await h.ctrl.soft_reset()            # (again, harmless) and wait until not busy
            late = [c for c, strb in h.mem.beat_log if c >= reset_cycle and strb]
            assert not late, f"W beats with data after the soft reset at cycle {reset_cycle}: {late}"
            if when == "write":
                assert any(c >= reset_cycle and not strb for c, strb in h.mem.beat_log), \
                    "the interrupted write burst was not completed with WSTRB=0"
        rtl = await h.run(program.dram, program.insn_addr, program.insn_count)
        h.scoreboard.compare(f"rerun after {'hard' if hard else 'soft'} reset mid-{when}", rtl, gold)
        await h.ctrl.soft_reset()

    for when in ("program", "read", "write"):
        await interrupt(when)
    await interrupt("program", hard=True)
    await interrupt("write", hard=True)

    # A soft reset while a store beat waits for WREADY: the waiting beat keeps its WSTRB (the
    # monitor checks the payload is stable), later beats of that burst carry WSTRB = 0.
    saved = h.mem.timing
    flushed = 0
    for k in range(8):
        h.mem.timing = store_starved(MemoryTiming.random(random.Random(50 + k)))
        h.mem.load_image(program.dram)
        await h.ctrl.start(program.insn_addr, program.insn_count)
        first = len(h.mem.beat_log)
        assert await soft_reset_when_store_waits(h), "no store beat waited for WREADY"
        # beats with data are a prefix: the ones before the reset plus the one that was waiting
        data_flags = [bool(strb) for _, strb in h.mem.beat_log[first:]]
        assert data_flags == sorted(data_flags, reverse=True), f"a data beat after a WSTRB=0 beat: {data_flags}"
        flushed += not all(data_flags)
        h.mem.timing = saved
        rtl = await h.run(program.dram, program.insn_addr, program.insn_count)
        h.scoreboard.compare(f"rerun after soft reset while a store beat waited ({k})", rtl, gold)
        await h.ctrl.soft_reset()
    assert flushed, "no interrupted burst was finished with WSTRB=0 beats"
    finish(h)


@cocotb.test()
async def test_random_programs(dut):
    count = int(os.environ.get("EDGEKIT_HW_RANDOM", "200"))
    base = int(os.environ.get("EDGEKIT_HW_SEED", "20261127"))
    dut._log.info("random programs: %d, seeds %d..%d (EDGEKIT_HW_SEED)", count, base, base + count - 1)
    h = await make(dut, seed=base)
    errors = {}
    resets = store_resets = 0
    t0, c0 = time.perf_counter(), h.cycle
    for k in range(count):
        seed = base + k
        h.mem.timing = random_timing(seed)
        program = P.random_program(seed)
        pick = random.Random(seed)
        roll = pick.random()
        if roll < 0.1:  # interrupt a first attempt at a random cycle; the rerun must be exact
            h.mem.load_image(program.dram)
            await h.ctrl.start(program.insn_addr, program.insn_count)
            await ClockCycles(dut.clk, pick.randrange(5, 1500), rising=False)
            await h.ctrl.soft_reset()
            resets += 1
        elif roll < 0.2:  # interrupt it while a store beat waits for WREADY (W back-pressure)
            h.mem.timing = store_starved(random_timing(seed))
            h.mem.load_image(program.dram)
            await h.ctrl.start(program.insn_addr, program.insn_count)
            store_resets += await soft_reset_when_store_waits(h)
            h.mem.timing = random_timing(seed)
        rtl, gold = await h.check_program(f"random seed={seed}", program)
        errors[gold.error] = errors.get(gold.error, 0) + 1
    wall = time.perf_counter() - t0
    cycles = h.cycle - c0
    dut._log.info("random: %d programs (%d after a random soft reset, %d after one while a store beat "
                  "waited), %d mismatches, %d protocol violations, outcomes %s, %d cycles in %.1f s (%.0f cycles/s)",
                  count, resets, store_resets, len(h.scoreboard.mismatches), len(h.monitor.errors), errors,
                  cycles, wall, cycles / wall)
    report("random", {"programs": count, "base_seed": base, "mismatches": len(h.scoreboard.mismatches),
                      "protocol_violations": len(h.monitor.errors),
                      "interrupted_by_soft_reset": resets, "reset_while_store_waited": store_resets,
                      "outcomes": errors, "cycles": cycles, "wall_s": wall, "cycles_per_s": cycles / wall})
    finish(h)


@cocotb.test()
async def test_mac_utilization(dut):
    """Compute-bound GEMM tile sequence: busy MAC cycles / total cycles >= 80%, from the RTL's counters."""
    timing = MemoryTiming()
    timing.r.latency = (10, 10)  # a plausible DRAM latency, no back-pressure
    h = await make(dut, seed=6, timing=timing, dram_size=1 << 20)
    program = P.gemm_sequence(tiles=8, m=32, kb=16, nb=4)
    t0 = time.perf_counter()
    rtl, gold = await h.check_program("gemm_sequence", program)
    wall = time.perf_counter() - t0
    util = rtl.counters["mac_busy"] / rtl.counters["cycles"]
    dut._log.info("MAC utilization %.3f (%d busy / %d cycles), %.0f cycles/s",
                  util, rtl.counters["mac_busy"], rtl.counters["cycles"], rtl.counters["cycles"] / wall)
    report("utilization", {"utilization": util, "counters": rtl.counters,
                           "golden_estimate": gold.counters["estimate"], "cycles_per_s": rtl.counters["cycles"] / wall})
    assert util >= 0.80, f"MAC utilization {util:.3f} < 0.80"
    # the golden model's estimate brackets the RTL: overlapped <= real <= serial (10-cycle memory)
    est = golden.Golden(program.dram)
    est.run(program.insn_addr, program.insn_count)
    bounds = est.estimate_cycles(latency=10)
    assert bounds["overlapped"] <= rtl.counters["cycles"] <= bounds["serial"], (bounds, rtl.counters["cycles"])
    finish(h)


@cocotb.test()
async def test_depthwise_conv(dut):
    """Depthwise convs (3x3/5x5/7x7, stride 1 and 2, widths not a multiple of N) on the depthwise gemm
    mode: RTL == golden == numpy bit for bit, and the array takes taps x OH x ceil(OW / N) cycles per
    channel block (N pixels per cycle, not one)."""
    h = await make(dut, seed=7, timing=random_timing(7))
    for k, stride, height, width in ((3, 1, 12, 13), (5, 2, 11, 14), (7, 1, 9, 10), (7, 2, 16, 16)):
        program, expected, steps = P.depthwise_layer(k=k, stride=stride, h=height, w=width)
        label = program.meta["layer"]
        rtl, gold = await h.check_program(label, program)
        assert (program.outputs[0].read(gold.dram) == expected).all(), f"{label}: golden != numpy"
        assert (program.outputs[0].read(rtl.dram) == expected).all(), f"{label}: RTL != numpy"
        assert rtl.counters["mac_busy"] == steps, (label, rtl.counters["mac_busy"], steps)
        assert rtl.counters["macs"] == steps * isa.HW_DEFAULTS["N"] ** 2
    finish(h)
