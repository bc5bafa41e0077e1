"""Step 1 — activation polishing (the float function is unchanged).

(1) per-channel range equalization migrated into weights: producer output
channel c is divided by s_c (layer weights+bias, or LayerNorm gamma+beta) and
every consumer's input channel c multiplied by s_c; s_c chosen per producer
among {1, SmoothQuant alpha 0.25/0.5/0.75, CLE sqrt(r_p/r_c)} by the measured
quantized error of the consumers' outputs.
(2) clipping search per activation tensor minimising the consumers' output error.
(3) wide points: an activation point whose 8-bit (or 4-bit) grid alone carries a large share of
the model's activation error (a residual stream with a few huge channels, read by adds and
LayerNorm, which no equalization reaches) is kept at 16 bits (`widen_outliers`).
"""
from __future__ import annotations

import numpy as np
import torch

from edgekit.onnx_graph.model import attrs, consumers, initializers
from edgekit.onnx_graph.torch_ops import TorchGraph, to_torch
from edgekit.progress import progress
from edgekit.quant import weights as W
from edgekit.quant.plan import Layer, QParams, QuantPlan
from edgekit.quant.rtn import act_qtype
from edgekit.quant.sequential import env_groups, stack_groups
from edgekit.quant.simulate import act_hook, fake_quant, layer_forward, weight_shape_scales

CLIP_RATIOS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3)


def rtn_dq(w: np.ndarray, axis: int, bits: int) -> np.ndarray:
    w2 = W.channel_view(w, axis)
    s = W.absmax_scales(w2, bits)
    return W.from_channel_view(W.dequantize_codes(W.quantize_codes(w2, s, bits), s), w.shape, axis)


def _in_axis(layer: Layer, w: np.ndarray) -> int:
    if layer.op_type == "Conv" and int(layer.attrs.get("group", 1)) > 1:
        return 0 if w.shape[1] == 1 and int(layer.attrs["group"]) == w.shape[0] else -1
    return layer.in_axis


def _channel_axis(x: torch.Tensor, conv: bool) -> int:
    return 1 if conv else x.dim() - 1


def _scale_view(s, ndim, axis):
    shape = [1] * ndim
    shape[axis] = -1
    return s.reshape(shape)


def equalization_pairs(plan: QuantPlan):
    """(producer, tensor feeding consumers, consumer layers) triples that can migrate scales."""
    model = plan.model
    cons = consumers(model)
    inits = initializers(model)
    by_node = {layer.name: layer for layer in plan.layers.values()}
    outputs = {o.name for o in model.graph.output}
    pairs = []
    candidates = [("layer", layer, layer.block_output) for layer in plan.layers.values() if layer.act in (None, "relu")]
    for node in model.graph.node:
        if node.op_type == "LayerNormalization" and len(node.input) >= 3 and node.input[1] in inits \
                and node.input[2] in inits and int(attrs(node).get("axis", -1)) == -1:
            candidates.append(("ln", node, node.output[0]))
    for kind, prod, tensor in candidates:
        if tensor in outputs:
            continue
        users = cons.get(tensor, [])
        # follow Reshapes that keep the channel (last) axis, for LayerNorm -> Reshape -> Gemm
        reads = []
        ok = bool(users)
        for u in users:
            if u.op_type == "Reshape" and kind == "ln" and u.output[0] not in outputs:
                reads += [(uu, u.output[0]) for uu in cons.get(u.output[0], [])]
            else:
                reads.append((u, tensor))
        layers = []
        for u, t in reads:
            layer = by_node.get(u.name)
            if layer is None or layer.input != t or layer.op_type == "ConvTranspose":
                ok = False
                break
            layers.append(layer)
        if not ok or not layers:
            continue
        conv_prod = kind == "layer" and prod.op_type == "Conv"
        if any((layer.op_type == "Conv") != conv_prod for layer in layers):
            continue
        if any(_in_axis(layer, inits[layer.weight]) < 0 for layer in layers):
            continue
        pairs.append((kind, prod, tensor, layers))
    return pairs


