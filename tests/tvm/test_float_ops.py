"""edgekit's float kernels (compile/tvm/float_ops.py): the softmax kernel against its definition
on rows that are whole vectors, tails and both, with masked entries; and in a compiled model,
softmax over the last axis and GELU replaced (other softmax axes left to TVM), outputs equal to
onnxruntime's."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from tiny import OPSET

from edgekit.runtime import open_session


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x.astype(np.float64) - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("shape", [(2, 3, 5), (4, 32), (1, 3, 37, 37), (7, 1)])
def test_softmax_kernel_equals_its_definition_on_whole_vectors_and_tails(shape):
    import tvm

    from edgekit.compile.tvm import float_ops, targets
    from edgekit.compile.tvm.default_schedule import vector_lanes

    target = targets.resolve("x86-64").tvm_target()
    lanes = vector_lanes(target)
    lib = tvm.compile(tvm.IRModule({"main": float_ops.softmax_func(shape, lanes)}), target=target)
    rng = np.random.default_rng(sum(shape))
    x = (rng.standard_normal(shape) * 8).astype(np.float32)
    x.reshape(-1, shape[-1])[::3, -1] = -1e9          # masked entries (a tail or a lane): weight 0
    dev = tvm.cpu()
    out = tvm.runtime.tensor(np.zeros(shape, np.float32), dev)
    lib["main"](tvm.runtime.tensor(x, dev), out)
    got, want = out.numpy(), _softmax(x)
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(got.sum(-1), 1.0, rtol=1e-5)


def _net(path, softmax_axis: int) -> str:
    """x [5, 37] -> Gelu -> MatMul with its own transpose -> Softmax(axis) -> y [5, 5]."""
    nodes = [
        helper.make_node("Gelu", ["x"], ["g"], name="gelu"),
        helper.make_node("Transpose", ["g"], ["gt"], name="gt", perm=[1, 0]),
        helper.make_node("MatMul", ["g", "gt"], ["scores"], name="scores"),
        helper.make_node("Softmax", ["scores"], ["y"], name="softmax", axis=softmax_axis),
    ]
    graph = helper.make_graph(nodes, "gelu_softmax", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 37])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [5, 5])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return str(path)


@pytest.mark.parametrize("axis", [-1, 0])
def test_compiled_softmax_and_gelu_use_the_fast_kernels_and_equal_onnxruntime(axis, tmp_path):
    import onnxruntime as ort

    from edgekit.compile import compile_model
    from edgekit.compile.tvm import build, targets

    src = _net(tmp_path / "net.onnx", axis)
    imported = build.import_model(src, targets.resolve("x86-64"))
    names = [gv.name_hint for gv in imported.mod.get_global_vars()]
    scripts = "".join(imported.mod[gv].script() for gv in imported.mod.get_global_vars()
                      if gv.name_hint != "main")
    assert any(n.startswith("softmax_rows") for n in names) == (axis == -1), names
    assert "fast_erf" in scripts and "T.erf(" not in scripts

    compile_model(src, "x86-64", tmp_path / "art", committed_db=False)
    x = np.random.default_rng(1).standard_normal((5, 37)).astype(np.float32) * 0.5
    with open_session(tmp_path / "art") as session:
        got = session.run({"x": x})["y"]
    want = ort.InferenceSession(src, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
