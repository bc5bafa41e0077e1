"""tools/profile_kernels.py: every kernel of the build, counted and timed (no timing checks)."""
import json

import pytest


@pytest.fixture(scope="module")
def tool(load_tool):
    return load_tool("profile_kernels")


def test_every_kernel_of_the_integer_build_is_listed_with_its_calls(tool, qdq_models, tmp_path, capsys):
    from edgekit.compile import compile_model

    out = tmp_path / "kernels.json"
    assert tool.main([str(qdq_models[(4, 8)]), "--number", "1", "--repeat", "1", "--top", "0",
                      "--json-file", str(out)]) == 0
    result = json.loads(out.read_text())
    meta = compile_model(qdq_models[(4, 8)], "x86-64", tmp_path / "int", committed_db=False)
    assert result["integer_ops"] == meta["integer_ops"]
    kernels = result["kernels"]
    # the compiled module's kernels: edgekit's dot-product kernels plus the rest
    assert sum(k["schedule"] == "dot" for k in kernels) == meta["tuning"]["kernels_int8_dot"] > 0
    assert len([k for k in kernels if k["schedule"] != "layout"]) == (
        meta["tuning"]["kernels_total"] + meta["tuning"]["kernels_int8_dot"])
    assert all(k["calls"] >= 1 and k["ms"] == pytest.approx(k["ms_per_call"] * k["calls"]) for k in kernels)
    assert [k["ms"] for k in kernels] == sorted((k["ms"] for k in kernels), reverse=True)
    table = capsys.readouterr().out
    assert f"{len(kernels)} kernels" in table and kernels[0]["kernel"][:60] in table


def test_a_missing_model_is_one_line_and_exit_2(tool, tmp_path, capsys):
    assert tool.main([str(tmp_path / "none.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"profile_kernels: error: {tmp_path / 'none.onnx'}: no such ONNX file"]
