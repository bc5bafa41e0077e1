"""Run a compiled model folder (from `compile_accel`) on the golden model or the RTL, check it, count it.

    result = run_model("build/m-accel", x, simulator="golden")   # or "rtl"
    result["bit_exact"], result["cycles"], result["layers"][...]

The program's steps run in order on one DRAM image: accelerator segments on
the simulator (each ends in `finish`, so its counters are that layer's), host
steps (input quantization, output dequantization, `--fallback cpu` ops) in
Python with the integer reference's op table, reading and writing the same
DRAM. The outputs are compared bit for bit with
`edgekit.quant.intref.run` on the model's own quantized ONNX file, and every
accelerator-produced tensor with its reference value (the first mismatching
layer is named).

The RTL path runs the same step loop inside a cocotb test
(`edgekit.hw.sim.rtl_model`) on the Verilator build of `hw/rtl`.
"""
from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path

import numpy as np

from edgekit.compile.accel import golden, isa
from edgekit.compile.accel import layout as L
from edgekit.compile.accel.model_meta import FORMAT_KIND, AccelStep, read_model_meta
from edgekit.compile.accel.program import Program, check_feeds, read_feeds
from edgekit.errors import EdgekitError, require
from edgekit.onnx_graph.model import static_dims

CYCLE_LATENCY = 4   # memory latency the golden cycle estimate assumes (cycles)


def is_compiled_model(path) -> bool:
    meta = Path(path) / "program.json"
    if not meta.is_file():
        return False
    try:
        doc = json.loads(meta.read_bytes().decode("utf-8"))
    except (ValueError, OSError, RecursionError):   # Program.load names what is wrong with it
        return False
    return isinstance(doc, dict) and isinstance(doc.get("meta"), dict) and doc["meta"].get("kind") == FORMAT_KIND


class CompiledModel:
    """A compiled-model folder: the program, its steps and tensors, the quantized source graph."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.program = Program.load(self.folder)
        self.meta = self.program.meta
        require(self.meta.get("kind") == FORMAT_KIND, f"{self.folder}: not a compiled model (meta.kind)")
        self.n = self.program.hw["N"]
        checked = read_model_meta(self.meta, self.folder, self.program)
        self.source, self.steps, self.tensors = checked.source, checked.steps, checked.tensors
        self.outputs = checked.outputs
        self._qg = None

    @property
    def qgraph(self):
        if self._qg is None:
            from edgekit.quant.qgraph import parse

            self._qg = parse(self.source)
        return self._qg

    # ---- tensors in DRAM ------------------------------------------------
    def read(self, dram: np.ndarray, name: str) -> np.ndarray:
        t = self.tensors[name]
        raw = np.asarray(dram[t.addr:t.addr + t.nbytes(self.n)])
        codes = L.from_device(raw, t.c, t.h, t.w, self.n, t.signed)
        if t.view == "rows":   # [1, K, T, 1] -> [..., T, K]
            return codes[0, :, :, 0].T.reshape(t.shape)
        return codes

    def write(self, dram: np.ndarray, name: str, codes) -> None:
        t = self.tensors[name]
        codes = np.asarray(codes)
        if t.view == "rows":
            codes = codes.reshape(t.h, t.c).T
        raw = L.to_device(codes.reshape(1, t.c, t.h, t.w), self.n, t.zero_point)
        dram[t.addr:t.addr + raw.size] = raw.reshape(-1)

    def in_dram(self, name: str) -> bool:
        return name in self.tensors and self.tensors[name].in_dram


class HostOps:
    """Host steps: the integer reference's kernels on values read from / written to DRAM."""

    def __init__(self, model: CompiledModel):
        self.model = model
        self._consts = None

    def consts(self) -> dict:
        if self._consts is None:
            from edgekit.quant import intref

            self._consts = intref.constants(self.model.qgraph)
        return self._consts

    def run(self, op, args):
        from edgekit.quant import formats as F

        if op.kind == "quantize":      # cheap, and keeps torch out of the simulator process
            return F.quantize(args[0], op.out_q.scale, op.out_q.zero_point, op.out_q.qtype)
        if op.kind == "dequantize":
            return F.dequantize(args[0], op.in_q[0].scale, op.in_q[0].zero_point)
        from edgekit.quant import intref

        return intref.KERNELS[op.kind].run(op, args, self.consts())


