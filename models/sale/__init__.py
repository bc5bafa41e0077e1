"""SALE: low-bit estimated block-sparse attention for long-context prefill (edgekit.models.sale).

    >>> from edgekit.models.sale import SaleConfig, sale_attention, sale_attention_reference
    >>> out = sale_attention(q, k, v, SaleConfig(taus=[0.008] * H))      # compiled CPU kernel
    >>> ref = sale_attention_reference(q, k, v, SaleConfig(taus=[0.008] * H))
"""
from .attention import SaleAttention, apply_plan
from .calibrate import calibrate_heads, calibrate_model
from .config import DENSE_TAU, TAU_START, SaleConfig, SalePlan
from .kernel import sale_attention_fast as sale_attention
from .reference import SaleStats, dense_causal_attention, sale_attention_reference

__all__ = ["SaleConfig", "SalePlan", "SaleStats", "SaleAttention", "TAU_START", "DENSE_TAU",
           "sale_attention", "sale_attention_reference", "dense_causal_attention", "apply_plan",
           "calibrate_heads", "calibrate_model"]
