"""Small float ONNX graphs written with onnx.helper (no torch export), quantized with edgekit's RTN."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class GraphBuilder:
    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits = [], []
        self.count = 0

    def _name(self, base):
        self.count += 1
        return f"{base}{self.count}"

    def const(self, arr, base="w"):
        name = self._name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(arr, np.float32), name))
        return name

    def node(self, op, inputs, **attrs):
        out = self._name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=f"n_{out}", **attrs))
        return out

    def conv(self, x, cin, cout, k, stride=1, pad=None, group=1, dil=1, bias=True):
        pad = (k // 2) * dil if pad is None else pad
        w = self.const(self.rng.normal(0, 1.0 / np.sqrt(cin // group * k * k), (cout, cin // group, k, k)))
        ins = [x, w] + ([self.const(self.rng.normal(0, 0.1, cout), "b")] if bias else [])
        return self.node("Conv", ins, kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4,
                         group=group, dilations=[dil, dil])

    def deconv(self, x, cin, cout, k=4, stride=2, pad=1):
        w = self.const(self.rng.normal(0, 1.0 / np.sqrt(cin * k * k), (cin, cout, k, k)))
        return self.node("ConvTranspose", [x, w], kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4)

    def clip(self, x, lo=0.0, hi=6.0):
        return self.node("Clip", [x, self.const(np.float32(lo), "lo"), self.const(np.float32(hi), "hi")])

    def model(self, x_shape, outputs) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                                  [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
                                  self.inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 9
        return m


def mixed_cnn(size: int = 16, tail: str | None = None) -> onnx.ModelProto:
    """conv3x3+ReLU6, depthwise 7x7 stride 2 + ReLU, 1x1 + residual add, transposed 4x4/2,
    dilated 3x3, a second add; `tail='sigmoid'` appends an op the accelerator cannot run."""
    g = GraphBuilder()
    a = g.clip(g.conv("x", 3, 16, 3))
    d = g.node("Relu", [g.conv(a, 16, 16, 7, stride=2, group=16)])
    r = g.node("Add", [g.conv(d, 16, 16, 1), d])
    up = g.deconv(r, 16, 8)
    side = g.conv(a, 16, 8, 3, dil=2)
    out = g.node("Add", [side, up])
    if tail == "sigmoid":
        out = g.node("Sigmoid", [out])
        out = g.conv(out, 8, 8, 1)
    return g.model([1, 3, size, size], [out])


def wide_conv(size: int = 24, cin: int = 40, cout: int = 72) -> onnx.ModelProto:
    """Layers large enough to need several row bands, output-block groups and input chunks."""
    g = GraphBuilder(1)
    a = g.node("Relu", [g.conv("x", 3, cin, 3)])
    b = g.conv(a, cin, cout, 3, stride=2)
    c = g.conv(b, cout, cout, 5, group=cout)
    return g.model([1, 3, size, size], [g.conv(c, cout, 24, 1)])


def activation_heavy(size: int = 48) -> onnx.ModelProto:
    """Few weights, big feature maps: a net where DRAM traffic is activations (fusion matters)."""
    g = GraphBuilder(2)
    a = g.clip(g.conv("x", 3, 16, 3))
    b = g.node("Add", [g.conv(a, 16, 16, 1), a])
    c = g.node("Add", [g.conv(b, 16, 16, 1), b])
    return g.model([1, 3, size, size], [g.conv(c, 16, 8, 1)])


def quantize(model: onnx.ModelProto, path, weight_bits=4, act_bits=8, samples=2, seed=0) -> str:
    from edgekit.quant import pipeline as P

    inp = model.graph.input[0]
    shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    rng = np.random.default_rng(seed)
    calib = [{inp.name: rng.standard_normal(shape).astype(np.float32)} for _ in range(samples)]
    q, _ = P.quantize(model, calib, P.QuantConfig(weight_bits=weight_bits, act_bits=act_bits, steps=[P.RTN()]))
    with open(path, "wb") as f:
        f.write(q.SerializeToString())
    return str(path)


def wide_image(height: int = 10, width: int = 230) -> onnx.ModelProto:
    """Rows wider than the output buffer: column strips with left/right halos."""
    g = GraphBuilder(3)
    a = g.clip(g.conv("x", 3, 8, 3))
    b = g.node("Relu", [g.conv(a, 8, 8, 5, stride=2, group=8)])
    c = g.conv(b, 8, 16, 3)
    return g.model([1, 3, height, width], [c, g.deconv(b, 8, 8)])   # deconv back to 230 columns


def many_channels(size: int = 6) -> onnx.ModelProto:
    """More output blocks (72) than parameter rows (64): parameters load per output-block group."""
    g = GraphBuilder(4)
    a = g.node("Relu", [g.conv("x", 3, 16, 3)])
    b = g.conv(a, 16, 576, 1)
    c = g.node("Add", [g.conv(b, 576, 16, 1), a])
    return g.model([1, 3, size, size], [c])


def depthwise_net(height: int = 21, width: int = 19) -> onnx.ModelProto:
    """Depthwise 3x3 / 5x5 / 7x7 at strides 1 and 2 and a dilated one, on widths that are not a
    multiple of the array size and channel counts with a partial last block (24, 20)."""
    g = GraphBuilder(5)
    a = g.clip(g.conv("x", 3, 24, 3))
    b = g.node("Relu", [g.conv(a, 24, 24, 3, group=24)])
    c = g.clip(g.conv(b, 24, 24, 5, stride=2, group=24))
    d = g.conv(g.conv(c, 24, 20, 1), 20, 20, 7, group=20)
    e = g.node("Relu", [g.conv(d, 20, 20, 3, stride=2, group=20)])
    f = g.conv(e, 20, 20, 3, group=20, dil=2)
    return g.model([1, 3, height, width], [g.node("Add", [g.conv(f, 20, 20, 1), f])])
