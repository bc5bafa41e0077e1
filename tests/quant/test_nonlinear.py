"""Integer definitions of the non-linear ops (edgekit.quant.nonlinear): each op against its float
definition on the same input codes, the whole model against the float-region model, and the
integer pieces they rest on."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from tiny_models import export, feeds

from edgekit.quant import intref, kinds, nonlinear
from edgekit.quant.qgraph import parse


class Attention(nn.Module):
    """LayerNorm, a token shift (zero Pad) mixed in by a per-channel gain, softmax(q k^T / sqrt(d))
    plain and causal (a constant mask filled with -inf) with q scaled by a per-position table (as
    rotary embeddings do), GELU, SiLU and tanh: every non-linear kind."""

    def __init__(self, dim=16, tokens=12):
        super().__init__()
        self.inp, self.ln = nn.Linear(dim, dim), nn.LayerNorm(dim)
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.fc1, self.fc2, self.out = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim), nn.Linear(dim, dim)
        self.ln_out = nn.LayerNorm(dim)
        self.register_buffer("mix", torch.linspace(-0.5, 1.0, dim))
        position = torch.arange(tokens, dtype=torch.float32)[:, None] * torch.linspace(0.1, 1.0, dim)
        self.register_buffer("table", torch.cos(position))

    def forward(self, x):
        h = self.ln(self.inp(x))   # a quantized input: the graph input itself stays float
        h = h + nn.functional.pad(h, (0, 0, 1, 0))[:, :-1] * self.mix
        scores = (self.q(h) * self.table) @ self.k(h).transpose(1, 2)
        causal = torch.ones(scores.shape[-2:], dtype=torch.bool).triu(1)
        d = math.sqrt(h.shape[-1])   # a Mul and a Div: each softmax region has its own (the exporter merges twins)
        att = torch.softmax(scores * (1 / d), dim=-1) + torch.softmax((scores / d).masked_fill(causal, float("-inf")),
                                                                      dim=-1)
        h = att @ self.v(h)
        h = self.fc2(nn.functional.gelu(self.fc1(h)))
        h = self.ln_out(self.out(torch.tanh(nn.functional.silu(h))))
        return h.transpose(1, 2)   # a layout op after LayerNorm: TVM fuses the two into one kernel


class Upsample(nn.Module):
    """Bilinear resizes with both coordinate rules and a nearest one, between convolutions; and
    a difference and a product of two activations."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, 1, 1), nn.Conv2d(8, 8, 3, 1, 1)
        self.c3, self.c4 = nn.Conv2d(8, 8, 1), nn.Conv2d(8, 4, 1)
        self.c5, self.c6, self.c7 = nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 1)

    def forward(self, x):
        a = self.c1(x)
        h = nn.functional.interpolate(a, scale_factor=2, mode="bilinear", align_corners=False)
        h = nn.functional.interpolate(self.c2(h), size=(13, 11), mode="bilinear", align_corners=True)
        h = self.c4(nn.functional.interpolate(self.c3(h), scale_factor=2, mode="nearest"))
        b = self.c5(a)
        d = self.c6(b - self.c6(a))   # a difference of two activations
        return h, self.c7(d * b)       # an element-wise product of two activations


SHAPE, IMAGE = (1, 12, 16), (1, 3, 8, 8)


def _qdq(folder, model, shape, name) -> str:
    import onnx

    from edgekit.quant.pipeline import QuantConfig, quantize

    src = export(model, shape, folder / f"{name}.onnx")
    qdq, _ = quantize(src, feeds(shape, 8), QuantConfig.for_method("rtn", weight_bits=8, act_bits=8))
    path = folder / f"{name}.w8a8.onnx"
    onnx.save(qdq, str(path))
    return str(path)


@pytest.fixture(scope="module")
def attention_qdq(tmp_path_factory):
    return _qdq(tmp_path_factory.mktemp("nonlinear"), Attention(), SHAPE, "att")


@pytest.fixture(scope="module")
def upsample_qdq(tmp_path_factory):
    return _qdq(tmp_path_factory.mktemp("nonlinear"), Upsample(), IMAGE, "up")