def equalize(plan: QuantPlan, calib: list[dict], act_bits_of, samples: int = 8) -> list[dict]:
    """Apply the best per-channel scaling to each producer/consumer group; returns a report."""
    pairs = equalization_pairs(plan)
    if not pairs:
        return []
    report = []
    graph = TorchGraph(plan.model)
    need = set()
    for kind, prod, tensor, layers in pairs:
        need.add(tensor)
        need.update(layer.input for layer in layers)
        if kind == "layer":
            need.add(prod.input)
        else:
            need.add(prod.input[0])
    with torch.no_grad():
        envs = [graph.run(f, keep=need) for f in calib[:samples]]
    groups = env_groups(envs, need)  # samples of equal shapes (dynamic axes may differ between groups)
    inits = initializers(plan.model)
    for kind, prod, tensor, layers in progress(pairs, desc="equalizing"):
        conv = kind == "layer" and prod.op_type == "Conv"
        xmax = None
        for x in stack_groups([e[tensor] for e in envs], groups):
            axis = _channel_axis(x, conv)
            m = x.abs().amax(dim=[d for d in range(x.dim()) if d != axis])
            xmax = m if xmax is None else torch.maximum(xmax, m)
        xmax = xmax.double().clamp_min(1e-8)
        wmax = torch.zeros_like(xmax)
        for layer in layers:
            w = torch.from_numpy(np.array(inits[layer.weight], np.float64))
            ax = _in_axis(layer, inits[layer.weight])
            wmax = torch.maximum(wmax, w.abs().amax(dim=[d for d in range(w.dim()) if d != ax]))
        wmax = wmax.clamp_min(1e-8)
        cands = {"none": torch.ones_like(xmax)}
        for alpha in (0.25, 0.5, 0.75):
            s = xmax ** alpha / wmax ** (1 - alpha)
            cands[f"smooth{alpha}"] = s / s.mean()
        if kind == "layer":
            wp = torch.from_numpy(np.array(inits[prod.weight], np.float64))
            rp = wp.abs().amax(dim=[d for d in range(wp.dim()) if d != prod.out_axis]).clamp_min(1e-8)
            cands["cle"] = torch.sqrt(rp / wmax)
        best, best_err = "none", None
        for name, s in cands.items():
            s = s.clamp(1e-3, 1e3).float()
            err = _pair_error(plan, kind, prod, tensor, layers, envs, inits, s, act_bits_of(tensor), groups)
            if best_err is None or err < best_err * 0.999:
                best, best_err = name, err
            if name == "none":
                base_err = err
        if best != "none":
            _apply_scales(plan, kind, prod, layers, inits, cands[best].clamp(1e-3, 1e3).numpy().astype(np.float32))
            inits = initializers(plan.model)
        report.append({"producer": prod.name, "tensor": tensor, "choice": best,
                       "error_before": float(base_err), "error_after": float(best_err)})
    return report


def _pair_error(plan, kind, prod, tensor, layers, envs, inits, s, bits, groups=None) -> float:
    """Relative error of the consumers' outputs with W4 weights and quantized activation."""
    groups = groups if groups is not None else [list(range(len(envs)))]
    with torch.no_grad():
        if kind == "layer":
            w = inits[prod.weight]
            ws = w / weight_shape_scales(s.numpy(), w.shape, prod.out_axis)
            b = inits[prod.bias].reshape(-1) / s.numpy() if prod.bias else None
            wq = to_torch(rtn_dq(ws.astype(np.float32), prod.out_axis, prod.weight_bits))
            bt = to_torch(b.astype(np.float32)) if b is not None else None
            ys = [layer_forward(prod, x_in, wq, bt) for x_in in stack_groups([e[prod.input] for e in envs], groups)]
        else:
            ys = [y / _scale_view(s, y.dim(), y.dim() - 1) for y in stack_groups([e[tensor] for e in envs], groups)]
        qp = QParams.from_range(min(float(y.min()) for y in ys), max(float(y.max()) for y in ys), act_qtype(bits))
        yqs = [fake_quant(y, qp) for y in ys]
        total, ref = 0.0, 0.0
        for layer in layers:
            w = inits[layer.weight]
            ax = _in_axis(layer, w)
            w_s = w * weight_shape_scales(s.numpy(), w.shape, ax)
            wq = to_torch(rtn_dq(w_s.astype(np.float32), layer.out_axis, layer.weight_bits))
            b = to_torch(inits[layer.bias]) if layer.bias else None
            wf = to_torch(w)
            for yq, x_f in zip(yqs, stack_groups([e[layer.input] for e in envs], groups)):
                target = layer_forward(layer, x_f, wf, b)
                got = layer_forward(layer, yq.reshape(x_f.shape), wq, b)
                total += float(((got - target) ** 2).sum())
                ref += float((target ** 2).sum())
    return total / max(ref, 1e-20)