async def execute(model: CompiledModel, device, feeds: dict, log=None) -> dict:
    """Run every step; `device` has `.dram` and `async run_segment(addr, count) -> counters`."""
    ops = {op.name: op for op in model.qgraph.ops}
    host = HostOps(model)
    env: dict = dict(feeds)
    layers = []

    def fetch(name):
        if name in env:
            return env[name]
        if model.in_dram(name):
            return model.read(device.dram, name)
        consts = host.consts()
        if name in consts:
            return consts[name]
        raise EdgekitError(f"{model.folder}: step input {name} is neither computed nor in DRAM")

    steps = model.steps
    for k, step in enumerate(steps):
        if log:
            log(k, len(steps), step)
        if not isinstance(step, AccelStep):
            require(step.op in ops, f"{model.folder}/program.json: field meta.steps[{k}].op: the quantized "
                                    f"model {model.source.name} has no op {step.op!r}")
            op = ops[step.op]
            out = host.run(op, [fetch(t) for t in op.inputs])
            env[op.outputs[0]] = out
            if model.in_dram(op.outputs[0]):
                model.write(device.dram, op.outputs[0], out)
            continue
        counters = await device.run_segment(step.insn_addr, step.insn_count)
        if counters.get("error", "none") != "none":
            raise EdgekitError(f"segment {step.name}: the accelerator stopped with {counters['error']} "
                               f"at instruction {counters.get('error_pc')}")
        layers.append({"name": step.name, "ops": step.ops, "op_kinds": step.op_kinds,
                       **counters, "useful_macs": step.macs})
    for name in model.outputs:
        require(name in env, f"{model.folder}/program.json: field meta.outputs: no step computes {name!r}")
    outputs = {name: np.asarray(env[name]) for name in model.outputs}
    codes = {}
    for name in model.tensors:
        if model.in_dram(name):
            codes[name] = model.read(device.dram, name)
    return {"outputs": outputs, "codes": codes, "layers": layers}


class GoldenDevice:
    """The golden model as a device: one architectural state across segments; per-segment counter deltas."""

    def __init__(self, program: Program):
        self.g = golden.Golden(program.dram, program.hw)
        self.dram = self.g.dram

    def _snapshot(self):
        g = self.g
        return dict(g.counters), g.estimate_cycles(CYCLE_LATENCY)

    async def run_segment(self, addr: int, count: int) -> dict:
        c0, e0 = self._snapshot()
        res = self.g.run(addr, count)
        c1, e1 = self._snapshot()
        out = {k: c1[k] - c0[k] for k in c1}
        compute, memory = e1["compute"] - e0["compute"], e1["memory"] - e0["memory"]
        out["cycles"] = max(compute, memory)
        out["stalls"] = {"memory_bound": max(0, memory - compute)}
        out["error"], out["error_pc"] = res.error, res.error_pc
        return out


def input_specs(model: CompiledModel) -> dict:
    """{input name: (shape, float32)}: what the model's float inputs must be."""
    return {inp.name: (tuple(static_dims(inp)), "float32")
            for inp in model.qgraph.model.graph.input if inp.name in model.qgraph.inputs}


def default_input(model: CompiledModel, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(shape).astype(np.float32) for name, (shape, _) in input_specs(model).items()}


def load_input(model: CompiledModel, path) -> dict:
    """An .npy (one-input models) or .npz (by input name) file of the model's float inputs, checked."""
    return read_feeds(path, input_specs(model))


