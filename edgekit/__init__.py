"""edgekit: take a model, make it 4-bit, and run it fast on the edge.

Pipeline stages each live in one obvious place:
  models      edgekit.models          (zoo: litepose, depth, deblur, lm)
  export      edgekit.export          (PyTorch -> ONNX)
  quantize    edgekit.quant           (QuartDepth-style W4A4/W4A8 PTQ -> QDQ ONNX)
  compile     edgekit.compile         (TVM x86-64/arm64, accelerator)
  run/bench   edgekit.runtime         (TVM runtime + numpy only)
  simulate    edgekit.compile.accel   (golden ISA model) / edgekit.hw (RTL)
"""
__version__ = "0.1.0"
