"""The bit-exact integer reference: runs a QGraph the way integer hardware does.

One small class per op kind, listed in KERNELS (kinds: edgekit.quant.kinds). Integer ops see int codes
(int64 numpy arrays holding int4/uint4/int8/uint8 values, or int16/uint16 ones at wide points), accumulate exactly
(products of small integers summed in float64 are exact below 2^53; the result
is wrapped to int32 like a 32-bit accumulator) and requantize with
formats.requantize; lut / softmax / layernorm / resize follow edgekit.quant.nonlinear.
`float` ops (regions with no integer definition) dequantize
their inputs, run their ONNX nodes in float32 (the torch op table), and
quantize with ONNX QuantizeLinear semantics.
"""
from __future__ import annotations

import numpy as np
import torch

from edgekit.errors import EdgekitError, require
from edgekit.onnx_graph import torch_ops as T
from edgekit.onnx_graph.model import attrs as node_attrs
from edgekit.quant import formats as F
from edgekit.quant import nonlinear as NL
from edgekit.quant.kinds import NONLINEAR_KINDS, avgpool_multiplier
from edgekit.quant.qgraph import QGraph, QOp, parse


def _f64(codes, zp) -> torch.Tensor:
    return torch.from_numpy((np.asarray(codes, np.int64) - int(zp)).astype(np.float64))


def _acc(t: torch.Tensor) -> np.ndarray:
    return F.wrap_int32(np.rint(t.numpy()).astype(np.int64))


