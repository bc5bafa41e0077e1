"""SALE in the zoo LM: per-layer plans, calibration, ONNX custom op in onnxruntime, dense fallback."""
import numpy as np
import onnx
import pytest
import torch

from edgekit import models
from edgekit.errors import EdgekitError
from edgekit.models.sale import SaleConfig, SalePlan, apply_plan, calibrate_model
from edgekit.models.sale.onnx_op import DENSE_ENV, DOMAIN, OP_TYPE, export_sale_lm, make_session, set_dense_fallback

CFG = SaleConfig(block_q=16, block_k=16, sink_blocks=1, window_blocks=1)


@pytest.fixture(scope="module")
def lm():
    return models.build("lm", "tiny")


def tokens(length, seed=0):
    return torch.randint(5, 128, (1, length), generator=torch.Generator().manual_seed(seed))


def test_plan_installs_per_layer_and_restores_dense(lm):
    x = tokens(192)
    with torch.no_grad():
        dense = lm(x)
        layers = lm.cfg.layers
        plan = SalePlan(CFG, [[0.0] * 8] * layers)
        fns = apply_plan(lm, plan)
        same = lm(x)
        sparse_plan = SalePlan(CFG, [[0.05] * 8] * layers)
        fns = apply_plan(lm, sparse_plan)
        sparse = lm(x)
        apply_plan(lm, None)
        again = lm(x)
    torch.testing.assert_close(same, dense, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(again, dense)
    assert len(fns) == layers and all(0 < f.density <= 1 for f in fns)
    assert torch.isfinite(sparse).all()
    with pytest.raises(EdgekitError, match="layers"):
        apply_plan(lm, SalePlan(CFG, [[0.0] * 8]))


def test_calibrate_model_gives_a_plan_per_layer(lm):
    plan = calibrate_model(lm, [tokens(256, 1)], CFG, error_bound=0.02)
    assert plan.layers == lm.cfg.layers and all(len(t) == 8 for t in plan.layer_taus)
    assert plan.calibration["length"] == 256
    assert all(e <= 0.02 for layer in plan.calibration["head_errors"] for e in layer)


@pytest.fixture(scope="module")
def exported(lm, tmp_path_factory):
    # the onnxruntime kernel is a Python custom op of onnxruntime-extensions (a declared dependency)
    pytest.importorskip("onnxruntime_extensions")
    plan = SalePlan(CFG, [[0.3, 0.01, 0.0, 0.3, 0.05, 0.002, 0.3, 0.05]] * lm.cfg.layers)
    path = tmp_path_factory.mktemp("sale_onnx") / "lm_sale.onnx"
    summary = export_sale_lm(lm, plan, path, seq_len=128)
    return path, plan, summary


def test_onnx_custom_op_runs_in_onnxruntime_with_dense_fallback(lm, exported, tmp_path, monkeypatch):
    path, plan, summary = exported
    assert summary["sale_nodes"] == lm.cfg.layers and summary["max_abs_diff"] <= 1e-3
    proto = onnx.load(str(path))
    nodes = [n for n in proto.graph.node if n.domain == DOMAIN]
    assert {n.op_type for n in nodes} == {OP_TYPE}
    attrs = {a.name: a.i for a in nodes[0].attribute}
    assert attrs == {"block_q": 16, "block_k": 16, "sink_blocks": 1, "window_blocks": 1, "dense_fallback": 0}
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    np.testing.assert_allclose(inits[nodes[0].input[3]], plan.layer_taus[0], rtol=1e-6)

    x = tokens(128, 2)
    with torch.no_grad():
        dense = lm(x).numpy()
    sparse = make_session(path).run(None, {"tokens": x.numpy()})[0]
    # dense fallback: by attribute in the file...
    flipped = tmp_path / "lm_dense.onnx"
    assert set_dense_fallback(path, flipped, True) == lm.cfg.layers
    fallback = make_session(flipped).run(None, {"tokens": x.numpy()})[0]
    np.testing.assert_allclose(fallback, dense, atol=1e-4)
    # ...or at run time
    monkeypatch.setenv(DENSE_ENV, "1")
    runtime = make_session(path).run(None, {"tokens": x.numpy()})[0]
    np.testing.assert_allclose(runtime, dense, atol=1e-4)
    assert np.abs(sparse - dense).max() > 1e-4  # the sparse file really skipped blocks
    with pytest.raises(EdgekitError, match="no ai.edgekit::SaleAttention node"):
        set_dense_fallback(_plain_model(tmp_path), tmp_path / "x.onnx")


def _plain_model(tmp_path):
    from onnx import TensorProto, helper

    node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    path = tmp_path / "plain.onnx"
    onnx.save(helper.make_model(graph), str(path))
    return path


def test_tvm_compile_lowers_the_op_dense_or_to_the_kernel(lm, exported, tmp_path, monkeypatch):
    tvm = pytest.importorskip("tvm")
    from tvm import relax

    from edgekit.compile.tvm.build import compile_tvm
    from edgekit.compile.tvm.targets import resolve
    from edgekit.models.sale import tvm_op

    path, _, _ = exported
    x = tokens(128, 3)
    with torch.no_grad():
        dense = lm(x).numpy()
    sparse = make_session(path).run(None, {"tokens": x.numpy()})[0]
    results = {}
    for mode in ("dense", "kernel"):
        monkeypatch.setenv(tvm_op.LOWERING_ENV, mode)
        compile_tvm(path, resolve("x86-64"), tmp_path / mode, committed_db=False)
        vm = relax.VirtualMachine(tvm.runtime.load_module(str(tmp_path / mode / "model.so")), tvm.cpu())
        out = vm["main"](tvm.runtime.tensor(x.numpy()))
        results[mode] = (out if hasattr(out, "numpy") else out[0]).numpy()
    np.testing.assert_allclose(results["dense"], dense, atol=1e-4)
    np.testing.assert_allclose(results["kernel"], sparse, atol=1e-4)
