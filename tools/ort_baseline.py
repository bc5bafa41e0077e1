"""onnxruntime's own post-training quantizer as the baseline the benchmarks compare with.

`best_quantize_static` runs `onnxruntime.quantization.quantize_static` (QDQ
format, per-channel weights) with each of its calibration methods and keeps
the one that scores best on the caller's metric, so that edgekit is compared
with the best thing a user of onnxruntime could get.
"""
from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

BITS = {  # "W4A8" -> (weight type, activation type) names of onnxruntime.quantization.QuantType
    "W8A8": ("QInt8", "QUInt8"),
    "W4A8": ("QInt4", "QUInt8"),
    "W4A4": ("QInt4", "QUInt4"),
}


def ort_quantize(prepared_path, calib: list[dict], path: Path, bits: str, method: str = "MinMax",
                 operator_format: bool = False) -> float:
    """One `quantize_static` run (per-channel weights) into `path`; returns its wall seconds.

    `operator_format` writes QOperator nodes (QLinearConv, QLinearMatMul, ...) instead of QDQ pairs:
    the two int8 formats onnxruntime executes with integer kernels.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calib)

        def get_next(self):
            return next(self.it, None)

    weight_type, act_type = (getattr(QuantType, t) for t in BITS[bits])
    t0 = time.time()
    with contextlib.redirect_stdout(sys.stderr):  # its calibration chatter: stdout is for the results
        quantize_static(str(prepared_path), str(path), Reader(),
                        quant_format=QuantFormat.QOperator if operator_format else QuantFormat.QDQ,
                        activation_type=act_type, weight_type=weight_type, per_channel=True,
                        calibrate_method=getattr(CalibrationMethod, method))
    return time.time() - t0


def best_quantize_static(prepared_path, calib: list[dict], out_stem: Path, bits: str, score, sign: int = +1):
    """Quantize `prepared_path` at `bits` with every calibration method; return (best row, tried).

    `score(path) -> float` rates one quantized file (higher is better when `sign` is +1); the
    best row holds "metric", "size", "seconds" and "calibration". A method that fails is
    reported in `tried` and skipped.
    """
    best, tried = None, {}
    for method in ("MinMax", "Entropy", "Percentile"):
        path = Path(f"{out_stem}.ort_{bits}_{method.lower()}.onnx")
        try:
            seconds = ort_quantize(prepared_path, calib, path, bits, method)
            metric = score(path)
        except Exception as exc:  # report, keep going
            tried[method] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
            continue
        tried[method] = metric
        row = {"metric": metric, "size": path.stat().st_size, "seconds": round(seconds, 1),
               "calibration": method, "path": str(path)}
        if best is None or sign * row["metric"] > sign * best["metric"]:
            best = row
    return best, tried
