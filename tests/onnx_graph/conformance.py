"""ONNX backend node-test conformance of edgekit's ONNX -> torch op table.

Runs every node test case shipped in the onnx wheel (`onnx.backend.test.case.node.collect_testcases()`)
through `edgekit.onnx_graph.torch_ops.TorchGraph` and compares each output with the case's expected
output the way onnx's backend runner does (same shape, same dtype, `np.testing.assert_allclose` with the
case's rtol/atol, 1e-3 / 1e-7; bfloat16 at least two bfloat16 ULPs).

In scope: every default-domain operator that exists in opset 23 (MAX_OPSET), whatever opset its test
model imports. Out of scope (excluded, not counted): ops added after opset 23, training and loss ops,
sequence / optional / string / map typed values, image decoding, non-default domains (ai.onnx.ml,
ai.onnx.preview.training) and ops whose output is random (Bernoulli, Random*: their expected outputs come
from NumPy's generator).

Every in-scope case is classified as
  pass         all outputs match
  wrong        ran, but an output differs (shape, dtype or values)
  error        raised while running
  unsupported  uses an op the table has no entry for

Run as a script for a summary table: `.venv/bin/python tests/onnx_graph/conformance.py [--json] [--list]`.
Tensors of 4-bit and 2-bit ONNX types travel in their 8-bit containers (int8/uint8; float4e2m1 in
float32), as elsewhere in edgekit: such an expected output is compared by value with its container.
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
import time
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from edgekit.onnx_graph import torch_ops

HERE = Path(__file__).resolve().parent
EXPECTED_FAILURES = HERE / "expected_failures.txt"
CLASSES = ("pass", "wrong", "error", "unsupported")
MAX_OPSET = 23  # the scope: default-domain operators that exist in this opset (tested at any opset)

TRAINING_OPS = {"Adagrad", "Adam", "Momentum", "Gradient", "NegativeLogLikelihoodLoss", "SoftmaxCrossEntropyLoss"}
TRAINING_NAMES = ("loss", "training", "adagrad", "adam", "momentum", "nesterov", "gradient", "nllloss", "test_sce_")
RANDOM_OPS = {"Bernoulli", "Multinomial", "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike"}
SEQUENCE_OPS = {"SequenceAt", "SequenceConstruct", "SequenceEmpty", "SequenceErase", "SequenceInsert",
                "SequenceLength", "SequenceMap", "SplitToSequence", "ConcatFromSequence", "Optional",
                "OptionalGetElement", "OptionalHasElement", "StringConcat", "StringNormalizer", "StringSplit",
                "RegexFullMatch"}
IMAGE_OPS = {"ImageDecoder"}
# ONNX element types carried in a wider torch container (torch has no arithmetic on them).
CONTAINERS = {onnx.TensorProto.INT4: np.int8, onnx.TensorProto.UINT4: np.uint8,
              onnx.TensorProto.FLOAT4E2M1: np.float32}
for _name, _np in (("INT2", np.int8), ("UINT2", np.uint8)):
    if hasattr(onnx.TensorProto, _name):
        CONTAINERS[getattr(onnx.TensorProto, _name)] = _np


@lru_cache(maxsize=1)
def collect_cases() -> tuple:
    """All node test cases of the installed onnx, sorted by name (generating them takes a few seconds)."""
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        cases = collect_testcases()
    return tuple(sorted(cases, key=lambda c: c.name))


def _graphs(graph: onnx.GraphProto):
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _graphs(g)


def _nodes(model: onnx.ModelProto):
    for g in _graphs(model.graph):
        yield from g.node


def _non_tensor(type_proto: onnx.TypeProto) -> bool:
    kind = type_proto.WhichOneof("value")
    if kind is None:
        return False
    if kind != "tensor_type":
        return True
    return type_proto.tensor_type.elem_type == onnx.TensorProto.STRING


@lru_cache(maxsize=None)
def _exists_in(op_type: str, max_opset: int) -> bool:
    try:
        onnx.defs.get_schema(op_type, max_opset, "")
    except onnx.defs.SchemaError:
        return False
    return True


def excluded_reason(case, max_opset: int = MAX_OPSET) -> str | None:
    """Why a case is out of scope, or None when it counts."""
    name = case.name.lower()
    nodes = list(_nodes(case.model))
    ops = {n.op_type for n in nodes}
    if any(n.domain not in ("", "ai.onnx") for n in nodes):
        return "non-default domain"
    if not all(_exists_in(op_type, max_opset) for op_type in ops):
        return f"op newer than opset {max_opset}"
    if ops & TRAINING_OPS or any(k in name for k in TRAINING_NAMES):
        return "training/loss"
    if ops & IMAGE_OPS:
        return "image decoding"
    if ops & RANDOM_OPS:
        return "nondeterministic"
    values = [v for g in _graphs(case.model.graph) for v in list(g.input) + list(g.output) + list(g.value_info)]
    if ops & SEQUENCE_OPS or any(_non_tensor(v.type) for v in values):
        return "sequence/optional/string type"
    for inputs, outputs in case.data_sets:
        for v in list(inputs) + list(outputs):
            if v is None or isinstance(v, (list, tuple, dict)) or (
                    isinstance(v, np.ndarray) and v.dtype == object):
                return "sequence/optional/string type"
    return None


def _as_array(value) -> np.ndarray:
    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    return np.asarray(value)


def _ml_dtype(dtype: np.dtype) -> bool:
    """An ml_dtypes type (bfloat16, float8, int4...), which NumPy cannot compare or promote."""
    return not type(dtype).__module__.startswith("numpy")


def to_tensor(arr: np.ndarray, elem_type: int | None = None) -> torch.Tensor:
    """A torch tensor holding an ONNX test array, dtype kept (4/2-bit types in their containers)."""
    if elem_type in CONTAINERS:
        return torch.from_numpy(np.array(arr.astype(CONTAINERS[elem_type]), order="C"))
    return torch_ops.tensor_from_numpy(arr)


def to_array(t: torch.Tensor) -> np.ndarray:
    t = t.detach()
    if t.dtype == torch.bfloat16 or t.dtype.is_floating_point and t.element_size() == 1:
        return t.float().numpy()
    return t.numpy()


def compare(outputs: list, refs: list, rtol: float, atol: float, out_types: list) -> str | None:
    """None when outputs match, else what differs."""
    if len(outputs) != len(refs):
        return f"{len(outputs)} outputs, expected {len(refs)}"
    for i, (out, ref, et) in enumerate(zip(outputs, refs, out_types)):
        if not isinstance(out, torch.Tensor):
            return f"output {i} is a {type(out).__name__}, not a tensor"
        if tuple(out.shape) != tuple(ref.shape):
            return f"output {i} shape {list(out.shape)}, expected {list(ref.shape)}"
        o_rtol = rtol
        if et in CONTAINERS:
            ref = ref.astype(CONTAINERS[et])
        elif _ml_dtype(ref.dtype):
            want = torch_ops.torch_dtype_of(et)
            if out.dtype != want:
                return f"output {i} dtype {out.dtype}, expected {want}"
            if want == torch.bfloat16:
                o_rtol = max(rtol, 2 ** -6)
            ref = ref.astype(np.float32)
        got = to_array(out)
        if got.dtype != ref.dtype:
            return f"output {i} dtype {got.dtype}, expected {ref.dtype}"
        try:
            if ref.dtype == bool or ref.dtype.kind in "iu":
                np.testing.assert_array_equal(got, ref)
            else:
                np.testing.assert_allclose(got, ref, rtol=o_rtol, atol=atol)
        except AssertionError as exc:
            lines = [s.strip() for s in str(exc).splitlines() if s.strip().startswith(("Mismatch", "Max abs"))]
            return f"output {i} values differ ({'; '.join(lines) or 'mismatch'})"
    return None


def missing_ops(model: onnx.ModelProto) -> list[str]:
    supported = set(torch_ops.OPS) | set(torch_ops.GRAPH_OPS)
    return sorted({n.op_type for n in _nodes(model) if n.op_type not in supported})


def _elem_type(v: onnx.ValueInfoProto) -> int | None:
    return v.type.tensor_type.elem_type if v.type.HasField("tensor_type") else None


def run_case(case) -> tuple[str, str]:
    """(class, detail) of one in-scope case."""
    missing = missing_ops(case.model)
    if missing:
        return "unsupported", "no torch implementation of " + ", ".join(missing)
    try:
        graph = torch_ops.TorchGraph(case.model)
        in_types = {v.name: _elem_type(v) for v in case.model.graph.input}
        out_types = [_elem_type(v) for v in case.model.graph.output]
        for inputs, refs in case.data_sets:
            feeds = {name: to_tensor(_as_array(v), in_types.get(name))
                     for name, v in zip(graph.input_names, inputs)}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = graph.run(feeds)
            outputs = [result[n] for n in graph.output_names]
            diff = compare(outputs, [_as_array(r) for r in refs], case.rtol, case.atol, out_types)
            if diff:
                return "wrong", diff
    except Exception as exc:  # every failure is a result here
        msg = " ".join(str(exc).split())[:200]
        return "error", f"{type(exc).__name__}: {msg}"
    return "pass", ""


def run_all(cases=None, max_opset: int = MAX_OPSET) -> dict:
    """{case name: {"class": ..., "detail": ...}} for every case; excluded ones have class "excluded"."""
    results = {}
    for case in collect_cases() if cases is None else cases:
        reason = excluded_reason(case, max_opset)
        if reason:
            results[case.name] = {"class": "excluded", "detail": reason}
            continue
        cls, detail = run_case(case)
        results[case.name] = {"class": cls, "detail": detail}
    return results


def summary(results: dict) -> dict:
    counts = collections.Counter(r["class"] for r in results.values())
    excluded = collections.Counter(r["detail"] for r in results.values() if r["class"] == "excluded")
    in_scope = sum(counts[c] for c in CLASSES)
    return {"cases": len(results), "in_scope": in_scope, **{c: counts[c] for c in CLASSES},
            "pass_pct": round(100.0 * counts["pass"] / in_scope, 2) if in_scope else 0.0,
            "excluded": dict(sorted(excluded.items()))}


def failures(results: dict) -> dict:
    """{name: reason} of the in-scope cases that do not pass."""
    return {n: f"{r['class']}: {r['detail']}" for n, r in results.items() if r["class"] in CLASSES[1:]}


def load_expected_failures(path: Path = EXPECTED_FAILURES) -> dict:
    """{test name: reason} from the committed list (`name  reason` per line, '#' comments)."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, reason = line.partition(" ")
        out[name] = reason.strip()
    return out


