"""QDQ output format, the integer view and the integer reference vs onnxruntime."""
import numpy as np
import onnx
import pytest
import torch
from tiny_models import TinyBlock, TinyCNN, export, feeds

from edgekit.quant import intref, qgraph
from edgekit.quant import pipeline as P
from edgekit.quant.ort import run as ort_run
from edgekit.quant.ort import session

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    torch.manual_seed(0)
    return export(TinyCNN(), (1, 3, 32, 32), tmp_path_factory.mktemp("cnn") / "cnn.onnx")


@pytest.fixture(scope="module")
def block(tmp_path_factory):
    torch.manual_seed(1)
    return export(TinyBlock(), (1, 8, 16), tmp_path_factory.mktemp("blk") / "blk.onnx")


def _lsb_diff(qg, model, data, strict=False):
    sess = session(model, strict=strict)
    out_q = {op.outputs[0]: op.in_q[0] for op in qg.ops if op.kind == "dequantize"}
    worst, flips, total = 0.0, 0, 0
    for f in data:
        ref, got = ort_run(sess, f), intref.run(qg, f)
        for name, r in ref.items():
            lsb = out_q[name].scale
            d = np.abs(got[name] - r) / lsb
            worst = max(worst, float(d.max()))
            flips += int((d > 0.5).sum())
            total += d.size
    return worst, flips / total


@pytest.mark.parametrize("act_bits", [4, 8])
def test_cnn_intref_within_one_lsb_of_onnxruntime(cnn, act_bits):
    q, _ = P.quantize(cnn, feeds((1, 3, 32, 32), 4), P.QuantConfig.for_method("rtn", act_bits=act_bits))
    qg = qgraph.parse(q)
    kinds = qg.summary()
    for k in ("conv", "conv_transpose", "gemm", "add", "concat", "maxpool", "avgpool"):
        assert kinds.get(k, 0) >= 1, (k, kinds)
    worst, flip_rate = _lsb_diff(qg, q, feeds((1, 3, 32, 32), 3, seed=5))
    assert worst <= 1.0 + 1e-4
    assert flip_rate < 0.05


def test_transformer_block_intref_within_one_lsb_of_qdq_semantics(block):
    q, _ = P.quantize(block, feeds((1, 8, 16), 4), P.QuantConfig.for_method("rtn", act_bits=8))
    qg = qgraph.parse(q)
    assert qg.summary().get("matmul", 0) == 2 and qg.summary().get("gemm", 0) == 4
    # strict: onnxruntime executes the QDQ graph as written (no QLinearSoftmax / QGemm
    # fusion, whose own rounding differs by a further step or two).
    worst, flip_rate = _lsb_diff(qg, q, feeds((1, 8, 16), 3, seed=5), strict=True)
    assert worst <= 1.0 + 1e-4
    assert flip_rate < 0.1


def test_transformer_block_w4a4_mostly_exact(block):
    """At A4, a float32 softmax/layernorm landing on a rounding tie can flip one 4-bit code
    (torch vs onnxruntime kernels); one 4-bit step is ~16 steps of the 8-bit output."""
    q, _ = P.quantize(block, feeds((1, 8, 16), 4), P.QuantConfig.for_method("rtn", act_bits=4))
    worst, flip_rate = _lsb_diff(qgraph.parse(q), q, feeds((1, 8, 16), 3, seed=5), strict=True)
    assert flip_rate < 0.1


def test_qdq_file_format(cnn, tmp_path):
    q, _ = P.quantize(cnn, feeds((1, 3, 32, 32), 2), P.QuantConfig.for_method("rtn"))
    path = tmp_path / "q.onnx"
    onnx.save(q, str(path))
    onnx.checker.check_model(str(path))
    assert max(i.version for i in q.opset_import if i.domain in ("", "ai.onnx")) >= 21
    types = {i.name: i.data_type for i in q.graph.initializer}
    int4 = [n for n, t in types.items() if t == onnx.TensorProto.INT4]
    assert len(int4) == 7  # every conv / conv-transpose / gemm weight
    for node in q.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in int4:
            scale = next(i for i in q.graph.initializer if i.name == node.input[1])
            assert len(scale.dims) == 1 and scale.dims[0] > 1  # per-channel
    uint4_zps = [i for i in q.graph.initializer if i.data_type == onnx.TensorProto.UINT4]
    assert uint4_zps
    # packed: about half a byte per weight
    packed = sum(len(i.raw_data) for i in q.graph.initializer if i.data_type == onnx.TensorProto.INT4)
    count = sum(int(np.prod(i.dims)) for i in q.graph.initializer if i.data_type == onnx.TensorProto.INT4)
    assert packed == pytest.approx(count / 2, abs=len(int4))


