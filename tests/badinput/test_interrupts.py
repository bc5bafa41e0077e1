"""Interrupted and starved runs: SIGTERM / SIGINT mid-command and a full disk leave nothing behind."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.badinput.harness import check_error_line, snapshot
from tests.badinput.test_quantize import CALIB_SHAPE, float_model

EDGEKIT = [sys.executable, "-m", "edgekit"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("interrupt_inputs")
    float_model(d / "m.onnx")
    (d / "calib").mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        np.save(d / "calib" / f"s{i}.npy", rng.standard_normal(CALIB_SHAPE).astype(np.float32))
    return d


def _default_signals():
    """A run started in the background by a shell inherits SIGINT ignored (and Python then leaves it
    ignored); an ignored SIGTERM would be inherited the same way, and edgekit rightly leaves an
    ignored SIGTERM alone. Give the command the dispositions a user's Ctrl-C and kill meet. (Once, in
    a serial background run of the suite, the SIGTERM case saw exit 0 and an empty stderr; the cause
    was not found, an inherited disposition is ruled out here.)"""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _wait_for_temporary(folder: Path, proc, timeout=120.0) -> bool:
    """Poll until the command has created a hidden temporary output in `folder`."""
    end = time.time() + timeout
    while time.time() < end and proc.poll() is None:
        if any(p.name.startswith(".") for p in folder.iterdir()):
            return True
        time.sleep(0.02)
    return False


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["sigterm", "sigint"])
def test_signal_during_quantize_leaves_nothing(inputs, tmp_path, sig, code):
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen(EDGEKIT + ["quantize", str(inputs / "m.onnx"), "-o", str(out / "q.onnx"),
                                       "--calib", str(inputs / "calib"), "--method", "reconstruct",
                                       "--iters", "100000", "--report", str(out / "r.json")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_default_signals)
    try:
        assert _wait_for_temporary(out, proc), "quantize never created its temporary output"
        time.sleep(0.5)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == code, err
    assert "Traceback" not in err and "outputs not written" in err
    assert list(out.iterdir()) == []


def test_sigterm_during_compile_leaves_no_hidden_folder(inputs, tmp_path):
    pytest.importorskip("tvm")
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen(EDGEKIT + ["compile", str(inputs / "m.onnx"), "--target", "x86-64",
                                       "-o", str(out / "art")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        if not _wait_for_temporary(out, proc):
            pytest.skip("compile finished before a temporary folder could be seen")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    if proc.returncode == 0:
        pytest.skip("compile finished before the signal arrived")
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    assert list(out.iterdir()) == []


@pytest.fixture
def small_disk(tmp_path):
    """A 12 KiB tmpfs (the machine must let root mount one; skipped elsewhere)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12k", "tmpfs", str(mnt)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_disk_full_during_quantize(inputs, small_disk, capsys):
    """The model fits, the PNG chart does not: a one-line error and an empty disk."""
    from edgekit.cli import main

    before = snapshot(small_disk)
    code = main(["quantize", str(inputs / "m.onnx"), "-o", str(small_disk / "q.onnx"), "--calib",
                 str(inputs / "calib"), "--method", "rtn", "--report", str(small_disk / "r.json")])
    err = capsys.readouterr().err
    assert code == 2, err
    check_error_line(err, ["no space"])
    assert snapshot(small_disk) == before


def test_disk_full_during_export(small_disk, capsys):
    from edgekit.cli import main

    code = main(["export", "deblur", "-o", str(small_disk / "deblur.onnx")])
    err = capsys.readouterr().err
    assert code == 2, err
    check_error_line(err, ["no space"])
    assert list(small_disk.iterdir()) == []


def test_interrupt_silences_finalizers_of_half_built_objects():
    # TVM's TempDirectory, interrupted inside __init__, raises in __del__ (the CI failure of
    # test_sigterm_during_compile_leaves_no_hidden_folder); after an interrupt that is noise.
    code = ("import sys\n"
            "from edgekit import cli\n"
            "class HalfBuilt:\n"
            "    def __del__(self):\n"
            "        raise AttributeError('no temp_dir')\n"
            "cli._quiet_finalizers(sys.argv[1] == 'own')\n"
            "HalfBuilt()\n")
    quiet = subprocess.run([sys.executable, "-c", code, "own"], capture_output=True, text=True)
    loud = subprocess.run([sys.executable, "-c", code, "api"], capture_output=True, text=True)
    assert quiet.returncode == 0 and "Traceback" not in quiet.stderr
    assert "no temp_dir" in loud.stderr  # an API caller keeps Python's own hook
