"""The ONNX -> torch op table against the ONNX backend node tests (see conformance.py).

The set of in-scope cases that do not pass must equal the committed expected_failures.txt exactly:
a regression fails, and so does a case that starts passing (remove it from the list, so the list
stays true). The full run takes about 10 s.
"""
from __future__ import annotations

import pytest
import torch
from onnx import TensorProto, helper

from edgekit.errors import EdgekitError
from edgekit.onnx_graph.torch_ops import TorchGraph

from .conformance import EXPECTED_FAILURES, failures, load_expected_failures, run_all, summary

MIN_PASS_PCT = 95.0  # the target; the actual rate is in expected_failures.txt's header


@pytest.fixture(scope="module")
def results():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_all()
    finally:
        torch.set_num_threads(threads)


def test_failures_match_the_committed_list(results, record_property):
    s = summary(results)
    record_property("onnx_conformance", s)
    print(f"\nONNX backend node tests: {s['pass']}/{s['in_scope']} in-scope cases pass ({s['pass_pct']}%), "
          f"{s['wrong']} wrong, {s['error']} error, {s['unsupported']} unsupported")
    got = failures(results)
    expected = load_expected_failures()
    new = {n: got[n] for n in sorted(set(got) - set(expected))}
    fixed = sorted(set(expected) - set(got))
    unknown = sorted(n for n in expected if n not in results)
    assert not new, "cases that now fail (not in expected_failures.txt):\n" + "\n".join(
        f"  {n}  {r}" for n, r in new.items())
    assert not fixed, (f"cases in {EXPECTED_FAILURES.name} that now pass or are out of scope, remove them "
                       f"(or rerun conformance.py --write-expected): {fixed}")
    assert not unknown


def test_every_expected_failure_has_a_reason():
    assert all(reason for reason in load_expected_failures().values())


def test_pass_rate(results):
    s = summary(results)
    assert s["in_scope"] > 1500  # the suite was found and the scope filter kept most of it
    assert s["pass_pct"] >= MIN_PASS_PCT, s


def _model(nodes, inputs, outputs, opset=23):
    graph = helper.make_graph(nodes, "g", inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_operatorsetid("", opset)])


def _vi(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


@pytest.mark.parametrize("node,shape", [
    (helper.make_node("Resize", ["x", "", "s"], ["y"], mode="cubic"), [1, 1, 4, 4]),
    (helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[2, 2], dilations=[2, 2]), [1, 1, 5, 5]),
    (helper.make_node("LayerNormalization", ["x", "w"], ["y"]), [2, 4]),
    (helper.make_node("Attention", ["x", "x", "x"], ["y"]), [1, 2, 3, 4]),
    (helper.make_node("GridSample", ["x", "g"], ["y"]), [1, 1, 4, 4]),
    (helper.make_node("LpPool", ["x"], ["y"], kernel_shape=[2, 2]), [1, 1, 4, 4]),
], ids=["resize_cubic", "avgpool_dilated", "layernorm", "attention", "gridsample", "lppool"])
def test_gradients_flow(node, shape):
    """The float ops keep autograd working: d(sum r*y)/dx exists, is finite and not all zero."""
    torch.manual_seed(0)
    x = torch.randn(*shape, requires_grad=True)
    feeds = {"x": x}
    inputs = [_vi("x", shape)]
    extra = {"s": torch.tensor([1.0, 1.0, 2.0, 2.0]), "w": torch.ones(shape[-1]),
             "g": torch.rand(1, 3, 3, 2) * 2 - 1}
    for name in node.input[1:]:
        if name and name != "x":
            feeds[name] = extra[name]
            inputs.append(_vi(name, list(extra[name].shape)))
    graph = TorchGraph(_model([node], inputs, [_vi("y", None)]))
    y = graph.run(feeds)["y"]
    (y * torch.randn(y.shape)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_control_flow_runs_subgraphs_with_outer_scope():
    then = helper.make_graph([helper.make_node("Add", ["x", "x"], ["t"])], "then", [], [_vi("t", [2])])
    other = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [], [_vi("e", [2])])
    node = helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other, name="branch")
    graph = TorchGraph(_model([node], [_vi("c", [], TensorProto.BOOL), _vi("x", [2])], [_vi("y", [2])]))
    x = torch.tensor([1.0, 2.0])
    assert graph.run({"c": torch.tensor(True), "x": x})["y"].tolist() == [2.0, 4.0]
    assert graph.run({"c": torch.tensor(False), "x": x})["y"].tolist() == [-1.0, -2.0]


def test_control_flow_error_names_the_node():
    body = helper.make_graph([helper.make_node("NoSuchOp", ["x"], ["t"])], "then", [], [_vi("t", [2])])
    node = helper.make_node("If", ["c"], ["y"], then_branch=body, else_branch=body, name="the_if")
    model = _model([node], [_vi("c", [], TensorProto.BOOL), _vi("x", [2])], [_vi("y", [2])])
    with pytest.raises(EdgekitError, match="node the_if \\(If\\): .*NoSuchOp"):
        TorchGraph(model).run({"c": torch.tensor(True), "x": torch.ones(2)})
    from edgekit.onnx_graph.torch_ops import run_node

    with pytest.raises(EdgekitError, match="the_if"):
        run_node(node, [torch.tensor(True)])

