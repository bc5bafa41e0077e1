"""onnxruntime sessions for edgekit's int4 QDQ files.

onnxruntime 1.32 mishandles 4-bit activations in two graph transformers:
- ClipQuantFusion throws on a Relu/Clip feeding a QuantizeLinear with a uint4
  zero point (edgekit's writer therefore drops redundant fused activations);
- QDQPropagationTransformer moves a uint4 DequantizeLinear past MaxPool /
  Reshape / Transpose, after which those kernels reject the uint4 input
  ("Type 'tensor(uint4)' ... is invalid").
`session()` disables both (edgekit's own files never need the first: a
Relu/Clip whose bounds the following Q already enforces is dropped by the
writer); numerics are unchanged (they only move or drop Q/DQ/Clip nodes).
8-bit-activation files load with default options too.
"""
from __future__ import annotations

DISABLED = ["QDQPropagationTransformer", "ClipQuantFusion"]


# For files from other quantizers (onnxruntime's own quantize_static puts Q/DQ
# pairs around MaxPool that the selector transformer then drops, running
# MaxPool on uint4): also keep QDQ as written, i.e. exact QDQ semantics.
STRICT_DISABLED = DISABLED + ["QDQSelectorActionTransformer"]


def session(model_or_path, threads: int | None = None, strict: bool = False):
    import onnx
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    src = model_or_path.SerializeToString() if isinstance(model_or_path, onnx.ModelProto) else str(model_or_path)
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"],
                                disabled_optimizers=STRICT_DISABLED if strict else DISABLED)


def run(sess, feeds: dict) -> dict:
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))
