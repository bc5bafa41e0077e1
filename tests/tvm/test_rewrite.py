"""Transposed convolutions rewritten as sub-pixel convolutions give onnxruntime's results."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper


def conv_transpose_model(cin, cout, k, s, p, out_pad, h, w, seed=0):
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((cin, cout, k, k)).astype(np.float32)
    bias = rng.standard_normal(cout).astype(np.float32)
    node = helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], strides=[s, s], pads=[p, p, p, p],
                            output_padding=[out_pad, out_pad], kernel_shape=[k, k])
    graph = helper.make_graph([node], "ct", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, h, w])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("cin,cout,k,s,p,out_pad", [
    (3, 5, 4, 2, 1, 0),   # LitePose / deblur upsampling
    (3, 5, 4, 4, 0, 0),   # depth: kernel == stride
    (2, 3, 2, 2, 0, 0),
    (2, 3, 3, 2, 1, 1),   # odd kernel, output padding
    (2, 3, 5, 2, 2, 1),
    (2, 2, 3, 3, 1, 2),
    (2, 3, 4, 2, 3, 0),   # padding larger than stride
])
def test_subpixel_rewrite_matches_onnxruntime(cin, cout, k, s, p, out_pad):
    import onnxruntime as ort
    import tvm
    from tvm import relax
    from tvm.relax.frontend import onnx as relax_onnx

    from edgekit.compile.tvm import rewrite

    model = conv_transpose_model(cin, cout, k, s, p, out_pad, 7, 6)
    x = np.random.default_rng(1).standard_normal((1, cin, 7, 6)).astype(np.float32)
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    mod = rewrite.conv_transpose_to_conv(relax_onnx.from_onnx(model))
    assert "conv2d_transpose" not in str(mod)
    vm = relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())
    y = vm["main"](tvm.runtime.tensor(x)).numpy()
    assert y.shape == ref.shape
    assert np.abs(y - ref).max() <= 1e-5 * np.abs(ref).max()


def test_subpixel_weight_keeps_every_tap_once():
    from edgekit.compile.tvm.rewrite import subpixel_weight

    w = np.arange(2 * 3 * 4 * 4).reshape(2, 3, 4, 4) + 1
    g = subpixel_weight(w, (2, 2), (2, 2))
    assert g.shape == (3 * 4, 2, 2, 2)
    assert sorted(g[g != 0].tolist()) == sorted(w.ravel().tolist())
