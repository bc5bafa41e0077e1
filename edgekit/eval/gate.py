"""The task metric as a quantization gate: `edgekit quantize --max-drop X --metric task`.

Lives with the metrics (edgekit.eval), not in edgekit.quant, which never imports eval: the
quantizer's MixedPrecision step gets a TaskDrop object from the caller (the API).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TaskDrop:
    """A zoo task's own headline metric (pose AP, depth AbsRel, deblur PSNR, LM retrieval accuracy)
    on the labelled zoo samples the outputs came from, as a drop relative to FP32's value.

    `first`: the index in the zoo's calibration split of the first sample measured."""

    model_name: str
    first: int = 0
    name: str = "task"

    def drop(self, floats: list[dict], quants: list[dict]) -> float:
        from edgekit.data import samples, task_of
        from edgekit.eval import PRIMARY, metric_for

        task = task_of(self.model_name)
        key, sign = PRIMARY[task]
        labelled = samples(self.model_name, "calib", len(floats), start=self.first)

        def score(outputs: list[dict]) -> float:
            metric = metric_for(task)
            for i, (sample, out) in enumerate(zip(labelled, outputs)):
                arrays = [v.numpy() for v in out.values()]
                named = {n: out[n].numpy() for n in metric.outputs if n in out}
                metric.update(i, sample, named if len(named) == len(metric.outputs)
                              else dict(zip(metric.outputs, arrays)))  # positional, as `edgekit eval` does
            return float(metric.result()[key])

        ref = score(floats)
        return sign * (ref - score(quants)) / max(abs(ref), 1e-12)