def check_against_reference(model: CompiledModel, feeds: dict, run: dict) -> dict:
    """Bit-exact comparison of outputs and every accelerator-written tensor with the integer reference."""
    from edgekit.quant import intref

    ref = intref.run(model.qgraph, feeds, keep_intermediates=True)
    outputs = {}
    exact = True
    for name, got in run["outputs"].items():
        want = np.asarray(ref[name])
        same = got.shape == want.shape and np.array_equal(got, want)
        exact &= same
        outputs[name] = {"shape": list(want.shape), "bit_exact": bool(same),
                         "max_abs_diff": (float(np.max(np.abs(got.astype(np.float64) - want)))
                                          if got.shape == want.shape else None)}
    first_bad = None
    order = [op.outputs[0] for op in model.qgraph.ops]
    for name in order:
        if name in run["codes"] and name in ref:
            want = np.asarray(ref[name], np.int64)
            if run["codes"][name].shape != want.shape or not np.array_equal(run["codes"][name], want):
                first_bad = name
                exact = False
                break
    return {"bit_exact": bool(exact), "outputs": outputs, "first_mismatch": first_bad}


def summarize(model: CompiledModel, layers: list, simulator: str) -> dict:
    n2 = model.n * model.n
    rows = []
    for lay in layers:
        cyc = max(1, int(lay["cycles"]))
        rows.append({"name": lay["name"], "ops": lay["ops"], "kind": "+".join(lay["op_kinds"]),
                     "cycles": int(lay["cycles"]), "macs": int(lay["useful_macs"]),
                     "mac_utilization": lay["useful_macs"] / (cyc * n2),
                     "array_busy": lay.get("mac_busy", 0) / cyc,
                     "dram_read": int(lay.get("dram_rd_bytes", 0)), "dram_written": int(lay.get("dram_wr_bytes", 0)),
                     "instructions": int(lay.get("insns", 0)), "stalls": lay.get("stalls", {})})
    cycles = sum(r["cycles"] for r in rows)
    macs = sum(r["macs"] for r in rows)
    conv = [r for r in rows if any(k.startswith("conv") for k in r["kind"].split("+"))]
    conv_cycles = sum(r["cycles"] for r in conv)
    stalls: dict = {}
    for r in rows:
        for k, v in r["stalls"].items():
            stalls[k] = stalls.get(k, 0) + int(v)
    rd = sum(r["dram_read"] for r in rows)
    wr = sum(r["dram_written"] for r in rows)
    return {"simulator": simulator, "array": model.n, "fusion": model.meta.get("fusion"),
            "cycles": cycles, "macs": macs, "mac_utilization": macs / max(1, cycles * n2),
            "conv_mac_utilization": sum(r["macs"] for r in conv) / max(1, conv_cycles * n2),
            "dram_bytes": rd + wr, "dram_read": rd, "dram_written": wr, "stalls": stalls,
            "cycles_note": ("estimated by the golden model (ideal memory, latency "
                            f"{CYCLE_LATENCY}, load/compute/store overlapped within a layer)")
            if simulator == "golden" else "measured on the RTL (cocotb memory model)",
            "layers": rows}