def _pairs(path, feed):
    """(kind, integer codes, float-definition codes) of every non-linear op, on the same inputs."""
    qg = parse(path)
    env = intref.run(qg, feed, keep_intermediates=True)
    for op, got, want in intref.nonlinear_pairs(qg, parse(path, integer_nonlinear=False), env, intref.constants(qg)):
        yield op.kind, got, want


def test_every_nonlinear_op_is_found(attention_qdq, upsample_qdq):
    assert parse(upsample_qdq).summary().get("resize") == 3
    counts = parse(attention_qdq).summary()
    assert counts.get("layernorm") == 2 and counts.get("softmax") == 2
    assert counts.get("pad") == 1 and counts.get("scale") == 2   # the token shift; its gain and the table
    masks = [op.params.mask for op in parse(attention_qdq).ops if op.kind == "softmax"]
    assert sorted(m.size for m in masks) == [0, SHAPE[1] ** 2]   # the causal one: 1 above the diagonal
    np.testing.assert_array_equal(max(masks, key=np.size).reshape(SHAPE[1], SHAPE[1]),
                                  np.triu(np.ones((SHAPE[1], SHAPE[1]), np.int64), 1))
    assert counts.get("lut", 0) >= 2   # gelu, silu -> tanh (one region or two)
    assert "float" not in counts       # nothing left in float
    float_counts = parse(attention_qdq, integer_nonlinear=False).summary()
    assert not set(float_counts) & kinds.NONLINEAR_KINDS


def test_each_integer_op_is_within_one_code_of_its_float_definition(attention_qdq, upsample_qdq):
    seen = set()
    runs = [(attention_qdq, f) for f in feeds(SHAPE, 3, seed=5)] + [(upsample_qdq, f) for f in feeds(IMAGE, 3, seed=5)]
    for path, feed in runs:
        for kind, got, want in _pairs(path, feed):
            diff = np.abs(np.asarray(got, np.int64) - np.asarray(want, np.int64))
            seen.add(kind)
            if kind == "lut":   # the table is the float function on every code: exact
                assert diff.max() == 0
            else:
                assert diff.max() <= 1, (kind, diff.max())
                assert (diff == 0).mean() >= 0.9, (kind, (diff == 0).mean())
    assert seen == set(kinds.NONLINEAR_KINDS)


def test_integer_model_follows_the_float_region_model(attention_qdq):
    x = feeds(SHAPE, 1, seed=9)[0]
    out = parse(attention_qdq).outputs[0]
    got = intref.run(parse(attention_qdq), x)[out]
    want = intref.run(parse(attention_qdq, integer_nonlinear=False), x)[out]
    assert np.abs(got - want).max() <= 0.05 * np.abs(want).max()


def test_params_survive_their_json_form(attention_qdq, upsample_qdq):
    ops = parse(attention_qdq).ops + parse(upsample_qdq).ops
    assert {op.kind for op in ops} >= kinds.NONLINEAR_KINDS
    for op in ops:
        if op.kind in kinds.NONLINEAR_KINDS:
            back = kinds.KINDS[op.kind].params_type.from_json(op.params.to_json())
            for key, value in vars(op.params).items():
                np.testing.assert_array_equal(getattr(back, key), value, err_msg=f"{op.kind}.{key}")


def test_isqrt_is_exact_up_to_two_to_the_52():
    rng = np.random.default_rng(0)
    roots = rng.integers(0, 1 << 26, 2000)
    v = np.concatenate([roots * roots, roots * roots - 1, roots * roots + 1, rng.integers(0, 1 << 52, 2000)])
    v = np.maximum(v, 0)
    want = np.array([math.isqrt(int(a)) for a in v])
    np.testing.assert_array_equal(nonlinear.isqrt(v), want)


