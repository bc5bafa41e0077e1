"""ONNX -> torch op table, so that ONNX subgraphs run with autograd.

One small function per ONNX op behind a registry (like onnx.reference). Each
takes the node's attributes and its input tensors (None for an omitted
optional input) and returns a list of output tensors. Quantization uses it to
run the float model, fake-quantized variants, and single layers during
compensation and learned rounding.

Float ops are torch functions (autograd flows through them); ops on integer,
index or shape data may use NumPy. Ops with subgraphs (If, Loop, Scan) are in
GRAPH_OPS and run by TorchGraph, which owns the enclosing scope. The table is
checked against the ONNX backend node tests by tests/onnx_graph/conformance.py.
"""
from __future__ import annotations

import math

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper

from edgekit.errors import EdgekitError
from edgekit.onnx_graph.model import attrs as node_attrs

OPS: dict = {}
GRAPH_OPS: dict = {}  # ops with subgraph attributes (If, Loop, Scan): run by TorchGraph, they need its scope

_TP = onnx.TensorProto
_TORCH_DTYPES = {
    _TP.FLOAT: torch.float32, _TP.DOUBLE: torch.float64, _TP.FLOAT16: torch.float16, _TP.BFLOAT16: torch.bfloat16,
    _TP.INT8: torch.int8, _TP.INT16: torch.int16, _TP.INT32: torch.int32, _TP.INT64: torch.int64,
    _TP.UINT8: torch.uint8, _TP.UINT16: torch.uint16, _TP.UINT32: torch.uint32, _TP.UINT64: torch.uint64,
    _TP.BOOL: torch.bool, _TP.FLOAT8E4M3FN: torch.float8_e4m3fn, _TP.FLOAT8E5M2: torch.float8_e5m2,
    _TP.FLOAT8E4M3FNUZ: torch.float8_e4m3fnuz, _TP.FLOAT8E5M2FNUZ: torch.float8_e5m2fnuz,
    # 4- and 2-bit types travel in 8-bit containers (torch has no arithmetic on them)
    _TP.INT4: torch.int8, _TP.UINT4: torch.uint8, _TP.FLOAT4E2M1: torch.float32,
}
# integer range of the types held in a container: (lo, hi)
_SUBBYTE_INT = {_TP.INT4: (-8, 7), _TP.UINT4: (0, 15)}
for _tname, _rng in (("INT2", (-2, 1)), ("UINT2", (0, 3))):
    if hasattr(_TP, _tname):
        _TORCH_DTYPES[getattr(_TP, _tname)] = torch.int8 if _rng[0] < 0 else torch.uint8
        _SUBBYTE_INT[getattr(_TP, _tname)] = _rng
_E8M0 = getattr(torch, "float8_e8m0fnu", None)
if _E8M0 is not None and hasattr(_TP, "FLOAT8E8M0"):
    _TORCH_DTYPES[_TP.FLOAT8E8M0] = _E8M0
_CONTAINED = set(_SUBBYTE_INT) | {_TP.FLOAT4E2M1}  # element types held in a wider torch dtype
_FLOAT8_MAX = {torch.float8_e4m3fn: (448.0, 464.0), torch.float8_e5m2: (57344.0, 61440.0),
               torch.float8_e4m3fnuz: (240.0, 248.0), torch.float8_e5m2fnuz: (57344.0, 61440.0)}
_FLOAT4_GRID = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
_WIDE_UNSIGNED = (torch.uint16, torch.uint32, torch.uint64)  # few CPU kernels: computed in int64


def torch_dtype_of(elem_type) -> torch.dtype | None:
    """The torch dtype (or 8-bit container) of an ONNX TensorProto element type; None if it has none."""
    return _TORCH_DTYPES.get(int(elem_type)) if elem_type is not None else None


def _registrar(table: dict):
    """A decorator factory: `@reg("A", "B")` files the function under both op names in `table`."""
    def register(*names):
        def deco(fn):
            for n in names:
                table[n] = fn
            return fn
        return deco
    return register


op = _registrar(OPS)              # ops on tensors
graph_op = _registrar(GRAPH_OPS)  # ops that run subgraphs (If, Loop, Scan): they get the TorchGraph


def _s(v, default=None):
    v = default if v is None else v
    return v.decode() if isinstance(v, bytes) else v


def _ints(t) -> list[int]:
    return [int(v) for v in torch.as_tensor(t).reshape(-1).tolist()]


def _floats(t) -> list[float]:
    return [float(v) for v in torch.as_tensor(t).reshape(-1).tolist()]


def tensor_from_numpy(arr) -> torch.Tensor:
    """A torch tensor with the array's dtype (NumPy, or ml_dtypes' bfloat16 / float8 / 4-bit types)."""
    arr = np.asarray(arr)
    name = arr.dtype.name
    if name == "bfloat16":
        return torch.from_numpy(arr.astype(np.float32)).to(torch.bfloat16)
    if name.startswith("float8"):
        dtype = {"float8_e4m3fn": torch.float8_e4m3fn, "float8_e5m2": torch.float8_e5m2,
                 "float8_e4m3fnuz": torch.float8_e4m3fnuz, "float8_e5m2fnuz": torch.float8_e5m2fnuz,
                 "float8_e8m0fnu": _E8M0}.get(name)
        if dtype is None:
            raise EdgekitError(f"tensor type {name} has no torch equivalent")
        return torch.from_numpy(np.array(arr, order="C").view(np.uint8)).view(dtype)
    if name in ("int4", "int2"):
        return torch.from_numpy(arr.astype(np.int8))
    if name in ("uint4", "uint2"):
        return torch.from_numpy(arr.astype(np.uint8))
    if name in ("float4_e2m1fn", "float6_e2m3fn", "float6_e3m2fn"):
        return torch.from_numpy(arr.astype(np.float32))
    return torch.from_numpy(np.array(arr, order="C"))  # a copy; keeps 0-d arrays 0-d


def _widen(fn):
    """fn on tensors, with uint16/32/64 operands computed in int64 and cast back."""
    def run(*xs):
        dt = next((x.dtype for x in xs if isinstance(x, torch.Tensor) and x.dtype in _WIDE_UNSIGNED), None)
        if dt is None:
            return fn(*xs)
        y = fn(*[x.to(torch.int64) if isinstance(x, torch.Tensor) and x.dtype in _WIDE_UNSIGNED else x
                 for x in xs])
        return y if y.dtype == torch.bool else y.to(dt)
    return run


def _pads_torch(pads, nd):
    """ONNX pads [b1,b2,...,e1,e2,...] -> F.pad order (last dim first)."""
    out = []
    for d in reversed(range(nd)):
        out += [pads[d], pads[d + nd]]
    return out


def _auto_pad(a, x, kernel, strides, dilations):
    mode = a.get("auto_pad", b"NOTSET")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    nd = len(kernel)
    if mode in ("SAME_UPPER", "SAME_LOWER"):
        pads = [0] * (2 * nd)
        for d in range(nd):
            size = x.shape[2 + d]
            out = math.ceil(size / strides[d])
            total = max((out - 1) * strides[d] + (kernel[d] - 1) * dilations[d] + 1 - size, 0)
            lo = total // 2 if mode == "SAME_UPPER" else total - total // 2
            pads[d], pads[d + nd] = lo, total - lo
        return pads
    if mode == "VALID":
        return [0] * (2 * nd)
    return list(a.get("pads", [0] * (2 * nd)))


def conv_params(a, x, w):
    nd = w.dim() - 2
    kernel = list(a.get("kernel_shape", w.shape[2:]))
    strides = list(a.get("strides", [1] * nd))
    dil = list(a.get("dilations", [1] * nd))
    pads = _auto_pad(a, x, kernel, strides, dil)
    return strides, pads, dil, int(a.get("group", 1))


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


@op("Conv")
def conv(a, x, w, b=None):
    strides, pads, dil, group = conv_params(a, x, w)
    nd = w.dim() - 2
    if any(pads):
        x = F.pad(x, _pads_torch(pads, nd))
    return [_CONV[nd](x, w, b, stride=strides, dilation=dil, groups=group)]


def _crop_or_pad(y, begin, end, nd):
    """Remove begin/end elements of each spatial dim of y (negative: add zeros)."""
    return F.pad(y, _pads_torch([-p for p in begin] + [-p for p in end], nd))


