"""Mixed precision with an accuracy gate: the fewest layers at 8 bits that keep the quantized
model within `max_drop` of FP32 on held-out samples (HAWQ's idea, with the sensitivity measured).

The step runs on the prepared plan (after RTN and polish), before the fitting steps: those
(compensate, reconstruct) correct each layer for the error of the quantized layers upstream of
it, so once they have run, promoting one layer alone changes what its consumers were fitted to
(on EfficientNet-Lite2 every single promotion then *raised* the output error). Decided first,
the bits are what the fits see.
1. the drop of the plan is measured on the held-out calibration samples (the ones the
   layer-wise fits do not see); if it is within the gate, nothing changes;
2. each candidate (a layer: 8-bit weights and its own input and output points) is measured on
   the fit samples at both ends of the promotion path: the output error it removes promoted
   alone (gain), and the error it adds when it alone stays low with everything else at 8 bits
   (damage);
3. layers are promoted in order of gain + damage, and the shortest prefix that meets the gate on the
   held-out samples is kept (binary search over the prefix length, assuming more 8-bit layers
   never hurt; the chosen prefix is measured, so the gate is checked, not assumed);
4. the fitting steps that follow are judged by the guard on this metric rather than on the
   output SQNR (a fit that raises the drop is undone);
5. the fits usually lower the drop below what the choice was made on, so on the finished model
   the chosen candidates are trimmed to the shortest prefix that still meets the gate (binary
   search), and the finished model is measured again (`drop_final`, `met`).
The method decides which layers need 8 bits (depthwise convolutions, the first and last layers
are usual answers on MobileNet-style networks) and the report says which, and why: each layer's
measured gain and damage.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from edgekit.errors import require
from edgekit.onnx_graph.model import initializers
from edgekit.onnx_graph.torch_ops import TorchGraph
from edgekit.progress import progress
from edgekit.quant import rtn
from edgekit.quant.plan import DEPTHWISE, FIRST, LAST, QParams, QuantPlan, edge_layers, is_depthwise_conv
from edgekit.quant.simulate import act_hook, quantized_overrides

SENSITIVITY_SAMPLES = 8   # fit samples each single-layer promotion is measured on


# -- metrics: how far the quantized outputs are from the float ones, as a drop (0 = equal) --------

@dataclass(frozen=True)
class OutputError:
    """Relative L2 error of the outputs, ||q - f|| / ||f|| over all samples (1 % ~ 40 dB SQNR)."""

    name: str = "error"

    def drop(self, floats: list[dict], quants: list[dict]) -> float:
        num = den = 0.0
        for f, q in zip(floats, quants):
            for n in f:
                num += float(((q[n].double() - f[n].double()) ** 2).sum())
                den += float((f[n].double() ** 2).sum())
        return float(np.sqrt(num / max(den, 1e-30)))


@dataclass(frozen=True)
class Top1Agreement:
    """1 - the fraction of positions whose argmax over the last axis (class logits [N, classes],
    token logits [N, T, vocab]) matches the float model's."""

    name: str = "top1"

    def drop(self, floats: list[dict], quants: list[dict]) -> float:
        same = total = 0
        for f, q in zip(floats, quants):
            for n in f:
                same += int((f[n].argmax(-1) == q[n].argmax(-1)).sum())
                total += f[n].argmax(-1).numel()
        return 1.0 - same / max(total, 1)


@dataclass(frozen=True)
class CosineSimilarity:
    """1 - the mean cosine similarity between each sample's float and quantized outputs
    (embeddings: the usual measure of a sentence encoder)."""

    name: str = "cosine"

    def drop(self, floats: list[dict], quants: list[dict]) -> float:
        sims = [float(torch.nn.functional.cosine_similarity(f[n].double().reshape(1, -1),
                                                            q[n].double().reshape(1, -1), eps=1e-30))
                for f, q in zip(floats, quants) for n in f]
        return 1.0 - float(np.mean(sims)) if sims else 0.0


METRICS = {m.name: m for m in (OutputError(), Top1Agreement(), CosineSimilarity())}
METRIC_NAMES = tuple(METRICS) + ("task",)


# -- the step -------------------------------------------------------------------------------------

@dataclass
class _Tables:
    """What promoting layers changes in a plan, kept so that a probe can be undone."""

    params: dict
    weights_q: dict
    weight_scales: dict
    bits: dict
    weight_bits: dict

    @classmethod
    def of(cls, plan: QuantPlan) -> "_Tables":
        return cls(dict(plan.params), dict(plan.weights_q), dict(plan.weight_scales), dict(plan.bits),
                   {n: layer.weight_bits for n, layer in plan.layers.items()})

    def restore(self, plan: QuantPlan) -> None:
        plan.params, plan.weights_q = dict(self.params), dict(self.weights_q)
        plan.weight_scales, plan.bits = dict(self.weight_scales), dict(self.bits)
        for n, bits in self.weight_bits.items():
            plan.layers[n].weight_bits = bits


