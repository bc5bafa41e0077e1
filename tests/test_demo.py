"""The README's main job, end to end: export -> quantize -> compile -> run (accelerator target,
checked bit for bit on the golden model; the x86-64 target is covered by tests/tvm)."""
from edgekit.cli import main


def test_demo_accel_runs_every_stage_and_is_bit_exact(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--target", "accel", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    for stage in ("[export] done", "[quantize] done", "[compile] done", "[run] done"):
        assert stage in printed
    assert "bit_exact=True" in printed
    assert (out / "litepose.q.onnx").stat().st_size < (out / "litepose.onnx").stat().st_size / 3
    assert (out / "litepose-accel" / "program.json").is_file()