def test_tvm_floor_division_in_float64_is_exact_below_two_to_the_53():
    """The softmax and LayerNorm kernels divide in float64 (vector instructions): the integer
    quotient for every numerator sign, exact multiples and their neighbours (k * den - 1 with den
    above 2^32: the closest a quotient comes to an integer), and operands up to 2^53."""
    import tvm
    from tvm import relax

    from edgekit.compile.tvm import qlower

    rng = np.random.default_rng(0)
    den = np.concatenate([rng.integers(1 << 32, 1 << 34, 4000), rng.integers(1, 1 << 20, 2000)])
    k = rng.integers(-(1 << 52), 1 << 52, den.size) // den
    num = k * den + rng.integers(-1, 2, den.size)
    num[-1000:] = rng.integers(-(1 << 53) + 1, 1 << 53, 1000)
    bb = relax.BlockBuilder()
    a = relax.Var("num", relax.TensorType((den.size,), "int64"))
    b = relax.Var("den", relax.TensorType((den.size,), "int64"))
    with bb.function("main", [a, b]):
        with bb.dataflow():
            out = bb.emit_output(qlower.floor_divide_relax(a, b, 1 << 53))
        bb.emit_func_output(out)
    exe = tvm.compile(bb.get(), target="llvm")
    vm = relax.VirtualMachine(exe, tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(num), tvm.runtime.tensor(den)).numpy()
    np.testing.assert_array_equal(got, num // den)


def test_softmax_rows_sum_to_one_and_follow_the_float_softmax():
    from edgekit.quant import formats as F
    from edgekit.quant.qgraph import QTensor

    in_q, out_q = QTensor(0.05, 128, F.UINT8), QTensor(1 / 255, 0, F.UINT8)
    x = np.random.default_rng(1).integers(0, 256, (64, 40))
    y = nonlinear.softmax(x, nonlinear.exp_table(in_q, 1.0), nonlinear.softmax_multiplier(out_q), 0, 0, 255)
    real = torch.softmax(torch.tensor((x - 128) * 0.05, dtype=torch.float64), -1).numpy()
    assert np.abs(y / 255 - real).max() <= 1 / 255
    assert np.abs((y / 255).sum(-1) - 1).max() <= 40 / 255 / 2


def test_masked_softmax_follows_the_float_one_and_broadcasts_like_where():
    """A causal mask with a batch dimension x lacks: the output takes the broadcast shape (as
    Where's would), masked entries are 0, the rest within one step of the float softmax."""
    from edgekit.quant import formats as F
    from edgekit.quant.qgraph import QTensor

    in_q, out_q = QTensor(0.05, 128, F.UINT8), QTensor(1 / 255, 0, F.UINT8)
    x = np.random.default_rng(2).integers(0, 256, (40, 40))
    mask = np.stack([np.triu(np.ones((40, 40), np.int64), 1), np.tril(np.ones((40, 40), np.int64), -1)])
    y = nonlinear.softmax(x, nonlinear.exp_table(in_q, 1.0), nonlinear.softmax_multiplier(out_q), 0, 0, 255,
                          mask=mask)
    scores = torch.tensor((x - 128) * 0.05, dtype=torch.float64).masked_fill(torch.from_numpy(mask).bool(),
                                                                               float("-inf"))
    real = torch.softmax(scores, -1).numpy()
    assert y.shape == (2, 40, 40) and np.all(y[mask == 1] == 0)
    assert np.abs(y / 255 - real).max() <= 1 / 255


def test_regions_that_are_not_one_function_of_a_code_stay_float(tmp_path):
    """sigmoid(x) * per-channel constant (one region: no quantizer between the two) is element-wise
    but differs per channel: no table can compute it, and it is more than the scale kind's one Mul."""
    from edgekit.quant.pipeline import QuantConfig, quantize

    class PerChannel(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(8, 8), nn.Linear(8, 8)
            self.register_buffer("gain", torch.linspace(0.5, 2, 8))

        def forward(self, x):
            return self.fc2(torch.sigmoid(self.fc1(x)) * self.gain)

    src = export(PerChannel(), (1, 4, 8), tmp_path / "pc.onnx")
    qdq, _ = quantize(src, feeds((1, 4, 8), 4), QuantConfig.for_method("rtn", weight_bits=8, act_bits=8))
    counts = parse(qdq).summary()
    assert counts.get("float") == 1 and "lut" not in counts and "scale" not in counts


def test_a_product_by_a_constant_tensor_is_a_scale_op(attention_qdq):
    """The per-position table's factor on a symmetric int16 grid: its largest value at 32767,
    every value within half a step of the float table."""
    att = Attention()
    ops = [op for op in parse(attention_qdq).ops if op.kind == "scale"]
    factors = sorted((op.params.factor * op.params.factor_scale for op in ops), key=np.size)
    for factor, want in zip(factors, (att.mix.numpy(), att.table.numpy())):
        np.testing.assert_allclose(factor.reshape(want.shape), want, rtol=0, atol=np.abs(want).max() / 65534 + 1e-12)
    assert all(np.abs(op.params.factor).max() == kinds.Scale.FACTOR_QMAX for op in ops)


@pytest.mark.parametrize("which", ["attention", "upsample"])
def test_tvm_integer_build_equals_the_reference_on_every_code(which, attention_qdq, upsample_qdq, tmp_path):
    """The TVM lowering repeats the integer definitions step for step: no float op is left to
    round differently, so every quantized tensor matches, bit for bit."""
    import onnx
    from onnx import helper

    from edgekit.compile import compile_model
    from edgekit.runtime import open_session

    path, shape = (attention_qdq, SHAPE) if which == "attention" else (upsample_qdq, IMAGE)
    model = onnx.load(path)
    zp_types = {t.name: t.data_type for t in model.graph.initializer}
    codes = [n.output[0] for n in model.graph.node if n.op_type == "QuantizeLinear"]
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear":
            model.graph.output.append(helper.make_tensor_value_info(node.output[0], zp_types[node.input[2]], None))
    probe = tmp_path / "probe.onnx"
    onnx.save(model, str(probe))
    meta = compile_model(probe, "x86-64", tmp_path / "int", committed_db=False)
    assert set(meta["integer_ops"]) >= ({"lut", "softmax", "layernorm"} if which == "attention"
                                         else {"resize", "add", "mul"})
    x = feeds(shape, 1, seed=3)[0]
    ref = intref.run(path, x, keep_intermediates=True)
    with open_session(tmp_path / "int") as s:
        got = s.run(x)
    for name in codes:
        np.testing.assert_array_equal(got[name].astype(np.int64), np.asarray(ref[name], np.int64), err_msg=name)
    # the file as users compile it (no extra outputs, so TVM fuses differently): same outputs
    compile_model(path, "x86-64", tmp_path / "plain", committed_db=False)
    with open_session(tmp_path / "plain") as s:
        plain = s.run(x)
    for name, value in plain.items():
        np.testing.assert_array_equal(value, ref[name], err_msg=name)


def test_the_quantize_report_gives_the_cost_of_each(attention_qdq):
    cost = intref.integer_cost(attention_qdq, feeds(SHAPE, 2, seed=1))
    assert set(cost["kinds"]) == {"lut", "softmax", "layernorm", "scale", "pad"}
    assert cost["kinds"]["lut"]["equal_fraction"] == 1.0
    assert all(k["max_code_diff"] <= 1 for k in cost["kinds"].values())
    (sqnr,) = cost["output_sqnr_db"].values()
    assert sqnr == "exact" or sqnr > 20


def test_activation_difference_and_product_are_integer_ops(upsample_qdq):
    """Sub is an add with a negated multiplier, Mul an element-wise product requantized by
    s_a * s_b / s_y: each within one code of the float op on the same input codes."""
    from edgekit.quant import formats as F

    qg = parse(upsample_qdq)
    ops = {op.op_type: op for op in qg.ops if op.kind in ("add", "mul")}
    assert ops["Sub"].kind == "add" and ops["Sub"].params.k[1] < 0 and ops["Mul"].kind == "mul"
    env = intref.run(qg, feeds(IMAGE, 1, seed=2)[0], keep_intermediates=True)
    for op_type, fn in (("Sub", np.subtract), ("Mul", np.multiply)):
        op = ops[op_type]
        a, b = (F.dequantize(env[n], q.scale, q.zero_point) for n, q in zip(op.inputs, op.in_q))
        want = F.quantize(fn(a, b), op.out_q.scale, op.out_q.zero_point, op.out_q.qtype)
        assert np.abs(np.asarray(env[op.outputs[0]], np.int64) - want).max() <= 1, op_type


def test_float_nonlinear_compiles_them_as_the_file_writes_them(attention_qdq, tmp_path):
    from edgekit.compile import compile_model

    meta = compile_model(attention_qdq, "x86-64", tmp_path / "f", committed_db=False, integer_nonlinear=False)
    assert meta["integer_nonlinear"] is False
    assert not set(meta["integer_ops"]) & kinds.NONLINEAR_KINDS and "gemm" in meta["integer_ops"]
