"""Each quantization step reduces the error it targets on a case where it should."""
from dataclasses import dataclass

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper

from edgekit.onnx_graph.model import initializers, prepare_model
from edgekit.onnx_graph.torch_ops import SUPPORTED_OPS, TorchGraph
from edgekit.quant import compensate as C
from edgekit.quant import pipeline as P
from edgekit.quant import polish, rtn
from edgekit.quant import reconstruct as R
from edgekit.quant import weights as W
from edgekit.quant.plan import Layer, QParams, build_plan
from edgekit.quant.simulate import fake_quant, layer_forward

torch.set_num_threads(1)


def conv_layer(cin=8, cout=8, k=3):
    return Layer("conv", "Conv", "x", "w", "b", 0, 1, "y", "y",
                 attrs={"pads": [1, 1, 1, 1], "_wshape": [cout, cin, k, k]})


def layer_error(layer, x_in, w, b, target):
    with torch.no_grad():
        y = layer_forward(layer, x_in, torch.from_numpy(w), torch.from_numpy(b))
    return float(((y - target) ** 2).mean() / (target ** 2).mean())


@pytest.fixture
def conv_case():
    rng = np.random.default_rng(0)
    layer = conv_layer()
    w = rng.standard_normal((8, 8, 3, 3)).astype(np.float32) * 0.3
    b = rng.standard_normal(8).astype(np.float32) * 0.1
    xf = torch.from_numpy(np.abs(rng.standard_normal((16, 8, 12, 12))).astype(np.float32))
    # a clipped 4-bit range: saturation gives the systematic error compensation can undo
    qp = QParams.from_range(0, 0.3 * float(xf.max()), rtn.act_qtype(4))
    xq = fake_quant(xf, qp)
    with torch.no_grad():
        target = layer_forward(layer, xf, torch.from_numpy(w), torch.from_numpy(b))
    return layer, w, b, xf, xq, target


def test_compensation_reduces_error_on_quantized_inputs(conv_case):
    layer, w, b, xf, xq, target = conv_case
    before = layer_error(layer, xq, w, b, target)
    new_w, new_b = C.ridge_update(layer, w, b, xq, xf)
    after = layer_error(layer, xq, new_w, new_b, target)
    assert after < 0.8 * before


def _dq(codes, scales):
    return codes.astype(np.float32) * scales.reshape(-1, 1, 1, 1)


def test_learned_rounding_beats_nearest(conv_case):
    layer, w, b, xf, xq, target = conv_case
    layer.weight_bits = 4
    scales = W.mse_scales(W.channel_view(w, 0), 4)
    nearest = W.quantize_codes(W.channel_view(w, 0), scales, 4).reshape(w.shape)
    learned = R.adaround(layer, w, b, scales, xf, target, None, iters=200)
    assert layer_error(layer, xf, _dq(learned, scales), b, target) < \
        0.8 * layer_error(layer, xf, _dq(nearest, scales), b, target)


def _preact_error(layer, x_q, x_f, w, b, w0, b0, fisher=None):
    """Mean (Fisher-weighted) squared error of the pre-activation output, computed directly."""
    layer = Layer(**{**layer.__dict__, "act": None})
    with torch.no_grad():
        y = layer_forward(layer, x_q, torch.from_numpy(w), torch.from_numpy(b))
        t = layer_forward(layer, x_f, torch.from_numpy(w0), torch.from_numpy(b0))
    err = (y - t).double() ** 2
    return float((err if fisher is None else err * fisher.double()).mean())


