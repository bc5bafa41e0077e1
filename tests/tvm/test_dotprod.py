"""The x86 int8 dot-product kernels (compile/tvm/dotprod.py): bit-exact with the integer reference,
and really made of their instructions: vpdpbusd (AVX-512 VNNI), vpdpbusd on ymm (AVX-VNNI, as
compiled for mcpu=alderlake) and vpmaddubsw/vpmaddwd (AVX2, as on a CPU without VNNI: the same code
compiled for mcpu=haswell). Each runs only where this CPU executes it; AVX-VNNI's kernels also run
on an AVX-512 VNNI CPU (the same instruction, EVEX-encoded). The arm64 kernels (sdot, NEON) run on
the emulated board: tests/arm64."""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekit.compile.tvm import dotprod, targets
from edgekit.quant import formats as F

HOST = targets.resolve("x86-64", num_cores=1) if targets.host_cpu() else None
# x86 targets whose code uses each kernel
TARGET_OPTS = {"vnni": None, "avxvnni": "mcpu=alderlake", "avx2": "mcpu=haswell", "avx2_int16": "mcpu=haswell"}


def _runs_here(features) -> bool:
    from tvm.target import codegen

    return HOST is not None and bool(codegen.target_has_features(list(features), HOST.tvm_target()))


def _spec(isa):
    """The x86-64 target whose kernels are `isa`'s (skips where this CPU cannot run them)."""
    if not _runs_here(isa.features):
        pytest.skip(f"this CPU has no {'/'.join(isa.features)}")
    spec = targets.resolve("x86-64", TARGET_OPTS[isa.name], num_cores=1)
    detected = dotprod.detect(spec.tvm_target())
    assert isa in (detected, dotprod.ISAS.get(detected.wide))   # the target's step, or its wide one
    return spec


def _kernel_target(isa):
    """Where `isa`'s kernels alone run here: AVX-VNNI's also on an AVX-512 VNNI CPU (LLVM encodes
    the same ymm vpdpbusd with EVEX there)."""
    if isa is dotprod.AVXVNNI and not _runs_here(isa.features) and _runs_here(("avx512vnni", "avx512vl")):
        return HOST.tvm_target()
    return _spec(isa).tvm_target()


ISAS = [pytest.param(dotprod.VNNI, id="vnni"), pytest.param(dotprod.AVX2, id="avx2")]
KERNEL_ISAS = ISAS + [pytest.param(dotprod.AVXVNNI, id="avxvnni")]
PRODUCT_ISAS = [pytest.param(isa, id=isa.name) for isa in (dotprod.VNNI, dotprod.AVXVNNI, dotprod.AVX2_INT16)]


def _weights(rng, isa, shape):
    """Random int8 weights over the whole range `isa` is exact for."""
    bound = min(127, isa.max_weight)
    return rng.integers(-bound, bound + 1, shape)


@pytest.mark.parametrize("isa", KERNEL_ISAS + [pytest.param(dotprod.AVX2_INT16, id="avx2_int16")])
@pytest.mark.parametrize("rows,k,n", [(7, 16, 32), (30, 64, 48), (12, 8, 16)])
def test_kernel_equals_the_reference_requantization(isa, rows, k, n):
    """Y = requantize(A x W + bias) for random codes and per-column (M, shift), wrap included."""
    rng = np.random.default_rng(rows)
    a = rng.integers(0, 256, (dotprod.padded_rows(rows, n, isa), k)).astype(isa.activation)   # uint8 codes
    w = _weights(rng, isa, (k, n)).astype(np.int8)
    bias = rng.integers(-2 ** 31, 2 ** 31, n).astype(np.int32)        # big enough to wrap
    got, want = _run_dense(isa, a, w, bias, rng.uniform(1e-6, 2e-3, n))
    np.testing.assert_array_equal(got, want)