def test_parse_reads_requant_parameters(cnn):
    q, _ = P.quantize(cnn, feeds((1, 3, 32, 32), 2), P.QuantConfig.for_method("rtn"))
    conv = next(op for op in qgraph.parse(q).ops if op.kind == "conv")
    assert conv.params.weight.min() >= -8 and conv.params.weight.max() <= 7
    assert conv.params.mult.shape == conv.params.bias.shape == (conv.params.weight.shape[0],)
    real = conv.in_q[0].scale * conv.params.weight_scale / conv.out_q.scale
    assert np.allclose(conv.params.mult * 2.0 ** -conv.params.shift.astype(float), real, rtol=2 ** -14)


def _eight_bit_layers(model, shape):
    cfg = P.QuantConfig.for_method("rtn", keep_8bit=("@first", "@last"))
    q, report = P.quantize(model, feeds(shape, 2), cfg)
    eight = {n for n, layer in report["layers"].items() if layer["weight_bits"] == 8}
    int8_weights = {i.name for i in q.graph.initializer if i.data_type == onnx.TensorProto.INT8}
    return eight, report["layers"], int8_weights


def test_keep_first_and_last_layers_at_8_bits(cnn, block):
    ops = lambda layers, names: sorted(layers[n]["op"] for n in names)  # noqa: E731
    eight, layers, int8_weights = _eight_bit_layers(cnn, (1, 3, 32, 32))
    # the stem conv; the classifier and the upsampling head that end the two outputs
    assert ops(layers, eight) == ["Conv", "ConvTranspose", "Gemm"]
    assert len(int8_weights) >= 3
    # residual transformer block: only the first projection and the last MLP layer, not
    # every layer that reads the residual stream or writes to it
    eight, layers, _ = _eight_bit_layers(block, (1, 8, 16))
    assert len(eight) == 2 and len(layers) == 4


def test_keep_depthwise_layers_at_8_bits(cnn, block):
    q, report = P.quantize(cnn, feeds((1, 3, 32, 32), 2), P.QuantConfig.for_method("rtn", keep_8bit=("@depthwise",)))
    inits = {i.name: i for i in q.graph.initializer}
    eight = [n for n, layer in report["layers"].items() if layer["weight_bits"] == 8]
    assert len(eight) == 1   # TinyCNN's one depthwise conv (16 groups of 1 channel), no other layer
    node = next(n for n in q.graph.node if n.name == eight[0])
    weight = next(n for n in q.graph.node if n.output[0] == node.input[1])   # its weight DequantizeLinear
    assert inits[weight.input[0]].data_type == onnx.TensorProto.INT8 and list(inits[weight.input[0]].dims)[1] == 1
    # a model without depthwise convolutions: the token matches nothing and changes nothing
    _, report = P.quantize(block, feeds((1, 8, 16), 2), P.QuantConfig.for_method("rtn", keep_8bit=("@depthwise",)))
    assert all(layer["weight_bits"] == 4 for layer in report["layers"].values())


@pytest.mark.parametrize("which", ["cnn", "block"])
def test_every_ops_parameters_round_trip_through_their_json_form(cnn, block, which):
    """Each kind's parameter class (kinds.<Kind>.params_type) writes every number to JSON and reads
    it back exactly: the reference runs the read-back ops to the same codes."""
    import dataclasses
    import json

    from onnx import numpy_helper

    from edgekit.quant import kinds

    src, shape = (cnn, (1, 3, 32, 32)) if which == "cnn" else (block, (1, 8, 16))
    q, _ = P.quantize(src, feeds(shape, 4), P.QuantConfig.for_method("rtn", act_bits=4))
    qg = qgraph.parse(q)
    codes = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    twins = []
    for op in qg.ops:
        assert type(op.params) is kinds.KINDS[op.kind].params_type, op.kind
        doc = json.loads(json.dumps(op.to_json()))
        back = type(op.params).from_json(doc["params"], codes)
        for f in dataclasses.fields(op.params):
            a, b = getattr(op.params, f.name), getattr(back, f.name)
            assert np.array_equal(a, b) and np.shape(a) == np.shape(b), (op.name, f.name)
        twins.append(dataclasses.replace(op, params=back))
    assert {type(op.params) for op in qg.ops} >= {kinds.LayerParams, kinds.AddParams} | (
        {kinds.ConcatParams, kinds.Requant} if which == "cnn" else {kinds.Requant})
    x = feeds(shape, 1, seed=3)[0]
    want = intref.run(qg, x)
    got = intref.run(dataclasses.replace(qg, ops=twins), x)
    assert all(np.array_equal(want[k], got[k]) for k in want)
