"""Tiny ONNX models for the TVM tests, built with onnx.helper (no torch export: fast)."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 21


def _init(name, array):
    return numpy_helper.from_array(np.asarray(array, np.float32), name)


def conv_net(path, size: int = 16, seed: int = 0) -> str:
    """Conv-ReLU, depthwise Conv-Clip, residual Add, Concat, global pool, Gemm: the op kinds
    the integer lowering handles."""
    rng = np.random.default_rng(seed)
    c = 8
    inits = [
        _init("w1", rng.normal(0, 0.3, (c, 3, 3, 3))), _init("b1", rng.normal(0, 0.1, c)),
        _init("w2", rng.normal(0, 0.3, (c, 1, 3, 3))), _init("b2", rng.normal(0, 0.1, c)),
        _init("w3", rng.normal(0, 0.3, (c, 2 * c, 1, 1))), _init("b3", rng.normal(0, 0.1, c)),
        _init("wf", rng.normal(0, 0.3, (4, c))), _init("bf", rng.normal(0, 0.1, 4)),
        _init("lo", 0.0), _init("hi", 6.0),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="dw", pads=[1, 1, 1, 1], group=c),
        helper.make_node("Clip", ["c2", "lo", "hi"], ["r2"], name="relu6"),
        helper.make_node("Add", ["r1", "r2"], ["s"], name="residual"),
        helper.make_node("Concat", ["s", "r1"], ["cat"], name="concat", axis=1),
        helper.make_node("Conv", ["cat", "w3", "b3"], ["c3"], name="pw"),
        helper.make_node("GlobalAveragePool", ["c3"], ["g"], name="pool"),
        helper.make_node("Flatten", ["g"], ["gf"], name="flatten"),
        helper.make_node("Gemm", ["gf", "wf", "bf"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(nodes, "tiny_conv",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return str(path)


def matmul_net(path, n: int = 32) -> str:
    rng = np.random.default_rng(1)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "tiny_matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, n])],
        [_init("w", rng.normal(0, 1, (n, n)))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 10
    onnx.save(model, path)
    return str(path)


def two_matmul_net(path, n: int = 32, m: int = 16) -> str:
    """Two MatMuls of different shapes: two tuning tasks."""
    rng = np.random.default_rng(2)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
         helper.make_node("MatMul", ["h", "w2"], ["y"], name="mm2")], "tiny_two_matmuls",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, m])],
        [_init("w1", rng.normal(0, 1, (n, n))), _init("w2", rng.normal(0, 1, (n, m)))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 10
    onnx.save(model, path)
    return str(path)


def left_matmul_net(path) -> str:
    """A product with its constant on the left (C @ a over the last two axes, as deblur's DFT over
    the rows), a Sub of two integer ops, and a Reshape between integer layers."""
    rng = np.random.default_rng(3)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["a"], name="right"),
             helper.make_node("MatMul", ["c", "a"], ["b"], name="left"),
             helper.make_node("Sub", ["b", "a"], ["d"], name="sub"),
             helper.make_node("Reshape", ["d", "shape"], ["flat"], name="flatten"),
             helper.make_node("MatMul", ["flat", "w2"], ["y"], name="head")]
    inits = [_init("w1", rng.normal(0, 0.5, (6, 6))), _init("c", rng.normal(0, 0.5, (8, 8))),
             numpy_helper.from_array(np.array([1, 2, 48], np.int64), "shape"), _init("w2", rng.normal(0, 0.2, (48, 4)))]
    graph = helper.make_graph(nodes, "tiny_left_matmul",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 8, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return str(path)


def unsupported_net(path) -> str:
    """A graph with an op the Relax frontend lacks (com.microsoft-style MatMulNBits name)."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"], name="ok"),
         helper.make_node("MatMulNBits", ["r"], ["y"], name="weird_node")], "bad",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 10
    onnx.save(model, path)
    return str(path)


def dynamic_pad_net(path) -> str:
    """Pad whose pads come from a graph input: an op the frontend has but cannot convert."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"], name="r0"), helper.make_node("Pad", ["r", "p"], ["y"], name="mypad")],
        "dynpad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]),
                   helper.make_tensor_value_info("p", TensorProto.INT64, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 10
    onnx.save(model, path)
    return str(path)


def quantize(src, dst, weight_bits: int, act_bits: int, samples: int = 4) -> str:
    """QDQ model from edgekit's own quantizer (RTN: fast), calibrated on random inputs."""
    from edgekit.quant.pipeline import QuantConfig
    from edgekit.quant.pipeline import quantize as ek_quantize

    model = onnx.load(src)
    inp = model.graph.input[0]
    shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    rng = np.random.default_rng(0)
    calib = [{inp.name: rng.random(shape, dtype=np.float32)} for _ in range(samples)]
    qdq, _ = ek_quantize(src, calib, QuantConfig.for_method("rtn", weight_bits=weight_bits, act_bits=act_bits))
    onnx.save(qdq, dst)
    return str(dst)


def with_code_outputs(src, dst) -> dict[str, int]:
    """Copy of QDQ `src` that also outputs every QuantizeLinear result (the integer codes)."""
    model = onnx.load(src)
    zp_types = {t.name: t.data_type for t in model.graph.initializer}
    names = {}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear":
            names[node.output[0]] = zp_types[node.input[2]]
            model.graph.output.append(helper.make_tensor_value_info(node.output[0], zp_types[node.input[2]], None))
    onnx.save(model, dst)
    return names