def _run_dense(isa, a, w, bias, scale):
    """(kernel output, reference output) of the dense kernel of `isa` for uint8 codes a (as isa.activation), w, the
    int32 bias and the requantization scale per column."""
    import tvm

    rows_p, k = a.shape
    n = w.shape[1]
    lib = tvm.compile(tvm.IRModule({"main": dotprod.dense_func(rows_p, k, n, "uint8", isa=isa)}),
                      target=_kernel_target(isa))
    mult, shift = F.quantize_multiplier(np.broadcast_to(scale, (n,)))
    lo, hi, zp = 3, 250, 17
    dev = tvm.cpu()
    out = tvm.runtime.tensor(np.zeros((rows_p, n), np.uint8), dev)
    lib["main"](*[tvm.runtime.tensor(v, dev) for v in (a, dotprod.pack_weight(w, isa), bias, mult, shift,
                                                          np.array([zp, lo, hi], np.int32))], out)
    acc = F.wrap_int32(a.astype(np.int64) @ w.astype(np.int64))
    return out.numpy(), F.requantize(acc, bias, mult, shift, zp, F.UINT8, lo, hi)


def test_avx2_step_is_exact_up_to_its_weight_bound_and_no_further():
    """vpmaddubsw saturates its int16 pair sums: at the bound (|w| = 64, every activation 255) the
    kernel is still exact; one step past it (w = 65, 2 * 255 * 65 > 32767) it is not, which is
    why layers with larger weights stay on the generic lowering."""
    isa = dotprod.AVX2
    a = np.full((dotprod.padded_rows(4, 16, isa), 8), 255, np.uint8)
    for w_value, exact in ((64, True), (-64, True), (65, False), (-65, False)):
        # the exact sum cancelled by the bias: any lost count shows, 16 counts per output step
        bias = np.full(16, -8 * 255 * w_value, np.int32)
        got, want = _run_dense(isa, a, np.full((8, 16), w_value, np.int8), bias, 1 / 16)
        assert np.array_equal(got, want) == exact, w_value
        assert isa.exact_for(np.array([w_value])) == exact


def _linear_qdq(path, rows: int, k: int, n: int, act_type: int, zp_x: int, seed: int = 0,
                wide: bool = False) -> str:
    """x -> Q/DQ (act_type, zp_x) -> MatMul(DQ(int4 W), or int8 W over the whole range if `wide`)
    + DQ(int32 bias) -> Q/DQ (uint8) -> y."""
    rng = np.random.default_rng(seed)
    s_x, s_y = np.float32(0.05), np.float32(0.2)
    s_w = rng.uniform(0.01, 0.05, n).astype(np.float32) / (16 if wide else 1)
    w = rng.integers(-127, 128, (k, n)) if wide else rng.integers(-8, 8, (k, n))
    w_init = (numpy_helper.from_array(w.astype(np.int8), "w_q") if wide else
              helper.make_tensor("w_q", TensorProto.INT4, [k, n], F.pack_int4(w.reshape(-1)).tobytes(), raw=True))
    inits = [numpy_helper.from_array(s_x, "s_x"), numpy_helper.from_array(s_y, "s_y"),
             numpy_helper.from_array(np.array(zp_x, np.int8 if act_type == TensorProto.INT8 else np.uint8), "zp_x"),
             numpy_helper.from_array(np.array(128, np.uint8), "zp_y"),
             w_init, numpy_helper.from_array(s_w, "s_w"),
             numpy_helper.from_array(rng.integers(-500, 500, n).astype(np.int32), "b_q"),
             numpy_helper.from_array((s_x * s_w).astype(np.float32), "s_b")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s_x", "zp_x"], ["x_q"], name="qx"),
             helper.make_node("DequantizeLinear", ["x_q", "s_x", "zp_x"], ["x_dq"], name="dqx"),
             helper.make_node("DequantizeLinear", ["w_q", "s_w"], ["w"], name="dqw", axis=1),
             helper.make_node("DequantizeLinear", ["b_q", "s_b"], ["b"], name="dqb", axis=0),
             helper.make_node("MatMul", ["x_dq", "w"], ["mm"], name="matmul"),
             helper.make_node("Add", ["mm", "b"], ["z"], name="bias_add"),
             helper.make_node("QuantizeLinear", ["z", "s_y", "zp_y"], ["y_q"], name="qy"),
             helper.make_node("DequantizeLinear", ["y_q", "s_y", "zp_y"], ["y"], name="dqy")]
    return _save(path, nodes, inits, [rows, k], [rows, n])


