"""`edgekit compile --tune N --tracker --key`: MetaSchedule candidates measured on a board over RPC.

The board is a native loopback device (the same `edgekit.device.serve` code the
emulated arm64 board runs), so the RPC runner path is exercised in seconds.
"""
from __future__ import annotations

import json

import numpy as np
import onnx
from arm64_helpers import LOOPBACK, wait_registered
from onnx import TensorProto, helper, numpy_helper

from edgekit.cli import main


def _matmul_model(path):
    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((32, 32)).astype("float32"), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "mm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [32, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [32, 32])], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), str(path))


def test_tuning_measures_candidates_on_a_tracker_device(tracker, tmp_path, capsys):
    from edgekit.device import emulate

    model = tmp_path / "mm.onnx"
    _matmul_model(model)
    device = emulate.start_native(LOOPBACK, 0, tracker=tracker, key="tune")
    try:
        wait_registered(tracker, "tune", 1)
        code = main(["compile", str(model), "-o", str(tmp_path / "out"), "--tune", "4",
                     "--tune-min-per-task", "4", "--tuning-db", str(tmp_path / "db"), "--tracker", tracker,
                     "--key", "tune", "--no-committed-db", "--json"])
    finally:
        device.stop()
    assert code == 0
    meta = json.loads(capsys.readouterr().out)
    report = meta["tuning"]["report"]
    assert report["trials"] >= 1 and report["failed"] < report["trials"], report
    assert (tmp_path / "db").is_dir() and meta["tuning"]["kernels_tuned"] >= 1


def test_tracker_without_tune_is_refused(tmp_path, capsys):
    model = tmp_path / "mm.onnx"
    _matmul_model(model)
    assert main(["compile", str(model), "-o", str(tmp_path / "o"), "--tracker", "127.0.0.1:9", "--key", "k"]) == 2
    assert "--tune" in capsys.readouterr().err