@op("ConvTranspose")
def conv_transpose(a, x, w, b=None):
    nd = w.dim() - 2
    strides = list(a.get("strides", [1] * nd))
    dil = list(a.get("dilations", [1] * nd))
    outpad = list(a.get("output_padding", [0] * nd))
    group = int(a.get("group", 1))
    kernel = list(a.get("kernel_shape", w.shape[2:]))
    mode = _s(a.get("auto_pad"), "NOTSET")
    y = _CONV_T[nd](x, w, None, stride=strides, padding=0, groups=group, dilation=dil)
    if "output_shape" in a or mode in ("SAME_UPPER", "SAME_LOWER"):
        size = list(x.shape[2:])
        target = list(a["output_shape"])[-nd:] if "output_shape" in a else [size[d] * strides[d] for d in range(nd)]
        total = [strides[d] * (size[d] - 1) + outpad[d] + (kernel[d] - 1) * dil[d] + 1 - target[d]
                 for d in range(nd)]
        if mode == "SAME_UPPER":
            begin, end = [t // 2 for t in total], [t - t // 2 for t in total]
        else:
            begin, end = [t - t // 2 for t in total], [t // 2 for t in total]
    else:
        pads = list(a.get("pads", [0] * (2 * nd)))
        begin, end = pads[:nd], pads[nd:]
    y = _crop_or_pad(y, begin, [e - o for e, o in zip(end, outpad)], nd)
    if b is not None:
        y = y + b.reshape([1, -1] + [1] * nd)
    return [y]


@op("Gemm")
def gemm(a, x, w, c=None):
    if a.get("transA", 0):
        x = x.transpose(-1, -2)
    if a.get("transB", 0):
        w = w.transpose(-1, -2)
    y = float(a.get("alpha", 1.0)) * (x @ w)
    if c is not None:
        y = y + float(a.get("beta", 1.0)) * c
    return [y.to(x.dtype)]


_HALF = (torch.float16, torch.bfloat16)


@op("MatMul")
def matmul(a, x, y):
    if x.dtype in _HALF:  # accumulate in float32, round once
        return [torch.matmul(x.float(), y.float()).to(x.dtype)]
    return [_widen(torch.matmul)(x, y)]


def _binary(fn):
    fn = _widen(fn)
    return lambda a, x, y: [fn(x, y)]


OPS["Add"] = _binary(torch.add)
OPS["Sub"] = _binary(torch.sub)
OPS["Mul"] = _binary(torch.mul)
OPS["Equal"] = _binary(torch.eq)
OPS["Less"] = _binary(torch.lt)
OPS["LessOrEqual"] = _binary(torch.le)
OPS["Greater"] = _binary(torch.gt)
OPS["GreaterOrEqual"] = _binary(torch.ge)
OPS["And"] = _binary(torch.logical_and)
OPS["Or"] = _binary(torch.logical_or)
OPS["Xor"] = _binary(torch.logical_xor)
OPS["BitwiseAnd"] = _binary(torch.bitwise_and)
OPS["BitwiseOr"] = _binary(torch.bitwise_or)
OPS["BitwiseXor"] = _binary(torch.bitwise_xor)


@op("Pow")
def pow_(a, x, y):
    return [_widen(torch.pow)(x, y).to(x.dtype)]


@op("Mod")
def mod(a, x, y):
    return [_widen(torch.fmod if a.get("fmod", 0) else torch.remainder)(x, y)]


@op("Div")
def div(a, x, y):
    if not x.is_floating_point() and not y.is_floating_point():
        return [_widen(lambda p, q: torch.div(p, q, rounding_mode="trunc"))(x, y)]
    return [x / y]


@op("BitShift")
def bit_shift(a, x, y):
    left = _s(a.get("direction")) == "LEFT"
    return [_widen(torch.bitwise_left_shift if left else torch.bitwise_right_shift)(x, y)]


def _make_variadic(fn):
    fn = _widen(fn)

    def run(a, *xs):
        y = xs[0]
        for x in xs[1:]:
            y = fn(y, x)
        return [y]
    return run


OPS["Min"] = _make_variadic(torch.minimum)
OPS["Max"] = _make_variadic(torch.maximum)
OPS["Sum"] = _make_variadic(torch.add)


@op("Mean")
def mean(a, *xs):
    return [OPS["Sum"](a, *xs)[0] / len(xs)]


def _unary(fn):
    fn = _widen(fn)
    return lambda a, x: [fn(x)]


for _name, _fn in {"Sqrt": torch.sqrt, "Exp": torch.exp, "Log": torch.log, "Neg": torch.neg,
                   "Abs": torch.abs, "Erf": torch.erf, "Tanh": torch.tanh, "Sigmoid": torch.sigmoid,
                   "Relu": F.relu, "Reciprocal": torch.reciprocal, "Sin": torch.sin, "Cos": torch.cos,
                   "Tan": torch.tan, "Asin": torch.asin, "Acos": torch.acos, "Atan": torch.atan,
                   "Sinh": torch.sinh, "Cosh": torch.cosh, "Asinh": torch.asinh, "Acosh": torch.acosh,
                   "Atanh": torch.atanh, "Sign": torch.sign, "Round": torch.round, "IsNaN": torch.isnan,
                   "Floor": torch.floor, "Ceil": torch.ceil, "Softplus": F.softplus, "Mish": F.mish,
                   "Softsign": lambda x: x / (1 + x.abs()), "Identity": lambda x: x,
                   "Not": torch.logical_not, "BitwiseNot": torch.bitwise_not}.items():
    OPS[_name] = _unary(_fn)


@op("IsInf")
def is_inf(a, x):
    pos, neg = a.get("detect_positive", 1), a.get("detect_negative", 1)
    return [(torch.isposinf(x) & bool(pos)) | (torch.isneginf(x) & bool(neg))]


@op("Dropout")
def dropout(a, x, *rest):
    # inference: identity, and the mask (second output) is all ones
    return [x, torch.ones(x.shape, dtype=torch.bool)]


@op("LeakyRelu")
def leaky_relu(a, x):
    return [F.leaky_relu(x, float(a.get("alpha", 0.01)))]


@op("PRelu")
def prelu(a, x, slope):
    return [torch.where(x >= 0, x, x * slope)]


@op("Elu")
def elu(a, x):
    return [F.elu(x, float(a.get("alpha", 1.0)))]


@op("Celu")
def celu(a, x):
    return [F.celu(x, float(a.get("alpha", 1.0)))]


@op("Selu")
def selu(a, x):
    alpha, gamma = float(a.get("alpha", 1.67326319217681884765625)), float(a.get("gamma", 1.05070102214813232421875))
    return [gamma * torch.where(x > 0, x, alpha * torch.expm1(x))]


@op("ThresholdedRelu")
def thresholded_relu(a, x):
    return [torch.where(x > float(a.get("alpha", 1.0)), x, torch.zeros_like(x))]


@op("Shrink")
def shrink(a, x):
    bias, lambd = float(a.get("bias", 0.0)), float(a.get("lambd", 0.5))
    y = torch.where(x < -lambd, x + bias, torch.where(x > lambd, x - bias, torch.zeros_like(x)))
    return [y.to(x.dtype)]


@op("Swish")
def swish(a, x):
    return [x * torch.sigmoid(float(a.get("alpha", 1.0)) * x)]


@op("Clip")
def clip(a, x, lo=None, hi=None):
    if lo is None and "min" in a:  # opset < 11: bounds are attributes
        lo = torch.tensor(float(a["min"]))
    if hi is None and "max" in a:
        hi = torch.tensor(float(a["max"]))
    fn_max, fn_min = _widen(torch.maximum), _widen(torch.minimum)
    if lo is not None:
        x = fn_max(x, lo.to(x.dtype))
    if hi is not None:
        x = fn_min(x, hi.to(x.dtype))
    return [x]


@op("HardSigmoid")
def hard_sigmoid(a, x):
    return [torch.clamp(float(a.get("alpha", 0.2)) * x + float(a.get("beta", 0.5)), 0, 1)]


@op("HardSwish")
def hard_swish(a, x):
    return [F.hardswish(x)]


@op("Gelu")
def gelu(a, x):
    approx = a.get("approximate", b"none")
    approx = approx.decode() if isinstance(approx, bytes) else approx
    return [F.gelu(x, approximate="tanh" if approx == "tanh" else "none")]


@op("Softmax")
def softmax(a, x):
    return [torch.softmax(x, dim=int(a.get("axis", -1)))]


@op("LogSoftmax")
def log_softmax(a, x):
    return [torch.log_softmax(x, dim=int(a.get("axis", -1)))]


@op("Hardmax")
def hardmax(a, x):
    axis = int(a.get("axis", -1))
    idx = x.argmax(dim=axis, keepdim=True)
    return [torch.zeros_like(x).scatter(axis, idx, 1.0)]


# -- normalization ---------------------------------------------------------------------------------------------------

def _stash(x, a):
    """The dtype statistics are computed in (stash_type, float32 by default) for low-precision inputs."""
    return torch_dtype_of(a.get("stash_type", _TP.FLOAT)) if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


@op("LayerNormalization")
def layer_norm(a, x, scale, bias=None):
    axis = int(a.get("axis", -1)) % x.dim()
    eps = float(a.get("epsilon", 1e-5))
    dims = tuple(range(axis, x.dim()))
    xs = x.to(_stash(x, a))
    var, mu = torch.var_mean(xs, dim=dims, unbiased=False, keepdim=True)
    inv = torch.rsqrt(var + eps)
    y = ((xs - mu) * inv).to(x.dtype) * scale
    if bias is not None:
        y = y + bias
    return [y, mu, inv]


@op("RMSNormalization")
def rms_norm(a, x, scale):
    axis = int(a.get("axis", -1)) % x.dim()
    xs = x.to(_stash(x, a))
    rms = torch.sqrt(xs.pow(2).mean(dim=tuple(range(axis, x.dim())), keepdim=True) + float(a.get("epsilon", 1e-5)))
    return [((xs / rms) * scale).to(x.dtype)]


@op("BatchNormalization")
def batch_norm(a, x, scale, bias, mean, var):
    return [F.batch_norm(x, mean, var, scale, bias, False, 0.0, float(a.get("epsilon", 1e-5)))]


@op("InstanceNormalization")
def instance_norm(a, x, scale, bias):
    return [F.instance_norm(x, weight=scale, bias=bias, eps=float(a.get("epsilon", 1e-5)))]


@op("GroupNormalization")
def group_norm(a, x, scale, bias):
    groups = int(a["num_groups"])
    c = x.shape[1]
    if scale.numel() != c:  # opset 18: one scale / bias per group
        scale, bias = scale.repeat_interleave(c // groups), bias.repeat_interleave(c // groups)
    xs = x.to(_stash(x, a))
    y = F.group_norm(xs, groups, None, None, float(a.get("epsilon", 1e-5))).to(x.dtype)
    shape = [1, c] + [1] * (x.dim() - 2)
    return [y * scale.reshape(shape) + bias.reshape(shape)]


@op("MeanVarianceNormalization")
def mean_variance_norm(a, x):
    axes = list(a.get("axes", [0, 2, 3]))
    mu = x.mean(dim=axes, keepdim=True)
    var = (x * x).mean(dim=axes, keepdim=True) - mu * mu
    return [(x - mu) / (torch.sqrt(var) + 1e-9)]


@op("LpNormalization")
def lp_norm(a, x):
    p, axis = int(a.get("p", 2)), int(a.get("axis", -1))
    norm = x.abs().sum(dim=axis, keepdim=True) if p == 1 else torch.sqrt((x * x).sum(dim=axis, keepdim=True))
    return [x / torch.where(norm == 0, torch.ones_like(norm), norm)]  # a zero vector stays zero


@op("LRN")
def lrn(a, x):
    size = int(a["size"])
    alpha, beta, bias = float(a.get("alpha", 1e-4)), float(a.get("beta", 0.75)), float(a.get("bias", 1.0))
    lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2
    sq = F.pad(x * x, [0, 0] * (x.dim() - 2) + [lo, hi])
    c = x.shape[1]
    total = sum(sq[:, i:i + c] for i in range(size))
    return [x / (bias + alpha / size * total) ** beta]


# -- reductions ------------------------------------------------------------------------------------------------------

def _axes(a, axes_input):
    if axes_input is not None:
        return _ints(axes_input)
    return list(a["axes"]) if "axes" in a else None


def _reduce(fn, empty=None):
    """fn(x, axes, keepdims); `empty` is the value of a reduction over no elements."""
    def run(a, x, axes=None):
        ax = _axes(a, axes)
        keep = bool(a.get("keepdims", 1))
        if not ax:
            if a.get("noop_with_empty_axes", 0):
                return [x]
            ax = list(range(x.dim()))
        ax = sorted(d % max(x.dim(), 1) for d in ax)
        if x.dim() == 0:
            return [fn(x.reshape(1), [0], False).reshape(())]
        if empty is not None and any(x.shape[d] == 0 for d in ax):
            shape = [1 if d in ax else n for d, n in enumerate(x.shape)]
            if not keep:
                shape = [n for d, n in enumerate(shape) if d not in ax]
            return [torch.full(shape, empty(x.dtype), dtype=x.dtype)]
        return [fn(x, ax, keep).to(x.dtype)]
    return run


def _lowest(dtype):
    if dtype == torch.bool:
        return False
    return -math.inf if dtype.is_floating_point else torch.iinfo(dtype).min


def _highest(dtype):
    if dtype == torch.bool:
        return True
    return math.inf if dtype.is_floating_point else torch.iinfo(dtype).max


def _amax(x, ax, k):
    return _widen(lambda t: t.amax(dim=ax, keepdim=k))(x.to(torch.uint8) if x.dtype == torch.bool else x)


def _amin(x, ax, k):
    return _widen(lambda t: t.amin(dim=ax, keepdim=k))(x.to(torch.uint8) if x.dtype == torch.bool else x)


def _fmean(x, ax, k):
    return x.mean(dim=ax, keepdim=k) if x.is_floating_point() else x.double().mean(dim=ax, keepdim=k)


OPS["ReduceMean"] = _reduce(_fmean, empty=lambda dt: math.nan)
OPS["ReduceSum"] = _reduce(lambda x, ax, k: x.sum(dim=ax, keepdim=k), empty=lambda dt: 0)
OPS["ReduceMax"] = _reduce(_amax, empty=_lowest)
OPS["ReduceMin"] = _reduce(_amin, empty=_highest)
OPS["ReduceProd"] = _reduce(lambda x, ax, k: _prod(x, ax, k), empty=lambda dt: 1)
OPS["ReduceL1"] = _reduce(lambda x, ax, k: x.abs().sum(dim=ax, keepdim=k), empty=lambda dt: 0)
OPS["ReduceL2"] = _reduce(lambda x, ax, k: x.double().pow(2).sum(dim=ax, keepdim=k).sqrt()
                          if not x.is_floating_point() else x.pow(2).sum(dim=ax, keepdim=k).sqrt(),
                          empty=lambda dt: 0)
OPS["ReduceSumSquare"] = _reduce(lambda x, ax, k: (x * x).sum(dim=ax, keepdim=k), empty=lambda dt: 0)
OPS["ReduceLogSum"] = _reduce(lambda x, ax, k: torch.log(x.sum(dim=ax, keepdim=k)), empty=lambda dt: -math.inf)
OPS["ReduceLogSumExp"] = _reduce(lambda x, ax, k: torch.logsumexp(x, dim=ax, keepdim=k)
                                 if x.is_floating_point() else torch.logsumexp(x.double(), dim=ax, keepdim=k),
                                 empty=lambda dt: -math.inf)


def _prod(x, ax, keep):
    for d in sorted(ax, reverse=True):
        x = x.prod(dim=d, keepdim=True)
    return x if keep else x.squeeze(ax) if ax else x


def _arg(fn):
    def run(a, x):
        axis = int(a.get("axis", 0)) % max(x.dim(), 1)
        keep = bool(a.get("keepdims", 1))
        src = x.to(torch.uint8) if x.dtype == torch.bool else _widen(lambda t: t)(x)
        if src.dtype in _WIDE_UNSIGNED:
            src = src.to(torch.int64)
        if a.get("select_last_index", 0):
            idx = x.shape[axis] - 1 - fn(torch.flip(src, [axis]), dim=axis, keepdim=keep)
        else:
            idx = fn(src, dim=axis, keepdim=keep)
        return [idx.to(torch.int64)]
    return run


OPS["ArgMax"] = _arg(torch.argmax)
OPS["ArgMin"] = _arg(torch.argmin)


def _cumulative(a, x, axis, scan, shift_in):
    """CumSum / CumProd: `scan` along the axis, `reverse` by flipping, `exclusive` by `shift_in(x, y, d)`."""
    d = int(axis.reshape(-1)[0].item())
    if a.get("reverse", 0):
        x = torch.flip(x, [d])
    y = scan(x, dim=d).to(x.dtype)
    if a.get("exclusive", 0):
        y = shift_in(x, y, d)
    if a.get("reverse", 0):
        y = torch.flip(y, [d])
    return [y]


@op("CumSum")
def cumsum(a, x, axis):
    return _cumulative(a, x, axis, torch.cumsum, lambda x, y, d: y - x)


@op("CumProd")
def cumprod(a, x, axis):
    return _cumulative(a, x, axis, torch.cumprod, lambda x, y, d: torch.cat(
        [torch.ones_like(y.narrow(d, 0, 1)), y.narrow(d, 0, y.shape[d] - 1)], dim=d))


# -- shapes, indexing ------------------------------------------------------------------------------------------------

@op("Constant")
def constant(a):
    if "value" in a:
        return [tensor_from_numpy(numpy_helper.to_array(a["value"]))]
    if "sparse_value" in a:
        sp = a["sparse_value"]
        values = numpy_helper.to_array(sp.values)
        idx = numpy_helper.to_array(sp.indices)
        dense = np.zeros(int(np.prod(sp.dims)), values.dtype)
        if idx.ndim == 2:
            idx = np.ravel_multi_index(idx.T, tuple(sp.dims))
        dense[idx.reshape(-1)] = values
        return [tensor_from_numpy(dense.reshape(tuple(sp.dims)))]
    for key, dtype in (("value_float", torch.float32), ("value_floats", torch.float32),
                       ("value_int", torch.int64), ("value_ints", torch.int64)):
        if key in a:
            return [torch.tensor(a[key], dtype=dtype)]
    raise EdgekitError(f"Constant with attributes {sorted(a)} is not supported")


@op("Reshape")
def reshape(a, x, shape):
    shape = _ints(shape)
    if not a.get("allowzero", 0):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return [x.reshape(shape)]


@op("Flatten")
def flatten(a, x):
    axis = int(a.get("axis", 1))
    if axis < 0:
        axis += x.dim()
    return [x.reshape(int(np.prod(x.shape[:axis])), int(np.prod(x.shape[axis:])))]


@op("Transpose")
def transpose(a, x):
    perm = a.get("perm", list(reversed(range(x.dim()))))
    return [x.permute(*perm)]


@op("Squeeze")
def squeeze(a, x, axes=None):
    ax = _axes(a, axes)
    if ax is None:
        return [x.squeeze()]
    for d in sorted((d % x.dim() for d in ax), reverse=True):
        x = x.squeeze(d)
    return [x]


@op("Unsqueeze")
def unsqueeze(a, x, axes=None):
    ax = _axes(a, axes)
    rank = x.dim() + len(ax)
    for d in sorted(d % rank for d in ax):
        x = x.unsqueeze(d)
    return [x]


@op("Concat")
def concat(a, *xs):
    return [torch.cat([x for x in xs], dim=int(a["axis"]))]


@op("Split")
def split(a, x, sizes=None, _n=None):
    raise NotImplementedError  # bound per node in run_node (needs the output count)


@op("Slice")
def slice_(a, x, starts=None, ends=None, axes=None, steps=None):
    if starts is None:  # opset < 10: attributes
        starts, ends = list(a["starts"]), list(a["ends"])
        axes = a.get("axes")
    starts, ends = _ints(starts), _ints(ends)
    axes = _ints(axes) if axes is not None else list(range(len(starts)))
    steps = _ints(steps) if steps is not None else [1] * len(starts)
    idx = [slice(None)] * x.dim()
    flips = []
    for s, e, ax, st in zip(starts, ends, axes, steps):
        ax %= x.dim()
        n = x.shape[ax]
        if st > 0:
            s = max(0, min(n, s + n if s < 0 else s))
            e = max(0, min(n, e + n if e < 0 else e))
            idx[ax] = slice(s, max(s, e), st)
        else:  # negative step: slice the flipped axis
            s = max(-1, min(n - 1, s + n if s < 0 else s))
            e = max(-1, min(n - 1, e + n if e < 0 else e)) if e >= -n else -1
            idx[ax] = slice(n - 1 - s, max(n - 1 - s, n - 1 - e), -st)
            flips.append(ax)
    if flips:
        x = torch.flip(x, flips)
    return [x[tuple(idx)]]


def _norm_index(idx, size):
    idx = idx.long()
    return torch.where(idx < 0, idx + size, idx)


@op("Gather")
def gather(a, x, indices):
    axis = int(a.get("axis", 0)) % x.dim()
    idx = _norm_index(indices, x.shape[axis])
    out = torch.index_select(x, axis, idx.reshape(-1))
    return [out.reshape(list(x.shape[:axis]) + list(idx.shape) + list(x.shape[axis + 1:]))]


@op("GatherElements")
def gather_elements(a, x, indices):
    axis = int(a.get("axis", 0)) % x.dim()
    return [torch.gather(x, axis, _norm_index(indices, x.shape[axis]))]


@op("GatherND")
def gather_nd(a, x, indices):
    b = int(a.get("batch_dims", 0))
    idx = indices.long()
    k = idx.shape[-1]
    batch = int(np.prod(x.shape[:b]))
    xr = x.reshape(batch, *x.shape[b:])
    ir = idx.reshape(batch, -1, k)
    ir = torch.where(ir < 0, ir + torch.tensor(x.shape[b:b + k]), ir)
    bidx = torch.arange(batch).reshape(batch, 1).expand(batch, ir.shape[1])
    out = xr[(bidx, *ir.unbind(-1))]
    return [out.reshape(*idx.shape[:-1], *x.shape[b + k:])]


_SCATTER_REDUCE = {"add": "sum", "mul": "prod", "max": "amax", "min": "amin"}


@op("ScatterElements", "Scatter")
def scatter_elements(a, x, indices, updates):
    axis = int(a.get("axis", 0)) % x.dim()
    idx = _norm_index(indices, x.shape[axis])
    red = _s(a.get("reduction"), "none")
    if red == "none":
        return [torch.scatter(x, axis, idx, updates)]
    return [torch.scatter_reduce(x, axis, idx, updates, reduce=_SCATTER_REDUCE[red], include_self=True)]


@op("ScatterND")
def scatter_nd(a, x, indices, updates):
    idx = indices.long()
    k = idx.shape[-1]
    idx = idx.reshape(-1, k)
    idx = torch.where(idx < 0, idx + torch.tensor(x.shape[:k]), idx)
    upd = updates.reshape(-1, *x.shape[k:])
    red = _s(a.get("reduction"), "none")
    out = x.clone()
    if red in ("none", "add"):
        return [out.index_put(tuple(idx.T), upd, accumulate=(red == "add"))]
    fn = {"mul": torch.mul, "max": torch.maximum, "min": torch.minimum}[red]
    for i in range(idx.shape[0]):
        where_ = tuple(idx[i].tolist())
        out[where_] = fn(out[where_], upd[i])
    return [out]


@op("Shape")
def shape(a, x):
    s = list(x.shape)[int(a.get("start", 0)):a.get("end", None)]
    return [torch.tensor(s, dtype=torch.int64)]


@op("Size")
def size(a, x):
    return [torch.tensor(x.numel(), dtype=torch.int64)]


def _cast_float4(x):
    """Round to the FLOAT4E2M1 grid (nearest, ties to even mantissa), saturating at +-6; NaN -> -0."""
    grid = torch.tensor(_FLOAT4_GRID, dtype=torch.float64)
    xd = x.double()
    mag = xd.abs().clamp(max=6.0)
    dist = (mag.unsqueeze(-1) - grid).abs() + 1e-12 * (torch.arange(len(_FLOAT4_GRID)) % 2)
    y = grid[dist.argmin(dim=-1)] * torch.where(torch.signbit(xd), -1.0, 1.0)
    y = torch.where(torch.isnan(xd), torch.tensor(-0.0, dtype=torch.float64), y)
    return y.to(torch.float32)


def _cast_e8m0(x, round_mode, saturate):
    """FLOAT8E8M0 (a power of two 2^-127..2^127, code 255 NaN): rounding `up`, `down` or `nearest`."""
    xf = x.double().abs()
    e = torch.floor(torch.log2(xf))
    frac = xf / torch.exp2(e)
    if round_mode == "up":
        e = torch.where(frac > 1, e + 1, e)
    elif round_mode == "nearest":
        e = torch.where(frac >= 1.5, e + 1, e)
    code = (e.clamp(-127, 127) + 127)
    code = torch.where(xf == 0, torch.zeros_like(code), code)
    over = torch.isinf(xf) | (e > 127)
    code = torch.where(over, torch.tensor(254.0 if saturate else 255.0, dtype=torch.float64), code)
    code = torch.where(torch.isnan(xf), torch.tensor(255.0, dtype=torch.float64), code)
    return code.to(torch.uint8).view(_E8M0)


def cast_to(x: torch.Tensor, elem_type: int, saturate: bool = True, round_mode=None) -> torch.Tensor:
    """ONNX Cast of a tensor to an element type (4-bit types into their containers)."""
    elem_type = int(elem_type)
    dtype = torch_dtype_of(elem_type)
    if dtype is None:
        raise EdgekitError(f"Cast to {_TP.DataType.Name(elem_type)} is not supported in torch")
    if elem_type in _SUBBYTE_INT:
        lo, hi = _SUBBYTE_INT[elem_type]
        v = torch.round(x.double()) if x.is_floating_point() else x.to(torch.int64)
        v = torch.where((v < lo) | (v > hi) | torch.isnan(v.double()), torch.zeros_like(v), v)
        return v.to(dtype)
    if elem_type == _TP.FLOAT4E2M1:
        return _cast_float4(x) if x.is_floating_point() else _cast_float4(x.double())
    if dtype in _FLOAT8_MAX:
        top, overflow = _FLOAT8_MAX[dtype]
        xf = x.float()
        y = xf.clamp(-top, top)  # saturate: out of range (inf included) -> +-max
        if not saturate:
            bad = math.inf if dtype == torch.float8_e5m2 else math.nan
            y = torch.where(xf.abs() >= overflow, torch.sign(xf) * bad, y)
        return torch.where(torch.isnan(xf), torch.tensor(math.nan), y).to(dtype)
    if dtype == _E8M0:
        return _cast_e8m0(x, _s(round_mode, "up"), saturate)
    if x.dtype in _FLOAT8_MAX or x.dtype == _E8M0:
        x = x.float()
    return x.to(dtype)


@op("Cast")
def cast(a, x):
    return [cast_to(x, int(a["to"]), bool(a.get("saturate", 1)), a.get("round_mode"))]


_DTYPE_ELEM = {}
for _et, _dt in _TORCH_DTYPES.items():
    _DTYPE_ELEM.setdefault(_dt, _et)


@op("CastLike")
def cast_like(a, x, like):
    # "_declared_type": the graph's declared type of the output, set by TorchGraph for 4/2-bit targets whose
    # tensors travel in 8-bit containers (the container's dtype alone cannot tell int4 from int8)
    return [cast_to(x, a.get("_declared_type", _DTYPE_ELEM[like.dtype]), bool(a.get("saturate", 1)),
                    a.get("round_mode"))]


@op("Expand")
def expand(a, x, shape):
    target = _ints(shape)
    out_shape = torch.broadcast_shapes(tuple(x.shape), tuple(target))
    return [x.expand(out_shape)]


@op("Tile")
def tile(a, x, repeats):
    return [x.repeat(*_ints(repeats))]


@op("Where")
def where(a, c, x, y):
    return [_widen(lambda p, q: torch.where(c.bool(), p, q))(x, y)]


@op("ConstantOfShape")
def constant_of_shape(a, shape):
    value = tensor_from_numpy(numpy_helper.to_array(a["value"])) if "value" in a else torch.zeros(1)
    return [value.reshape(-1)[0].expand(_ints(shape)).clone()]


@op("Range")
def range_(a, start, limit, delta):
    start_, limit_, delta_ = start.item(), limit.item(), delta.item()
    n = max(int(math.ceil((limit_ - start_) / delta_)), 0)
    return [(start + torch.arange(n, dtype=torch.float64 if start.is_floating_point() else torch.int64) * delta)
            .to(start.dtype)]


@op("Trilu")
def trilu(a, x, k=None):
    k = int(k.item()) if k is not None else 0
    src = x.to(torch.int64) if x.dtype in _WIDE_UNSIGNED else x
    y = torch.triu(src, k) if a.get("upper", 1) else torch.tril(src, k)
    return [y.to(x.dtype)]


@op("EyeLike")
def eye_like(a, x):
    dtype = torch_dtype_of(a["dtype"]) if "dtype" in a else x.dtype
    n, m = x.shape
    i = torch.arange(n).reshape(-1, 1)
    j = torch.arange(m).reshape(1, -1)
    return [(j - i == int(a.get("k", 0))).to(dtype)]


@op("OneHot")
def one_hot(a, indices, depth, values):
    d = int(depth.reshape(-1)[0].item())
    idx = indices.long() if not indices.is_floating_point() else indices.trunc().long()
    idx = torch.where(idx < 0, idx + d, idx)
    axis = int(a.get("axis", -1))
    rank = indices.dim() + 1
    axis = axis % rank
    hot = idx.unsqueeze(-1) == torch.arange(d)
    hot = hot.movedim(-1, axis)
    off, on = values.reshape(-1)[0], values.reshape(-1)[1]
    return [torch.where(hot, on, off)]


@op("NonZero")
def non_zero(a, x):
    return [torch.nonzero(x).T.contiguous().to(torch.int64)]


@op("Compress")
def compress(a, x, condition):
    keep = torch.nonzero(condition.bool().reshape(-1)).reshape(-1)
    if "axis" not in a:
        return [x.reshape(-1)[keep]]
    return [torch.index_select(x, int(a["axis"]) % x.dim(), keep)]


@op("ReverseSequence")
def reverse_sequence(a, x, lens):
    batch_axis, time_axis = int(a.get("batch_axis", 1)), int(a.get("time_axis", 0))
    parts = []
    for b, n in enumerate(_ints(lens)):
        xb = x.select(batch_axis, b)
        t = time_axis if time_axis < batch_axis else time_axis - 1
        idx = torch.cat([torch.arange(n - 1, -1, -1), torch.arange(n, xb.shape[t])])
        parts.append(torch.index_select(xb, t, idx))
    return [torch.stack(parts, dim=batch_axis)]


@op("TopK")
def top_k(a, x, k=None):
    k = int(k.reshape(-1)[0].item()) if k is not None else int(a["k"])
    axis = int(a.get("axis", -1))
    largest = bool(a.get("largest", 1))
    src = x.to(torch.int64) if x.dtype in _WIDE_UNSIGNED else x
    # stable sort: equal values keep the lower index first, as ONNX asks
    vals, idx = torch.sort(src, dim=axis, descending=largest, stable=True)
    return [vals.narrow(axis, 0, k).to(x.dtype), idx.narrow(axis, 0, k)]


@op("Unique")
def unique(a, x):
    arr = (x.float() if x.dtype in _HALF else x).detach().numpy()
    axis = a.get("axis")
    _, first, inverse, counts = np.unique(arr, return_index=True, return_inverse=True, return_counts=True, axis=axis)
    inverse = inverse.reshape(-1)
    if not a.get("sorted", 1):  # order of first occurrence
        order = np.argsort(first, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        first, counts, inverse = first[order], counts[order], rank[inverse]
    src = torch.as_tensor(first, dtype=torch.int64)
    y = x.reshape(-1)[src] if axis is None else torch.index_select(x, int(axis) % x.dim(), src)
    return [y, src, torch.as_tensor(inverse, dtype=torch.int64), torch.as_tensor(counts, dtype=torch.int64)]


@op("Det")
def det(a, x):
    return [torch.linalg.det(x)]


@op("Einsum")
def einsum(a, *xs):
    eq = _s(a["equation"]).replace(" ", "")
    src = [x.double() if not x.is_floating_point() else x for x in xs]
    y = torch.einsum(eq, *src)
    return [y.to(xs[0].dtype)]


# -- pooling ---------------------------------------------------------------------------------------------------------

def _pool_setup(a, x):
    kernel = list(a["kernel_shape"])
    nd = len(kernel)
    strides = list(a.get("strides", [1] * nd))
    dil = list(a.get("dilations", [1] * nd))
    pads = _auto_pad(a, x, kernel, strides, dil)
    return kernel, strides, pads, dil


def _pool_out_sizes(x, kernel, strides, pads, dil, ceil):
    nd = len(kernel)
    out = []
    for d in range(nd):
        span = x.shape[2 + d] + pads[d] + pads[d + nd] - dil[d] * (kernel[d] - 1) - 1
        n = (-(-span // strides[d]) if ceil else span // strides[d]) + 1
        if ceil and (n - 1) * strides[d] >= x.shape[2 + d] + pads[d]:
            n -= 1  # the last window must start inside the input or its left padding
        out.append(n)
    return out


def _windows(x, kernel, strides, pads, dil, out, fill):
    """(N, C, o1, k1, o2, k2, ...) windows of x padded with `fill` (any dilation / ceil overhang)."""
    nd = len(kernel)
    ends = [max(pads[d + nd], (out[d] - 1) * strides[d] + dil[d] * (kernel[d] - 1) + 1 - x.shape[2 + d] - pads[d])
            for d in range(nd)]
    xp = F.pad(x, _pads_torch(list(pads[:nd]) + ends, nd), value=fill)
    for d in range(nd):
        idx = (torch.arange(out[d]).reshape(-1, 1) * strides[d] + torch.arange(kernel[d]).reshape(1, -1) * dil[d])
        axis = 2 + 2 * d
        xp = torch.index_select(xp, axis, idx.reshape(-1))
        xp = xp.reshape(*xp.shape[:axis], out[d], kernel[d], *xp.shape[axis + 1:])
    return xp


def _window_dims(nd):
    return tuple(3 + 2 * d for d in range(nd))


def _flat_indices(coords, x, storage_order):
    """ONNX MaxPool indices: flat positions in x (N, C, spatial; storage_order 1: spatial column-major)."""
    n, c = x.shape[:2]
    spatial = list(x.shape[2:])
    nd = len(spatial)
    lin = np.zeros_like(coords[0])
    order = reversed(range(nd)) if storage_order else range(nd)
    for d in order:
        lin = lin * spatial[d] + coords[d]
    base = (np.arange(n).reshape(-1, 1) * c + np.arange(c).reshape(1, -1)) * int(np.prod(spatial))
    return torch.as_tensor(lin + base.reshape(n, c, *([1] * nd)), dtype=torch.int64)


@op("MaxPool")
def max_pool(a, x):
    kernel, strides, pads, dil = _pool_setup(a, x)
    nd = len(kernel)
    ceil = bool(a.get("ceil_mode", 0))
    order = int(a.get("storage_order", 0))
    if x.dtype in (torch.float32, torch.float64) and nd <= 3 and not (ceil and any(pads)):
        xp = F.pad(x, _pads_torch(pads, nd), value=float("-inf")) if any(pads) else x
        fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[nd]
        if not a.get("_wants_indices", True):  # the usual one-output MaxPool: no index bookkeeping
            return [fn(xp, kernel, strides, 0, dil, ceil_mode=ceil)]
        y, idx = fn(xp, kernel, strides, 0, dil, ceil_mode=ceil, return_indices=True)
        coords = np.unravel_index(idx.numpy(), xp.shape[2:])
        return [y, _flat_indices([cd - pads[d] for d, cd in enumerate(coords)], x, order)]
    fill = _lowest(x.dtype)
    src = x if x.dtype in (torch.float32, torch.float64) else x.to(torch.float64)
    out = _pool_out_sizes(x, kernel, strides, pads, dil, ceil)
    win = _windows(src, kernel, strides, pads, dil, out, float(fill))
    perm = [0, 1] + [2 + 2 * d for d in range(nd)] + list(_window_dims(nd))
    y, arg = win.permute(*perm).reshape(*win.shape[:2], *out, -1).max(dim=-1)
    ks = np.unravel_index(arg.numpy(), kernel)
    coords = [np.arange(out[d]).reshape([-1 if e == d else 1 for e in range(nd)]) * strides[d]
              + ks[d] * dil[d] - pads[d] for d in range(nd)]
    return [y.to(x.dtype), _flat_indices(coords, x, order)]


def _avg_generic(a, x, kernel, strides, pads, dil, ceil, include):
    nd = len(kernel)
    out = _pool_out_sizes(x, kernel, strides, pads, dil, ceil)
    dims = _window_dims(nd)
    total = _windows(x, kernel, strides, pads, dil, out, 0.0).sum(dim=dims)
    ones = torch.ones_like(x[:1, :1])
    if include:  # explicit pads count, the ceil-mode overhang does not
        ones = F.pad(ones, _pads_torch(pads, nd), value=1.0)
        count = _windows(ones, kernel, strides, [0] * (2 * nd), dil, out, 0.0).sum(dim=dims)
    else:
        count = _windows(ones, kernel, strides, pads, dil, out, 0.0).sum(dim=dims)
    return total / count


@op("AveragePool")
def avg_pool(a, x):
    kernel, strides, pads, dil = _pool_setup(a, x)
    nd = len(kernel)
    include = bool(a.get("count_include_pad", 0))
    ceil = bool(a.get("ceil_mode", 0))
    if any(d != 1 for d in dil) or ceil:
        return [_avg_generic(a, x, kernel, strides, pads, dil, ceil, include)]
    fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[nd]
    if not any(pads):
        return [fn(x, kernel, strides, 0)]
    xp = F.pad(x, _pads_torch(pads, nd))
    total = fn(xp, kernel, strides, 0, divisor_override=1) if nd == 2 else \
        fn(xp, kernel, strides, 0) * float(np.prod(kernel))
    if include:
        return [total / float(np.prod(kernel))]
    ones = F.pad(torch.ones_like(x[:1, :1]), _pads_torch(pads, nd))
    count = fn(ones, kernel, strides, 0) * float(np.prod(kernel))
    return [total / count]


@op("LpPool")
def lp_pool(a, x):
    kernel, strides, pads, dil = _pool_setup(a, x)
    p = float(a.get("p", 2))
    out = _pool_out_sizes(x, kernel, strides, pads, dil, bool(a.get("ceil_mode", 0)))
    win = _windows(x, kernel, strides, pads, dil, out, 0.0)
    return [win.abs().pow(p).sum(dim=_window_dims(len(kernel))).pow(1.0 / p)]


@op("GlobalAveragePool")
def global_avg_pool(a, x):
    return [x.mean(dim=tuple(range(2, x.dim())), keepdim=True)]


@op("GlobalMaxPool")
def global_max_pool(a, x):
    return [x.amax(dim=tuple(range(2, x.dim())), keepdim=True)]


@op("GlobalLpPool")
def global_lp_pool(a, x):
    p = float(a.get("p", 2))
    return [x.abs().pow(p).sum(dim=tuple(range(2, x.dim())), keepdim=True).pow(1.0 / p)]


@op("MaxUnpool")
def max_unpool(a, x, indices, output_shape=None):
    kernel = list(a["kernel_shape"])
    nd = len(kernel)
    strides = list(a.get("strides", [1] * nd))
    pads = list(a.get("pads", [0] * (2 * nd)))
    inferred = list(x.shape[:2]) + [(x.shape[2 + d] - 1) * strides[d] + kernel[d] - pads[d] - pads[d + nd]
                                    for d in range(nd)]
    out = torch.zeros(int(np.prod(inferred)), dtype=x.dtype)
    out = out.index_put((indices.reshape(-1).long(),), x.reshape(-1)).reshape(inferred)
    if output_shape is not None:  # the inferred block at the origin of a zero tensor of output_shape
        shape = _ints(output_shape)
        out = F.pad(out, _pads_torch([0] * len(shape) + [t - n for t, n in zip(shape, inferred)], len(shape)))
    return [out]


# -- padding, resizing, layout ---------------------------------------------------------------------------------------

def _pad_index(n, lo, hi, mode):
    i = np.arange(-lo, n + hi)
    if mode == "edge":
        return np.clip(i, 0, n - 1)
    if mode == "wrap":
        return np.mod(i, n)
    period = 2 * (n - 1) if n > 1 else 1  # reflect (no edge repeat)
    i = np.mod(i, period)
    return np.where(i >= n, period - i, i)


@op("Pad")
def pad(a, x, pads=None, value=None, axes=None):
    mode = _s(a.get("mode"), "constant")
    p = _ints(pads) if pads is not None else list(a["pads"])
    nd = x.dim()
    if axes is not None:
        ax = [d % nd for d in _ints(axes)]
        full = [0] * (2 * nd)
        for i, d in enumerate(ax):
            full[d], full[d + nd] = p[i], p[i + len(ax)]
        p = full
    if mode == "constant":
        if value is not None and value.numel():
            fill = value.reshape(-1)[0].item()
        else:
            fill = float(a.get("value", 0.0))
        tp = _pads_torch(p, nd)
        while len(tp) > 2 and tp[-1] == 0 and tp[-2] == 0:
            tp = tp[:-2]
        return [F.pad(x, tp, value=fill)]
    for d in range(nd):
        lo, hi = p[d], p[d + nd]
        if lo or hi:
            idx = _pad_index(x.shape[d], lo, hi, mode)
            x = torch.index_select(x, d, torch.as_tensor(idx, dtype=torch.int64))
    return [x]


def _resize_coeffs(mode, ratio, scale, a, antialias):
    if mode == "nearest":
        nm = _s(a.get("nearest_mode"), "round_prefer_floor")
        up = {"round_prefer_floor": ratio > 0.5, "round_prefer_ceil": ratio >= 0.5,
              "floor": np.zeros_like(ratio, bool), "ceil": np.ones_like(ratio, bool)}[nm]
        up = np.where(ratio == 1.0, True, up)
        return np.stack([~up, up], axis=-1).astype(np.float64)
    if mode == "linear":
        if antialias:
            s = min(scale, 1.0)
            start = int(np.floor(-1 / s) + 1)
            args = (np.arange(start, 2 - start)[None, :] - ratio[:, None]) * s
            c = np.clip(1 - np.abs(args), 0, 1)
            return c / c.sum(axis=-1, keepdims=True)
        return np.stack([1 - ratio, ratio], axis=-1)
    A = float(a.get("cubic_coeff_a", -0.75))
    if antialias:
        s = min(scale, 1.0)
        i_start = int(np.floor(-2 / s) + 1)
        x = np.abs(s * (np.arange(i_start, 2 - i_start)[None, :] - ratio[:, None]))
        c = np.where(x <= 1, (A + 2) * x ** 3 - (A + 3) * x ** 2 + 1,
                     np.where(x < 2, A * x ** 3 - 5 * A * x ** 2 + 8 * A * x - 4 * A, 0.0))
        return c / c.sum(axis=-1, keepdims=True)
    r = ratio
    return np.stack([((A * (r + 1) - 5 * A) * (r + 1) + 8 * A) * (r + 1) - 4 * A,
                     ((A + 2) * r - (A + 3)) * r * r + 1,
                     ((A + 2) * (1 - r) - (A + 3)) * (1 - r) * (1 - r) + 1,
                     ((A * ((1 - r) + 1) - 5 * A) * ((1 - r) + 1) + 8 * A) * ((1 - r) + 1) - 4 * A], axis=-1)


def resize_taps(n_in: int, scale: float, out_n: int, a: dict, roi):
    """One axis of a Resize (attributes `a`) as taps: source indices [out_n, n], their coefficients
    [out_n, n] (onnx's reference coordinate rules) and the extrapolated outputs (bool [out_n] or None)."""
    mode = _s(a.get("mode"), "nearest")
    ctm = _s(a.get("coordinate_transformation_mode"), "half_pixel")
    out_w = scale * n_in
    y = np.arange(out_n, dtype=np.float64)
    extrap = None
    if ctm == "align_corners":
        xo = np.zeros(out_n) if out_w == 1 else y * (n_in - 1) / (out_w - 1)
    elif ctm == "asymmetric":
        xo = y / scale
    elif ctm == "tf_crop_and_resize":
        lo, hi = roi
        xo = np.full(out_n, (hi - lo) * (n_in - 1) / 2) if out_w == 1 else y * (hi - lo) * (n_in - 1) / (out_w - 1)
        xo = xo + lo * (n_in - 1)
        extrap = (xo < 0) | (xo > n_in - 1)
    elif ctm == "pytorch_half_pixel":
        xo = np.full(out_n, -0.5) if out_w == 1 else (y + 0.5) / scale - 0.5
    elif ctm == "half_pixel":
        xo = (y + 0.5) / scale - 0.5
    elif ctm == "half_pixel_symmetric":
        offset = n_in / 2 * (1 - out_n / out_w)
        xo = offset + (y + 0.5) / scale - 0.5
    else:
        raise EdgekitError(f"Resize coordinate_transformation_mode {ctm!r} is not supported")
    xi = np.floor(xo)
    ratio = np.where(xo == xi, 1.0, xo - xi)
    coeffs = _resize_coeffs(mode, ratio, scale, a, bool(a.get("antialias", 0)))
    n = coeffs.shape[1]
    pad_w = int(np.ceil(n / 2))
    xp = xo + pad_w
    p = np.floor(xp)
    frac = xp - p
    if n % 2 == 0:
        off = np.where(frac == 0, -(n // 2), -(n // 2) + 1)
    else:
        off = np.where(frac <= 0.5, -((n - 1) // 2), -((n - 1) // 2) + 1)
    nb = (p + off).astype(np.int64)[:, None] + np.arange(n)[None, :] - pad_w
    if a.get("exclude_outside", 0):
        coeffs = np.where((nb < 0) | (nb >= n_in), 0.0, coeffs)
        total = coeffs.sum(axis=-1, keepdims=True)
        coeffs = coeffs / np.where(total == 0, 1.0, total)
    return np.clip(nb, 0, n_in - 1), coeffs, extrap


def _resize_axis(x, axis, scale, out_n, a, roi):
    """1-D resize of one axis (Resize is separable)."""
    nb, coeffs, extrap = resize_taps(x.shape[axis], scale, out_n, a, roi)
    n = coeffs.shape[1]
    g = torch.index_select(x, axis, torch.as_tensor(nb.reshape(-1)))
    g = g.reshape(*x.shape[:axis], out_n, n, *x.shape[axis + 1:])
    w = torch.as_tensor(coeffs, dtype=x.dtype).reshape(*([1] * axis), out_n, n, *([1] * (x.dim() - axis - 1)))
    r = (g * w).sum(dim=axis + 1)
    if extrap is not None and extrap.any():
        mask = torch.as_tensor(extrap).reshape(*([1] * axis), out_n, *([1] * (x.dim() - axis - 1)))
        r = torch.where(mask, torch.tensor(float(a.get("extrapolation_value", 0.0)), dtype=r.dtype), r)
    return r


def resize_axes(a, shape, roi=None, scales=None, sizes=None) -> list:
    """The axes a Resize changes: [(axis, scale, out_n, roi pair or None)], in axis order."""
    r = len(shape)
    axes = [d % r for d in a.get("axes", range(r))]
    if scales is None and sizes is None and roi is not None:  # opset 10: (X, scales)
        scales, roi = roi, None
    policy = _s(a.get("keep_aspect_ratio_policy"), "stretch")
    shape = list(shape)
    if sizes is not None and sizes.numel():
        want = _ints(sizes)
        sc = [want[i] / shape[d] for i, d in enumerate(axes)]
        if policy != "stretch":
            s = min(sc) if policy == "not_larger" else max(sc)
            sc = [s] * len(axes)
            want = [int(s * shape[d] + 0.5) for d in axes]
    else:
        sc = _floats(scales)
        if len(sc) == r and len(axes) != r:
            sc = [sc[d] for d in axes]
        want = [int(s * shape[d]) for s, d in zip(sc, axes)]
    roi_v = _floats(roi) if roi is not None and roi.numel() else None
    changed = []
    for i, d in enumerate(axes):
        rv = None if roi_v is None else (roi_v[i], roi_v[i + len(axes)])
        if math.isclose(sc[i], 1.0) and want[i] == shape[d] and (
                rv is None or (math.isclose(rv[0], 0.0) and math.isclose(rv[1], 1.0))):
            continue
        changed.append((d, sc[i], want[i], rv))
    return changed


@op("Resize")
def resize(a, x, roi=None, scales=None, sizes=None):
    compute = x if x.is_floating_point() else x.double()
    if compute.dtype in (torch.float16, torch.bfloat16):
        compute = compute.float()
    for d, scale, out_n, rv in resize_axes(a, x.shape, roi, scales, sizes):
        compute = _resize_axis(compute, d, scale, out_n, a, rv)
    if not x.is_floating_point():
        info = torch.iinfo(x.dtype)
        compute = torch.round(compute).clamp(info.min, info.max)
    return [compute.to(x.dtype)]


@op("Upsample")
def upsample(a, x, scales=None):
    sc = _floats(scales) if scales is not None else list(a["scales"])
    mode = _s(a.get("mode"), "nearest")
    b = {"mode": mode, "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}
    return resize(b, x, None, torch.tensor(sc), None)


@op("DepthToSpace")
def depth_to_space(a, x):
    bs = int(a["blocksize"])
    mode = a.get("mode", b"DCR")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    n, c, h, w = x.shape
    if mode == "DCR":
        y = x.reshape(n, bs, bs, c // bs ** 2, h, w).permute(0, 3, 4, 1, 5, 2)
    else:
        y = x.reshape(n, c // bs ** 2, bs, bs, h, w).permute(0, 1, 4, 2, 5, 3)
    return [y.reshape(n, c // bs ** 2, h * bs, w * bs)]


@op("SpaceToDepth")
def space_to_depth(a, x):
    bs = int(a["blocksize"])
    n, c, h, w = x.shape
    y = x.reshape(n, c, h // bs, bs, w // bs, bs)
    if _s(a.get("mode"), "DCR") == "CRD":
        y = y.permute(0, 1, 3, 5, 2, 4)
    else:
        y = y.permute(0, 3, 5, 1, 2, 4)
    return [y.reshape(n, c * bs * bs, h // bs, w // bs)]


@op("CenterCropPad")
def center_crop_pad(a, x, shape):
    target = _ints(shape)
    axes = [d % x.dim() for d in a.get("axes", range(x.dim()))]
    for t, d in zip(target, axes):
        n = x.shape[d]
        if t < n:
            x = x.narrow(d, (n - t) // 2, t)
        elif t > n:
            lo = (t - n) // 2
            p = [0, 0] * (x.dim() - 1 - d) + [lo, t - n - lo]
            x = F.pad(x, p)
    return [x]


@op("GridSample")
def grid_sample(a, x, grid):
    mode = _s(a.get("mode"), "linear")
    mode = {"linear": "bilinear", "bilinear": "bilinear", "cubic": "bicubic", "bicubic": "bicubic",
            "nearest": "nearest"}[mode]
    return [F.grid_sample(x, grid.to(x.dtype), mode=mode, padding_mode=_s(a.get("padding_mode"), "zeros"),
                          align_corners=bool(a.get("align_corners", 0)))]


@op("AffineGrid")
def affine_grid(a, theta, size):
    return [F.affine_grid(theta, _ints(size), align_corners=bool(a.get("align_corners", 0)))]


@op("Col2Im")
def col2im(a, x, image_shape, block_shape):
    img, blk = _ints(image_shape), _ints(block_shape)
    nd = len(img)
    dil = list(a.get("dilations", [1] * nd))
    pads = list(a.get("pads", [0] * (2 * nd)))
    strides = list(a.get("strides", [1] * nd))
    n, ck, _ = x.shape
    c = ck // int(np.prod(blk))
    out_n = [(img[d] + pads[d] + pads[d + nd] - dil[d] * (blk[d] - 1) - 1) // strides[d] + 1 for d in range(nd)]
    # padded-image flat position of every (kernel offset, block position) pair
    grids = np.meshgrid(*[np.arange(b) for b in blk], *[np.arange(o) for o in out_n], indexing="ij")
    padded = [img[d] + pads[d] + pads[d + nd] for d in range(nd)]
    pos = [grids[d] * dil[d] + grids[nd + d] * strides[d] for d in range(nd)]
    flat = np.ravel_multi_index(tuple(p.reshape(-1) for p in pos), padded)
    y = torch.zeros(n, c, int(np.prod(padded)), dtype=x.dtype)
    y = y.index_add(2, torch.as_tensor(flat), x.reshape(n, c, -1))
    y = y.reshape(n, c, *padded)
    return [_crop_or_pad(y, pads[:nd], pads[nd:], nd)]


# -- quantization ----------------------------------------------------------------------------------------------------

def _q_param(p, x, axis, block):
    """Broadcast a scale / zero point (scalar, per-axis 1-D or blocked) to x."""
    if p.dim() == 0 or p.numel() == 1 and x.dim() != p.dim():
        return p.reshape(())
    axis %= x.dim()
    if p.dim() == 1 and not block:
        return p.reshape([-1 if d == axis else 1 for d in range(x.dim())])
    return p.repeat_interleave(block, dim=axis).narrow(axis, 0, x.shape[axis])


def _quant_type(a, zp):
    if "_declared_type" in a:  # see CastLike
        return int(a["_declared_type"])
    if zp is not None:
        return _DTYPE_ELEM[zp.dtype] if "output_dtype" not in a or not a["output_dtype"] else int(a["output_dtype"])
    return int(a.get("output_dtype", 0)) or _TP.UINT8


def _saturate_int(v, elem_type):
    if elem_type in _SUBBYTE_INT:
        lo, hi = _SUBBYTE_INT[elem_type]
    else:
        info = torch.iinfo(torch_dtype_of(elem_type))
        lo, hi = info.min, info.max
    return torch.round(v).clamp(lo, hi).to(torch_dtype_of(elem_type))


@op("QuantizeLinear")
def quantize_linear(a, x, scale, zero_point=None):
    axis, block = int(a.get("axis", 1)), int(a.get("block_size", 0))
    et = _quant_type(a, zero_point)
    s = _q_param(scale, x, axis, block).to(torch.float64 if x.dtype == torch.float64 else torch.float32)
    v = x.to(s.dtype) / s
    dtype = torch_dtype_of(et)
    if dtype.is_floating_point:  # float8 / float4 targets
        if zero_point is not None:
            v = v + _q_param(zero_point, x, axis, block).float()
        return [cast_to(v, et, bool(a.get("saturate", 1)))]
    v = torch.round(v)
    if zero_point is not None:
        v = v + _q_param(zero_point, x, axis, block).to(v.dtype)
    return [_saturate_int(v, et)]


@op("DequantizeLinear")
def dequantize_linear(a, x, scale, zero_point=None):
    axis, block = int(a.get("axis", 1)), int(a.get("block_size", 0))
    s = _q_param(scale, x, axis, block)
    calc = torch.float64 if s.dtype == torch.float64 else torch.float32
    v = x.to(calc)
    if zero_point is not None:
        v = v - _q_param(zero_point, x, axis, block).to(calc)
    y = v * s.to(calc)
    out = torch_dtype_of(a["output_dtype"]) if a.get("output_dtype") else s.dtype
    return [y.to(out)]


@op("DynamicQuantizeLinear")
def dynamic_quantize_linear(a, x):
    lo = torch.clamp(x.min(), max=0.0)
    hi = torch.clamp(x.max(), min=0.0)
    scale = ((hi - lo) / 255.0).to(torch.float32)
    zp = torch.round(-lo / scale).clamp(0, 255)
    y = (torch.round(x / scale) + zp).clamp(0, 255)
    return [y.to(torch.uint8), scale, zp.to(torch.uint8)]


def _zp_sub(x, zp, row):
    v = x.to(torch.int64)
    if zp is None:
        return v
    z = zp.to(torch.int64)
    if z.dim() == 1 and z.numel() > 1:
        z = z.reshape(-1, 1) if row else z.reshape(1, -1)
    return v - z


@op("MatMulInteger")
def matmul_integer(a, x, y, x_zp=None, y_zp=None):
    return [torch.matmul(_zp_sub(x, x_zp, True), _zp_sub(y, y_zp, False)).to(torch.int32)]


@op("ConvInteger")
def conv_integer(a, x, w, x_zp=None, w_zp=None):
    xs = _zp_sub(x, x_zp, True).double()
    wz = w.to(torch.int64)
    if w_zp is not None:
        wz = wz - w_zp.to(torch.int64).reshape([-1] + [1] * (w.dim() - 1) if w_zp.numel() > 1 else [])
    return [torch.round(conv(a, xs, wz.double())[0]).to(torch.int32)]


def _dequant(x, scale, zp, shape_for):
    v = x.to(torch.float64)
    if zp is not None:
        v = v - zp.to(torch.float64).reshape(shape_for(zp))
    return v * scale.to(torch.float64).reshape(shape_for(scale))


@op("QLinearMatMul")
def qlinear_matmul(a, x, xs, xz, w, ws, wz, ys, yz):
    def row(t):  # per-row parameters of the left operand
        return [-1, 1] if t.numel() > 1 else []

    def col(t):  # per-column parameters of the right operand and the output
        return [1, -1] if t.numel() > 1 else []

    acc = torch.matmul(_dequant(x, xs, xz, row), _dequant(w, ws, wz, col))
    v = acc / ys.to(torch.float64).reshape(col(ys)) + yz.to(torch.float64).reshape(col(yz))
    return [_saturate_int(v, _DTYPE_ELEM[yz.dtype])]


@op("QLinearConv")
def qlinear_conv(a, x, xs, xz, w, ws, wz, ys, yz, b=None):
    def per_out(t):  # per-output-channel weight parameters
        return [-1] + [1] * (w.dim() - 1) if t.numel() > 1 else []

    xd = _dequant(x, xs, xz, lambda t: [])
    wd = _dequant(w, ws, wz, per_out)
    bias = None
    if b is not None:
        bias = b.to(torch.float64) * (xs.to(torch.float64) * ws.to(torch.float64)).reshape(-1)
    y = conv(a, xd, wd, bias)[0]
    v = torch.round(y / ys.to(torch.float64)) + yz.to(torch.float64)
    return [_saturate_int(v, _DTYPE_ELEM[yz.dtype])]


# -- attention -------------------------------------------------------------------------------------------------------

@op("RotaryEmbedding")
def rotary_embedding(a, x, cos, sin, position_ids=None):
    shape = x.shape
    y = x.transpose(1, 2) if x.dim() == 4 else x.reshape(shape[0], shape[1], int(a["num_heads"]), -1)
    dim = int(a.get("rotary_embedding_dim", 0)) or y.shape[3]
    rot, keep = y[..., :dim], y[..., dim:]
    if position_ids is not None:
        cos, sin = cos[position_ids.long()], sin[position_ids.long()]
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)
    if a.get("interleaved", 0):
        x1, x2 = rot[..., 0::2], rot[..., 1::2]
    else:
        x1, x2 = rot.chunk(2, dim=-1)
    real, imag = cos * x1 - sin * x2, sin * x1 + cos * x2
    if a.get("interleaved", 0):
        rot = torch.stack([real, imag], dim=-1).reshape(rot.shape)
    else:
        rot = torch.cat([real, imag], dim=-1)
    out = torch.cat([rot, keep], dim=-1)
    return [out.transpose(1, 2) if x.dim() == 4 else out.reshape(shape)]


def _causal_bias(q_len, kv_len, offset, dtype):
    i = torch.arange(q_len).reshape(-1, 1)
    j = torch.arange(kv_len).reshape(1, -1)
    if isinstance(offset, torch.Tensor) and offset.dim() > 0:
        allowed = j <= i + offset.reshape(-1, 1, 1)
        return torch.where(allowed, 0.0, -math.inf).to(dtype).unsqueeze(1)
    return torch.where(j <= i + int(offset), 0.0, -math.inf).to(dtype)


def _window_bias(q_len, kv_len, left, right, offset, dtype):
    i = torch.arange(q_len).reshape(-1, 1)
    j = torch.arange(kv_len).reshape(1, -1)
    per_batch = isinstance(offset, torch.Tensor) and offset.dim() > 0
    diff = (i + (offset.reshape(-1, 1, 1) if per_batch else int(offset))) - j
    allowed = torch.ones_like(diff, dtype=torch.bool)
    if left >= 0:
        allowed &= diff <= left
    if right >= 0:
        allowed &= -diff <= right
    bias = torch.where(allowed, 0.0, -math.inf).to(dtype)
    return bias.unsqueeze(1) if per_batch else bias


@op("Attention")
def attention(a, q, k, v, mask=None, past_key=None, past_value=None, nonpad_kv_seqlen=None):
    """ONNX Attention (opset 23+), following onnx's reference implementation (half types computed in float32)."""
    if q.dtype in _HALF:
        half = q.dtype
        outs = attention(a, *[t.float() if t is not None and t.dtype == half else t
                              for t in (q, k, v, mask, past_key, past_value, nonpad_kv_seqlen)])
        return [o.to(half) for o in outs]
    rank3 = q.dim() == 3
    batch = q.shape[0]
    qh, kvh = a.get("q_num_heads"), a.get("kv_num_heads")
    if rank3:
        q = q.reshape(batch, q.shape[1], int(qh), -1).transpose(1, 2)
        k = k.reshape(batch, k.shape[1], int(kvh), -1).transpose(1, 2)
        v = v.reshape(batch, v.shape[1], int(kvh), -1).transpose(1, 2)
    scale = a.get("scale")
    scale = 1 / math.sqrt(q.shape[3]) if scale is None else float(scale)
    scale = math.sqrt(scale)
    if past_key is not None:
        k = torch.cat([past_key, k], dim=2)
    if past_value is not None:
        v = torch.cat([past_value, v], dim=2)
    present_k, present_v = k, v
    q_len, kv_len = q.shape[2], k.shape[2]
    dt = q.dtype
    bias = torch.zeros(q_len, kv_len, dtype=dt)
    left, right = int(a.get("left_window_size", -1)), int(a.get("right_window_size", -1))
    if mask is not None and kv_len - mask.shape[-1] > 0:
        fill = False if mask.dtype == torch.bool else -math.inf
        mask = F.pad(mask, [0, kv_len - mask.shape[-1]], value=fill)
    if past_key is None and nonpad_kv_seqlen is not None:
        offset = nonpad_kv_seqlen.reshape(-1).long() - q_len
    else:
        offset = past_key.shape[2] if past_key is not None else 0
    if a.get("is_causal", 0):
        if mask is not None and mask.dtype == torch.bool:
            mask = torch.where(mask, 0.0, -math.inf).to(dt)
        base = torch.zeros(q_len, kv_len, dtype=dt) if mask is None else mask.to(dt)
        bias = base + _causal_bias(q_len, kv_len, offset, dt)
    elif mask is not None:
        if mask.dtype == torch.bool:
            mask = torch.where(mask, 0.0, -math.inf).to(dt)
        bias = bias + mask.to(dt)
    if left >= 0 or right >= 0:
        bias = bias + _window_bias(q_len, kv_len, left, right, offset, dt)
    if nonpad_kv_seqlen is not None:
        pm = torch.arange(kv_len).reshape(1, -1) < nonpad_kv_seqlen.reshape(-1, 1)
        bias = bias + torch.where(pm, 0.0, -math.inf).to(dt).reshape(batch, 1, 1, kv_len)
    heads_q, heads_k = q.shape[1], k.shape[1]
    if heads_q != heads_k and heads_q % heads_k == 0:
        k = k.repeat_interleave(heads_q // heads_k, dim=1)
        v = v.repeat_interleave(heads_q // heads_k, dim=1)
    qk = torch.matmul(q * scale, k.transpose(-1, -2) * scale)
    softcap = float(a.get("softcap", 0.0))
    if softcap > 0:
        qk = torch.tanh(qk / softcap) * softcap
    mode = int(a.get("qk_matmul_output_mode", 0))
    with_bias = qk + bias
    qk_out = with_bias if mode == 2 else qk
    sm_in = with_bias
    if a.get("softmax_precision"):
        sm_in = sm_in.to(torch_dtype_of(a["softmax_precision"]))
    row_max = sm_in.amax(dim=-1, keepdim=True)
    masked_row = torch.isneginf(row_max)
    e = torch.exp(sm_in - torch.where(masked_row, torch.zeros_like(row_max), row_max))
    total = e.sum(dim=-1, keepdim=True)
    probs = e / torch.where(total == 0, torch.ones_like(total), total)
    all_masked = torch.isneginf(bias.amax(dim=-1, keepdim=True))
    probs = torch.where(all_masked, torch.zeros_like(probs), probs)
    if mode == 3:
        qk_out = probs
    y = torch.matmul(probs.to(dt), v)
    if rank3:
        y = y.transpose(1, 2).reshape(batch, q_len, -1)
    return [y, present_k, present_v, qk_out.to(dt)]


# -- signal processing -----------------------------------------------------------------------------------------------

def _window(a, size, fn):
    n = int(size.reshape(-1)[0].item())
    periodic = bool(a.get("periodic", 1))
    denom = n if periodic else n - 1
    i = torch.arange(n, dtype=torch.float64)
    w = fn(2 * math.pi * i / denom)
    return [w.to(torch_dtype_of(a.get("output_datatype", _TP.FLOAT)))]


OPS["HannWindow"] = lambda a, size: _window(a, size, lambda t: 0.5 - 0.5 * torch.cos(t))
OPS["HammingWindow"] = lambda a, size: _window(a, size, lambda t: 25 / 46 - 21 / 46 * torch.cos(t))
OPS["BlackmanWindow"] = lambda a, size: _window(a, size, lambda t: 0.42 - 0.5 * torch.cos(t)
                                                + 0.08 * torch.cos(2 * t))


@op("DFT")
def dft(a, x, dft_length=None, axis=None):
    ax = int(axis.reshape(-1)[0].item()) if axis is not None else int(a.get("axis", 1))
    ax %= x.dim() - 1
    xd = x if x.dtype in (torch.float32, torch.float64) else x.float()
    ctype = torch.complex128 if xd.dtype == torch.float64 else torch.complex64
    c = torch.view_as_complex(xd.contiguous()) if x.shape[-1] == 2 else xd[..., 0].to(ctype)
    onesided, inverse = bool(a.get("onesided", 0)), bool(a.get("inverse", 0))
    if onesided and inverse:  # half spectrum in, real signal out
        n = int(dft_length.reshape(-1)[0].item()) if dft_length is not None else 2 * (c.shape[ax] - 1)
        return [torch.fft.irfft(c, n=n, dim=ax).unsqueeze(-1).to(x.dtype)]
    n = int(dft_length.reshape(-1)[0].item()) if dft_length is not None else c.shape[ax]
    y = torch.fft.ifft(c, n=n, dim=ax) if inverse else torch.fft.fft(c, n=n, dim=ax)
    if onesided:
        y = y.narrow(ax, 0, n // 2 + 1)
    return [torch.view_as_real(y).to(x.dtype)]


@op("STFT")
def stft(a, x, step, window=None, frame_length=None):
    hop = int(step.item())
    n = int(frame_length.item()) if frame_length is not None else int(window.shape[0])
    sig = x[..., 0] if x.dim() == 3 else x
    frames = sig.unfold(1, n, hop)  # (batch, frames, n)
    if window is not None:
        frames = frames * window
    y = torch.fft.rfft(frames, dim=-1) if a.get("onesided", 1) else torch.fft.fft(frames, dim=-1)
    return [torch.view_as_real(y).to(x.dtype)]


@op("MelWeightMatrix")
def mel_weight_matrix(a, num_mel_bins, dft_length, sample_rate, lower_hz, upper_hz):
    bins, n_fft, rate = int(num_mel_bins.item()), int(dft_length.item()), float(sample_rate.item())
    lo_mel = 2595 * np.log1p(float(lower_hz.item()) / 700) / np.log(10)
    hi_mel = 2595 * np.log1p(float(upper_hz.item()) / 700) / np.log(10)
    points = np.arange(bins + 2) * ((hi_mel - lo_mel) / (bins + 2)) + lo_mel
    points = (((n_fft + 1) * (700 * np.expm1(points / 2595 * np.log(10)))) // rate).astype(int)
    out = np.zeros((n_fft // 2 + 1, bins))
    for i in range(bins):
        left, center, right = points[i], points[i + 1], points[i + 2]
        if center == left:
            out[center, i] = 1
        else:
            for j in range(left, center + 1):
                out[j, i] = (j - left) / (center - left)
        for j in range(center, right):
            out[j, i] = (right - j) / (right - center)
    return [torch.from_numpy(out).to(torch_dtype_of(a.get("output_datatype", _TP.FLOAT)))]


@op("TfIdfVectorizer")
def tfidf_vectorizer(a, x):
    pool = list(a.get("pool_int64s", []))
    if not pool and "pool_strings" in a:
        raise EdgekitError("TfIdfVectorizer over strings is not supported in torch")
    counts_at = list(a["ngram_counts"])
    indexes = list(a["ngram_indexes"])
    lo, hi, max_skip = int(a["min_gram_length"]), int(a["max_gram_length"]), int(a["max_skip_count"])
    mode = _s(a["mode"])
    weights = list(a.get("weights", [])) or [1.0] * len(indexes)
    grams, j = {}, 0
    for n in range(1, len(counts_at) + 1):
        end = counts_at[n] if n < len(counts_at) else len(pool)
        for start in range(counts_at[n - 1], end, n):
            grams[tuple(pool[start:start + n])] = j
            j += 1
    rows = x.reshape(1, -1) if x.dim() == 1 else x
    out = np.zeros((rows.shape[0], max(indexes) + 1), np.float32)
    for r, row in enumerate(rows.tolist()):
        for n in range(lo, hi + 1):
            for skip in range(max_skip + 1 if n > 1 else 1):
                step = skip + 1
                for i in range(len(row) - (n - 1) * step):
                    k = grams.get(tuple(row[i:i + (n - 1) * step + 1:step]))
                    if k is not None:
                        out[r, indexes[k]] += 1
    w = np.zeros(out.shape[1], np.float32)
    for k, idx in enumerate(indexes):
        w[idx] = weights[k]
    if mode == "IDF":
        out = (out > 0).astype(np.float32) * w
    elif mode == "TFIDF":
        out = out * w
    y = torch.from_numpy(out)
    return [y.reshape(-1) if x.dim() == 1 else y]


def _bilinear_zero(img, py, px):
    """Bilinear samples of img (B, C, H, W) at py/px (B, *S), out-of-image pixels 0 -> (B, C, *S)."""
    b, c, h, w = img.shape
    flat = img.reshape(b, c, h * w)
    y0, x0 = torch.floor(py), torch.floor(px)
    out = 0
    for dy in (0, 1):
        for dx in (0, 1):
            yy, xx = y0 + dy, x0 + dx
            wgt = (1 - (py - yy).abs()) * (1 - (px - xx).abs())
            valid = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
            idx = (yy.clamp(0, h - 1) * w + xx.clamp(0, w - 1)).long().reshape(b, 1, -1).expand(b, c, -1)
            vals = torch.gather(flat, 2, idx).reshape(b, c, *py.shape[1:])
            out = out + vals * (wgt * valid).to(img.dtype).unsqueeze(1)
    return out


@op("DeformConv")
def deform_conv(a, x, w, offset, b=None, mask=None):
    n, c, h, wd = x.shape
    oc, _, kh, kw = w.shape
    group, og = int(a.get("group", 1)), int(a.get("offset_group", 1))
    sh, sw = list(a.get("strides", [1, 1]))
    dh, dw = list(a.get("dilations", [1, 1]))
    pt, pl = list(a.get("pads", [0, 0, 0, 0]))[:2]
    oh, ow = offset.shape[2:]
    k = kh * kw
    off = offset.reshape(n, og, k, 2, oh, ow)
    ky = (torch.arange(kh).repeat_interleave(kw) * dh).to(x.dtype).reshape(1, 1, k, 1, 1)
    kx = (torch.arange(kw).repeat(kh) * dw).to(x.dtype).reshape(1, 1, k, 1, 1)
    oy = (torch.arange(oh) * sh - pt).to(x.dtype).reshape(1, 1, 1, -1, 1)
    ox = (torch.arange(ow) * sw - pl).to(x.dtype).reshape(1, 1, 1, 1, -1)
    py = (oy + ky + off[:, :, :, 0]).reshape(n * og, k, oh, ow)
    px = (ox + kx + off[:, :, :, 1]).reshape(n * og, k, oh, ow)
    cols = _bilinear_zero(x.reshape(n * og, c // og, h, wd), py, px)  # (n*og, c/og, k, oh, ow)
    cols = cols.reshape(n, og, c // og, k, oh, ow)
    if mask is not None:
        cols = cols * mask.reshape(n, og, 1, k, oh, ow)
    cols = cols.reshape(n, group, c // group, k, oh, ow)
    y = torch.einsum("ngckhw,gock->ngohw", cols, w.reshape(group, oc // group, c // group, k))
    y = y.reshape(n, oc, oh, ow)
    if b is not None:
        y = y + b.reshape(1, -1, 1, 1)
    return [y]


@op("RoiAlign")
def roi_align(a, x, rois, batch_indices):
    mode = _s(a.get("mode"), "avg")
    ph_n, pw_n = int(a.get("output_height", 1)), int(a.get("output_width", 1))
    ratio, scale = int(a.get("sampling_ratio", 0)), float(a.get("spatial_scale", 1.0))
    half = _s(a.get("coordinate_transformation_mode"), "half_pixel") == "half_pixel"
    _, c, h, w = x.shape
    outs = []
    for r, bi in zip(rois.detach().double().tolist(), _ints(batch_indices)):
        off = 0.5 if half else 0.0
        x1, y1, x2, y2 = (v * scale - off for v in r)
        rw, rh = x2 - x1, y2 - y1
        if not half:
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        bh, bw = rh / ph_n, rw / pw_n
        gh = ratio if ratio > 0 else int(np.ceil(rh / ph_n))
        gw = ratio if ratio > 0 else int(np.ceil(rw / pw_n))
        yy = y1 + np.arange(ph_n)[:, None] * bh + (np.arange(gh)[None, :] + 0.5) * bh / gh  # (ph, gh)
        xx = x1 + np.arange(pw_n)[:, None] * bw + (np.arange(gw)[None, :] + 0.5) * bw / gw  # (pw, gw)
        yy = np.broadcast_to(yy[:, :, None, None], (ph_n, gh, pw_n, gw))
        xx = np.broadcast_to(xx[None, None], (ph_n, gh, pw_n, gw))
        outside = (yy < -1.0) | (yy > h) | (xx < -1.0) | (xx > w)
        yc, xc = np.maximum(yy, 0), np.maximum(xx, 0)
        y_lo, x_lo = yc.astype(np.int64), xc.astype(np.int64)
        y_top, x_top = y_lo >= h - 1, x_lo >= w - 1
        y_lo, x_lo = np.where(y_top, h - 1, y_lo), np.where(x_top, w - 1, x_lo)
        yc, xc = np.where(y_top, y_lo, yc), np.where(x_top, x_lo, xc)
        y_hi, x_hi = np.where(y_top, y_lo, y_lo + 1), np.where(x_top, x_lo, x_lo + 1)
        ly, lx = yc - y_lo, xc - x_lo
        keep = ~outside
        corners = [(y_lo, x_lo, (1 - ly) * (1 - lx)), (y_lo, x_hi, (1 - ly) * lx),
                   (y_hi, x_lo, ly * (1 - lx)), (y_hi, x_hi, ly * lx)]
        img = x[bi].reshape(c, h * w)
        terms = []
        for yi, xi, wt in corners:
            vals = img[:, torch.as_tensor((yi * w + xi).reshape(-1))].reshape(c, *yi.shape)
            terms.append(vals * torch.as_tensor(wt * keep, dtype=x.dtype))
        if mode == "avg":
            outs.append(sum(terms).sum(dim=(2, 4)) / max(gh * gw, 1))
        else:
            outs.append(torch.stack(terms).amax(dim=0).amax(dim=4).amax(dim=2))
    return [torch.stack(outs) if outs else torch.zeros(0, c, ph_n, pw_n, dtype=x.dtype)]


# -- recurrent -------------------------------------------------------------------------------------------------------

_ACTS = {"Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Relu": torch.relu}


def _rnn_acts(a, defaults, per_dir):
    names = [_s(n) for n in a.get("activations", [])] or defaults * 1
    if len(names) == len(defaults):
        names = names * per_dir
    return [_ACTS[n] if n in _ACTS else _scaled_act(n, a) for n in names]


def _scaled_act(name, a):
    raise EdgekitError(f"RNN activation {name} is not supported")


def _rnn_common(a, x, seq_lens):
    if a.get("layout", 0):
        x = x.transpose(0, 1)
    direction = _s(a.get("direction"), "forward")
    dirs = 2 if direction == "bidirectional" else 1
    return x, direction, dirs


def _run_recurrent(a, x, w, r, b, h0, c0, seq_lens, cell, n_gates, defaults, p=None):
    x, direction, dirs = _rnn_common(a, x, seq_lens)
    seq, batch, _ = x.shape
    hidden = int(a.get("hidden_size", r.shape[-1]))
    acts = _rnn_acts(a, defaults, dirs)
    if h0 is not None and a.get("layout", 0):
        h0 = h0.transpose(0, 1)
    if c0 is not None and a.get("layout", 0):
        c0 = c0.transpose(0, 1)
    ys, hs, cs = [], [], []
    for d in range(dirs):
        reverse = direction == "reverse" or d == 1
        bd = b[d] if b is not None else torch.zeros(2 * n_gates * hidden, dtype=x.dtype)
        h = h0[d] if h0 is not None else torch.zeros(batch, hidden, dtype=x.dtype)
        c = c0[d] if c0 is not None else torch.zeros(batch, hidden, dtype=x.dtype)
        pd = p[d] if p is not None else None
        outs = [None] * seq
        steps = range(seq - 1, -1, -1) if reverse else range(seq)
        for t in steps:
            h, c = cell(x[t], w[d], r[d], bd, h, c, pd, acts[d * len(defaults):(d + 1) * len(defaults)], hidden, a)
            outs[t] = h
        ys.append(torch.stack(outs))
        hs.append(h)
        cs.append(c)
    y = torch.stack(ys, dim=1)  # (seq, dirs, batch, hidden)
    h_n, c_n = torch.stack(hs), torch.stack(cs)
    if a.get("layout", 0):
        y, h_n, c_n = y.permute(2, 0, 1, 3), h_n.transpose(0, 1), c_n.transpose(0, 1)
    return y, h_n, c_n


def _clip(v, a):
    if "clip" in a:
        return v.clamp(-float(a["clip"]), float(a["clip"]))
    return v


def _rnn_cell(xt, w, r, b, h, c, p, acts, hidden, a):
    wb, rb = b[:hidden], b[hidden:]
    return acts[0](_clip(xt @ w.T + h @ r.T + wb + rb, a)), c


def _gru_cell(xt, w, r, b, h, c, p, acts, hidden, a):
    f, g = acts
    wb, rb = b[:3 * hidden], b[3 * hidden:]
    gx = xt @ w.T + wb
    wz, wr, wh = gx.chunk(3, dim=-1)
    rz, rr, rh = r.chunk(3, dim=0)
    bz, br, bh = rb.chunk(3)
    z = f(_clip(wz + h @ rz.T + bz, a))
    rt = f(_clip(wr + h @ rr.T + br, a))
    if a.get("linear_before_reset", 0):
        hh = g(_clip(wh + rt * (h @ rh.T + bh), a))
    else:
        hh = g(_clip(wh + (rt * h) @ rh.T + bh, a))
    return (1 - z) * hh + z * h, c


def _lstm_cell(xt, w, r, b, h, c, p, acts, hidden, a):
    f, g, hact = acts
    gates = xt @ w.T + h @ r.T + b[:4 * hidden] + b[4 * hidden:]
    i, o, fg, cc = gates.chunk(4, dim=-1)
    if p is not None:
        pi, po, pf = p.chunk(3)
        i, fg = i + pi * c, fg + pf * c
    i, fg, cc = f(_clip(i, a)), f(_clip(fg, a)), g(_clip(cc, a))
    if a.get("input_forget", 0):
        fg = 1 - i
    c = fg * c + i * cc
    if p is not None:
        o = o + po * c
    o = f(_clip(o, a))
    return o * hact(c), c


@op("RNN")
def rnn(a, x, w, r, b=None, seq_lens=None, h0=None):
    y, h, _ = _run_recurrent(a, x, w, r, b, h0, None, seq_lens, _rnn_cell, 1, ["Tanh"])
    return [y, h]


@op("GRU")
def gru(a, x, w, r, b=None, seq_lens=None, h0=None):
    y, h, _ = _run_recurrent(a, x, w, r, b, h0, None, seq_lens, _gru_cell, 3, ["Sigmoid", "Tanh"])
    return [y, h]


@op("LSTM")
def lstm(a, x, w, r, b=None, seq_lens=None, h0=None, c0=None, p=None):
    y, h, c = _run_recurrent(a, x, w, r, b, h0, c0, seq_lens, _lstm_cell, 4, ["Sigmoid", "Tanh", "Tanh"], p)
    return [y, h, c]


# -- detection -------------------------------------------------------------------------------------------------------

@op("NonMaxSuppression")
def non_max_suppression(a, boxes, scores, max_out=None, iou_th=None, score_th=None):
    max_out = int(max_out.item()) if max_out is not None and max_out.numel() else 0
    iou_th = float(iou_th.item()) if iou_th is not None and iou_th.numel() else 0.0
    score_th = float(score_th.item()) if score_th is not None and score_th.numel() else None
    bx, sc = boxes.detach().double().numpy(), scores.detach().double().numpy()
    if a.get("center_point_box", 0):
        xc, yc, w, h = bx[..., 0], bx[..., 1], bx[..., 2], bx[..., 3]
        bx = np.stack([yc - h / 2, xc - w / 2, yc + h / 2, xc + w / 2], axis=-1)
    y1, y2 = np.minimum(bx[..., 0], bx[..., 2]), np.maximum(bx[..., 0], bx[..., 2])
    x1, x2 = np.minimum(bx[..., 1], bx[..., 3]), np.maximum(bx[..., 1], bx[..., 3])
    out = []
    for bi in range(sc.shape[0]):
        area = (y2[bi] - y1[bi]) * (x2[bi] - x1[bi])
        for ci in range(sc.shape[1]):
            s = sc[bi, ci]
            order = [i for i in np.argsort(-s, kind="stable") if score_th is None or s[i] > score_th]
            keep = []
            for i in order:
                if len(keep) >= max_out:
                    break
                ok = True
                for j in keep:
                    ih = max(0.0, min(y2[bi, i], y2[bi, j]) - max(y1[bi, i], y1[bi, j]))
                    iw = max(0.0, min(x2[bi, i], x2[bi, j]) - max(x1[bi, i], x1[bi, j]))
                    inter = ih * iw
                    union = area[i] + area[j] - inter
                    if union > 0 and inter / union > iou_th:
                        ok = False
                        break
                if ok:
                    keep.append(i)
            out += [[bi, ci, int(i)] for i in keep]
    return [torch.tensor(out, dtype=torch.int64).reshape(-1, 3)]


# -- control flow ----------------------------------------------------------------------------------------------------

@graph_op("If")
def if_(graph, node, a, inputs, env):
    branch = a["then_branch"] if bool(inputs[0].reshape(-1)[0]) else a["else_branch"]
    return graph.run_subgraph(branch, env, [])


@graph_op("Loop")
def loop(graph, node, a, inputs, env):
    body = a["body"]
    trip, cond = inputs[0], inputs[1]
    carried = list(inputs[2:])
    n_scan = len(body.output) - 1 - len(carried)
    scans = [[] for _ in range(n_scan)]
    limit = int(trip.reshape(-1)[0]) if trip is not None else None
    go = bool(cond.reshape(-1)[0]) if cond is not None else True
    i = 0
    while go and (limit is None or i < limit):
        outs = graph.run_subgraph(body, env, [torch.tensor(i, dtype=torch.int64), torch.tensor(go), *carried])
        go = bool(outs[0].reshape(-1)[0])
        carried = list(outs[1:1 + len(carried)])
        for s, o in zip(scans, outs[1 + len(carried):]):
            s.append(o)
        i += 1
    return carried + [torch.stack(s) if s else torch.zeros(0) for s in scans]


def _scan(graph, a, body, states, xs, env):
    n_in = len(xs)
    in_axes = list(a.get("scan_input_axes", [0] * n_in))
    in_dirs = list(a.get("scan_input_directions", a.get("directions", [0] * n_in)))
    n_out = len(body.output) - len(states)
    out_axes = list(a.get("scan_output_axes", [0] * n_out))
    out_dirs = list(a.get("scan_output_directions", [0] * n_out))
    length = xs[0].shape[in_axes[0] % xs[0].dim()] if xs else 0
    scans = [[] for _ in range(n_out)]
    for t in range(length):
        slices = [x.select(ax % x.dim(), length - 1 - t if d else t) for x, ax, d in zip(xs, in_axes, in_dirs)]
        outs = graph.run_subgraph(body, env, [*states, *slices])
        states = list(outs[:len(states)])
        for s, o in zip(scans, outs[len(states):]):
            s.append(o)
    results = []
    for s, ax, d in zip(scans, out_axes, out_dirs):
        if d:
            s = s[::-1]
        y = torch.stack(s)
        results.append(y.movedim(0, ax % y.dim()))
    return states + results


@graph_op("Scan")
def scan(graph, node, a, inputs, env):
    body = a["body"]
    n_in = int(a["num_scan_inputs"])
    if graph.opset < 9:  # Scan-8: optional sequence_lens first, batch axis 0, scan axis 1
        inputs = inputs[1:]
        states, xs = inputs[:len(inputs) - n_in], inputs[len(inputs) - n_in:]
        per_batch = [_scan(graph, a, body, [s[b] for s in states], [x[b] for x in xs], env)
                     for b in range(xs[0].shape[0])]
        return [torch.stack([r[i] for r in per_batch]) for i in range(len(per_batch[0]))]
    states, xs = inputs[:len(inputs) - n_in], inputs[len(inputs) - n_in:]
    return _scan(graph, a, body, list(states), list(xs), env)


# The ops the quantization pipeline accepts in a float model (prepare_model(..., SUPPORTED_OPS)). The table
# above runs more (the whole ONNX backend test suite, see tests/onnx_graph); this list is what quantization
# has been validated on, and widening it is a quantization decision, not an op-table one.
SUPPORTED_OPS = frozenset({
    "Abs", "Add", "AveragePool", "BatchNormalization", "Cast", "Ceil", "Clip", "Concat", "ConstantOfShape", "Conv",
    "ConvTranspose", "Cos", "CumSum", "DepthToSpace", "Div", "Dropout", "Einsum", "Equal", "Erf", "Exp", "Expand",
    "Flatten", "Floor", "Gather", "Gelu", "Gemm", "GlobalAveragePool", "GlobalMaxPool", "Greater", "HardSigmoid",
    "HardSwish", "Identity", "InstanceNormalization", "LayerNormalization", "LeakyRelu", "Less", "Log",
    "LogSoftmax", "MatMul", "Max", "MaxPool", "Mean", "Min", "Mish", "Mod", "Mul", "Neg", "Not", "PRelu", "Pad",
    "Pow", "Range", "Reciprocal", "ReduceL2", "ReduceMax", "ReduceMean", "ReduceMin", "ReduceSum", "Relu",
    "Reshape", "Resize", "Shape", "Sigmoid", "Sin", "Slice", "Softmax", "Softplus", "SpaceToDepth", "Split", "Sqrt",
    "Squeeze", "Sub", "Sum", "Tanh", "Tile", "Transpose", "Unsqueeze", "Where"})


def run_node(node: onnx.NodeProto, inputs: list, attributes: dict | None = None) -> list:
    """Run one ONNX node on torch tensors (None for omitted optional inputs)."""
    a = node_attrs(node) if attributes is None else attributes
    if node.op_type == "Split":
        x = inputs[0]
        axis = int(a.get("axis", 0)) % x.dim()
        n = len(node.output)
        if len(inputs) > 1 and inputs[1] is not None:
            sizes = _ints(inputs[1])
        elif "split" in a:
            sizes = list(a["split"])
        else:
            chunk = -(-x.shape[axis] // n)
            sizes = [min(chunk, x.shape[axis] - i * chunk) for i in range(n)]
        return list(torch.split(x, sizes, dim=axis))
    fn = OPS.get(node.op_type)
    if fn is None:
        if node.op_type in GRAPH_OPS:
            raise EdgekitError(f"node {node.name or '(unnamed)'}: {node.op_type} has subgraphs; "
                               "run it through TorchGraph")
        raise EdgekitError(f"node {node.name or '(unnamed)'}: op {node.op_type} has no torch implementation")
    while inputs and inputs[-1] is None:
        inputs = inputs[:-1]
    return fn(a, *inputs)


def run_nodes(nodes, values: dict, constants: dict, output: str) -> torch.Tensor:
    """Run `nodes` (graph order) on torch tensors: `values` by name, then `constants` (numpy) for
    any other input; returns the tensor named `output`."""
    env = dict(values)
    for node in nodes:
        ins = []
        for name in node.input:
            if not name:
                ins.append(None)
            elif name in env:
                ins.append(env[name])
            else:
                ins.append(to_torch(constants[name]))
        for name, v in zip(node.output, run_node(node, ins)):
            env[name] = v
    return env[output]


def to_torch(arr: np.ndarray) -> torch.Tensor:
    arr = np.asarray(arr)
    if arr.dtype == np.float64:
        arr = arr.astype(np.float32)
    return torch.from_numpy(np.array(arr, order="C"))  # a copy; keeps 0-d arrays 0-d


class TorchGraph:
    """Executes an ONNX graph node by node in torch (float32, autograd-capable).

    `hook(tensor_name, value) -> value` sees every produced tensor (used for
    fake quantization); `weights` overrides initializers by name. If / Loop /
    Scan run their subgraphs here (outer-scope names visible), without hooks.
    """

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.nodes = list(model.graph.node)
        self.attrs = [node_attrs(n) for n in self.nodes]
        self.params = {i.name: to_torch(numpy_helper.to_array(i)) for i in model.graph.initializer}
        init_names = set(self.params)
        self.input_names = [i.name for i in model.graph.input if i.name not in init_names]
        self.output_names = [o.name for o in model.graph.output]
        self.opset = next((i.version for i in model.opset_import if i.domain in ("", "ai.onnx")), 0)
        self._subgraphs: dict = {}
        declared = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.output,
                                                                   *model.graph.value_info]
                    if v.type.HasField("tensor_type")}
        for node, a in zip(self.nodes, self.attrs):
            et = declared.get(node.output[0]) if node.output else None
            if node.op_type in ("CastLike", "QuantizeLinear") and et in _CONTAINED:
                a["_declared_type"] = et
            if node.op_type == "MaxPool":  # its Indices output costs a pass in numpy: only when read
                a["_wants_indices"] = len(node.output) > 1 and bool(node.output[1])

    def _exec(self, node, a, env) -> list:
        inputs = [env[i] if i else None for i in node.input]
        fn = GRAPH_OPS.get(node.op_type)
        if fn is None:
            return run_node(node, inputs, a)
        try:
            return fn(self, node, a, inputs, env)
        except Exception as exc:  # name the control-flow node around a failure in its subgraph
            what = str(exc) if isinstance(exc, EdgekitError) else f"{type(exc).__name__}: {exc}"
            raise EdgekitError(f"node {node.name or '(unnamed)'} ({node.op_type}): {what}") from None

    def run_subgraph(self, graph: onnx.GraphProto, scope: dict, inputs: list) -> list:
        """Outputs of a subgraph given its inputs; names of `scope` (the enclosing graph) are visible."""
        key = id(graph)
        if key not in self._subgraphs:
            self._subgraphs[key] = (graph, [node_attrs(n) for n in graph.node],
                                    {i.name: tensor_from_numpy(numpy_helper.to_array(i)) for i in graph.initializer})
        _, attrs, inits = self._subgraphs[key]
        env = dict(scope)
        env.update(inits)
        for vi, value in zip(graph.input, inputs):
            env[vi.name] = value
        for node, a in zip(graph.node, attrs):
            for name, value in zip(node.output, self._exec(node, a, env)):
                if name:
                    env[name] = value
        return [env[o.name] for o in graph.output]

    def run(self, feeds: dict, hook=None, weights: dict | None = None, keep: set | None = None,
            stop_after: set | None = None) -> dict:
        env = dict(self.params)
        if weights:
            env.update(weights)
        for name in self.input_names:
            if name not in feeds:
                raise EdgekitError(f"missing model input {name}")
            value = feeds[name] if isinstance(feeds[name], torch.Tensor) else to_torch(feeds[name])
            env[name] = hook(name, value) if hook else value
        for node, a in zip(self.nodes, self.attrs):
            outs = self._exec(node, a, env)
            for name, value in zip(node.output, outs):
                if name:
                    env[name] = hook(name, value) if hook else value
        if keep is None:
            return {n: env[n] for n in self.output_names}
        return {n: env[n] for n in keep if n in env}
