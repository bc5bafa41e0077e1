"""SALE parameters: block geometry, always-kept blocks and per-head thresholds."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace

from edgekit.errors import EdgekitError

# Calibration schedule from the SALE recipe: start here, halve until the error
# bound holds; a head that needs a threshold below DENSE_TAU runs dense.
TAU_START = 0.008
DENSE_TAU = 1e-4


@dataclass(frozen=True)
class SaleConfig:
    """How SALE splits and prunes one attention call.

    block_q / block_k: query / key block sizes in tokens.
    sink_blocks: leading key blocks every query block keeps (attention sinks).
    window_blocks: key blocks before a query block's own (diagonal) block that
      it keeps (the local window); the diagonal block is always kept.
    taus: one threshold per head (RAS test exp(s - m) / l >= tau); 0 = dense.
      An empty tuple means "not calibrated": TAU_START for every head.
    """

    block_q: int = 64
    block_k: int = 64
    sink_blocks: int = 1
    window_blocks: int = 1
    taus: tuple = field(default_factory=tuple)

    def __post_init__(self):
        for name in ("block_q", "block_k"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise EdgekitError(f"SALE {name} must be a positive integer, got {value!r}")
        for name in ("sink_blocks", "window_blocks"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise EdgekitError(f"SALE {name} must be a non-negative integer, got {value!r}")
        taus = tuple(float(t) for t in self.taus)
        if any(not math.isfinite(t) or t < 0 or t >= 1 for t in taus):
            raise EdgekitError(f"SALE taus must lie in [0, 1), got {list(taus)}")
        object.__setattr__(self, "taus", taus)

    def head_taus(self, heads: int) -> list[float]:
        """Thresholds for `heads` heads (TAU_START everywhere when uncalibrated)."""
        if not self.taus:
            return [TAU_START] * heads
        if len(self.taus) != heads:
            raise EdgekitError(f"SALE config has {len(self.taus)} per-head thresholds "
                               f"but the attention has {heads} heads")
        return list(self.taus)

    def with_taus(self, taus) -> "SaleConfig":
        return replace(self, taus=tuple(float(t) for t in taus))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["taus"] = list(self.taus)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SaleConfig":
        known = {k: d[k] for k in ("block_q", "block_k", "sink_blocks", "window_blocks", "taus") if k in d}
        return cls(**known)

    def save(self, path) -> None:
        from edgekit.fileio import save_json

        save_json(self.to_dict(), path)

    @classmethod
    def load(cls, path) -> "SaleConfig":
        try:
            with open(path) as f:
                return cls.from_dict(json.load(f))
        except (OSError, ValueError) as exc:
            raise EdgekitError(f"cannot read SALE config {path}: {exc}") from None


@dataclass(frozen=True)
class SalePlan:
    """SALE thresholds for a whole model: one base geometry, per-layer per-head taus.

    This is what calibration produces and what is saved next to a model's
    checkpoint (JSON) and written into its ONNX custom-op nodes.
    """

    base: SaleConfig
    layer_taus: tuple        # ((tau per head) per layer); 0 = dense head
    error_bound: float = 0.0  # relative output error each head was calibrated to
    calibration: dict = field(default_factory=dict)  # provenance: length, samples, ...

    def __post_init__(self):
        object.__setattr__(self, "layer_taus", tuple(tuple(float(t) for t in lt) for lt in self.layer_taus))

    @property
    def layers(self) -> int:
        return len(self.layer_taus)

    def layer(self, index: int) -> SaleConfig:
        if not 0 <= index < self.layers:
            raise EdgekitError(f"SALE plan has {self.layers} layers, no layer {index}")
        return self.base.with_taus(self.layer_taus[index])

    def dense_heads(self) -> int:
        return sum(t == 0 for lt in self.layer_taus for t in lt)

    def to_dict(self) -> dict:
        base = self.base.to_dict()
        base.pop("taus")
        return {"format": "edgekit.sale.plan/1", "config": base, "error_bound": self.error_bound,
                "layer_taus": [list(lt) for lt in self.layer_taus], "calibration": self.calibration}

    @classmethod
    def from_dict(cls, d: dict, source: str = "SALE plan") -> "SalePlan":
        if d.get("format") != "edgekit.sale.plan/1" or "layer_taus" not in d:
            raise EdgekitError(f"{source} is not an edgekit SALE plan (format edgekit.sale.plan/1)")
        base = SaleConfig.from_dict(d.get("config", {}))
        plan = cls(base, d["layer_taus"], float(d.get("error_bound", 0.0)), d.get("calibration", {}))
        for lt in plan.layer_taus:
            base.with_taus(lt)  # validates every threshold
        return plan

    def save(self, path) -> None:
        from edgekit.fileio import save_json

        save_json(self.to_dict(), path)

    @classmethod
    def load(cls, path) -> "SalePlan":
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError) as exc:
            raise EdgekitError(f"cannot read SALE plan {path}: {exc}") from None
        return cls.from_dict(data, source=str(path))
