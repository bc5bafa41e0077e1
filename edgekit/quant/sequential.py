"""Walk the model layer by layer with float and fake-quantized environments.

Each layer is visited once, in topological order, with its inputs taken from
the already-quantized upstream network (and the float network's inputs for
targets): the basis of compensation and reconstruction. Tensors are freed
after their last consumer.
"""
from __future__ import annotations

import numpy as np
import onnx
import torch
import torch.nn.functional as Fnn

from edgekit.onnx_graph.model import initializers
from edgekit.onnx_graph.torch_ops import TorchGraph, _auto_pad, _pads_torch, run_node, to_torch
from edgekit.progress import progress
from edgekit.quant.plan import Layer, QuantPlan
from edgekit.quant.simulate import act_hook, dequantized_bias, dequantized_weight, quantized_overrides

# ----- calibration samples of different shapes (dynamic axes) ----------------------------
# Samples are batched along axis 0 only within a group of samples whose tensors share their
# shapes; a "batch" below is a list of such group tensors (one group when every sample has the
# same shape, which is then exactly the old single concatenated batch).

def shape_groups(keys: list) -> list[list[int]]:
    """Sample indices grouped by equal key (a shape signature), groups in order of first appearance."""
    groups: dict = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def env_groups(envs: list[dict], names=None) -> list[list[int]]:
    """Groups of samples whose tensors `names` (default: every tensor in the env) have equal shapes."""
    def key(env):
        items = sorted(env) if names is None else sorted(set(names))
        return tuple((n, tuple(env[n].shape)) for n in items if n in env and torch.is_tensor(env[n]))
    return shape_groups([key(e) for e in envs])


def stack_groups(values: list, groups: list[list[int]]) -> list[torch.Tensor]:
    """Per-sample tensors concatenated along axis 0 within each group."""
    return [torch.cat([values[i] for i in g]) for g in groups]


def as_groups(x) -> list[torch.Tensor]:
    """A batch given as one tensor or as a list of same-shape group tensors -> list of group tensors."""
    return [x] if torch.is_tensor(x) else list(x)


def sequential_pass(plan: QuantPlan, float_model: onnx.ModelProto, calib: list[dict], on_layer,
                    desc: str) -> None:
    """Call on_layer(layer, xq, xf, groups) before each layer's quantized output is computed.

    xq, xf: lists of batched inputs, one tensor per group of samples with equal input shape;
    groups: the sample indices (into calib) of each group, in the same order.
    """
    fgraph = TorchGraph(float_model)
    qparams = dict(TorchGraph(plan.model).params)
    qparams.update(quantized_overrides(plan, layers=set()))  # constant operands
    hook = act_hook(plan)
    nodes = fgraph.nodes
    by_node = {layer.name: layer for layer in plan.layers.values()}
    last_use = {}
    for i, node in enumerate(nodes):
        for name in node.input:
            last_use[name] = i
    keep = set(fgraph.output_names)
    fenv = [dict(fgraph.params) for _ in calib]
    qenv = [dict(qparams) for _ in calib]
    with torch.no_grad():
        for s, feeds in enumerate(calib):
            for name in fgraph.input_names:
                v = to_torch(feeds[name])
                fenv[s][name] = v
                qenv[s][name] = hook(name, v)
        bar = progress(total=len(plan.layers), desc=desc, unit="layer")
        for i, (node, a) in enumerate(zip(nodes, fgraph.attrs)):
            layer = by_node.get(node.name)
            if layer is not None:
                groups = shape_groups([tuple(e[layer.input].shape) for e in qenv])
                xq = stack_groups([e[layer.input] for e in qenv], groups)
                xf = stack_groups([e[layer.input] for e in fenv], groups)
                with torch.enable_grad():
                    on_layer(layer, xq, xf, groups)
                inits = initializers(plan.model)
                w = to_torch(dequantized_weight(plan, layer))
                b = dequantized_bias(plan, layer, inits)
                for e in qenv:
                    e[layer.weight] = w
                    if b is not None:
                        e[layer.bias] = to_torch(b)
                bar.update(1)
            for s in range(len(calib)):
                outs = run_node(node, [fenv[s][n] if n else None for n in node.input], a)
                for name, v in zip(node.output, outs):
                    fenv[s][name] = v
                outs = run_node(node, [qenv[s][n] if n else None for n in node.input], a)
                for name, v in zip(node.output, outs):
                    qenv[s][name] = hook(name, v)
            for name in set(node.input):
                if last_use.get(name) == i and name not in keep and name not in fgraph.params:
                    for env in (fenv, qenv):
                        for e in env:
                            e.pop(name, None)
        bar.close()