def run_model(folder, feeds: dict | None = None, simulator: str = "golden", check: bool = True,
              progress: bool = False, rtl_seed: int = 0, max_cycles: int = 50_000_000) -> dict:
    """Run all steps on `simulator`; with `check`, compare with the integer reference.

    folder: a compiled-model folder (or an already loaded CompiledModel); feeds: {input name: float array}.

    rtl_seed: 0 = ideal memory, else seeded random back-pressure and latency on every AXI channel;
    max_cycles: per segment (RTL)."""
    model = folder if isinstance(folder, CompiledModel) else CompiledModel(folder)
    feeds = default_input(model) if feeds is None else check_feeds(feeds, input_specs(model), "feeds")
    if simulator == "golden":
        log = None
        if progress:
            from edgekit.progress import progress as bar

            pbar = bar(range(len(model.steps)), desc="golden", total=len(model.steps))
            it = iter(pbar)
            log = lambda k, total, step: next(it, None)  # noqa: E731
        run = asyncio.run(execute(model, GoldenDevice(model.program), feeds, log))
    elif simulator == "rtl":
        run = run_rtl(model, feeds, max_cycles, rtl_seed)
    else:
        raise EdgekitError(f"unknown simulator {simulator!r} (golden or rtl)")
    result = summarize(model, run["layers"], simulator)
    if check:
        result.update(check_against_reference(model, feeds, run))
    result["outputs_values"] = run["outputs"]
    return result


def run_rtl(model: CompiledModel, feeds: dict, timeout_cycles: int = 50_000_000, seed: int = 0) -> dict:
    """The same step loop inside a cocotb test on the Verilator build of the RTL."""
    from edgekit.hw.tb import runner

    if model.n != isa.HW_DEFAULTS["N"]:
        raise EdgekitError(f"the RTL is built with N={isa.HW_DEFAULTS['N']}; this program is for --array {model.n}")
    build_dir = runner.build()
    with tempfile.TemporaryDirectory(prefix="edgekit-rtl-model-") as tmp:
        tmp = Path(tmp)
        np.savez(tmp / "feeds.npz", **feeds)
        env = {"EDGEKIT_ACCEL_MODEL": str(model.folder.resolve()), "EDGEKIT_ACCEL_FEEDS": str(tmp / "feeds.npz"),
               "EDGEKIT_ACCEL_RESULT": str(tmp / "result.npz"), "EDGEKIT_ACCEL_MAX_CYCLES": str(timeout_cycles),
               "EDGEKIT_ACCEL_SEED": str(seed)}
        tests, failed = runner.run(build_dir, "edgekit.hw.sim.rtl_model", "run_compiled_model",
                                   extra_env=env, test_dir=tmp / "sim", log_file=tmp / "sim.log")
        result_file = tmp / "result.npz"
        if failed or not result_file.is_file():
            log = (tmp / "sim.log").read_text()[-2000:] if (tmp / "sim.log").is_file() else ""
            raise EdgekitError(f"RTL run of {model.folder} failed: " + " | ".join(
                ln for ln in log.splitlines() if "Error" in ln or "assert" in ln.lower())[-500:])
        data = np.load(result_file, allow_pickle=False)
        meta = json.loads(str(data["meta"]))
        outputs = {name: data["out__" + name] for name in model.outputs}
        codes = {name[len("code__"):]: data[name] for name in data.files if name.startswith("code__")}
        return {"outputs": outputs, "codes": codes, "layers": meta["layers"]}


def format_table(result: dict, other: dict | None = None) -> str:
    """Per-layer table for people; with `other` (e.g. the --no-fusion build) side by side."""
    head = f"{'layer':<28}{'kind':<22}{'cycles':>10}{'MAC util':>9}{'DRAM rd':>10}{'DRAM wr':>10}"
    if other:
        head += f"{'| cycles':>12}{'DRAM rd+wr':>12}"
    lines = [head, "-" * len(head)]
    others = {r["name"]: r for r in (other or {}).get("layers", [])}
    for r in result["layers"]:
        line = (f"{r['name'][:27]:<28}{r['kind'][:21]:<22}{r['cycles']:>10}{r['mac_utilization']:>9.1%}"
                f"{r['dram_read']:>10}{r['dram_written']:>10}")
        if other and r["name"] in others:
            o = others[r["name"]]
            line += f"{'| ' + str(o['cycles']):>12}{o['dram_read'] + o['dram_written']:>12}"
        lines.append(line)
    lines.append("-" * len(head))
    lines.append(f"total: {result['cycles']} cycles ({result['simulator']}), MAC utilization "
                 f"{result['mac_utilization']:.1%} (conv layers {result['conv_mac_utilization']:.1%}), "
                 f"DRAM {result['dram_bytes']} bytes (read {result['dram_read']}, written {result['dram_written']})")
    if other:
        lines.append(f"other build: {other['cycles']} cycles, DRAM {other['dram_bytes']} bytes "
                     f"-> DRAM traffic ratio {other['dram_bytes'] / max(1, result['dram_bytes']):.2f}x")
    if "bit_exact" in result:
        lines.append(f"bit_exact vs integer reference: {result['bit_exact']}"
                     + (f" (first mismatch: {result['first_mismatch']})" if result.get("first_mismatch") else ""))
    return "\n".join(lines)