@pytest.mark.parametrize("groups", [1, 2, 8], ids=["dense", "grouped", "depthwise"])
def test_quadratic_moments_give_the_exact_layer_error(conv_case, groups):
    """tr(W' H W'^T) - 2 tr(W' C) + c equals the directly computed error, Fisher-weighted or not
    (per-row weights: exact for depthwise, where each group has one output channel)."""
    layer, w, b, xf, xq, _ = conv_case
    layer.attrs = {**layer.attrs, "group": groups, "_wshape": [8, 8 // groups, 3, 3]}
    rng = np.random.default_rng(1)
    w0 = rng.standard_normal((8, 8 // groups, 3, 3)).astype(np.float32) * 0.3
    w1 = w0 + 0.05 * rng.standard_normal(w0.shape).astype(np.float32)
    b1 = b + 0.01
    fisher = torch.ones(16, 8, 12, 12)
    if groups == 8:
        fisher = torch.from_numpy(rng.uniform(0.5, 2.0, (16, 8, 12, 12)).astype(np.float32))
    for f in (None, fisher):
        moments = R.quadratic_moments(layer, [xq[:10], xq[10:]], [xf[:10], xf[10:]], w0, b,
                                      None if f is None else [f[:10], f[10:]])
        # codes w1 with unit scales: the float weight itself
        quad = R.quadratic_error(layer, w1, np.ones(8, np.float32), b1, moments) * moments[3]
        assert quad == pytest.approx(_preact_error(layer, xq, xf, w1, b1, w0, b, f), rel=1e-6)


def test_quadratic_learned_rounding_beats_nearest(conv_case):
    layer, w, b, xf, xq, target = conv_case
    layer.weight_bits = 4
    scales = W.mse_scales(W.channel_view(w, 0), 4)
    nearest = W.quantize_codes(W.channel_view(w, 0), scales, 4).reshape(w.shape)
    moments = R.quadratic_moments(layer, xf, xf, w, b)   # float inputs: the rounding error alone
    learned = R.adaround_quadratic(layer, w, b, scales, moments, iters=200)
    assert _preact_error(layer, xf, xf, _dq(learned, scales), b, w, b) < \
        0.8 * _preact_error(layer, xf, xf, _dq(nearest, scales), b, w, b)


def test_gptq_rounding_beats_nearest(conv_case):
    layer, w, b, xf, xq, target = conv_case
    layer.weight_bits = 4
    scales = W.mse_scales(W.channel_view(w, 0), 4)
    nearest = W.quantize_codes(W.channel_view(w, 0), scales, 4).reshape(w.shape)
    codes = R.gptq(layer, w, scales, xf)
    assert layer_error(layer, xf, _dq(codes, scales), b, target) < \
        0.8 * layer_error(layer, xf, _dq(nearest, scales), b, target)


def test_mse_scales_reduce_weight_error():
    w2 = np.random.default_rng(0).standard_t(3, size=(16, 64)).astype(np.float32)
    err = lambda s: ((W.dequantize_codes(W.quantize_codes(w2, s, 4), s) - w2) ** 2).sum()  # noqa: E731
    assert err(W.mse_scales(w2, 4)) < 0.9 * err(W.absmax_scales(w2, 4))


def _two_conv_model(tmp_path, outlier_channels=True):
    """conv -> relu -> conv, with a few producer channels 30x larger than the rest."""
    rng = np.random.default_rng(1)
    w1 = rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3
    if outlier_channels:
        w1[:2] *= 30.0
    w2 = rng.standard_normal((8, 8, 3, 3)).astype(np.float32) * 0.3
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["h"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["h"], ["r"], name="relu1"),
             helper.make_node("Conv", ["r", "w2", "b2"], ["y"], name="conv2", pads=[1, 1, 1, 1])]
    inits = [numpy_helper.from_array(a, n) for n, a in
             (("w1", w1), ("b1", np.full(8, 0.1, np.float32)), ("w2", w2), ("b2", np.zeros(8, np.float32)))]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, [1, 3, 12, 12])],
                          [helper.make_tensor_value_info("y", 1, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    path = tmp_path / "two.onnx"
    onnx.save(m, str(path))
    return str(path)


def _plan(path, calib):
    fm = prepare_model(path, SUPPORTED_OPS)
    env = TorchGraph(fm).run(calib[0], keep={o for n in fm.graph.node for o in n.output} | {"x"})
    plan = build_plan(fm, env, act_bits=4, weight_bits=4)
    P.RTN().apply(plan, calib, {})
    return plan


def _calib(n=8, seed=0):
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((1, 3, 12, 12)).astype(np.float32)} for _ in range(n)]


def test_equalization_reduces_consumer_error_and_keeps_function(tmp_path):
    calib = _calib()
    plan = _plan(_two_conv_model(tmp_path), calib)
    before = TorchGraph(plan.model).run(calib[0])["y"]
    report = polish.equalize(plan, calib, lambda t: 4)
    assert report and report[0]["choice"] != "none"
    assert report[0]["error_after"] < 0.8 * report[0]["error_before"]
    after = TorchGraph(plan.model).run(calib[0])["y"]
    assert torch.allclose(before, after, rtol=1e-4, atol=1e-4)  # float function unchanged


def test_clip_search_reduces_consumer_error(tmp_path):
    calib = _calib()
    plan = _plan(_two_conv_model(tmp_path), calib)
    ranges = rtn.collect_ranges(plan, calib)
    conv2 = plan.layers["conv2"]
    xin = torch.cat([TorchGraph(plan.model).run(f, keep={conv2.input})[conv2.input] for f in calib])
    inits = initializers(plan.model)
    w, b = torch.from_numpy(np.array(inits["w2"])), torch.from_numpy(np.array(inits["b2"]))
    target = layer_forward(conv2, xin, w, b)
    err = lambda qp: float(((layer_forward(conv2, fake_quant(xin, qp), w, b) - target) ** 2).sum())  # noqa: E731
    minmax = plan.params[conv2.input]
    polish.clip_search(plan, calib, ranges)
    assert err(plan.params[conv2.input]) < err(minmax)


def test_each_method_runs_and_full_beats_rtn(tmp_path):
    calib, test = _calib(8), _calib(4, seed=9)
    path = _two_conv_model(tmp_path)

    def output_error(method, **kw):
        q, rep = P.quantize(path, calib, P.QuantConfig.for_method(method, **kw))
        from edgekit.quant.ort import run, session

        fs, qs = session(path), session(q)
        num = sum(float(((run(fs, f)["y"] - run(qs, f)["y"]) ** 2).sum()) for f in test)
        den = sum(float((run(fs, f)["y"] ** 2).sum()) for f in test)
        return num / den, rep

    base, _ = output_error("rtn")
    full, rep = output_error("full")
    fast, _ = output_error("full", fast=True)
    assert [s["step"] for s in rep["steps"]] == ["rtn", "polish", "compensate", "reconstruct"]
    assert full < 0.8 * base and fast < 0.8 * base


class _TokenNet(torch.nn.Module):
    """Token ids -> embedding -> linear: a graph whose only input is integer."""

    def __init__(self):
        super().__init__()
        self.embed, self.fc = torch.nn.Embedding(32, 16), torch.nn.Linear(16, 8)

    def forward(self, tokens):
        return self.fc(torch.relu(self.embed(tokens)))


def test_fisher_weights_and_full_method_on_integer_input_model(tmp_path):
    torch.manual_seed(0)
    path = str(tmp_path / "tokens.onnx")
    torch.onnx.export(_TokenNet().eval(), (torch.zeros(1, 12, dtype=torch.int64),), path,
                      input_names=["tokens"], dynamo=False, opset_version=18)
    rng = np.random.default_rng(0)
    calib = [{"tokens": rng.integers(0, 32, (1, 12)).astype(np.int64)} for _ in range(4)]
    cfg = P.QuantConfig.for_method("full")
    for step in cfg.steps:
        if isinstance(step, P.Reconstruct):
            step.iters = 10
    q, rep = P.quantize(path, calib, cfg)
    assert [s["step"] for s in rep["steps"]] == ["rtn", "polish", "compensate", "reconstruct"]
    # the Fisher weighting needs gradients at block outputs although the input has none
    fm = prepare_model(path, SUPPORTED_OPS)
    with torch.no_grad():
        graph = TorchGraph(fm)
        env = graph.run(calib[0], keep={o for n in fm.graph.node for o in n.output} | set(graph.input_names))
    plan = build_plan(fm, env, 4, 4, 8, ())
    assert set(P.fisher_weights(fm, plan, calib)) == {layer.block_output for layer in plan.layers.values()}


@dataclass
class _SpoilWeights:
    """A step that makes the model worse: it adds noise to every quantized weight."""

    name: str = "spoil"
    guarded: bool = True

    def apply(self, plan, calib, ctx):
        rng = np.random.default_rng(0)
        for name, codes in list(plan.weights_q.items()):
            plan.weights_q[name] = np.clip(codes + rng.integers(-3, 4, codes.shape), -8, 7)
        return {}


@pytest.mark.parametrize("guard", [True, False])
def test_guard_undoes_a_step_that_lowers_held_out_sqnr(tmp_path, guard):
    """A step that lowers the output SQNR on held-out calibration samples is undone (and reported
    so); the same step stays when the guard is off."""
    path = _two_conv_model(tmp_path)
    calib = _calib(12)
    steps = lambda: [P.RTN(), _SpoilWeights()]  # noqa: E731
    kept_rtn, _ = P.quantize(path, calib, P.QuantConfig(steps=[P.RTN()], layer_samples=8))
    q, rep = P.quantize(path, calib, P.QuantConfig(steps=steps(), layer_samples=8, guard=guard))
    assert rep["sqnr_samples"] == "held-out"
    spoil = rep["steps"][1]
    same = [numpy_helper.to_array(a).tobytes() == numpy_helper.to_array(b).tobytes()
            for a, b in zip(q.graph.initializer, kept_rtn.graph.initializer)]
    if guard:
        assert spoil["kept"] is False and all(same)
        db = lambda s: np.mean(list(s["outputs"].values()))  # noqa: E731
        assert db(spoil["rejected_sqnr_db"]) < db(rep["steps"][0]["sqnr_db"])
        assert spoil["sqnr_db"] == rep["steps"][0]["sqnr_db"]
    else:
        assert spoil["kept"] is True and not all(same)


def test_guard_judges_only_fitting_steps(tmp_path):
    """The same spoiling step, declared a preparation step (not guarded), stays."""
    path = _two_conv_model(tmp_path)
    q, rep = P.quantize(path, _calib(12), P.QuantConfig(steps=[P.RTN(), _SpoilWeights(guarded=False)],
                                                        layer_samples=8))
    assert rep["steps"][1]["kept"] is True
    assert P.Compensate().guarded and P.Reconstruct().guarded and not getattr(P.Polish(), "guarded", False)


@pytest.fixture
def depthwise_case():
    """A 3x3 depthwise conv on smooth, positive (post-ReLU6-like) feature maps: neighbouring
    inputs of one filter are strongly correlated, so rounding errors that add up dominate."""
    rng = np.random.default_rng(3)
    c = 16
    layer = Layer("dw", "Conv", "x", "w", "b", 0, 1, "y", "y", weight_bits=4,
                  attrs={"pads": [1, 1, 1, 1], "group": c, "_wshape": [c, 1, 3, 3]})
    w = (rng.standard_normal((c, 1, 3, 3)) * rng.uniform(0.2, 3.0, (c, 1, 1, 1))).astype(np.float32)
    b = rng.standard_normal(c).astype(np.float32)
    base = rng.uniform(1.0, 5.0, (8, c, 1, 1))
    x = base + 0.3 * rng.standard_normal((8, c, 4, 4))
    x = torch.nn.functional.interpolate(torch.from_numpy(x.astype(np.float32)), size=(16, 16), mode="bilinear")
    return layer, w, b, x.clamp(0, 6)


def test_output_scales_and_bias_correction_lower_depthwise_output_error(depthwise_case):
    """round_and_correct (output-error scales, bias absorbing the rounding's mean error) against
    nearest rounding on weight-MSE scales with the bias left as it is."""
    layer, w, b, x = depthwise_case
    with torch.no_grad():
        target = layer_forward(layer, x, torch.from_numpy(w), torch.from_numpy(b))
    w2 = W.channel_view(w, 0)
    s = W.mse_scales(w2, 4)
    plain = layer_error(layer, x, _dq(W.quantize_codes(w2, s, 4).reshape(w.shape), s), b, target)
    codes, scales, nb = C.round_and_correct(layer, w, b, x)
    corrected = layer_error(layer, x, _dq(codes, scales), nb, target)
    assert corrected < 0.3 * plain


def test_free_bias_reconstruction_beats_fixed_bias(depthwise_case):
    """AdaRound on the form with the bias minimised out, then the closed-form bias, against
    AdaRound with the layer's bias kept: the exact layer error (quadratic form) is lower."""
    layer, w, b, x = depthwise_case
    moments = R.quadratic_moments(layer, x, x, w, b)
    s = W.mse_scales(W.channel_view(w, 0), 4)
    fixed = R.adaround_quadratic(layer, w, b, s, moments, iters=200)
    err_fixed = R.quadratic_error(layer, fixed, s, b, moments)
    free = R.adaround_quadratic(layer, w, None, s, R.free_bias_moments(moments), iters=200)
    nb = R.best_bias(layer, free, s, moments)
    err_free = R.quadratic_error(layer, free, s, nb, moments)
    assert err_free < 0.5 * err_fixed
    # the free-bias form gives the same error as the full form at the best bias
    assert R.quadratic_error(layer, free, s, None, R.free_bias_moments(moments)) == \
        pytest.approx(err_free, rel=1e-6)
    # the closed-form bias is the best: nudging it raises the error
    assert R.quadratic_error(layer, free, s, nb + 0.01, moments) > err_free


def _wide_gemm_model(tmp_path):
    """x[1, 256] -> Gemm 256->32 -> Relu -> Gemm 32->8: one calibration sample is one row, so the
    first layer sees fewer rows than inputs and a learned rounding can fit those rows."""
    rng = np.random.default_rng(5)
    w1 = (rng.standard_normal((32, 256)) * 0.1).astype(np.float32)
    w2 = (rng.standard_normal((8, 32)) * 0.3).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1", transB=1),
             helper.make_node("Relu", ["h"], ["r"], name="relu1"),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], name="fc2", transB=1)]
    inits = [numpy_helper.from_array(a, n) for n, a in
             (("w1", w1), ("b1", np.full(32, 0.2, np.float32)), ("w2", w2), ("b2", np.zeros(8, np.float32)))]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, [1, 256])],
                          [helper.make_tensor_value_info("y", 1, None)], inits)
    path = tmp_path / "wide.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return str(path)