# ----- im2col features shared by compensation and GPTQ ------------------------------------

def supports_features(layer: Layer, weight: np.ndarray) -> bool:
    if layer.op_type == "Conv":
        return weight.ndim == 4
    return layer.op_type in ("Gemm", "MatMul")


def group_weight(layer: Layer, w: torch.Tensor) -> torch.Tensor:
    """Weight as [G, Cout_g, K] matching features()."""
    if layer.op_type == "Conv":
        g = int(layer.attrs.get("group", 1))
        return w.reshape(g, w.shape[0] // g, -1)
    if layer.out_axis == 1:  # [K, N]
        w = w.t()
    return w.unsqueeze(0)


def ungroup_weight(layer: Layer, wg: torch.Tensor, shape) -> torch.Tensor:
    if layer.op_type == "Conv":
        return wg.reshape(shape)
    w = wg[0]
    return w.t().contiguous() if layer.out_axis == 1 else w


def features(layer: Layer, x: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """Input rows [G, R, K] so that the layer's pre-bias output is rows @ W_g^T."""
    if layer.op_type == "Conv":
        a = layer.attrs
        w_shape = a["_wshape"]
        kernel = list(w_shape[2:])
        strides = list(a.get("strides", [1, 1]))
        dil = list(a.get("dilations", [1, 1]))
        pads = _auto_pad(a, x, kernel, strides, dil)
        if any(pads):
            x = Fnn.pad(x, _pads_torch(pads, 2))
        g = int(a.get("group", 1))
        cols = Fnn.unfold(x, kernel, dilation=dil, stride=strides)  # [N, C*kh*kw, L]
        n, ck, l_ = cols.shape
        cols = cols.reshape(n, g, ck // g, l_).permute(1, 0, 3, 2).reshape(g, n * l_, ck // g)
    else:
        cols = x.reshape(1, -1, x.shape[-1])
    if rows is not None:
        cols = cols[:, rows]
    return cols


def sampled_features(layer: Layer, x, max_rows: int = 16384, seed: int = 0) -> torch.Tensor:
    """features() of every sample, keeping at most max_rows rows in all (same rows for the same seed).

    `x`: one batch tensor, or a list of them (groups of samples of different shapes).
    """
    xs = as_groups(x)
    gen = torch.Generator().manual_seed(seed)
    per = max(1, max_rows // sum(g.shape[0] for g in xs))
    parts = []
    for xg in xs:
        for i in range(xg.shape[0]):
            f = features(layer, xg[i:i + 1])
            if f.shape[1] > per:
                f = f[:, torch.randperm(f.shape[1], generator=gen)[:per]]
            parts.append(f)
    return torch.cat(parts, dim=1)


def moments(a: torch.Tensor, b: torch.Tensor | None = None, chunk: int = 4096) -> torch.Tensor:
    """a^T b / R in float64 for feature rows a, b [G, R, K]: accumulated over row chunks, so the
    float64 copy never holds more than `chunk` rows (a depthwise layer has thousands of groups)."""
    b = a if b is None else b
    out = torch.zeros(a.shape[0], a.shape[2], b.shape[2], dtype=torch.float64)
    for i in range(0, a.shape[1], chunk):
        ac = a[:, i:i + chunk].double()
        bc = ac if b is a else b[:, i:i + chunk].double()
        out += ac.transpose(1, 2) @ bc
    return out / max(a.shape[1], 1)


def feature_rows(k: int, max_rows: int = 16384) -> int:
    """Rows to sample for a layer with k inputs per output: a few hundred per unknown is plenty
    for its second moment, and a 3x3 depthwise layer (k = 9) need not pay for 16384."""
    return min(max_rows, 256 * k)