def _apply_scales(plan, kind, prod, layers, inits, s: np.ndarray) -> None:
    if kind == "layer":
        w = inits[prod.weight]
        plan.set_initializer(prod.weight, w / weight_shape_scales(s, w.shape, prod.out_axis))
        if prod.bias:
            b = inits[prod.bias]
            plan.set_initializer(prod.bias, (b.reshape(-1) / s).reshape(b.shape))
    else:
        plan.set_initializer(prod.input[1], inits[prod.input[1]] / s)
        plan.set_initializer(prod.input[2], inits[prod.input[2]] / s)
    for layer in layers:
        w = inits[layer.weight]
        plan.set_initializer(layer.weight, w * weight_shape_scales(s, w.shape, _in_axis(layer, w)))


def clip_search(plan: QuantPlan, calib: list[dict], ranges: dict, samples: int = 8) -> dict:
    """Per activation tensor, the range shrink ratio minimising its consumers' output error."""
    graph = TorchGraph(plan.model)
    inits = initializers(plan.model)
    own = [p for p in plan.points if p not in plan.inherit]
    readers: dict[str, list[Layer]] = {p: [] for p in own}
    for layer in plan.layers.values():
        src = plan.source(layer.input)
        if src in readers:
            readers[src].append(layer)
    need = set(own) | {layer.input for layer in plan.layers.values()}
    with torch.no_grad():
        envs = [graph.run(f, keep=need) for f in calib[:samples]]
    groups = env_groups(envs, need)  # samples of equal shapes (dynamic axes may differ between groups)
    choice = {}
    for p in progress(own, desc="clip search"):
        lo, hi = ranges[p]
        qt = act_qtype(plan.bits[p])
        xs = stack_groups([e[p] for e in envs], groups) if not readers[p] else []
        xins = {layer.name: stack_groups([e[layer.input] for e in envs], groups) for layer in readers[p]}
        best_r, best_err = 1.0, None
        for r in CLIP_RATIOS:
            qp = QParams.from_range(lo * r, hi * r, qt)
            err = 0.0
            if readers[p]:
                for layer in readers[p]:
                    w = to_torch(inits[layer.weight])
                    b = to_torch(inits[layer.bias]) if layer.bias else None
                    num, den = 0, 0
                    with torch.no_grad():
                        for xin in xins[layer.name]:
                            t = layer_forward(layer, xin, w, b)
                            g = layer_forward(layer, fake_quant(xin, qp), w, b)
                            num, den = num + ((g - t) ** 2).sum(), den + (t ** 2).sum()
                    err += float(num / (den + 1e-20))
            else:
                num, den = 0, 0
                for x in xs:
                    num, den = num + ((fake_quant(x, qp) - x) ** 2).sum(), den + (x ** 2).sum()
                err = float(num / (den + 1e-20))
            if best_err is None or err < best_err:
                best_r, best_err = r, err
        choice[p] = best_r
        plan.params[p] = QParams.from_range(lo * best_r, hi * best_r, qt)
    return choice


# widen_outliers: readers a 16-bit tensor may have. The integer add and LayerNorm take any input
# width (int32 / int64 arithmetic); layers (int8 dot products), matmuls and table ops (a table
# entry per input code) read 8-bit codes only. LayerNorm's variance of 16-bit codes stays below
# 2^52 (nonlinear.isqrt's exact range) up to this many channels.
WIDE_BITS = 16
WIDE_READERS = ("Add", "LayerNormalization")
WIDE_LAYERNORM_MAX = 512
# a point is widened when quantizing it alone (the rest float) gives at least this share of the
# error of all points quantized, and only when that error is above WIDE_MIN_ERROR (relative
# output error power; 10^-2.5, 25 dB output SQNR): a point that dominates a small error is left
# alone. MiniLM-L3 W4A8 (8 calibration sentences): the residual stream after its first FFN and
# that FFN's output alone give 46 % and 36 % of the error, every other point under 3 %.
WIDE_SHARE = 0.25
WIDE_MIN_ERROR = 10 ** -2.5


