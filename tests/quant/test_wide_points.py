"""polish.widen_outliers: activation points whose 8-bit grid alone costs most of the output error
(a residual stream with a huge channel on a few tokens, read by an add and a LayerNorm) are kept
at 16 bits, and the integer reference and onnxruntime agree on the file."""
import numpy as np
import onnx
import pytest
import torch
from tiny_models import OutlierBlock, TinyBlock, export, feeds, outlier_feeds

from edgekit.onnx_graph.torch_ops import TorchGraph
from edgekit.quant import intref, qgraph
from edgekit.quant import pipeline as P
from edgekit.quant.ort import run as ort_run
from edgekit.quant.ort import session

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def outlier(tmp_path_factory):
    torch.manual_seed(0)
    return export(OutlierBlock(), (1, 12, 16), tmp_path_factory.mktemp("outlier") / "outlier.onnx")


def _quantize(path, calib, widen):
    cfg = P.QuantConfig(weight_bits=8, act_bits=8, steps=[P.RTN(), P.Polish(widen=widen)])
    return P.quantize(path, calib, cfg)


def _intref_error(path, q, test) -> float:
    graph, qg = TorchGraph(onnx.load(path)), qgraph.parse(q)
    num = den = 0.0
    for f in test:
        for name, ref in graph.run(f).items():
            got = intref.run(qg, f)[name]
            num += float(((got - ref.numpy()) ** 2).sum())
            den += float((ref.numpy() ** 2).sum())
    return float(np.sqrt(num / den))


def test_outlier_residual_stream_is_kept_at_16_bits(outlier):
    calib, test = outlier_feeds(16), outlier_feeds(8, seed=3)
    q0, _ = _quantize(outlier, calib, widen=False)
    q1, report = _quantize(outlier, calib, widen=True)
    wide = report["steps"][1]["details"]["wide_points"]
    # the residual sum (read by the LayerNorm) and fc2's output (read by the add, through the
    # Reshape of the exported Linear): nothing else
    assert wide["points"] == ["/Add_output_0", "gemm_output_reshape_arg_token_4"]
    assert wide["error_after"] < 0.01 * wide["error_before"]
    types = {n.input[0]: {i.name: i.data_type for i in q1.graph.initializer}[n.input[2]]
             for n in q1.graph.node if n.op_type == "QuantizeLinear"}
    assert sorted(t for t, dt in types.items() if dt == onnx.TensorProto.UINT16) == [
        "/Add_output_0__f", "gemm_output_reshape_arg_token_4__f"]
    # W8A8, integer reference against the float model: 0.64 relative output error -> 0.07
    before, after = _intref_error(outlier, q0, test), _intref_error(outlier, q1, test)
    assert before > 0.4 and after < 0.15, (before, after)
    # the integer kinds read and write the 16-bit codes (no float region), within one output LSB
    # of onnxruntime running the QDQ graph as written
    kinds = qgraph.parse(q1).summary()
    assert kinds.get("add") == 1 and kinds.get("layernorm") == 1 and "float" not in kinds
    sess, qg = session(q1, strict=True), qgraph.parse(q1)
    lsb = next(op.in_q[0].scale for op in qg.ops if op.kind == "dequantize")
    for f in test[:3]:
        ref, got = ort_run(sess, f), intref.run(qg, f)
        for name, r in ref.items():
            assert np.abs(got[name] - r).max() / lsb <= 1.0 + 1e-4


def test_no_wide_points_without_outliers(tmp_path):
    """A transformer block of ordinary ranges: nothing widened, the file stays 8-bit."""
    torch.manual_seed(1)
    path = export(TinyBlock(), (1, 8, 16), tmp_path / "blk.onnx")
    q, report = P.quantize(path, feeds((1, 8, 16), 4), P.QuantConfig.for_method("polish", act_bits=8))
    assert report["steps"][1]["details"]["wide_points"]["points"] == []
    zps = {i.name: i.data_type for i in q.graph.initializer}
    assert all(zps[n.input[2]] != onnx.TensorProto.UINT16 for n in q.graph.node if n.op_type == "QuantizeLinear")
