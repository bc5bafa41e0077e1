"""The task metric as a quantization gate: `edgekit quantize --max-drop X --metric task`.

Lives with the metrics (edgekit.eval), not in edgekit.quant, which never imports eval: the
quantizer's MixedPrecision step gets a TaskDrop object from the caller (the API).
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TaskDrop:
    """A zoo task's own headline metric (pose AP, depth AbsRel, deblur PSNR, LM retrieval accuracy)
    on the labelled zoo samples the outputs came from, as a drop relative to FP32's value.

    `first`: the index in the zoo's calibration split of the first sample measured. The gate
    measures many quantized variants against one set of float outputs: the labelled samples and
    the float outputs' score are worked out once per set."""

    model_name: str
    first: int = 0
    name: str = "task"
    _reference: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def drop(self, floats: list[dict], quants: list[dict]) -> float:
        from edgekit.data import samples, task_of
        from edgekit.eval import PRIMARY

        key, sign = PRIMARY[task_of(self.model_name)]
        if id(floats) not in self._reference:  # the entry holds `floats`, so its id stays unique
            labelled = samples(self.model_name, "calib", len(floats), start=self.first)
            self._reference[id(floats)] = (floats, labelled, self._score(labelled, floats, key))
        _, labelled, ref = self._reference[id(floats)]
        return sign * (ref - self._score(labelled, quants, key)) / max(abs(ref), 1e-12)

    def _score(self, labelled, outputs: list[dict], key: str) -> float:
        from edgekit.data import task_of
        from edgekit.eval import metric_for

        metric = metric_for(task_of(self.model_name))
        for i, (sample, out) in enumerate(zip(labelled, outputs)):
            named = {n: out[n].numpy() for n in metric.outputs if n in out}
            if len(named) != len(metric.outputs):  # positional, as `edgekit eval` does
                named = dict(zip(metric.outputs, (v.numpy() for v in out.values())))
            metric.update(i, sample, named)
        return float(metric.result()[key])