def json_result(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "outputs_values"}


def simulate_compiled_model(args, plot=None) -> tuple[dict, str, dict, int]:
    """`edgekit simulate FOLDER` for a compiled model: (JSON document, per-layer table, output values,
    exit code). The caller writes the files (one OutputSet for all of them); `plot` is where
    the per-layer picture goes (the caller's temporary)."""
    simulator = "rtl" if args.rtl else "golden"
    model = CompiledModel(args.program)
    feeds = load_input(model, args.input) if args.input else default_input(model)
    other_model = None
    if args.compare:   # checked before the first (long) run
        require(is_compiled_model(args.compare), f"--compare {args.compare}: not a compiled-model folder")
        other_model = CompiledModel(args.compare)
        require(input_specs(other_model) == input_specs(model),
                f"--compare {args.compare}: its inputs differ from those of {args.program}")
    rtl = {"rtl_seed": args.seed or 0, "max_cycles": args.max_cycles or 50_000_000}   # per segment
    result = run_model(model, feeds, simulator, check=args.check, progress=True, **rtl)
    other = None
    if other_model is not None:
        other = run_model(other_model, feeds, simulator, check=args.check, progress=True, **rtl)
    doc = json_result(result)
    if other is not None:
        doc["compare"] = json_result(other)
        doc["compare"]["folder"] = str(args.compare)
        doc["dram_ratio_compare_over_this"] = other["dram_bytes"] / max(1, result["dram_bytes"])
    if plot:
        plot_layers(result, other, plot)
    return doc, format_table(result, other), result["outputs_values"], 0 if result.get("bit_exact", True) else 1


def plot_layers(result: dict, other: dict | None, path) -> None:
    """Bars per layer: cycles and DRAM bytes, this build vs the compared one (e.g. fused vs unfused),
    as a PNG written to `path` (a temporary of the caller's OutputSet: it renames it into place)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mine = {r["name"]: r for r in result["layers"]}
    others = {r["name"]: r for r in (other or {}).get("layers", [])}
    names = list(mine) + [nm for nm in others if nm not in mine]   # unfused builds have extra Add layers
    x = np.arange(len(names))
    w = 0.4 if other else 0.8
    label = lambda r: ("fused" if r.get("fusion") else "unfused") + f" ({r['simulator']})"  # noqa: E731
    fig, axes = plt.subplots(2, 1, figsize=(max(8, 0.28 * len(names)), 8), sharex=True)
    for ax, key, title in ((axes[0], "cycles", "cycles per layer"), (axes[1], None, "DRAM bytes per layer")):
        val = lambda r, key=key: (r["cycles"] if key else r["dram_read"] + r["dram_written"]) if r else 0  # noqa: E731
        ax.bar(x - (w / 2 if other else 0), [val(mine.get(nm)) for nm in names], w, label=label(result))
        if other:
            ax.bar(x + w / 2, [val(others.get(nm)) for nm in names], w, label=label(other))
        ax.set_title(title)
        ax.legend()
    axes[1].set_xticks(x)
    axes[1].set_xticklabels(names, rotation=90, fontsize=7)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=110, format="png")
    finally:
        plt.close(fig)
