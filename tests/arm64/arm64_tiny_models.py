"""Tiny ONNX models for the arm64 tests: one FP32 conv net, one W4A8 QDQ conv net.

Small on purpose: under qemu every MAC is emulated.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SHAPE = (1, 3, 16, 16)


def fp32_convnet(path) -> None:
    """Conv -> Relu -> Conv (stride 2) -> global average: a float path through NEON."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype("float32") * 0.3, "w1"),
             numpy_helper.from_array(rng.standard_normal(8).astype("float32") * 0.1, "b1"),
             numpy_helper.from_array(rng.standard_normal((4, 8, 3, 3)).astype("float32") * 0.3, "w2"),
             numpy_helper.from_array(rng.standard_normal(4).astype("float32") * 0.1, "b2")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["y"], pads=[1, 1, 1, 1],
                              strides=[2, 2]),
             helper.make_node("GlobalAveragePool", ["y"], ["pooled"])]
    graph = helper.make_graph(
        nodes, "tiny_fp32", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(SHAPE))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8]),
         helper.make_tensor_value_info("pooled", TensorProto.FLOAT, [1, 4, 1, 1])], inits)
    _save(graph, path)


def w4a8_convnet(path) -> None:
    """x -Q(u8)-DQ- Conv(DQ(int4 per-channel weights), int32 bias) -Relu- Q(u8): integer path; then
    a bilinear Resize and a Sigmoid between quantizers (the integer resize and table kinds)."""
    rng = np.random.default_rng(1)
    out_ch = 8
    w_q = rng.integers(-8, 8, size=(out_ch, 3, 3, 3)).astype(np.int8)
    s_x, zp_x = np.float32(0.02), np.uint8(128)
    s_w = (rng.uniform(0.01, 0.05, size=out_ch)).astype("float32")
    s_y, zp_y = np.float32(0.05), np.uint8(0)
    bias = rng.integers(-200, 200, size=out_ch).astype(np.int32)
    inits = [helper.make_tensor("w_q", TensorProto.INT4, w_q.shape, w_q.flatten().tolist()),
             numpy_helper.from_array(s_w, "s_w"),
             numpy_helper.from_array(bias, "b_q"),
             numpy_helper.from_array((s_x * s_w).astype("float32"), "s_b"),
             numpy_helper.from_array(np.zeros(out_ch, np.int32), "zp_b"),
             numpy_helper.from_array(np.array(s_x), "s_x"), numpy_helper.from_array(np.array(zp_x), "zp_x"),
             numpy_helper.from_array(np.array(s_y), "s_y"), numpy_helper.from_array(np.array(zp_y), "zp_y"),
             helper.make_tensor("zp_w", TensorProto.INT4, [out_ch], [0] * out_ch)]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s_x", "zp_x"], ["x_q"]),
             helper.make_node("DequantizeLinear", ["x_q", "s_x", "zp_x"], ["x_dq"]),
             helper.make_node("DequantizeLinear", ["w_q", "s_w", "zp_w"], ["w_dq"], axis=0),
             helper.make_node("DequantizeLinear", ["b_q", "s_b", "zp_b"], ["b_dq"], axis=0),
             helper.make_node("Conv", ["x_dq", "w_dq", "b_dq"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("QuantizeLinear", ["r", "s_y", "zp_y"], ["y_q"]),
             helper.make_node("DequantizeLinear", ["y_q", "s_y", "zp_y"], ["y"]),
             helper.make_node("Resize", ["y", "", "scales"], ["up"], mode="linear",
                              coordinate_transformation_mode="half_pixel"),
             helper.make_node("QuantizeLinear", ["up", "s_y", "zp_y"], ["up_q"]),
             helper.make_node("DequantizeLinear", ["up_q", "s_y", "zp_y"], ["up_dq"]),
             helper.make_node("Sigmoid", ["up_dq"], ["sig"]),
             helper.make_node("QuantizeLinear", ["sig", "s_sig", "zp_y"], ["sig_q"]),
             helper.make_node("DequantizeLinear", ["sig_q", "s_sig", "zp_y"], ["z"])]
    inits += [numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
              numpy_helper.from_array(np.array(1 / 255, np.float32), "s_sig")]
    graph = helper.make_graph(
        nodes, "tiny_w4a8", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(SHAPE))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, out_ch, 16, 16]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, out_ch, 32, 32])], inits)
    _save(graph, path)


def dot_net(path) -> None:
    """A float net with every layer kind the int8 dot-product kernels run: Conv (stride 1 and 2),
    depthwise Conv, ConvTranspose, MatMul with a weight, and a product of two activations (Q K^T)."""
    rng = np.random.default_rng(2)

    def weight(name, shape):
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype("float32"), name)

    inits = [weight("w1", (8, 3, 3, 3)), weight("w_dw", (8, 1, 3, 3)), weight("w2", (12, 8, 3, 3)),
             weight("w_up", (12, 8, 2, 2)), weight("w_q", (8, 20)), weight("w_k", (8, 20)),
             numpy_helper.from_array(np.array([1, 8, 64], np.int64), "tokens_shape")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w_dw"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2], group=8),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("Conv", ["r2", "w2"], ["c3"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["c3"], ["r3"]),
             helper.make_node("ConvTranspose", ["r3", "w_up"], ["feat"], strides=[2, 2]),
             helper.make_node("Reshape", ["feat", "tokens_shape"], ["t"]),
             helper.make_node("Transpose", ["t"], ["tokens"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["tokens", "w_q"], ["q"]),
             helper.make_node("MatMul", ["tokens", "w_k"], ["k"]),
             helper.make_node("Transpose", ["k"], ["k_t"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["q", "k_t"], ["scores"])]
    graph = helper.make_graph(
        nodes, "tiny_dot", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(SHAPE))],
        [helper.make_tensor_value_info("feat", TensorProto.FLOAT, [1, 8, 8, 8]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 64, 64])], inits)
    _save(graph, path)


def _save(graph, path) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
