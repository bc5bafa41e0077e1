"""ONNX -> torch op table, so that ONNX subgraphs run with autograd.

One small function per ONNX op behind a registry (like onnx.reference). Each
takes the node's attributes and its input tensors (None for an omitted
optional input) and returns a list of output tensors. Quantization uses it to
run the float model, fake-quantized variants, and single layers during
compensation and learned rounding.
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


def op(*names):
    def deco(fn):
        for n in names:
            OPS[n] = fn
        return fn
    return deco


def _ints(t) -> list[int]:
    return [int(v) for v in torch.as_tensor(t).reshape(-1).tolist()]


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


@op("Conv")
def conv(a, x, w, b=None):
    strides, pads, dil, group = conv_params(a, x, w)
    nd = w.dim() - 2
    if any(pads):
        x = F.pad(x, _pads_torch(pads, nd))
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[nd]
    return [fn(x, w, b, stride=strides, dilation=dil, groups=group)]


@op("ConvTranspose")
def conv_transpose(a, x, w, b=None):
    nd = w.dim() - 2
    strides = list(a.get("strides", [1] * nd))
    dil = list(a.get("dilations", [1] * nd))
    pads = list(a.get("pads", [0] * (2 * nd)))
    outpad = list(a.get("output_padding", [0] * nd))
    group = int(a.get("group", 1))
    if "output_shape" in a or a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise EdgekitError("ConvTranspose with output_shape/auto_pad is not supported")
    fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[nd]
    y = fn(x, w, b, stride=strides, padding=0, output_padding=outpad, groups=group, dilation=dil)
    idx = [slice(None), slice(None)]
    for d in range(nd):
        idx.append(slice(pads[d], y.shape[2 + d] - pads[d + nd]))
    return [y[tuple(idx)]]


@op("Gemm")
def gemm(a, x, w, c=None):
    if a.get("transA", 0):
        x = x.transpose(-1, -2)
    if a.get("transB", 0):
        w = w.transpose(-1, -2)
    y = float(a.get("alpha", 1.0)) * (x @ w)
    if c is not None:
        y = y + float(a.get("beta", 1.0)) * c
    return [y]


@op("MatMul")
def matmul(a, x, y):
    return [torch.matmul(x, y)]


def _binary(fn):
    return lambda a, x, y: [fn(x, y)]


OPS["Add"] = _binary(torch.add)
OPS["Sub"] = _binary(torch.sub)
OPS["Mul"] = _binary(torch.mul)
OPS["Pow"] = _binary(torch.pow)
OPS["Equal"] = _binary(torch.eq)
OPS["Mod"] = _binary(torch.remainder)
OPS["Less"] = _binary(torch.lt)
OPS["Greater"] = _binary(torch.gt)


@op("Div")
def div(a, x, y):
    if not x.is_floating_point() and not y.is_floating_point():
        return [torch.div(x, y, rounding_mode="trunc")]
    return [x / y]


@op("Min", "Max", "Sum", "Mean")
def _variadic(a, *xs, _name=None):
    raise NotImplementedError  # replaced below with the op name bound


def _make_variadic(fn):
    def run(a, *xs):
        y = xs[0]
        for x in xs[1:]:
            y = fn(y, x)
        return [y]
    return run


OPS["Min"] = _make_variadic(torch.minimum)
OPS["Max"] = _make_variadic(torch.maximum)
OPS["Sum"] = _make_variadic(torch.add)


def _unary(fn):
    return lambda a, x: [fn(x)]


for _name, _fn in {"Sqrt": torch.sqrt, "Exp": torch.exp, "Log": torch.log, "Neg": torch.neg,
                   "Abs": torch.abs, "Erf": torch.erf, "Tanh": torch.tanh, "Sigmoid": torch.sigmoid,
                   "Relu": F.relu, "Reciprocal": torch.reciprocal, "Sin": torch.sin, "Cos": torch.cos,
                   "Floor": torch.floor, "Ceil": torch.ceil, "Softplus": F.softplus, "Mish": F.mish,
                   "Identity": lambda x: x, "Dropout": lambda x: x, "Not": torch.logical_not}.items():
    OPS[_name] = _unary(_fn)


@op("Dropout")
def dropout(a, x, *rest):
    return [x]


@op("LeakyRelu")
def leaky_relu(a, x):
    return [F.leaky_relu(x, float(a.get("alpha", 0.01)))]


@op("PRelu")
def prelu(a, x, slope):
    return [torch.where(x >= 0, x, x * slope)]


@op("Clip")
def clip(a, x, lo=None, hi=None):
    if lo is not None:
        x = torch.maximum(x, lo.to(x.dtype))
    if hi is not None:
        x = torch.minimum(x, hi.to(x.dtype))
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


@op("LayerNormalization")
def layer_norm(a, x, scale, bias=None):
    axis = int(a.get("axis", -1)) % x.dim()
    shape = x.shape[axis:]
    return [F.layer_norm(x, shape, scale.expand(shape) if scale is not None else None,
                         bias.expand(shape) if bias is not None else None, float(a.get("epsilon", 1e-5)))]


@op("BatchNormalization")
def batch_norm(a, x, scale, bias, mean, var):
    return [F.batch_norm(x, mean, var, scale, bias, False, 0.0, float(a.get("epsilon", 1e-5)))]


@op("InstanceNormalization")
def instance_norm(a, x, scale, bias):
    return [F.instance_norm(x, weight=scale, bias=bias, eps=float(a.get("epsilon", 1e-5)))]


def _axes(a, axes_input):
    if axes_input is not None:
        return _ints(axes_input)
    return list(a["axes"]) if "axes" in a else None


def _reduce(fn):
    def run(a, x, axes=None):
        ax = _axes(a, axes)
        keep = bool(a.get("keepdims", 1))
        if not ax:
            if a.get("noop_with_empty_axes", 0):
                return [x]
            ax = list(range(x.dim()))
        return [fn(x, ax, keep)]
    return run


OPS["ReduceMean"] = _reduce(lambda x, ax, k: x.mean(dim=ax, keepdim=k))
OPS["ReduceSum"] = _reduce(lambda x, ax, k: x.sum(dim=ax, keepdim=k))
OPS["ReduceMax"] = _reduce(lambda x, ax, k: x.amax(dim=ax, keepdim=k))
OPS["ReduceMin"] = _reduce(lambda x, ax, k: x.amin(dim=ax, keepdim=k))
OPS["ReduceL2"] = _reduce(lambda x, ax, k: x.pow(2).sum(dim=ax, keepdim=k).sqrt())


@op("Reshape")
def reshape(a, x, shape):
    shape = _ints(shape)
    if not a.get("allowzero", 0):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return [x.reshape(shape)]


@op("Flatten")
def flatten(a, x):
    axis = int(a.get("axis", 1)) % max(x.dim(), 1)
    return [x.reshape(int(np.prod(x.shape[:axis])), -1)]


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
def slice_(a, x, starts, ends, axes=None, steps=None):
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
            idx[ax] = slice(s, e, st)
        else:  # negative step: slice the flipped axis
            s = max(-1, min(n - 1, s + n if s < 0 else s))
            e = max(-1, min(n - 1, e + n if e < 0 else e)) if e > -n - 1 else -1
            idx[ax] = slice(n - 1 - s, n - 1 - e, -st)
            flips.append(ax)
    if flips:
        x = torch.flip(x, flips)
    return [x[tuple(idx)]]


@op("Gather")
def gather(a, x, indices):
    axis = int(a.get("axis", 0)) % x.dim()
    idx = indices.long()
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    out = torch.index_select(x, axis, idx.reshape(-1))
    return [out.reshape(list(x.shape[:axis]) + list(idx.shape) + list(x.shape[axis + 1:]))]


@op("Shape")
def shape(a, x):
    s = list(x.shape)[int(a.get("start", 0)):a.get("end", None)]
    return [torch.tensor(s, dtype=torch.int64)]


@op("Cast")
def cast(a, x):
    np_dtype = onnx.helper.tensor_dtype_to_np_dtype(int(a["to"]))
    return [x.to(torch.from_numpy(np.zeros(1, np_dtype)).dtype)]


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
    return [torch.where(c.bool(), x, y)]


@op("ConstantOfShape")
def constant_of_shape(a, shape):
    value = numpy_helper.to_array(a["value"]) if "value" in a else np.zeros(1, np.float32)
    return [torch.full(_ints(shape), value.reshape(-1)[0].item(), dtype=torch.from_numpy(value).dtype)]


@op("Range")
def range_(a, start, limit, delta):
    return [torch.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype)]


def _pool_setup(a, x):
    kernel = list(a["kernel_shape"])
    nd = len(kernel)
    strides = list(a.get("strides", [1] * nd))
    dil = list(a.get("dilations", [1] * nd))
    pads = _auto_pad(a, x, kernel, strides, dil)
    return kernel, strides, pads, dil


@op("MaxPool")
def max_pool(a, x):
    kernel, strides, pads, dil = _pool_setup(a, x)
    nd = len(kernel)
    if any(pads):
        x = F.pad(x, _pads_torch(pads, nd), value=float("-inf"))
    fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[nd]
    return [fn(x, kernel, strides, 0, dil, ceil_mode=bool(a.get("ceil_mode", 0)))]


@op("AveragePool")
def avg_pool(a, x):
    kernel, strides, pads, _ = _pool_setup(a, x)
    nd = len(kernel)
    include = bool(a.get("count_include_pad", 0))
    fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[nd]
    ceil = bool(a.get("ceil_mode", 0))
    if not any(pads):
        return [fn(x, kernel, strides, 0, ceil_mode=ceil)]
    xp = F.pad(x, _pads_torch(pads, nd))
    total = fn(xp, kernel, strides, 0, ceil_mode=ceil, divisor_override=1) if nd == 2 else \
        fn(xp, kernel, strides, 0, ceil_mode=ceil) * float(np.prod(kernel))
    if include:
        return [total / float(np.prod(kernel))]
    ones = F.pad(torch.ones_like(x[:1, :1]), _pads_torch(pads, nd))
    count = fn(ones, kernel, strides, 0, ceil_mode=ceil) * float(np.prod(kernel))
    return [total / count]


@op("GlobalAveragePool")
def global_avg_pool(a, x):
    return [x.mean(dim=tuple(range(2, x.dim())), keepdim=True)]


@op("GlobalMaxPool")
def global_max_pool(a, x):
    return [x.amax(dim=tuple(range(2, x.dim())), keepdim=True)]


@op("Pad")
def pad(a, x, pads=None, value=None, axes=None):
    mode = a.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    p = _ints(pads)
    nd = x.dim()
    if axes is not None:
        ax = [d % nd for d in _ints(axes)]
        full = [0] * (2 * nd)
        for i, d in enumerate(ax):
            full[d], full[d + nd] = p[i], p[i + len(ax)]
        p = full
    tp = _pads_torch(p, nd)
    while len(tp) > 2 and tp[-1] == 0 and tp[-2] == 0:
        tp = tp[:-2]
    if mode == "constant":
        return [F.pad(x, tp, value=float(value.item()) if value is not None and value.numel() else 0.0)]
    return [F.pad(x, tp, mode={"reflect": "reflect", "edge": "replicate", "wrap": "circular"}[mode])]


@op("Resize")
def resize(a, x, roi=None, scales=None, sizes=None):
    mode = a.get("mode", b"nearest")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    ctm = a.get("coordinate_transformation_mode", b"half_pixel")
    ctm = ctm.decode() if isinstance(ctm, bytes) else ctm
    if sizes is not None and sizes.numel():
        size = _ints(sizes)[2:]
    else:
        sc = [float(s) for s in scales.reshape(-1).tolist()][2:]
        size = [int(math.floor(x.shape[2 + i] * s)) for i, s in enumerate(sc)]
    if mode == "nearest":
        nearest = a.get("nearest_mode", b"round_prefer_floor")
        nearest = nearest.decode() if isinstance(nearest, bytes) else nearest
        if ctm == "asymmetric" and nearest == "floor":
            return [F.interpolate(x, size=size, mode="nearest")]
        return [F.interpolate(x, size=size, mode="nearest-exact")]
    torch_mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(size)]
    if mode == "cubic":
        torch_mode = "bicubic"
    return [F.interpolate(x, size=size, mode=torch_mode, align_corners=(ctm == "align_corners"))]


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
    y = x.reshape(n, c, h // bs, bs, w // bs, bs).permute(0, 3, 5, 1, 2, 4)
    return [y.reshape(n, c * bs * bs, h // bs, w // bs)]


@op("Einsum")
def einsum(a, *xs):
    eq = a["equation"]
    return [torch.einsum(eq.decode() if isinstance(eq, bytes) else eq, *xs)]


@op("CumSum")
def cumsum(a, x, axis):
    return [torch.cumsum(x, dim=int(axis.item()))]


SUPPORTED_OPS = frozenset(OPS) - {"Split"} | {"Split"}


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
        raise EdgekitError(f"node {node.name}: op {node.op_type} has no torch implementation")
    return fn(a, *inputs)


def to_torch(arr: np.ndarray) -> torch.Tensor:
    arr = np.asarray(arr)
    if arr.dtype == np.float64:
        arr = arr.astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(arr).copy())


class TorchGraph:
    """Executes an ONNX graph node by node in torch (float32, autograd-capable).

    `hook(tensor_name, value) -> value` sees every produced tensor (used for
    fake quantization); `weights` overrides initializers by name.
    """

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.nodes = list(model.graph.node)
        self.attrs = [node_attrs(n) for n in self.nodes]
        self.params = {i.name: to_torch(numpy_helper.to_array(i)) for i in model.graph.initializer}
        init_names = set(self.params)
        self.input_names = [i.name for i in model.graph.input if i.name not in init_names]
        self.output_names = [o.name for o in model.graph.output]

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
            outs = run_node(node, [env[i] if i else None for i in node.input], a)
            for name, value in zip(node.output, outs):
                if name:
                    env[name] = hook(name, value) if hook else value
        if keep is None:
            return {n: env[n] for n in self.output_names}
        return {n: env[n] for n in keep if n in env}
