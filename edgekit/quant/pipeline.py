"""Quantization as a list of composable steps (config objects), like torchao.

    cfg = QuantConfig(weight_bits=4, act_bits=4, steps=[RTN(), Polish(), Compensate(), Reconstruct()])
    qdq_model, report = quantize("model.onnx", calib_feeds, cfg)

Every step takes the plan (float model + quantizers) and calibration data and
leaves a complete, consistent plan; after each step the per-layer SQNR is
measured so the report shows what each step bought.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx
import torch

from edgekit.errors import require
from edgekit.onnx_graph.model import constant_first_matmuls_to_layers, initializers, prepare_model, static_dims
from edgekit.onnx_graph.torch_ops import OPS, TorchGraph, to_torch
from edgekit.progress import progress
from edgekit.quant import compensate as C
from edgekit.quant import polish as P
from edgekit.quant import reconstruct as R
from edgekit.quant import rtn
from edgekit.quant.plan import QuantPlan, build_plan
from edgekit.quant.qdq import to_qdq
from edgekit.quant.sequential import sequential_pass, stack_groups
from edgekit.quant.simulate import act_hook, quantized_overrides

METHODS = ("rtn", "polish", "compensate", "reconstruct", "full")

# Ops accepted in a float model: every op of the torch op table (default ONNX domain). The plan
# puts layers and the few integer ops on the grid (see plan.py); any other op stays float in the
# QDQ graph, reading dequantized tensors. An op missing from the table, or a custom-domain op, is
# refused before any work, naming the node. (Subgraph ops, If/Loop/Scan, are not accepted: the
# layer-by-layer steps run nodes one at a time.)
QUANTIZABLE_MODEL_OPS = frozenset(OPS)


@dataclass
class RTN:
    """Min-max activation ranges, absmax per-channel weights, nearest rounding."""

    name: str = "rtn"

    def apply(self, plan: QuantPlan, calib, ctx) -> dict:
        ctx["ranges"] = rtn.collect_ranges(plan, calib)
        rtn.set_params_from_ranges(plan, ctx["ranges"])
        rtn.quantize_constants(plan)
        rtn.rtn_weights(plan)
        return {}


@dataclass
class Polish:
    """Equalization migrated into weights + consumer-aware clipping search; weights on
    per-channel MSE-clipped ranges (`mse_weights`; RTN keeps absmax as the baseline)."""

    equalize: bool = True
    clip: bool = True
    samples: int = 8
    mse_weights: bool = True
    # keep at 16 bits the activation points that alone cost most of the output error
    # (polish.widen_outliers: MiniLM's residual stream after its first FFN)
    widen: bool = True
    name: str = "polish"

    def apply(self, plan, calib, ctx) -> dict:
        out = {}
        if self.equalize:
            out["equalization"] = P.equalize(plan, calib, lambda t: plan.bits[plan.source(t)], self.samples)
            ctx["float_model"] = _copy(plan.model)
            ctx["ranges"] = rtn.collect_ranges(plan, calib, desc="re-calibrating")
            rtn.set_params_from_ranges(plan, ctx["ranges"])
        if self.widen:
            out["wide_points"] = P.widen_outliers(plan, calib, ctx["ranges"], self.samples)
        if self.clip:
            out["clip_ratios"] = P.clip_search(plan, calib, ctx["ranges"], self.samples)
        rtn.rtn_weights(plan, mse=self.mse_weights)
        return out


@dataclass
class Compensate:
    """Closed-form ridge regression of W', b' on Q(x) from the quantized upstream."""

    # ridge pull towards the current weights, relative to the mean diagonal of E[Q(x) Q(x)^T]:
    # EfficientNet-Lite2 W4A8 held-out output SQNR 14.1 / 15.2 / 15.1 / 14.7 dB at 0.01 / 0.1 /
    # 0.3 / 1 (16 fit crops; its last 1x1 convs have more inputs than calibration rows)
    damp: float = 0.3
    mse_weights: bool = True
    # round each fitted layer on output-error scales and correct its bias for the rounding's
    # mean error (compensate.round_and_correct); False: weight-MSE scales, bias as fitted
    bias_correct: bool = True
    name: str = "compensate"
    guarded: bool = True      # a fit to the calibration samples: undone if held-out samples get worse

    def apply(self, plan, calib, ctx) -> dict:
        done = []

        def on_layer(layer, xq, xf, groups):
            if C.compensate_layer(plan, layer, xq, xf, self.damp, self.bias_correct):
                done.append(layer.name)
                if self.bias_correct:
                    return
            rtn.rtn_weights(plan, layers={layer.name}, mse=self.mse_weights)
        sequential_pass(plan, ctx["float_model"], calib[:ctx["layer_samples"]], on_layer, "compensating")
        return {"layers": done}


@dataclass
class Reconstruct:
    """Learned rounding (AdaRound, Fisher-weighted); a short schedule without Fisher weights when fast."""

    fast: bool = False
    iters: int = 200
    fisher: bool = True
    fisher_mix: float = 0.5
    free_bias: bool = True       # re-fit the layer's bias with its codes (closed form)
    output_scales: bool = True   # per-channel scales by the layer's output error, not the weight's
    damp: float = 0.0            # ridge pull towards the float weight (reconstruct.damped_moments)
    # per layer, keep the new rounding only where it beats the layer's previous one on held-out
    # calibration samples (up to `select_samples` of those after `layer_samples`)
    select: bool = True
    select_samples: int = 16
    name: str = "reconstruct"
    guarded: bool = True      # a fit to the calibration samples: undone if held-out samples get worse

    def apply(self, plan, calib, ctx) -> dict:
        fm = ctx["float_model"]
        finit = initializers(fm)
        n_fit = ctx["layer_samples"]
        # held-out samples (the guard's, which no fit sees) ride along the pass: each layer's new
        # rounding is checked on them against the rounding it had, and kept only if better there
        n_val = min(len(calib) - n_fit, self.select_samples) if (self.select and ctx.get(
            "held_out_kind", "held-out") == "held-out") else 0
        fit_calib = calib[:n_fit]
        fisher = fisher_weights(fm, plan, fit_calib) if (self.fisher and not self.fast) else {}
        how = {}

        def on_layer(layer, xq, xf, groups):
            w0 = finit[layer.weight]
            b0 = finit[layer.bias] if layer.bias else None
            fit_g = [[j for j, i in enumerate(g) if i < n_fit] for g in groups]
            val_g = [[j for j, i in enumerate(g) if i >= n_fit] for g in groups]

            def part(xs, sel):
                return [x[torch.tensor(s, dtype=torch.long)] for x, s in zip(xs, sel) if s]
            f = fisher.get(layer.block_output)
            if f is not None:  # per sample -> batched like xq, xf
                groups_fit = [[i for i in g if i < n_fit] for g in groups]
                f = [(1 - self.fisher_mix) + self.fisher_mix * fg
                     for fg in stack_groups(f, [g for g in groups_fit if g])]
            val = (part(xq, val_g), part(xf, val_g)) if n_val else None
            how[layer.name] = R.reconstruct_layer(plan, layer, part(xq, fit_g), part(xf, fit_g), w0, b0, f,
                                                  self.fast, self.iters, self.free_bias, self.output_scales,
                                                  self.damp, val)
        sequential_pass(plan, fm, calib[:n_fit + n_val], on_layer, "reconstructing")
        return {"rounding": how}


@dataclass
class QuantConfig:
    weight_bits: int = 4
    act_bits: int = 4
    io_bits: int = 8
    keep_8bit: tuple = ()
    steps: list = field(default_factory=lambda: [RTN(), Polish(), Compensate(), Reconstruct()])
    report_samples: int = 4
    layer_samples: int = 16   # calibration samples used layer by layer (compensate / reconstruct)
    # Undo a fitting step (compensate, reconstruct: `guarded = True`) that lowers the output SQNR
    # on calibration samples that no layer-wise fit saw (those after the first `layer_samples`):
    # a fit lowers its own layers' error on the samples it saw, which can over-fit (compensate on
    # MiniLM's 16 sentences). Preparation steps (RTN, polish) set the grids the fits start from and
    # are not judged: polish lowers ESRGAN-slim's W4A8 output from 35.2 to 28.2 dB PSNR, yet `full`
    # ends at 41.9 dB with it and 42.1 dB with it undone.
    guard: bool = True
    guard_tolerance_db: float = 0.1
    measure_samples: int = 16  # held-out samples the guard and the report's SQNR are measured on
    snapshots: bool = False   # keep a QDQ model after every step (report["_models"]), for benchmarks

    @classmethod
    def for_method(cls, method: str = "full", fast: bool = False, **kw) -> "QuantConfig":
        require(method in METHODS, f"unknown method {method!r} (choose from {', '.join(METHODS)})")
        order = ["rtn", "polish", "compensate", "reconstruct"]
        upto = len(order) if method == "full" else order.index(method) + 1
        make = {"rtn": RTN, "polish": Polish, "compensate": Compensate,
                "reconstruct": lambda: Reconstruct(fast=fast)}
        return cls(steps=[make[s]() for s in order[:upto]], **kw)


def _copy(model):
    m = onnx.ModelProto()
    m.CopyFrom(model)
    return m


def fisher_weights(model, plan: QuantPlan, calib, samples: int | None = None) -> dict:
    """Diagonal Fisher proxy per block output: squared gradient of a random projection of the outputs.

    {block output: [one tensor per calibration sample]}, normalised to mean 1 over all samples
    (which may differ in shape on dynamic axes).
    """
    graph = TorchGraph(model)
    blocks = {layer.block_output for layer in plan.layers.values()}
    sums: dict[str, list] = {b: [] for b in blocks}
    gen = torch.Generator().manual_seed(0)
    for feeds in progress(calib, desc="fisher"):
        seen = {}

        def hook(name, value, seen=seen):  # this batch's dict: the hook lives one iteration
            if name in blocks and value.is_floating_point():
                if not value.requires_grad:  # upstream of it is all integer (token ids)
                    value = value.detach().requires_grad_(True)
                seen[name] = value
            return value
        feeds_t = {k: to_torch(v) for k, v in feeds.items()}
        for value in feeds_t.values():
            if value.is_floating_point():  # integer inputs (token ids) have no gradient
                value.requires_grad_(True)
        outs = graph.run(feeds_t, hook=hook)
        loss = sum((torch.randn(o.shape, generator=gen) * o).sum() for o in outs.values()
                   if o.is_floating_point() and o.requires_grad)
        if not seen or not torch.is_tensor(loss):
            continue
        names = list(seen)
        grads = torch.autograd.grad(loss, [seen[n] for n in names], allow_unused=True)
        for n, g in zip(names, grads):
            sums[n].append(torch.zeros_like(seen[n]) if g is None else g.detach() ** 2)
    out = {}
    for n, gs in sums.items():
        if len(gs) == len(calib):
            if len({tuple(g.shape) for g in gs}) == 1:
                mean = torch.cat(gs).mean()
            else:
                mean = sum(g.double().sum() for g in gs) / sum(g.numel() for g in gs)
                mean = mean.float()
            mean = mean.clamp_min(1e-20)
            out[n] = [g / mean for g in gs]
    return out


def sqnr_report(plan: QuantPlan, float_model, calib, samples: int) -> dict:
    """Per-layer SQNR (dB) at block outputs and at the model outputs, fake-quantized vs float."""
    fgraph, qgraph = TorchGraph(float_model), TorchGraph(plan.model)
    names = [layer.block_output for layer in plan.layers.values()] + list(fgraph.output_names)
    sig = {n: 0.0 for n in names}
    noise = {n: 0.0 for n in names}
    overrides, hook = quantized_overrides(plan), act_hook(plan)
    with torch.no_grad():
        for feeds in calib[:samples]:
            f = fgraph.run(feeds, keep=set(names))
            q = qgraph.run(feeds, hook=hook, weights=overrides, keep=set(names))
            for n in names:
                if n in f and f[n].is_floating_point():
                    sig[n] += float((f[n].double() ** 2).sum())
                    noise[n] += float(((q[n].double() - f[n].double()) ** 2).sum())
    db = lambda n: float(10 * np.log10(max(sig[n], 1e-30) / max(noise[n], 1e-30)))  # noqa: E731
    return {"layers": {layer.name: db(layer.block_output) for layer in plan.layers.values()},
            "outputs": {n: db(n) for n in fgraph.output_names if sig[n] > 0 or noise[n] > 0}}


def check_calibration(model: onnx.ModelProto, calib: list[dict]) -> None:
    require(len(calib) > 0, "empty calibration set")
    inits = {i.name for i in model.graph.initializer}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        dims = static_dims(inp)
        for i, feeds in enumerate(calib):
            require(inp.name in feeds, f"calibration sample {i}: missing input {inp.name}")
            arr = np.asarray(feeds[inp.name])
            ok = arr.ndim == len(dims) and all(d is None or d == 0 or d == s for d, s in zip(dims, arr.shape))
            require(ok, f"calibration sample {i}: input {inp.name} has shape {list(arr.shape)}, "
                        f"model expects {['?' if d is None else d for d in dims]}")
            elem = inp.type.tensor_type.elem_type
            want = onnx.helper.tensor_dtype_to_np_dtype(elem) if elem else arr.dtype
            require(arr.dtype.kind == "f" if want.kind == "f" else arr.dtype.kind in "biu",
                    f"calibration sample {i}: input {inp.name} has dtype {arr.dtype}, model expects {want}")
            require(arr.dtype.kind not in "fc" or bool(np.all(np.isfinite(arr))),
                    f"calibration sample {i}: input {inp.name} contains NaN or Inf")


def quantize(model, calib: list[dict], config: QuantConfig | None = None):
    """Float ONNX (path or ModelProto) + calibration feeds -> (QDQ ModelProto, report dict)."""
    config = config or QuantConfig()
    require(config.weight_bits in (4, 8) and config.act_bits in (4, 8), "bits must be 4 or 8")
    t0 = time.time()
    fm = prepare_model(model, QUANTIZABLE_MODEL_OPS)
    # C @ x as a layer, so it runs on the integer kernels (deblur's DFT over the rows: 1.9x faster
    # compiled; its W4A8 PSNR 28.52 -> 28.40 dB, from the products' outputs now being quantization
    # points (28.43 with these weights at 8 bits, so they keep the model's bits))
    constant_first_matmuls_to_layers(fm)
    check_calibration(fm, calib)
    calib = [{k: np.asarray(v, np.float32) if np.asarray(v).dtype.kind == "f" else np.asarray(v)
              for k, v in f.items()} for f in calib]
    with torch.no_grad():
        graph = TorchGraph(fm)
        env = graph.run(calib[0], keep={o for n in fm.graph.node for o in n.output} | set(graph.input_names))
    plan = build_plan(fm, env, config.act_bits, config.weight_bits, config.io_bits, tuple(config.keep_8bit))
    require(len(plan.layers) > 0, "model has no Conv/Gemm/MatMul layer with constant weights to quantize")
    ctx = {"float_model": _copy(fm), "layer_samples": config.layer_samples}
    report = {"config": {"weight_bits": config.weight_bits, "act_bits": config.act_bits,
                         "io_bits": config.io_bits, "keep_8bit": list(config.keep_8bit),
                         "steps": [asdict(s) for s in config.steps], "calibration_samples": len(calib)},
              "steps": []}
    # the samples the report and the guard measure on: held out from the layer-wise fits when there are any
    measured = calib[config.layer_samples:][:config.measure_samples] or calib[:config.report_samples]
    report["sqnr_samples"] = "held-out" if len(calib) > config.layer_samples else "calibration"
    # a gated step (mixed precision) measures on every held-out sample
    ctx.update(held_out=calib[config.layer_samples:] or measured, held_out_kind=report["sqnr_samples"])
    sq = None
    for step in config.steps:
        ts = time.time()
        # the gate's drop of the plan as it stands, when known: every step may change the plan
        # (the gate step itself sets it for the plan it leaves)
        gate_now = ctx.pop("gate_now", None)
        if not isinstance(step, RTN) and not plan.params:
            RTN().apply(plan, calib, ctx)
        judged = config.guard and sq is not None and getattr(step, "guarded", False)
        before = _State.of(plan, ctx) if judged else None
        # with an accuracy gate (ctx["gate_drop"], set by MixedPrecision) the guard measures the
        # user's metric instead of the output SQNR: the two can disagree (LitePose W4A4)
        gate_before = None
        if judged and "gate_drop" in ctx:
            gate_before = gate_now if gate_now is not None else ctx["gate_drop"](plan)
        details = step.apply(plan, calib, ctx)
        new_sq = sqnr_report(plan, ctx["float_model"], measured, len(measured))
        entry = {"step": step.name, "seconds": 0.0, "sqnr_db": new_sq, "details": details, "kept": True}
        if gate_before is not None:
            gate_after = ctx["gate_drop"](plan)
            entry["gate_drop"] = [gate_before, gate_after]
            worse = gate_after > gate_before
        else:
            worse = before is not None and _output_db(new_sq) < _output_db(sq) - config.guard_tolerance_db
        if worse:
            before.restore(plan, ctx)  # the step made the model worse where it counts: undo it
            entry.update(kept=False, sqnr_db=sq, rejected_sqnr_db=new_sq)
        if gate_before is not None:
            ctx["gate_now"] = gate_before if worse else gate_after
        sq = entry["sqnr_db"]
        entry["seconds"] = round(time.time() - ts, 2)
        report["steps"].append(entry)
        if config.snapshots:
            report.setdefault("_models", {})[step.name] = to_qdq(plan)
    for step, entry in zip(config.steps, report["steps"]):
        if hasattr(step, "final_check"):  # a step that sets a goal checks it on the finished model
            entry["details"].update(step.final_check(plan, calib, ctx))
    qdq = to_qdq(plan)
    report["seconds"] = round(time.time() - t0, 2)
    report["layers"] = {layer.name: {"op": layer.op_type, "weight_bits": layer.weight_bits,
                                 "act_bits": plan.qparams(layer.block_output).qtype.bits}
                        for layer in plan.layers.values()}
    report["float_ops"] = _float_ops(plan)
    report["float_nodes"] = list(plan.float_nodes)
    report["_plan"] = plan
    return qdq, report


def _output_db(sqnr: dict) -> float:
    """One number for a model's output SQNR: the mean over its float outputs."""
    values = list(sqnr["outputs"].values())
    return float(np.mean(values)) if values else 0.0


@dataclass
class _State:
    """What a step may change (the plan's weights and grids, the float model and ranges in ctx),
    kept so that the guard can undo a step."""

    model: onnx.ModelProto
    tables: dict
    ctx: dict

    TABLES = ("params", "weights_q", "weight_scales", "const_params", "bits")

    @classmethod
    def of(cls, plan: QuantPlan, ctx: dict) -> "_State":
        # steps replace the entries of these tables and of ctx, but edit the model's initializers in place
        return cls(_copy(plan.model), {t: dict(getattr(plan, t)) for t in cls.TABLES}, dict(ctx))

    def restore(self, plan: QuantPlan, ctx: dict) -> None:
        plan.model = self.model
        for name, table in self.tables.items():
            setattr(plan, name, table)
        ctx.clear()
        ctx.update(self.ctx)


def _float_ops(plan: QuantPlan) -> dict[str, int]:
    """{op type: count} of the nodes left in float (not on the integer grid), sorted by op type."""
    op_of = {n.name: n.op_type for n in plan.model.graph.node}
    counts: dict[str, int] = {}
    for name in plan.float_nodes:
        counts[op_of[name]] = counts.get(op_of[name], 0) + 1
    return dict(sorted(counts.items()))