def write_expected_failures(results: dict, path: Path = EXPECTED_FAILURES) -> None:
    """Rewrite the list from a run; a case already listed keeps its (hand-written) reason."""
    old = load_expected_failures(path) if path.is_file() else {}
    fails = {n: old.get(n, r) for n, r in failures(results).items()}
    s = summary(results)
    lines = ["# ONNX backend node tests that edgekit's torch op table does not pass (tests/onnx_graph).",
             "# One case per line: name, then the reason. Regenerate with",
             "#   .venv/bin/python tests/onnx_graph/conformance.py --write-expected",
             f"# {s['pass']} of {s['in_scope']} in-scope cases pass ({s['pass_pct']}%)."]
    width = max((len(n) for n in fails), default=0) + 2
    lines += [f"{n:<{width}}{fails[n]}" for n in sorted(fails)]
    path.write_text("\n".join(lines) + "\n")


def missing_op_counts(results: dict) -> collections.Counter:
    counts = collections.Counter()
    for r in results.values():
        if r["class"] == "unsupported":
            for op_name in r["detail"].split(" of ", 1)[1].split(", "):
                counts[op_name] += 1
    return counts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the summary and every result as JSON")
    parser.add_argument("--list", action="store_true", help="list every failing case with its reason")
    parser.add_argument("--op", help="only cases whose name starts with test_<OP> (lower case)")
    parser.add_argument("--max-opset", type=int, default=MAX_OPSET,
                        help=f"cases using an op added after this opset are out of scope (default {MAX_OPSET})")
    parser.add_argument("--write-expected", action="store_true", help=f"rewrite {EXPECTED_FAILURES.name}")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    cases = collect_cases()
    if args.op:
        cases = [c for c in cases if c.name.startswith("test_" + args.op.lower())]
    results = run_all(cases, args.max_opset)
    s = summary(results)
    s["seconds"] = round(time.perf_counter() - start, 1)
    if args.write_expected:
        if args.op or args.max_opset != MAX_OPSET:
            parser.error("--write-expected needs the full default run (no --op / --max-opset)")
        write_expected_failures(results)
    if args.json:
        print(json.dumps({"summary": s, "results": results}, indent=1))
        return 0
    print(f"ONNX backend node tests (onnx {onnx.__version__}): {s['cases']} cases, {s['in_scope']} in scope")
    for c in CLASSES:
        print(f"  {c:<12}{s[c]:>6}")
    print(f"  {'pass %':<12}{s['pass_pct']:>6.1f}")
    print("excluded: " + ", ".join(f"{k} {v}" for k, v in s["excluded"].items()))
    miss = missing_op_counts(results)
    if miss:
        print("missing ops (cases): " + ", ".join(f"{k} {v}" for k, v in miss.most_common()))
    if args.list:
        for name, reason in sorted(failures(results).items()):
            print(f"{name}  {reason}")
    print(f"{s['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
