"""edgekit's own ONNX ops and their TVM Relax frontend converters: the one list.

`importer.check_ops` / `importer.to_relax` take this table; adding an op of
ours is one converter class plus one line here (no registration by import).
"""
from __future__ import annotations

from edgekit.compile.tvm.qlower import QLinearIntegerConverter, QuantizeLinearClampedConverter
from edgekit.models.sale.tvm_op import SaleAttentionConverter

CONVERTERS: dict[str, type] = {
    "QLinearInteger": QLinearIntegerConverter,            # integer linear ops (qlower.lower)
    "QuantizeLinearClamped": QuantizeLinearClampedConverter,  # 4-bit activations in 8-bit tensors
    "SaleAttention": SaleAttentionConverter,              # SALE sparse attention (models/sale)
}