def widenable_points(plan: QuantPlan, shapes: dict) -> list[str]:
    """Quantization points that may be stored at 16 bits: read (directly or through value-moving
    ops, which keep the grid) only by integer adds of two activations and by LayerNormalization
    over the last axis of at most WIDE_LAYERNORM_MAX channels; not a graph input or output.
    `shapes`: tensor -> shape on one calibration sample."""
    model = plan.model
    cons = consumers(model)
    inits = initializers(model)
    ends = {i.name for i in model.graph.input} | {o.name for o in model.graph.output}
    out = []
    for p in plan.points:
        if p in plan.inherit or p in ends:
            continue
        tensors, readers = [p], []
        for t in tensors:  # the point and the tensors that inherit its grid
            for u in cons.get(t, []):
                if u.output and u.output[0] in plan.inherit and plan.source(u.output[0]) == p:
                    tensors.append(u.output[0])
                else:
                    readers.append((u, t))
        ok = bool(readers) and not any(t in ends for t in tensors)
        for u, t in readers:
            if u.op_type not in WIDE_READERS:
                ok = False
            elif u.op_type == "Add":
                ok = all(i and i not in inits for i in u.input) and u.output[0] in plan.bits
            else:
                shape = shapes.get(t)
                ok = (shape is not None and u.input[0] == t and 0 < shape[-1] <= WIDE_LAYERNORM_MAX
                      and int(attrs(u).get("axis", -1)) in (-1, len(shape) - 1))
            if not ok:
                break
        if ok:
            out.append(p)
    return out


def widen_outliers(plan: QuantPlan, calib: list[dict], ranges: dict, samples: int = 8) -> dict:
    """Keep at 16 bits the activation points whose quantization alone costs most of the output
    error (float weights; measured on `samples` calibration samples, one at a time). Sets their
    bits and min-max grids; returns the report entry (points, their lone error, the error of all
    points quantized before and after)."""
    graph = TorchGraph(plan.model)
    feeds = calib[:samples]
    own = [p for p in plan.points if p not in plan.inherit]
    with torch.no_grad():
        first = graph.run(feeds[0], keep=set(plan.points))
    candidates = widenable_points(plan, {p: tuple(v.shape) for p, v in first.items()})
    report = {"points": [], "bits": WIDE_BITS}
    if not candidates:
        return report
    with torch.no_grad():
        refs = [graph.run(f) for f in feeds]

    def error(points) -> float:
        hook = act_hook(plan, set(points))
        num = den = 0.0
        with torch.no_grad():
            for f, ref in zip(feeds, refs):
                got = graph.run(f, hook=hook)
                for name, r in ref.items():
                    if r.is_floating_point():
                        num += float(((got[name].double() - r.double()) ** 2).sum())
                        den += float((r.double() ** 2).sum())
        return num / max(den, 1e-30)

    total = error(own)
    report["error_before"] = total
    if total < WIDE_MIN_ERROR:
        return report
    lone = {p: error([p]) for p in progress(candidates, desc="outlier points")}
    # greedily, largest lone error first, while the next point's lone error is a large share of
    # what is left (each widening is kept only if it lowers the error of all points quantized)
    wide, now, rejected = [], total, {}
    for p in sorted(candidates, key=lone.get, reverse=True):
        if lone[p] < WIDE_SHARE * now or now < WIDE_MIN_ERROR:
            break
        saved = plan.bits[p], plan.params[p]
        plan.bits[p] = WIDE_BITS
        plan.params[p] = QParams.from_range(*ranges[p], act_qtype(WIDE_BITS))
        after = error(own)
        if after >= now:
            plan.bits[p], plan.params[p] = saved
            rejected[p] = after
            break
        wide.append(p)
        now = after
    report.update(points=wide, lone_error={p: lone[p] for p in wide}, error_after=now)
    if rejected:
        report["rejected_error"] = rejected
    return report
