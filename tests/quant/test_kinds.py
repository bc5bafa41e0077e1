"""The integer-op kinds are defined once (edgekit.quant.kinds) and every back-end lists its
handlers per kind in one explicit table; a kind a back-end lacks is refused by name."""
import pytest

from edgekit.compile.accel import compiler as accel
from edgekit.errors import EdgekitError
from edgekit.quant import formats as F
from edgekit.quant import intref, kinds, plan, qgraph
from edgekit.quant.qgraph import QOp, QTensor


def test_every_backend_table_names_only_known_kinds():
    from edgekit.compile.tvm import qlower

    assert set(intref.KERNELS) == set(kinds.KINDS)  # the reference runs every kind
    for table in (qlower.HANDLERS, accel.LOWERINGS, accel.HOST_KINDS):
        assert set(table) <= set(kinds.KINDS)


def test_writer_and_parser_read_the_same_rules():
    assert plan.INHERIT is kinds.MOVE_OPS and qgraph.MOVE_OPS is kinds.MOVE_OPS
    assert plan.REQUANT_OPS == {"Concat", "AveragePool", "GlobalAveragePool"}
    assert kinds.MOVE_OPS == {"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Gather", "Slice", "Split",
                              "Identity", "DepthToSpace", "SpaceToDepth", "MaxPool", "GlobalMaxPool"}
    # each ONNX op the parser matches belongs to kinds of one writer role, except MatMul, which
    # is a layer with a constant weight and a binary op between two activations
    roles = {}
    for kind in kinds.PARSE_ORDER:
        for op in kind.onnx_ops:
            roles.setdefault(op, set()).add(kind.role)
    assert {op for op, r in roles.items() if len(r) > 1} == {"MatMul"}


def _op(kind):
    q = QTensor(0.1, 0, F.INT8)
    return QOp(kind, "node_x", ["x"], ["y"], [q], q, op_type="Frobnicate")


def test_the_integer_reference_names_a_kind_it_lacks(monkeypatch):
    qg = qgraph.QGraph([_op("frobnicate")], ["x"], ["y"], {}, {}, model=_empty_model())
    with pytest.raises(EdgekitError, match="integer reference: no kernel for op kind frobnicate"):
        intref.run(qg, {"x": [[1.0]]})


def test_the_tvm_lowering_names_a_kind_it_lacks():
    pytest.importorskip("tvm")
    from edgekit.compile.tvm import qlower

    attr = {"kind": b"frobnicate", "in_zero_points": [0], "qmin": -8, "qmax": 7, "y_zero_point": 0,
            "out_signed": 1}
    with pytest.raises(ValueError, match="TVM integer lowering: no handler for op kind 'frobnicate'"):
        qlower.QLinearIntegerConverter.convert(None, [], attr, {})


def test_the_accelerator_names_a_kind_it_lacks(tmp_path):
    qg = qgraph.QGraph([_op("frobnicate")], ["x"], ["y"], {}, {}, model=_empty_model())
    placement, refused = accel.place(qg, {}, {}, "cpu", tmp_path / "m.onnx")
    assert placement == {"node_x": "host"}
    assert refused == ["node_x (frobnicate/Frobnicate): no accelerator lowering for op kind 'frobnicate'"]
    with pytest.raises(EdgekitError, match="no accelerator lowering for op kind 'frobnicate'"):
        accel.place(qg, {}, {}, None, tmp_path / "m.onnx")


def _empty_model():
    from onnx import helper

    return helper.make_model(helper.make_graph([], "g", [], []))