def _channel_view(v: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    shape = [1] * ndim
    shape[axis] = -1
    return np.asarray(v).reshape(shape)


class Quantize:
    def run(self, op: QOp, args, consts):
        q = op.out_q
        return F.quantize(args[0], q.scale, q.zero_point, q.qtype)


class Dequantize:
    def run(self, op: QOp, args, consts):
        q = op.in_q[0]
        return F.dequantize(args[0], q.scale, q.zero_point)


class _WeightOp:
    """acc = sum((x - zp_x) * w) then per-channel requantization; subclasses do the sum."""

    channel_axis = 1

    def run(self, op: QOp, args, consts):
        p = op.params
        x = _f64(args[0], op.in_q[0].zero_point)
        w = torch.from_numpy(p.weight.astype(np.float64))
        acc = _acc(self.accumulate(op, x, w))
        axis = self.channel_axis if self.channel_axis >= 0 else acc.ndim + self.channel_axis
        view = lambda v: _channel_view(v, acc.ndim, axis)  # noqa: E731
        return F.requantize(acc, view(p.bias), view(p.mult), view(p.shift), op.out_q.zero_point,
                            op.out_q.qtype, p.lo, p.hi)


class Conv(_WeightOp):
    def accumulate(self, op, x, w):
        # Zero padding in the real domain is padding with zp_x: (x - zp_x) padded with 0.
        return T.conv(op.attrs, x, w, None)[0]


class ConvTranspose(_WeightOp):
    def accumulate(self, op, x, w):
        return T.conv_transpose(op.attrs, x, w, None)[0]


class Gemm(_WeightOp):
    channel_axis = -1

    def accumulate(self, op, x, w):
        return T.gemm(op.attrs, x, w, None)[0]


class Linear(_WeightOp):
    channel_axis = -1

    def accumulate(self, op, x, w):
        return torch.matmul(x, w)


class MatMul:
    def run(self, op, args, consts):
        a = _f64(args[0], op.in_q[0].zero_point)
        b = _f64(args[1], op.in_q[1].zero_point)
        acc = _acc(torch.matmul(a, b))
        p = op.params
        return F.requantize(acc, 0, p.mult, p.shift, op.out_q.zero_point, op.out_q.qtype, p.lo, p.hi)


class Mul:
    def run(self, op, args, consts):
        p = op.params
        a = np.asarray(args[0], np.int64) - op.in_q[0].zero_point
        b = np.asarray(args[1], np.int64) - op.in_q[1].zero_point
        return F.requantize(F.wrap_int32(a * b), 0, p.mult, p.shift, op.out_q.zero_point, op.out_q.qtype, p.lo, p.hi)


class Scale:
    """acc = (x - zp_x) * factor codes (broadcast like the Mul), one requantization."""

    def run(self, op, args, consts):
        p = op.params
        acc = F.wrap_int32((np.asarray(args[0], np.int64) - op.in_q[0].zero_point) * p.factor)
        return F.requantize(acc, 0, p.mult, p.shift, op.out_q.zero_point, op.out_q.qtype, p.lo, p.hi)


class Pad:
    """(x - zp_x) padded with zeros, one requantization (the zeros become the output zero point)."""

    def run(self, op, args, consts):
        p = op.params
        x = np.asarray(args[0], np.int64) - op.in_q[0].zero_point
        n = x.ndim
        x = np.pad(x, [(p.pads[i], p.pads[i + n]) for i in range(n)])
        return F.requantize(x, 0, p.mult, p.shift, op.out_q.zero_point, op.out_q.qtype, p.lo, p.hi)


class Add:
    def run(self, op, args, consts):
        p = op.params
        ka, kb = p.k
        a = (np.asarray(args[0], np.int64) - op.in_q[0].zero_point) * ka
        b = (np.asarray(args[1], np.int64) - op.in_q[1].zero_point) * kb
        acc = F.wrap_int32(a + b)
        return F.requantize(acc, 0, p.mult, p.shift, op.out_q.zero_point, op.out_q.qtype, p.lo, p.hi)


class Concat:
    def run(self, op, args, consts):
        parts = [F.requantize(np.asarray(x, np.int64) - q.zero_point, 0, m, s, op.out_q.zero_point, op.out_q.qtype)
                 for x, q, m, s in zip(args, op.in_q, op.params.mults, op.params.shifts)]
        return np.concatenate(parts, axis=int(op.attrs["axis"]))


class AvgPool:
    """Window sum of (x - zp_x), then requantize by s_x / (s_y * count) at each position."""

    def run(self, op, args, consts):
        x = _f64(args[0], op.in_q[0].zero_point)
        ones = torch.ones_like(x[:1, :1])
        if op.kind == "global_avgpool":
            total = x.sum(dim=tuple(range(2, x.dim())), keepdim=True)
            count = np.array(float(np.prod(x.shape[2:])))
        else:
            total = T.avg_pool(op.attrs, x)[0] * self._count(op, ones)
            count = self._count(op, ones).numpy()
        mult, shift = avgpool_multiplier(op.in_q[0].scale, op.out_q.scale, count)
        return F.requantize(_acc(total), 0, mult, shift, op.out_q.zero_point, op.out_q.qtype)

    @staticmethod
    def _count(op, ones):
        # Elements averaged at each output position (count_include_pad aware).
        avg_of_ones = T.avg_pool(op.attrs, ones)[0]
        kernel_size = float(np.prod(op.attrs["kernel_shape"]))
        if op.attrs.get("count_include_pad", 0):
            return torch.full_like(avg_of_ones, kernel_size)
        padded = dict(op.attrs)
        padded["count_include_pad"] = 1
        # fraction of real elements in each window times the kernel size
        return torch.round(T.avg_pool(padded, ones)[0] * kernel_size)


class Lut:
    def run(self, op, args, consts):
        return NL.lut(args[0], op.params.table, op.in_q[0].qtype.qmin)


class Softmax:
    def run(self, op, args, consts):
        p = op.params
        return NL.softmax(args[0], p.table, p.mult, op.out_q.zero_point, p.lo, p.hi, mask=p.mask)


class LayerNorm:
    def run(self, op, args, consts):
        p = op.params
        return NL.layernorm(args[0], op.in_q[0].zero_point, p.n, p.eps_codes, p.gain, p.offset,
                            op.out_q.zero_point, p.lo, p.hi)


class Resize:
    def run(self, op, args, consts):
        p = op.params
        plan = NL.resize_plan(op.attrs, np.shape(args[0]), p.roi, p.scales, p.sizes)
        return NL.resize(args[0], op.in_q[0].zero_point, plan, p.mult, p.shift, op.out_q.zero_point,
                         op.out_q.qtype, p.lo, p.hi)


class _RegionOp:
    """Runs the region's ONNX nodes in torch."""

    def region(self, op, values: dict, consts) -> torch.Tensor:
        return T.run_nodes(op.nodes, values, consts, op.region_output)


class MoveCodes(_RegionOp):
    """Max-pool and layout ops move codes unchanged (float64 holds them exactly)."""

    def run(self, op, args, consts):
        q_in = op.in_q[0]
        values = {op.region_inputs[0]: torch.from_numpy(np.asarray(args[0], np.int64).astype(np.float64))}
        for name, arg in zip(op.region_inputs[1:], args[1:]):
            values[name] = T.to_torch(np.asarray(arg))
        codes = np.rint(self.region(op, values, consts).numpy()).astype(np.int64)
        q = op.out_q
        if (q.scale, q.zero_point, q.qtype) == (q_in.scale, q_in.zero_point, q_in.qtype):
            return codes
        return F.quantize(F.dequantize(codes, q_in.scale, q_in.zero_point), q.scale, q.zero_point, q.qtype)


class FloatRegion(_RegionOp):
    def run(self, op, args, consts):
        values = {}
        for name, arg, q in zip(op.region_inputs, args, op.in_q):
            v = F.dequantize(arg, q.scale, q.zero_point) if q is not None else np.asarray(arg)
            values[name] = T.to_torch(v)
        with torch.no_grad():
            y = self.region(op, values, consts).numpy()
        if op.out_q is None:
            return y
        return F.quantize(y, op.out_q.scale, op.out_q.zero_point, op.out_q.qtype)


# one kernel per integer-op kind (edgekit.quant.kinds.KINDS): every kind runs here
KERNELS = {"quantize": Quantize(), "dequantize": Dequantize(), "conv": Conv(), "conv_transpose": ConvTranspose(),
           "gemm": Gemm(), "linear": Linear(), "matmul": MatMul(), "add": Add(), "mul": Mul(), "concat": Concat(),
           "avgpool": AvgPool(), "global_avgpool": AvgPool(), "maxpool": MoveCodes(), "layout": MoveCodes(),
           "lut": Lut(), "softmax": Softmax(), "layernorm": LayerNorm(), "resize": Resize(), "scale": Scale(),
           "pad": Pad(), "float": FloatRegion()}


def constants(qg: QGraph) -> dict:
    """Every constant the kernels read: initializers, integer codes, and DQ'd constants by DQ output name.

    Back-ends that run some ops with these kernels (the accelerator's host fallback) call this too.
    """
    consts = dict(qg.initializers)
    for name, (codes, _) in qg.constants.items():
        consts[name] = codes
    # Region nodes read DQ'd constants (weights of float ops, operands) by their DQ output name.
    for node in qg.model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in qg.constants:
            codes, q = qg.constants[node.input[0]]
            consts[node.output[0]] = F.dequantize(codes, q.scale, q.zero_point)
        elif node.op_type == "DequantizeLinear" and node.input[0] in consts and node.output[0] not in consts:
            a = node_attrs(node)
            codes = np.asarray(consts[node.input[0]]).astype(np.int64)
            scale = np.asarray(consts[node.input[1]], np.float32)
            zp = np.asarray(consts[node.input[2]]).astype(np.int64) if len(node.input) > 2 and node.input[2] \
                else np.zeros(1, np.int64)
            if scale.size > 1:
                scale = _channel_view(scale, codes.ndim, int(a.get("axis", 1)) % codes.ndim)
                zp = (_channel_view(zp, codes.ndim, int(a.get("axis", 1)) % codes.ndim) if zp.size > 1
                      else zp.reshape(()))
            consts[node.output[0]] = F.dequantize(codes, scale, zp.reshape(scale.shape) if zp.size == scale.size
                                                  else zp.reshape(()))
    return consts


def run(model_or_qgraph, inputs: dict, keep_intermediates: bool = False) -> dict:
    """Execute the integer reference. Returns graph outputs (float, dequantized) by name."""
    qg = model_or_qgraph if isinstance(model_or_qgraph, QGraph) else parse(model_or_qgraph)
    consts = constants(qg)
    env = {}
    for name in qg.inputs:
        require(name in inputs, f"missing model input {name}")
        env[name] = np.asarray(inputs[name], np.float32)
    for op in qg.ops:
        args = []
        for name in op.inputs:
            if name in env:
                args.append(env[name])
            elif name in consts:
                args.append(consts[name])
            else:
                raise EdgekitError(f"integer reference: op {op.name} reads {name} before it is computed")
        impl = KERNELS.get(op.kind)
        if impl is None:
            raise EdgekitError(f"integer reference: no kernel for op kind {op.kind} (node {op.name})")
        env[op.outputs[0]] = impl.run(op, args, consts)
    if keep_intermediates:
        return env
    return {name: env[name] for name in qg.outputs}


def nonlinear_pairs(qg: QGraph, float_qg: QGraph, env: dict, consts: dict):
    """(op, integer codes, float-definition codes) of every lut / softmax / layernorm / resize op
    of `qg`, both fed the same input codes: `env` is one run of `qg` (keep_intermediates=True),
    `consts` its constants(qg); `float_qg` is the same file parsed with integer_nonlinear=False."""
    float_ops = {op.outputs[0]: op for op in float_qg.ops}
    for op in qg.ops:
        if op.kind in NONLINEAR_KINDS:
            fop = float_ops[op.outputs[0]]
            args = [env[n] if n in env else consts[n] for n in fop.inputs]
            yield op, env[op.outputs[0]], KERNELS[fop.kind].run(fop, args, consts)


def integer_cost(model, feeds: list[dict]) -> dict:
    """What the integer definitions of the non-linear ops cost against their float definitions:
    per kind, its ops and how many of their output codes equal the float definition's (each op
    fed the same input codes), and the model outputs' SQNR (dB) of integer vs float definitions.
    Empty when the model has none of these ops."""
    qg = parse(model)
    if not any(op.kind in NONLINEAR_KINDS for op in qg.ops):
        return {}
    float_qg, consts = parse(model, integer_nonlinear=False), constants(qg)
    kinds: dict = {}
    outputs: dict = {}
    for feed in feeds:
        env = run(qg, feed, keep_intermediates=True)
        for op, got, want in nonlinear_pairs(qg, float_qg, env, consts):
            diff = np.abs(np.asarray(got, np.int64) - np.asarray(want, np.int64))
            k = kinds.setdefault(op.kind, {"ops": set(), "codes": 0, "codes_equal": 0, "max_code_diff": 0})
            k["ops"].add(op.name)
            k["codes"] += diff.size
            k["codes_equal"] += int((diff == 0).sum())
            k["max_code_diff"] = max(k["max_code_diff"], int(diff.max(initial=0)))
        want = run(float_qg, feed)
        for name in qg.outputs:
            err = outputs.setdefault(name, [0.0, 0.0])
            err[0] += float(np.sum(np.square(np.asarray(want[name], np.float64))))
            err[1] += float(np.sum(np.square(np.asarray(env[name], np.float64) - np.asarray(want[name], np.float64))))
    for k in kinds.values():
        k["ops"] = len(k["ops"])
        k["equal_fraction"] = round(k["codes_equal"] / max(k["codes"], 1), 6)
    sqnr = {name: ("exact" if e == 0 else round(10 * float(np.log10(max(p, 1e-30) / e)), 2))
            for name, (p, e) in outputs.items()}
    return {"kinds": kinds, "output_sqnr_db": sqnr, "samples": len(feeds)}