def _save(path, nodes, inits, x_shape, y_shape, inputs: dict | None = None) -> str:
    """The graph x -> nodes -> y (float32) as a checked opset-21 model at `path`; `inputs`:
    {name: shape} of the graph's inputs when they are not just x."""
    inputs = inputs or {"x": x_shape}
    values = [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in inputs.items()]
    graph = helper.make_graph(nodes, "layers", values,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return str(path)


# in each kernel's library (vpmaddwd also appears in LLVM's code for generic int16 loops)
INSTRUCTION = {"vnni": "vpdpbusd", "avxvnni": "{vex} vpdpbusd", "avx2": "vpmaddubsw", "avx2_int16": "vpmaddwd"}


def _compile(src, isa, folder, int8_dot: bool = True) -> dict:
    from edgekit.compile import compile_model

    return compile_model(src, "x86-64", folder, committed_db=False, int8_dot=int8_dot,
                         **({"target_opts": TARGET_OPTS[isa.name]} if TARGET_OPTS[isa.name] else {}))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("act_type,zp_x,wide", [(TensorProto.UINT8, 131, False), (TensorProto.INT8, -3, False),
                                                (TensorProto.UINT8, 7, True)], ids=["u8", "s8", "int8-weights"])
def test_linear_layer_runs_on_the_dot_kernel_bit_exactly(tmp_path, isa, act_type, zp_x, wide):
    """An awkward layer (13 rows, K 37, N 20: every dimension padded) compiled with and without the
    int8 dot-product kernel: the same codes as the integer reference both ways, and the library of
    the first holds the kernel's instruction. 8-bit weights beyond AVX2's exact bound run on its
    int16 steps (vpmaddwd) instead."""
    from edgekit.quant import intref
    from edgekit.runtime import open_session

    _spec(isa)
    src = _linear_qdq(tmp_path / "linear.onnx", 13, 37, 20, act_type, zp_x, wide=wide)
    x = np.random.default_rng(1).standard_normal((13, 37)).astype(np.float32) * 3
    want = intref.run(src, {"x": x})["y"]
    step = isa.for_operand(None if wide else np.arange(-8, 8))   # None: any int8 weight
    for dot in (True, False):
        meta = _compile(src, isa, tmp_path / str(dot), int8_dot=dot)
        assert meta["integer_ops"] == {"linear": 1}
        assert meta["int8_dot_product"] == (isa.name if dot else None)
        assert meta["tuning"]["kernels_int8_dot"] == (1 if dot else 0)
        with open_session(tmp_path / str(dot)) as session:
            np.testing.assert_array_equal(session.run({"x": x})["y"], want)
    if shutil.which("objdump"):
        asm = subprocess.run(["objdump", "-d", str(tmp_path / "True" / "model.so")], capture_output=True,
                             text=True, check=True).stdout
        assert INSTRUCTION[step.name] in asm and (step is isa or INSTRUCTION[isa.name] not in asm)
        plain = subprocess.run(["objdump", "-d", str(tmp_path / "False" / "model.so")], capture_output=True,
                               text=True, check=True).stdout
        assert INSTRUCTION[isa.name] not in plain


def test_a_build_for_an_avx_vnni_cpu_uses_the_vex_instruction(tmp_path):
    """Compiled for Alder Lake (AVX-VNNI, no AVX-512), whether or not this CPU can run it: the
    layer's kernel is the avxvnni one, made of VEX-encoded vpdpbusd on ymm registers (the kernels
    themselves are checked bit for bit above, on this CPU's encoding of the same instruction)."""
    src = _linear_qdq(tmp_path / "linear.onnx", 13, 37, 20, TensorProto.UINT8, 131)
    meta = _compile(src, dotprod.AVXVNNI, tmp_path / "adl")
    assert meta["int8_dot_product"] == "avxvnni" and meta["tuning"]["kernels_int8_dot"] == 1
    if shutil.which("objdump"):
        asm = subprocess.run(["objdump", "-d", str(tmp_path / "adl" / "model.so")], capture_output=True,
                             text=True, check=True).stdout
        dots = [line for line in asm.splitlines() if "vpdpbusd" in line]
        assert dots and all("{vex}" in line and "%ymm" in line and "%zmm" not in line for line in dots)


@pytest.mark.parametrize("isa", dotprod.ISAS.values(), ids=dotprod.ISAS.keys())
def test_tiles_stay_on_the_stack_and_pad_little(isa):
    for rows, blocks in ((1, 1), (13, 2), (256, 8), (1024, 64), (1000, 63)):
        mr, nr = dotprod.tiles(rows, blocks, isa)
        assert blocks % nr == 0 and mr * nr <= isa.accumulators
        assert mr * nr * isa.lanes * 4 < dotprod.STACK_LIMIT
        assert -(-rows // mr) * mr - rows < mr


@pytest.mark.parametrize("c,oc,h,w,k,pads,stride", [
    (13, 20, 9, 11, 3, (1, 1, 1, 1), 1), (16, 24, 8, 8, 1, (0, 0, 0, 0), 1), (5, 17, 7, 6, 5, (2, 0, 1, 3), 1),
    (3, 16, 13, 10, 3, (1, 1, 1, 1), 2), (6, 9, 9, 9, 4, (1, 2, 0, 1), 2), (8, 8, 8, 8, 1, (0, 0, 0, 0), 2)])
@pytest.mark.parametrize("isa", KERNEL_ISAS)
def test_conv_kernel_equals_the_reference_requantization(isa, c, oc, h, w, k, pads, stride):
    """The layout kernel and the convolution kernel together: requantize(conv(x - zp, W) + bias) for
    random codes, asymmetric padding (padded with the zero point), strides 1 and 2 (odd and even
    sizes and taps) and a bias that wraps."""
    g = dotprod.ConvGeometry(c, oc, h, w, k, k, pads, stride, isa)
    weight = np.random.default_rng(c).integers(-8, 8, (oc, c, k, k))
    _check_lanes_kernel(g, dotprod.conv_func, dotprod.pack_conv_weight(weight, g), weight, groups=1,
                        zp=37, out=(5, 2, 250), out_type=F.UINT8)


def _check_lanes_kernel(g, kernel_func, packed, weight, groups: int, zp: int, out, out_type):
    """Run g's layout kernel and kernel_func on random codes; compare with torch's convolution of
    the centred codes, requantized by the reference (a bias big enough to wrap)."""
    import torch
    import tvm

    mod = tvm.IRModule({"layout": dotprod.layout_func(g).with_attr("global_symbol", "layout"),
                        "kernel": kernel_func(g, out_type.name).with_attr("global_symbol", "kernel")})
    lib = tvm.compile(mod, target=_kernel_target(g.isa))
    rng = np.random.default_rng(g.oc + g.h)
    oc = g.oc
    x = rng.integers(0, 256, (1, g.c, g.h, g.w)).astype(np.uint8)
    bias = rng.integers(-2 ** 31, 2 ** 31, oc).astype(np.int32)
    mult, shift = F.quantize_multiplier(rng.uniform(1e-5, 2e-3, oc))
    folded, m, s = np.zeros(g.oc_p, np.int32), np.zeros(g.oc_p, np.int64), np.zeros(g.oc_p, np.int64)
    folded[:oc] = F.wrap_int32(bias.astype(np.int64) - zp * weight.sum(axis=(1, 2, 3)))
    m[:oc], s[:oc] = mult, shift
    dev = tvm.cpu()
    operand = tvm.runtime.tensor(np.zeros(g.layout_shape, np.uint32), dev)
    lib["layout"](tvm.runtime.tensor(x, dev), tvm.runtime.tensor(np.array([zp], np.uint8), dev), operand)
    y = tvm.runtime.tensor(np.zeros((g.oc_p, g.positions), out_type.name), dev)
    lib["kernel"](operand, *[tvm.runtime.tensor(v, dev) for v in (packed, folded, m, s, np.array(out, np.int32))], y)
    got = y.numpy()[:oc, :g.ho * g.pitch].reshape(oc, g.ho, g.pitch)[:, :, :g.wo]
    top, left, bottom, right = g.pads
    centred = np.pad(x.astype(np.float64) - zp, [(0, 0), (0, 0), (top, bottom), (left, right)])
    acc = torch.nn.functional.conv2d(torch.from_numpy(centred), torch.from_numpy(weight.astype(np.float64)),
                                     stride=g.stride, groups=groups)
    acc = F.wrap_int32(acc.numpy()[0].round().astype(np.int64))
    want = F.requantize(acc, bias[:, None, None], mult[:, None, None], shift[:, None, None], out[0], out_type,
                        out[1], out[2])
    np.testing.assert_array_equal(got, want)


def _conv_qdq(path, act_type: int, zp_x: int, seed: int = 0) -> str:
    """x [1,5,9,11] -> Q/DQ (act_type) -> Conv 3x3 (pads 1,0,2,1) -> Conv 3x3 stride 2 -> depthwise
    Conv 3x3 -> grouped Conv 1x1 (2 groups) -> ConvTranspose 4x4 stride 2 -> y, int4 weights, Q/DQ
    uint8 between: four layers for the kernels and one (the grouped) they leave to Relax."""
    rng = np.random.default_rng(seed)
    act_np = np.int8 if act_type == TensorProto.INT8 else np.uint8
    inits = [numpy_helper.from_array(np.float32(0.05), "s_x"), numpy_helper.from_array(np.array(zp_x, act_np), "zp_x")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s_x", "zp_x"], ["x_q"], name="qx"),
             helper.make_node("DequantizeLinear", ["x_q", "s_x", "zp_x"], ["x_dq"], name="dqx")]
    # name, op, weight shape, output-channel axis of the weight, attributes, output scale and zero point
    layers = (("conv1", "Conv", (7, 5, 3, 3), 0, dict(pads=[1, 0, 2, 1]), 0.3, 128),
              ("conv2", "Conv", (4, 7, 3, 3), 0, dict(pads=[1, 1, 1, 1], strides=[2, 2]), 0.5, 120),
              ("depthwise", "Conv", (4, 1, 3, 3), 0, dict(pads=[1, 1, 1, 1], group=4), 0.4, 100),
              ("grouped", "Conv", (4, 2, 1, 1), 0, dict(group=2), 0.45, 110),
              ("up", "ConvTranspose", (4, 3, 4, 4), 1, dict(pads=[1, 1, 1, 1], strides=[2, 2]), 0.6, 90))
    src, s_in = "x_dq", 0.05
    for name, kind, shape, axis, attrs, s_out, zp_out in layers:
        oc = shape[axis]
        s_w = rng.uniform(0.01, 0.05, oc).astype(np.float32)
        inits += [helper.make_tensor(f"{name}_wq", TensorProto.INT4, shape,
                                     F.pack_int4(rng.integers(-8, 8, int(np.prod(shape)))).tobytes(), raw=True),
                  numpy_helper.from_array(s_w, f"{name}_sw"),
                  numpy_helper.from_array(rng.integers(-300, 300, oc).astype(np.int32), f"{name}_bq"),
                  numpy_helper.from_array((s_in * s_w).astype(np.float32), f"{name}_sb"),
                  numpy_helper.from_array(np.float32(s_out), f"{name}_so"),
                  numpy_helper.from_array(np.array(zp_out, np.uint8), f"{name}_zo")]
        out = "y" if name == "up" else f"{name}_dq"
        nodes += [helper.make_node("DequantizeLinear", [f"{name}_wq", f"{name}_sw"], [f"{name}_w"], axis=axis),
                  helper.make_node("DequantizeLinear", [f"{name}_bq", f"{name}_sb"], [f"{name}_b"], axis=0),
                  helper.make_node(kind, [src, f"{name}_w", f"{name}_b"], [f"{name}_out"], name=name, **attrs),
                  helper.make_node("QuantizeLinear", [f"{name}_out", f"{name}_so", f"{name}_zo"], [f"{name}_q"]),
                  helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_so", f"{name}_zo"], [out])]
        src, s_in = out, s_out
    return _save(path, nodes, inits, [1, 5, 9, 11], [1, 3, 10, 12])


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("act_type,zp_x", [(TensorProto.UINT8, 131), (TensorProto.INT8, -3)], ids=["u8", "s8"])
def test_convolutions_run_on_the_dot_kernels_bit_exactly(tmp_path, isa, act_type, zp_x):
    """The stride-1, stride-2, depthwise and transposed convolutions go to the kernels, the grouped
    one stays Relax conv2d; both builds give the integer reference's codes."""
    from edgekit.quant import intref
    from edgekit.runtime import open_session

    _spec(isa)
    src = _conv_qdq(tmp_path / "convs.onnx", act_type, zp_x)
    x = np.random.default_rng(2).standard_normal((1, 5, 9, 11)).astype(np.float32) * 4
    want = intref.run(src, {"x": x})["y"]
    for dot in (True, False):
        meta = _compile(src, isa, tmp_path / str(dot), int8_dot=dot)
        assert meta["integer_ops"] == {"conv": 4, "conv_transpose": 1}
        assert meta["tuning"]["kernels_int8_dot"] == (4 if dot else 0)
        with open_session(tmp_path / str(dot)) as session:
            np.testing.assert_array_equal(session.run({"x": x})["y"], want)


@pytest.mark.parametrize("k,s,pads,out_pad", [(4, 2, (1, 1, 1, 1), (0, 0)), (3, 2, (1, 2, 0, 1), (1, 0)),
                                              (2, 2, (0, 0, 0, 0), (0, 0)), (5, 3, (2, 2, 2, 2), (2, 2))])
def test_transposed_convolution_is_a_convolution_and_a_pixel_shuffle(k, s, pads, out_pad):
    import torch

    rng = np.random.default_rng(k)
    c, oc, h, w = 3, 4, 5, 6
    wt = rng.integers(-8, 8, (c, oc, k, k)).astype(np.float64)
    x = rng.standard_normal((1, c, h, w))
    ho, wo = s * (h - 1) + k - pads[0] - pads[2] + out_pad[0], s * (w - 1) + k - pads[1] - pads[3] + out_pad[1]
    full = torch.nn.functional.conv_transpose2d(torch.from_numpy(x), torch.from_numpy(wt), stride=s).numpy()
    full = np.pad(full, [(0, 0), (0, 0), (0, max(0, pads[0] + ho - full.shape[2])),
                         (0, max(0, pads[1] + wo - full.shape[3]))])
    want = full[:, :, pads[0]:pads[0] + ho, pads[1]:pads[1] + wo]
    corr, (top, left, bottom, right), (mh, mw), size = dotprod.transpose_as_conv(wt, (h, w), (s, s), pads, out_pad)
    assert size == (ho, wo) and corr.shape[2] <= -(-k // s) + 1
    y = torch.nn.functional.conv2d(torch.from_numpy(np.pad(x, [(0, 0), (0, 0), (top, bottom), (left, right)])),
                                   torch.from_numpy(corr)).numpy()[:, :, :mh, :mw]
    y = y.reshape(s, s, oc, mh, mw).transpose(2, 3, 0, 4, 1).reshape(1, oc, mh * s, mw * s)[:, :, :ho, :wo]
    np.testing.assert_allclose(y, want, atol=1e-9)


@pytest.mark.parametrize("c,h,w,k,pads,stride", [(5, 9, 11, 3, (1, 1, 1, 1), 1), (17, 12, 12, 7, (3, 3, 3, 3), 1),
                                                 (6, 13, 10, 7, (3, 3, 3, 3), 2), (4, 8, 9, 5, (2, 1, 2, 0), 2)])
@pytest.mark.parametrize("isa", KERNEL_ISAS)
def test_depthwise_kernel_equals_the_reference_requantization(isa, c, h, w, k, pads, stride):
    """The row-interleaving layout kernel and the depthwise kernel: requantize(depthwise conv(x - zp,
    W) + bias), strides 1 and 2, padding with the zero point, int8 output."""
    g = dotprod.DepthwiseGeometry(c, h, w, k, k, pads, stride, isa)
    weight = np.random.default_rng(c + k).integers(-8, 8, (c, 1, k, k))
    _check_lanes_kernel(g, dotprod.depthwise_func, dotprod.pack_depthwise_weight(weight, g), weight, groups=c,
                        zp=201, out=(-3, -100, 120), out_type=F.INT8)


@pytest.mark.parametrize("isa", dotprod.ISAS.values(), ids=dotprod.ISAS.keys())
def test_conv_tiles_stay_on_the_stack(isa):
    for channels, positions in ((1, 1), (17, 64), (96, 4096), (7, 99)):
        for depthwise in (False, True):
            mr, nr = dotprod.conv_tiles(channels, positions, depthwise, isa)
            assert mr * nr <= isa.accumulators and mr * nr * isa.lanes * 4 < dotprod.STACK_LIMIT


@pytest.mark.parametrize("isa", PRODUCT_ISAS)
@pytest.mark.parametrize("batch,rows,k,n", [(3, 7, 16, 32), (2, 13, 8, 16)])
def test_activation_product_kernel_equals_the_reference_requantization(isa, batch, rows, k, n):
    """Y[b] = requantize(A[b] x B[b] + column terms + row terms), one multiplier: the kernel that
    attention's products (two activations) run on."""
    import tvm

    rows_p = dotprod.padded_rows(rows, n, isa)
    func = dotprod.matmul_func(batch, rows_p, k, n, "int8", rows, isa)
    lib = tvm.compile(tvm.IRModule({"main": func}), target=_kernel_target(isa))
    rng = np.random.default_rng(rows)
    a = rng.integers(0, 256, (batch, rows_p, k)).astype(isa.activation)
    b = rng.integers(-128, 128, (batch, k, n)).astype(np.int8)
    col = rng.integers(-2 ** 31, 2 ** 31, (batch, n)).astype(np.int32)   # big enough to wrap
    row = rng.integers(-2 ** 20, 2 ** 20, (batch, rows)).astype(np.int32)
    mult, shift = F.quantize_multiplier(np.array([3e-4]))
    packed = np.stack([dotprod.pack_weight(b[i], isa) for i in range(batch)])
    dev = tvm.cpu()
    out = tvm.runtime.tensor(np.zeros((batch, rows, n), np.int8), dev)
    lib["main"](*[tvm.runtime.tensor(v, dev) for v in (a, packed, col, row, mult.astype(np.int64),
                                                          shift.astype(np.int64), np.array([-5, -100, 110], np.int32))],
                out)
    acc = F.wrap_int32(np.einsum("bik,bkj->bij", a[:, :rows].astype(np.int64), b.astype(np.int64))
                       + col[:, None, :].astype(np.int64) + row[:, :, None].astype(np.int64))
    want = F.requantize(acc, 0, mult, shift, -5, F.INT8, -100, 110)
    np.testing.assert_array_equal(out.numpy(), want)


def _product_qdq(path, a_shape, b_shape, a_type: int, zp_a: int, b_type: int, zp_b: int) -> str:
    """a, b -> Q/DQ each (their own types and zero points) -> MatMul -> Q/DQ (uint8) -> y."""
    def np_type(t):
        return np.int8 if t == TensorProto.INT8 else np.uint8

    out_shape = list(np.broadcast_shapes(tuple(a_shape[:-2]), tuple(b_shape[:-2]))) + [a_shape[-2], b_shape[-1]]
    inits = [numpy_helper.from_array(np.float32(0.04), "s_a"),
             numpy_helper.from_array(np.array(zp_a, np_type(a_type)), "zp_a"),
             numpy_helper.from_array(np.float32(0.03), "s_b"),
             numpy_helper.from_array(np.array(zp_b, np_type(b_type)), "zp_b"),
             numpy_helper.from_array(np.float32(0.5), "s_y"), numpy_helper.from_array(np.array(120, np.uint8), "zp_y")]
    nodes = [helper.make_node("QuantizeLinear", ["a", "s_a", "zp_a"], ["a_q"]),
             helper.make_node("DequantizeLinear", ["a_q", "s_a", "zp_a"], ["a_dq"]),
             helper.make_node("QuantizeLinear", ["b", "s_b", "zp_b"], ["b_q"]),
             helper.make_node("DequantizeLinear", ["b_q", "s_b", "zp_b"], ["b_dq"]),
             helper.make_node("MatMul", ["a_dq", "b_dq"], ["p"], name="product"),
             helper.make_node("QuantizeLinear", ["p", "s_y", "zp_y"], ["y_q"]),
             helper.make_node("DequantizeLinear", ["y_q", "s_y", "zp_y"], ["y"])]
    return _save(path, nodes, inits, None, out_shape, inputs={"a": a_shape, "b": b_shape})


@pytest.mark.parametrize("a_type,zp_a,b_type,zp_b,b_shape,on_kernel", [
    (TensorProto.UINT8, 131, TensorProto.UINT8, 7, [2, 3, 37, 20], True),
    (TensorProto.INT8, -3, TensorProto.INT8, 5, [2, 3, 37, 20], True),
    (TensorProto.UINT8, 0, TensorProto.INT8, -9, [37, 20], False),     # broadcast batch: Relax matmul
], ids=["u8u8", "s8s8", "broadcast"])
@pytest.mark.parametrize("isa", ISAS)
def test_activation_products_run_on_the_dot_kernel_bit_exactly(tmp_path, isa, a_type, zp_a, b_type, zp_b, b_shape,
                                                               on_kernel):
    """A product of two activations (13 x 37 by 37 x 20 per batch: every dimension padded) compiled
    with and without the int8 dot-product kernels: the integer reference's codes both ways; the
    kernel takes same-batch products (on AVX2 its int16 steps: the byte step could saturate for
    some pairs of activations), a broadcast one stays Relax matmul."""
    from edgekit.quant import intref
    from edgekit.runtime import open_session

    _spec(isa)
    src = _product_qdq(tmp_path / "product.onnx", [2, 3, 13, 37], b_shape, a_type, zp_a, b_type, zp_b)
    rng = np.random.default_rng(3)
    feeds = {"a": rng.standard_normal((2, 3, 13, 37)).astype(np.float32) * 3,
             "b": rng.standard_normal(b_shape).astype(np.float32) * 3}
    want = intref.run(src, feeds)["y"]
    on_kernel = on_kernel and isa.for_operand() is not None
    for dot in (True, False):
        meta = _compile(src, isa, tmp_path / str(dot), int8_dot=dot)
        assert meta["integer_ops"] == {"matmul": 1}
        assert meta["tuning"]["kernels_int8_dot"] == (1 if dot and on_kernel else 0)
        with open_session(tmp_path / str(dot)) as session:
            np.testing.assert_array_equal(session.run(feeds)["y"], want)