class Promotions:
    """Sets of candidates promoted to 8 bits on top of one plan, and back (every probe starts from
    the same plan). Each candidate's change is computed once and cached: probes re-apply them.

    A promoted layer gets 8-bit weights (MSE-clipped per channel) computed from the float model's
    weights and bias (if the step runs after compensation, that fitted the plan's copies to the
    4-bit error of the layer's input, which an 8-bit input no longer has). Its own (not inherited)
    input and output points go to 8 bits with their min-max calibration ranges (the clipped ranges
    polish searched are 4-bit choices): the same points `build_plan` widens for `--keep-8bit`.
    """

    def __init__(self, plan: QuantPlan, float_model, ranges: dict):
        self.plan, self.ranges = plan, ranges
        self.base = _Tables.of(plan)
        self.float_inits = initializers(float_model)
        self.base_inits: dict[str, np.ndarray] = {}   # initializer -> the plan's own value
        self.changes: dict[tuple, dict] = {}          # candidate -> what promoting it sets

    def set(self, chosen) -> None:
        """The base plan with exactly the candidates `chosen` (see `candidates`) promoted."""
        changes = [self._change(c) for c in chosen]
        self.reset()
        for change in changes:
            self._apply(change)

    def reset(self) -> None:
        for init, value in self.base_inits.items():
            self.plan.set_initializer(init, value)
        self.base_inits = {}
        self.base.restore(self.plan)

    def _apply(self, change: dict) -> None:
        plan = self.plan
        for table in ("weights_q", "weight_scales", "params", "bits"):
            getattr(plan, table).update(change[table])
        for name in change["layers"]:
            plan.layers[name].weight_bits = 8
        for init, (own, value) in change["inits"].items():
            self.base_inits.setdefault(init, own)
            plan.set_initializer(init, value)

    def _change(self, candidate: tuple) -> dict:
        """What promoting `candidate` alone sets, worked out once on the base plan."""
        if candidate not in self.changes:
            self.reset()
            plan, (kind, name) = self.plan, candidate
            change = {"weights_q": {}, "weight_scales": {}, "params": {}, "bits": {}, "layers": [], "inits": {}}
            points = [name]
            if kind == "layer":
                layer = plan.layers[name]
                inits = initializers(plan.model)
                for init in (layer.weight, layer.bias):
                    if init and init in self.float_inits and not np.array_equal(inits[init], self.float_inits[init]):
                        change["inits"][init] = (inits[init], self.float_inits[init])  # (plan's, float)
                        self.base_inits.setdefault(init, inits[init])
                        plan.set_initializer(init, self.float_inits[init])
                layer.weight_bits = 8
                rtn.rtn_weights(plan, layers={name}, mse=True)
                change["weights_q"][name] = plan.weights_q[name]
                change["weight_scales"][name] = plan.weight_scales[name]
                change["layers"].append(name)
                points = [layer.input, layer.block_output]
            for t in points:
                if t in plan.bits and t not in plan.inherit and plan.bits[t] < 8:
                    qp = plan.params[t]
                    lo, hi = self.ranges.get(t, ((qp.qtype.qmin - qp.zero_point) * qp.scale,
                                                 (qp.qtype.qmax - qp.zero_point) * qp.scale))
                    change["bits"][t] = 8
                    change["params"][t] = QParams.from_range(lo, hi, rtn.act_qtype(8))
            self.reset()
            self.changes[candidate] = change
        return self.changes[candidate]


def candidates(plan: QuantPlan) -> list[tuple]:
    """What can go to 8 bits: layers with 4-bit weights or 4-bit points, then the 4-bit outputs
    of the other integer ops (Add, Concat, pooling), which no layer's promotion widens."""
    layer_outputs = {layer.block_output for layer in plan.layers.values()}
    layers = [("layer", n) for n, layer in plan.layers.items() if layer.weight_bits < 8
              or any(plan.bits.get(t, 8) < 8 for t in (layer.input, layer.block_output))]
    acts = [("activation", t) for t in plan.points
            if t not in plan.inherit and t not in layer_outputs and plan.bits.get(t, 8) < 8]
    return layers + acts


