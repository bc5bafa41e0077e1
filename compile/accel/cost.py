"""Static cost of an instruction stream: the golden model's counters without executing anything.

The golden model's counters depend only on instruction fields (loop trip
counts, DMA geometry), never on data, so decoding a segment gives the same
MACs, compute-busy cycles, DRAM bytes and cycle estimate as running it
(`tests/accel_compiler` checks the equality). That makes full-size models
(LitePose-XS at 256x256, the depth model at 518x518) cheap to cost for the
frames-per-second estimate in `tools/accel_estimate.py`.
"""
from __future__ import annotations

from pathlib import Path

from edgekit.jsondoc import DocCheck

from . import isa
from .asm import decode
from .golden import gemm_steps, post_cycles, split_bursts
from .model_meta import AccelStep, HostStep, read_steps
from .program import Program

BUFS = {v: k for k, v in isa.BUFFERS.items()}


def segment_cost(insns, hw: dict, latency: int = 4) -> dict:
    """Counters of one segment (instructions up to and including `finish`)."""
    hw = dict(isa.HW_DEFAULTS, **hw)
    n = hw["N"]
    c = {"compute_busy": 0, "mac_busy": 0, "macs": 0, "dram_rd_bytes": 0, "dram_wr_bytes": 0, "insns": 0}
    words = bursts = 0
    for word in insns:
        name, f, _ = decode(int(word))
        c["insns"] += 1
        if name == "finish":
            break
        if name in ("gemm", "vec"):
            steps = gemm_steps(f, n) if name == "gemm" else f["outer"] * f["inner"]
            c["compute_busy"] += max(1, steps)
            if name == "gemm":
                c["mac_busy"] += steps
                c["macs"] += steps * n * n
        elif name == "post":
            c["compute_busy"] += max(1, post_cycles(f, hw["POST_ROWS"]))
        elif name in ("load", "store"):
            x, y = f["xsize"], f["ysize"]
            if not x or not y:
                continue
            rb = isa.row_bytes(BUFS[f["buf"]], n)
            rw = rb // isa.WORD_BYTES
            beats = x * rw              # DRAM words per line
            if name == "load":
                rows = (f["pad_top"] + y + f["pad_bottom"]) * (f["pad_left"] + x + f["pad_right"])
                words += rows * rw          # data + padding rows written into the buffer (a cycle each)
                if f["int4"]:
                    beats //= 2             # packed nibbles: half the DRAM words for the same rows
                c["dram_rd_bytes"] += y * beats * isa.WORD_BYTES
            else:
                words += x * y * rw
                c["dram_wr_bytes"] += x * y * rb
            for line in range(y):
                bursts += len(split_bursts(f["dram"] + line * f["xstride"], beats, hw["MAX_BURST"]))
    memory = words + bursts * (latency + 2)
    c["cycles"] = max(c["compute_busy"], memory)
    c["memory_cycles"] = memory
    return c


def program_cost(folder, latency: int = 4) -> dict:
    """Per-segment and total static cost of a compiled-model folder."""
    prog = Program.load(folder)
    steps = read_steps(prog.meta, prog, DocCheck(Path(folder) / "program.json"))
    layers = []
    for step in steps:
        if not isinstance(step, AccelStep):
            continue
        seg = prog.insns[step.insn_start:step.insn_start + step.insn_count]
        cost = segment_cost(seg, prog.hw, latency)
        layers.append({"name": step.name, "kinds": step.op_kinds, "useful_macs": step.macs, **cost})
    total = {k: sum(layer[k] for layer in layers) for k in ("cycles", "compute_busy", "mac_busy", "useful_macs",
                                                     "dram_rd_bytes", "dram_wr_bytes", "insns")}
    host = [s for s in steps if isinstance(s, HostStep)]
    return {"hw": prog.hw, "layers": layers, "total": total, "host_steps": len(host),
            "fallback_ops": [s.op for s in host if s.fallback]}
