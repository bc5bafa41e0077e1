"""Graph rewrites applied before legalization (both the FP32 and the integer path).

``conv2d_transpose`` -> ``conv2d`` + pixel shuffle ("sub-pixel convolution")
------------------------------------------------------------------------------
TVM legalizes a transposed convolution with stride s as: dilate the input with
s-1 zeros between pixels, pad, then a dense k x k convolution over the dilated
map. For s = 2 three quarters of the multiply-adds read inserted zeros (15/16
for s = 4), and the dilated map is one more kernel. Per axis, with
``o + p = s*q + r`` (p the begin padding, r the output phase)::

    y[o] = sum_j x[q - j] * w[r + s*j],   j = 0 .. J-1,  J = ceil(k / s)

so every output phase r is an ordinary J-tap correlation of the *undilated*
input. All s x s phases are computed by one stride-1 conv2d with s*s*C_out
output channels (weights rearranged at compile time), then interleaved
(reshape, transpose, reshape: depth-to-space) and cropped to the output.
The products summed for each output are exactly the original ones (no zero
taps), so integer accumulations stay exact; float sums are reordered (last-bit
differences, like any other schedule change).

Applied to conv2d_transpose calls with a constant weight, groups 1, dilation 1,
NCHW/IOHW layouts and static shapes; anything else is left as it is.
"""
from __future__ import annotations

import numpy as np


def _axis_plan(size_in: int, kernel: int, stride: int, pad_begin: int, size_out: int):
    """(J, pad_left, pad_right, n, crop_begin) for one spatial axis, or None if not expressible."""
    taps = -(-kernel // stride)
    q_first = pad_begin // stride
    q_last = (size_out - 1 + pad_begin) // stride
    n = q_last - q_first + 1
    left = taps - 1 - q_first
    right = n + taps - 1 - left - size_in
    if left < 0 or right < 0:
        return None
    return taps, left, right, n, pad_begin - stride * q_first


def subpixel_weight(w: np.ndarray, strides, taps) -> np.ndarray:
    """IOHW transposed-conv weight [Cin, Cout, kh, kw] -> OIHW conv weight [Cout*sh*sw, Cin, Jh, Jw]."""
    cin, cout, kh, kw = w.shape
    sh, sw = strides
    jh, jw = taps
    g = np.zeros((cout, sh, sw, cin, jh, jw), dtype=w.dtype)
    for rh in range(sh):
        for rw in range(sw):
            for mh in range(jh):
                th = rh + sh * (jh - 1 - mh)
                if th >= kh:
                    continue
                for mw in range(jw):
                    tw = rw + sw * (jw - 1 - mw)
                    if tw < kw:
                        g[:, rh, rw, :, mh, mw] = w[:, :, th, tw].T
    return g.reshape(cout * sh * sw, cin, jh, jw)


def _static_shape(expr):
    try:
        return [int(d) for d in expr.ty.shape]
    except (AttributeError, TypeError, ValueError):
        return None


def conv_transpose_to_conv(mod):
    """Rewrite every eligible relax.nn.conv2d_transpose of `mod` (see the module docstring)."""
    from tvm import relax
    from tvm.ir import Op
    from tvm.ir.expr import Constant

    conv_t = Op.get("relax.nn.conv2d_transpose")

    @relax.expr_functor.mutator
    class SubPixel(relax.PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if call.op != conv_t:
                return call
            out = self._rewrite(call)
            return call if out is None else out

        def _rewrite(self, call):
            a = call.attrs
            weight = call.args[1]
            if not isinstance(weight, Constant):
                return None
            if (int(a.groups) != 1 or any(int(d) != 1 for d in a.dilation)
                    or str(a.data_layout) != "NCHW" or str(a.kernel_layout) != "IOHW"
                    or str(a.out_layout) != "NCHW"):
                return None
            x_shape, y_shape = _static_shape(call.args[0]), _static_shape(call)
            w = weight.value.numpy()
            if x_shape is None or y_shape is None or w.ndim != 4:
                return None
            strides = [int(s) for s in a.strides]
            pads = [int(p) for p in a.padding]  # top, left, bottom, right
            plans = [_axis_plan(x_shape[2 + i], w.shape[2 + i], strides[i], pads[i], y_shape[2 + i])
                     for i in range(2)]
            if any(p is None for p in plans) or strides == [1, 1]:
                return None
            (jh, lh, rh, nh, ch), (jw, lw, rw, nw, cw) = plans
            g = subpixel_weight(w, strides, (jh, jw))
            out_dtype = str(call.ty.dtype)
            op = relax.op
            n, cout, oh, ow = y_shape
            sh, sw = strides
            z = self.builder_.emit(op.nn.conv2d(call.args[0], relax.const(g, str(w.dtype)),
                                                strides=(1, 1), padding=(lh, lw, rh, rw), out_dtype=out_dtype))
            z = self.builder_.emit(op.reshape(z, (n, cout, sh, sw, nh, nw)))
            z = self.builder_.emit(op.permute_dims(z, [0, 1, 4, 2, 5, 3]))
            z = self.builder_.emit(op.reshape(z, (n, cout, nh * sh, nw * sw)))
            if (ch, cw) == (0, 0) and (nh * sh, nw * sw) == (oh, ow):
                return z
            return op.strided_slice(z, axes=[2, 3], begin=[ch, cw], end=[ch + oh, cw + ow])

    rewriter = SubPixel(mod)
    for gv, func in list(mod.functions.items()):
        if isinstance(func, relax.Function):
            rewriter.builder_.update_func(gv, rewriter.visit_expr(func))
    return rewriter.builder_.get()