class _Outputs:
    """The float model's outputs on some samples (computed once) and the quantized plan's."""

    def __init__(self, plan: QuantPlan, float_model, samples: list[dict]):
        self.samples, self.graph = samples, TorchGraph(plan.model)
        fgraph = TorchGraph(float_model)
        with torch.no_grad():
            self.floats = [{n: v for n, v in fgraph.run(s).items() if v.is_floating_point()} for s in samples]

    def quantized(self, plan: QuantPlan) -> list[dict]:
        overrides, hook = quantized_overrides(plan), act_hook(plan)
        with torch.no_grad():
            return [self.graph.run(s, hook=hook, weights=overrides) for s in self.samples]

    def drop(self, plan: QuantPlan, metric) -> float:
        return metric.drop(self.floats, self.quantized(plan))


def weight_bytes(plan: QuantPlan, bits_of=None) -> int:
    """Bytes of the layers' weight codes (int4 packed two to a byte)."""
    inits = initializers(plan.model)
    bits_of = bits_of or (lambda layer: layer.weight_bits)
    return int(sum((inits[layer.weight].size * bits_of(layer) + 7) // 8 for layer in plan.layers.values()))


def layer_tags(plan: QuantPlan) -> dict[str, list[str]]:
    """{layer: ['@depthwise', '@first', '@last' as they apply]}: the kinds the report names."""
    inits = initializers(plan.model)
    first, last = edge_layers(plan.model, set(plan.layers))
    tags = {}
    for n, layer in plan.layers.items():
        tags[n] = ([DEPTHWISE] if is_depthwise_conv(layer.op_type, layer.attrs.get("group", 1),
                                                    inits[layer.weight].shape) else []) \
            + ([FIRST] if n in first else []) + ([LAST] if n in last else [])
    return tags


@dataclass
class MixedPrecision:
    """Keep the fewest layers at 8 bits so that the held-out `metric` drop stays within `max_drop`."""

    max_drop: float = 0.01
    metric: str = "error"
    name: str = "mixed-precision"
    sensitivity_samples: int = SENSITIVITY_SAMPLES
    trim: bool = True   # after the fits, put back below 8 bits what the finished model does not need

    task_metric: object = None   # metric 'task': an edgekit.eval.gate.TaskDrop (the zoo task's own metric)

    def __post_init__(self):
        require(self.metric in METRIC_NAMES, f"unknown metric {self.metric!r} "
                                             f"(choose from {', '.join(METRIC_NAMES)})")
        require(self.metric != "task" or self.task_metric is not None,
                "metric 'task' needs the zoo model's dataset as the calibration source")
        require(0.0 < self.max_drop < 1.0, f"max drop must be between 0 and 1 (a fraction, 0.01 = 1 %), "
                                           f"got {self.max_drop}")

    def apply(self, plan: QuantPlan, calib, ctx) -> dict:
        metric = self._metric(ctx)
        held_out = _Outputs(plan, ctx["float_model"], ctx["held_out"])
        ctx["gate_drop"] = lambda p: held_out.drop(p, metric)  # the guard of the later fits measures this
        drop0 = held_out.drop(plan, metric)
        size8 = weight_bytes(plan, lambda layer: 8)
        out = {"metric": self.metric, "max_drop": self.max_drop, "samples": len(ctx["held_out"]),
               "samples_kind": ctx.get("held_out_kind", "held-out"), "drop_before": drop0,
               "weight_bytes_all_8bit": size8, "weight_bytes_before": weight_bytes(plan)}
        order, worth = [], {}
        if drop0 > self.max_drop:
            order, worth = self._ranking(plan, calib[:ctx["layer_samples"]][:self.sensitivity_samples], ctx)
        promotions = Promotions(plan, ctx["float_model"], ctx.get("ranges", {}))

        probes = {}   # prefix length -> measured drop: the curve the search walked

        def meets(k: int) -> bool:
            promotions.set(order[:k])
            probes[k] = held_out.drop(plan, metric)
            return probes[k] <= self.max_drop

        chosen = 0
        if order:
            # drop(0) > max_drop; if every candidate at 8 bits misses the gate too, keep them all
            chosen = shortest_prefix(0, len(order), meets) if meets(len(order)) else len(order)
            promotions.set(order[:chosen])  # the plan left as chosen
        drop = probes[chosen] if chosen else drop0
        ctx["gate_now"] = drop  # the gate's drop of the plan as it now stands (the guard reads it)
        tags = layer_tags(plan)
        out.update(drop_after=drop, met=drop <= self.max_drop, weight_bytes=weight_bytes(plan),
                   promoted=[{kind: n, "kinds": tags.get(n, []) if kind == "layer" else [],
                              **worth[(kind, n)]} for kind, n in order[:chosen]],
                   candidates=len(order), probes=[[k, probes[k]] for k in sorted(probes)])
        ctx["gate_choice"] = (order[:chosen], promotions, out)
        return out

    def final_check(self, plan: QuantPlan, calib, ctx) -> dict:
        """The gate on the finished model (after the steps that follow this one), after trimming."""
        drop = ctx["gate_now"] if ctx.get("gate_now") is not None else ctx["gate_drop"](plan)
        chosen, promotions, details = ctx.get("gate_choice", ([], None, {}))
        out = {}
        if self.trim and chosen and drop <= self.max_drop:
            kept, drop, probes = self._trim(plan, chosen, promotions, ctx, drop)
            details["promoted"] = details["promoted"][:kept]
            out.update(trimmed=[{kind: n} for kind, n in chosen[kept:]], trim_probes=probes)
        out.update(drop_final=drop, met=drop <= self.max_drop, weight_bytes=weight_bytes(plan))
        return out

    def _trim(self, plan: QuantPlan, chosen: list, promotions: "Promotions", ctx,
              drop_all: float) -> tuple[int, float, list]:
        """The fits usually lower the drop below what the choice was made on: on the finished
        model (`drop_all` its drop), the shortest prefix of the chosen candidates that still
        meets the gate (binary search; the rest go back to their earlier bits, weights re-rounded
        from the fitted float weights with MSE-clipped ranges). A point another kept candidate
        widened stays at 8 bits."""
        fitted, before = _Tables.of(plan), promotions.base
        widened = [set(promotions.changes[c]["bits"]) for c in chosen]
        probes = {}

        def keep(k: int) -> None:
            fitted.restore(plan)
            still = set().union(*widened[:k])
            for (kind, name), points in zip(chosen[k:], widened[k:]):
                if kind == "layer":
                    plan.layers[name].weight_bits = before.weight_bits[name]
                    rtn.rtn_weights(plan, layers={name}, mse=True)
                for t in points - still:
                    plan.bits[t], plan.params[t] = before.bits[t], before.params[t]

        def meets(k: int) -> bool:
            keep(k)
            probes[k] = ctx["gate_drop"](plan)
            return probes[k] <= self.max_drop

        kept = shortest_prefix(-1, len(chosen), meets)  # whether keeping none meets it is not known
        keep(kept)
        return kept, probes.get(kept, drop_all), [[k, probes[k]] for k in sorted(probes)]

    def _metric(self, ctx):
        if self.metric == "task":  # the held-out samples follow the layer-wise ones in the zoo split
            first = ctx["layer_samples"] if ctx.get("held_out_kind", "held-out") == "held-out" else 0
            return replace(self.task_metric, first=first)
        return METRICS[self.metric]

    def _ranking(self, plan: QuantPlan, samples: list[dict], ctx) -> tuple[list[tuple], dict]:
        """The candidates by their worth at 8 bits, and that worth: the output error a candidate
        removes when promoted alone from the low-bit plan (`gain`) plus the error it adds when it
        alone stays low with everything else at 8 bits (`damage`), its marginal value measured
        at both ends of the promotion path. Either end alone misleads: one at a time from the
        low-bit plan misses layers that matter only once the layers around them are clean (on
        EfficientNet-Lite2 W4A8 no prefix of that order probed short of all 65 layers lifted
        the top-1 agreement above 0.59), and from the all-8-bit plan misses a layer whose error the
        others' noise hides. Measured as the continuous output error whatever
        the gate's metric: a top-1 agreement barely moves when one layer changes."""
        probe = _Outputs(plan, ctx["float_model"], samples)
        err = METRICS["error"]
        promotions = Promotions(plan, ctx["float_model"], ctx.get("ranges", {}))
        names = candidates(plan)
        err_low = probe.drop(plan, err)
        promotions.set(names)
        err_high = probe.drop(plan, err)
        worth = {}
        for name in progress(names, desc="sensitivity", unit="candidate"):
            promotions.set([name])
            gain = err_low - probe.drop(plan, err)
            promotions.set([n for n in names if n != name])
            damage = probe.drop(plan, err) - err_high
            worth[name] = {"gain": gain, "damage": damage}
        promotions.reset()
        return sorted(names, key=lambda n: -(worth[n]["gain"] + worth[n]["damage"])), worth


def shortest_prefix(lo: int, hi: int, meets) -> int:
    """The smallest k in (lo, hi] with meets(k), by binary search, given meets(hi) and not
    meets(lo) (lo may lie below the range): it assumes that a longer prefix never does worse."""
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if meets(mid):
            hi = mid
        else:
            lo = mid
    return hi


def with_gate(steps: list, gate: MixedPrecision) -> list:
    """`steps` with the gate placed after the preparation steps (RTN, polish) and before the
    fitting ones (compensate, reconstruct), which then fit the chosen bits."""
    at = next((i for i, step in enumerate(steps) if getattr(step, "guarded", False)), len(steps))
    return steps[:at] + [gate] + steps[at:]
