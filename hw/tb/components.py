"""Reusable cocotb components for the accelerator testbench.

All components act once per cycle at the falling clock edge, when every DUT
output is stable: they sample the DUT, drive their own outputs for the coming
rising edge, and account for the handshakes that edge will complete. (The
DUT's bus outputs depend only on its registers, never combinationally on its
inputs, which is what makes this exact.) One coroutine (`Harness`) steps the
memory model and the protocol monitor, which keeps simulation fast.

  AxiMemory          DRAM model behind the AXI4 subset: seeded random
                     back-pressure and latency per channel, SLVERR outside DRAM
  AxiProtocolMonitor valid held until ready with a stable payload, burst rules
  ControlDriver      CSR reads/writes, start / soft reset / wait
  Scoreboard         RTL results against the golden model, bit for bit
  Harness            the above wired to a DUT, with run(program) -> result
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

import cocotb
import numpy as np
from cocotb.triggers import FallingEdge, RisingEdge, with_timeout

from edgekit.compile.accel import golden, isa

OKAY, SLVERR = 0, 2


@dataclass
class ChannelTiming:
    """Random timing of one channel: P(ready/valid offered in a cycle), first-beat latency range."""

    p_offer: float = 1.0
    latency: tuple[int, int] = (0, 0)


@dataclass
class MemoryTiming:
    ar: ChannelTiming = field(default_factory=ChannelTiming)
    r: ChannelTiming = field(default_factory=ChannelTiming)
    aw: ChannelTiming = field(default_factory=ChannelTiming)
    w: ChannelTiming = field(default_factory=ChannelTiming)
    b: ChannelTiming = field(default_factory=ChannelTiming)

    @classmethod
    def ideal(cls) -> "MemoryTiming":
        return cls()

    @classmethod
    def random(cls, rng: random.Random) -> "MemoryTiming":
        def ch(lat):
            return ChannelTiming(rng.choice([1.0, 0.8, 0.5, 0.3]), (0, rng.choice([0, 2, 8, lat])))
        return cls(ch(4), ch(20), ch(4), ch(4), ch(12))


class Signals:
    """Cached access to DUT signals: writes only when the value changes."""

    def __init__(self, dut):
        self.dut = dut
        self._last = {}

    def get(self, name: str) -> int:
        return int(getattr(self.dut, name).value)

    def reader(self, name: str):
        """A fast integer reader of one signal (the raw GPI value, no LogicArray built)."""
        raw = getattr(self.dut, name)._handle
        return lambda: int(raw.get_signal_val_binstr(), 2)

    def set(self, name: str, value: int) -> None:
        if self._last.get(name) != value:
            getattr(self.dut, name).value = value
            self._last[name] = value


class AxiMemory:
    """DRAM behind the accelerator's AXI4 master port."""

    OUTPUTS = ("m_axi_arready", "m_axi_rvalid", "m_axi_rdata", "m_axi_rresp", "m_axi_rlast",
               "m_axi_awready", "m_axi_wready", "m_axi_bvalid", "m_axi_bresp")

    def __init__(self, sig: Signals, size: int, seed: int = 0, timing: MemoryTiming | None = None):
        self.sig = sig
        self.data = np.zeros(size, np.uint8)
        self.seed = seed
        self.timing = timing or MemoryTiming.ideal()
        self.reset()

    def reset(self) -> None:
        base = random.Random(self.seed)
        self.rng = {ch: random.Random(base.getrandbits(32)) for ch in ("ar", "r", "aw", "w", "b")}
        self.cycle = 0
        self.reads: list[list] = []     # [ready_cycle, word_addr, beats_left]
        self.writes: list[list] = []    # [word_addr, beats, received [(data, strb)]]
        self.bresps: list[list] = []    # [ready_cycle, resp]
        self.out = {"m_axi_arready": 0, "m_axi_rvalid": 0, "m_axi_rdata": 0, "m_axi_rresp": 0,
                    "m_axi_rlast": 0, "m_axi_awready": 0, "m_axi_wready": 0, "m_axi_bvalid": 0,
                    "m_axi_bresp": 0}
        self.write_beats = 0
        self.beat_log: list[tuple[int, int]] = []   # (cycle, wstrb) of every W handshake

    def load_image(self, image: np.ndarray) -> None:
        self.data = np.array(image, np.uint8).copy()

    def in_range(self, word: int) -> bool:
        return (word + 1) * isa.WORD_BYTES <= self.data.size

    def _offer(self, ch: str) -> bool:
        p = getattr(self.timing, ch).p_offer
        return p >= 1.0 or self.rng[ch].random() < p

    def _latency(self, ch: str) -> int:
        lo, hi = getattr(self.timing, ch).latency
        return self.rng[ch].randint(lo, hi) if hi else 0

    def step(self, s: dict) -> None:
        """One cycle: choose outputs, drive them, and apply the handshakes of the next rising edge."""
        out = self.out
        # Outputs for this cycle. A raised VALID stays until accepted (AXI rule).
        out["m_axi_arready"] = int(self._offer("ar"))
        out["m_axi_awready"] = int(self._offer("aw"))
        out["m_axi_wready"] = int(bool(self.writes) and self._offer("w"))
        if not out["m_axi_rvalid"] and self.reads and self.reads[0][0] <= self.cycle and self._offer("r"):
            word = self.reads[0][1]
            ok = self.in_range(word)
            out["m_axi_rvalid"] = 1
            out["m_axi_rdata"] = int(self.data[word * 8:(word + 1) * 8].view("<u8")[0]) if ok else 0
            out["m_axi_rresp"] = OKAY if ok else SLVERR
            out["m_axi_rlast"] = int(self.reads[0][2] == 1)
        if not out["m_axi_bvalid"] and self.bresps and self.bresps[0][0] <= self.cycle:
            out["m_axi_bvalid"] = 1
            out["m_axi_bresp"] = self.bresps[0][1]
        for name in self.OUTPUTS:
            self.sig.set(name, out[name])

        # Handshakes completing at the next rising edge.
        if s["m_axi_arvalid"] and out["m_axi_arready"]:
            self.reads.append([self.cycle + 1 + self._latency("r"), s["m_axi_araddr"] // 8, s["m_axi_arlen"] + 1])
        if out["m_axi_rvalid"] and s["m_axi_rready"]:
            burst = self.reads[0]
            burst[1] += 1
            burst[2] -= 1
            if burst[2] == 0:
                self.reads.pop(0)
            out["m_axi_rvalid"] = 0
        if s["m_axi_awvalid"] and out["m_axi_awready"]:
            self.writes.append([s["m_axi_awaddr"] // 8, s["m_axi_awlen"] + 1, []])
        if out["m_axi_wready"] and s["m_axi_wvalid"]:
            self.beat_log.append((self.cycle, s["m_axi_wstrb"]))
            burst = self.writes[0]
            burst[2].append((s["m_axi_wdata"], s["m_axi_wstrb"]))
            if len(burst[2]) == burst[1]:
                self._commit(self.writes.pop(0))
        if out["m_axi_bvalid"] and s["m_axi_bready"]:
            self.bresps.pop(0)
            out["m_axi_bvalid"] = 0
        self.cycle += 1

    def _commit(self, burst) -> None:
        """A whole write burst: all beats in range, or none written (SLVERR)."""
        word, beats, data = burst
        ok = all(self.in_range(word + k) for k in range(beats))
        if ok:
            for k, (value, strb) in enumerate(data):
                raw = int(value).to_bytes(8, "little")
                for b in range(8):
                    if strb >> b & 1:
                        self.data[(word + k) * 8 + b] = raw[b]
                if strb:
                    self.write_beats += 1
        self.bresps.append([self.cycle + 1 + self._latency("b"), OKAY if ok else SLVERR])


class AxiProtocolMonitor:
    """Checks the master's side of the protocol; violations collect in `errors`."""

    def __init__(self, max_burst: int = isa.HW_DEFAULTS["MAX_BURST"]):
        self.max_burst = max_burst
        self.errors: list[str] = []
        self.reset()

    def reset(self) -> None:
        self.prev = None
        self.prev_ready = {}
        self.w_expected: list[int] = []   # beats of accepted AW bursts awaiting W data
        self.w_count = 0
        self.cycle = 0

    def _fail(self, msg: str) -> None:
        if len(self.errors) < 20:
            self.errors.append(f"cycle {self.cycle}: {msg}")

    def _check_burst(self, kind: str, addr: int, length: int) -> None:
        beats = length + 1
        if addr % 8:
            self._fail(f"{kind} address 0x{addr:x} not 8-byte aligned")
        if beats > self.max_burst:
            self._fail(f"{kind} burst of {beats} beats > {self.max_burst}")
        if addr // 4096 != (addr + beats * 8 - 1) // 4096:
            self._fail(f"{kind} burst 0x{addr:x}+{beats} beats crosses a 4 KiB boundary")

    def check(self, s: dict, mem_out: dict) -> None:
        p = self.prev
        if p is not None:
            for ch, payload in (("ar", ("araddr", "arlen")), ("aw", ("awaddr", "awlen")),
                                ("w", ("wdata", "wstrb", "wlast"))):
                valid = f"m_axi_{ch}valid"
                if p[valid] and not self.prev_ready[ch]:
                    if not s[valid]:
                        self._fail(f"{ch.upper()}VALID dropped before READY")
                    for name in payload:
                        if s[f"m_axi_{name}"] != p[f"m_axi_{name}"]:
                            self._fail(f"{name.upper()} changed while VALID waited for READY")
        if s["m_axi_arvalid"] and (p is None or not p["m_axi_arvalid"] or self.prev_ready["ar"]):
            self._check_burst("AR", s["m_axi_araddr"], s["m_axi_arlen"])
        if s["m_axi_awvalid"] and (p is None or not p["m_axi_awvalid"] or self.prev_ready["aw"]):
            self._check_burst("AW", s["m_axi_awaddr"], s["m_axi_awlen"])
        # Handshakes at the coming edge
        if s["m_axi_awvalid"] and mem_out["m_axi_awready"]:
            self.w_expected.append(s["m_axi_awlen"] + 1)
        if s["m_axi_wvalid"] and mem_out["m_axi_wready"]:
            if not self.w_expected:
                self._fail("W beat without an accepted AW burst")
            else:
                self.w_count += 1
                last = self.w_count == self.w_expected[0]
                if bool(s["m_axi_wlast"]) != last:
                    self._fail(f"WLAST={s['m_axi_wlast']} on beat {self.w_count} of {self.w_expected[0]}")
                if last:
                    self.w_expected.pop(0)
                    self.w_count = 0
        self.prev = s
        self.prev_ready = {"ar": mem_out["m_axi_arready"], "aw": mem_out["m_axi_awready"],
                           "w": mem_out["m_axi_wready"]}
        self.cycle += 1


class ControlDriver:
    """Host side of the control/status block."""

    def __init__(self, dut, sig: Signals):
        self.dut, self.sig = dut, sig

    async def write(self, addr: int, value: int) -> None:
        await FallingEdge(self.dut.clk)
        self.sig.set("csr_valid", 1)
        self.sig.set("csr_write", 1)
        self.sig.set("csr_addr", addr)
        self.sig.set("csr_wdata", value & 0xFFFFFFFF)
        await FallingEdge(self.dut.clk)
        self.sig.set("csr_valid", 0)

    async def read(self, addr: int) -> int:
        await FallingEdge(self.dut.clk)
        self.sig.set("csr_valid", 1)
        self.sig.set("csr_write", 0)
        self.sig.set("csr_addr", addr)
        await FallingEdge(self.dut.clk)
        self.sig.set("csr_valid", 0)
        return self.sig.get("csr_rdata")

    async def counters(self) -> dict:
        out = {}
        for name, addr in isa.COUNTER_ADDR.items():
            out[name] = await self.read(addr) | (await self.read(addr + 4)) << 32
        return out

    async def start(self, insn_addr: int, insn_count: int) -> None:
        await self.write(isa.CSRS["insn_addr"][0], insn_addr)
        await self.write(isa.CSRS["insn_count"][0], insn_count)
        await self.write(isa.CSRS["ctrl"][0], 1 << isa.CTRL_BITS["start"])

    async def soft_reset(self, max_cycles: int = 10_000) -> None:
        await self.write(isa.CSRS["ctrl"][0], 1 << isa.CTRL_BITS["soft_reset"])
        for _ in range(max_cycles):
            if not await self.read(isa.CSRS["status"][0]) >> isa.STATUS_BITS["busy"] & 1:
                return
        raise AssertionError("still busy after soft reset")

    async def wait_done(self, max_cycles: int, period_ns: int, label: str = "") -> None:
        if not int(self.dut.irq.value):
            try:
                await with_timeout(RisingEdge(self.dut.irq), max_cycles * period_ns, "ns")
            except Exception as exc:
                raise AssertionError(f"{label}: no done/error within {max_cycles} cycles") from exc


@dataclass
class RtlResult:
    error: str
    error_pc: int
    counters: dict
    dram: np.ndarray


class Scoreboard:
    """RTL against golden: DRAM image, error code + PC, and the exactly countable counters."""

    EXACT = ("mac_busy", "macs", "compute_busy", "dram_rd_bytes", "dram_wr_bytes", "insns")

    def __init__(self):
        self.compared = 0
        self.mismatches: list[str] = []

    def compare(self, label: str, rtl: RtlResult, gold: golden.Result, exact_counters: bool = True) -> list[str]:
        diffs = []
        if (rtl.error, rtl.error_pc) != (gold.error, gold.error_pc):
            diffs.append(f"error {rtl.error}@{rtl.error_pc} != golden {gold.error}@{gold.error_pc}")
        bad = np.flatnonzero(rtl.dram != gold.dram)
        if bad.size:
            a = int(bad[0])
            diffs.append(f"{bad.size} DRAM bytes differ, first at 0x{a:x}: rtl {rtl.dram[a]} golden {gold.dram[a]}")
        if exact_counters and gold.error == "none":
            for name in self.EXACT:
                if rtl.counters[name] != gold.counters[name]:
                    diffs.append(f"counter {name}: rtl {rtl.counters[name]} golden {gold.counters[name]}")
            if rtl.counters["cycles"] < gold.counters["compute_busy"]:
                diffs.append("cycles below the compute unit's busy cycles")
        self.compared += 1
        self.mismatches += [f"{label}: {d}" for d in diffs]
        return diffs


class Harness:
    """DUT + memory + monitor + driver + scoreboard."""

    PERIOD_NS = 10
    INPUTS = ("m_axi_arvalid", "m_axi_araddr", "m_axi_arlen", "m_axi_rready", "m_axi_awvalid", "m_axi_awaddr",
              "m_axi_awlen", "m_axi_wvalid", "m_axi_wdata", "m_axi_wstrb", "m_axi_wlast", "m_axi_bready")

    def __init__(self, dut, seed: int = 0, timing: MemoryTiming | None = None, dram_size: int = 1 << 16):
        self.dut = dut
        self.sig = Signals(dut)
        self.mem = AxiMemory(self.sig, dram_size, seed, timing)
        self.monitor = AxiProtocolMonitor()
        self.ctrl = ControlDriver(dut, self.sig)
        self.scoreboard = Scoreboard()
        self.cycle = 0
        self.hooks = []  # callables(cycle) run each cycle (e.g. reset injection)

    async def start(self) -> None:
        from cocotb.clock import Clock

        Clock(self.dut.clk, self.PERIOD_NS, unit="ns").start()
        for name in ("csr_valid", "csr_write", "csr_addr", "csr_wdata"):
            self.sig.set(name, 0)
        cocotb.start_soon(self._loop())
        await self.hard_reset()

    async def hard_reset(self, cycles: int = 3) -> None:
        self.sig.set("rst_n", 0)
        for _ in range(cycles):
            await FallingEdge(self.dut.clk)
        self.mem.reset()
        self.monitor.reset()
        self.sig.set("rst_n", 1)
        await FallingEdge(self.dut.clk)

    async def _loop(self) -> None:
        dut = self.dut
        readers = [(name, self.sig.reader(name)) for name in self.INPUTS]
        rst_n = self.sig.reader("rst_n")
        edge = FallingEdge(dut.clk)
        while True:
            await edge
            s = {name: read() for name, read in readers}
            if rst_n():
                self.mem.step(s)
                self.monitor.check(s, self.mem.out)
            for hook in list(self.hooks):
                hook(self.cycle)
            self.cycle += 1

    async def run(self, dram: np.ndarray, insn_addr: int, insn_count: int, max_cycles: int = 200_000) -> RtlResult:
        self.mem.load_image(dram)
        await self.ctrl.start(insn_addr, insn_count)
        await self.ctrl.wait_done(max_cycles, self.PERIOD_NS, getattr(self, "current", ""))
        status = await self.ctrl.read(isa.CSRS["status"][0])
        code = await self.ctrl.read(isa.CSRS["error_code"][0])
        pc = await self.ctrl.read(isa.CSRS["error_pc"][0])
        counters = await self.ctrl.counters()
        # Let outstanding write responses land before comparing memory.
        for _ in range(64):
            if not (self.mem.writes or self.mem.bresps):
                break
            await FallingEdge(self.dut.clk)
        failed = status >> isa.STATUS_BITS["error"] & 1
        error = isa.ERROR_NAMES.get(code, f"code{code}") if failed else "none"
        return RtlResult(error, pc if failed else 0, counters, self.mem.data.copy())

    async def check_program(self, label: str, program, hw=None, exact_counters: bool = True,
                            max_cycles: int = 200_000):
        """Run on RTL and golden, compare, soft-reset afterwards; returns (rtl, golden)."""
        gold = golden.simulate(program.dram, program.insn_addr, program.insn_count, hw)
        self.current = label
        rtl = await self.run(program.dram, program.insn_addr, program.insn_count, max_cycles)
        diffs = self.scoreboard.compare(label, rtl, gold, exact_counters)
        self.dut._log.debug("%s: %s", label, "ok" if not diffs else diffs)
        await self.ctrl.soft_reset()
        return rtl, gold