def test_reconstruct_keeps_a_layer_rounding_only_where_it_helps_held_out(tmp_path):
    """With `select`, each layer's learned rounding replaces the one it had only if its block output
    error is lower on the held-out calibration samples; every kept rounding is reported."""
    rng = np.random.default_rng(0)
    mix = rng.standard_normal((8, 256)).astype(np.float32)          # inputs on a few directions
    calib = [{"x": (rng.standard_normal((1, 8)).astype(np.float32) @ mix
                    + 0.3 * rng.standard_normal((1, 256)).astype(np.float32))} for _ in range(24)]
    path = _wide_gemm_model(tmp_path)

    def held_out_db(select):
        cfg = P.QuantConfig(weight_bits=4, act_bits=8, guard=False, layer_samples=12,
                            steps=[P.RTN(), P.Polish(), P.Compensate(), P.Reconstruct(select=select)])
        _, rep = P.quantize(path, calib, cfg)
        return P._output_db(rep["steps"][-1]["sqnr_db"]), P._output_db(rep["steps"][-2]["sqnr_db"]), rep

    with_sel, before, rep = held_out_db(True)
    rounding = rep["steps"][-1]["details"]["rounding"]
    assert set(rounding) == {"fc1", "fc2"}
    assert all(("held-out error" in how) for how in rounding.values())
    without, _, _ = held_out_db(False)
    assert with_sel > without + 0.5        # here the learned rounding over-fits the 12 fit rows
    assert with_sel >= before - 0.05
