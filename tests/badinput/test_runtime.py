"""Bad inputs to `edgekit run` / `edgekit bench` and the artifact runtime API (`Artifact.load`,
`open_session`): each one a clear line naming the thing at fault, exit 2, nothing written, no
crash of the process (a truncated library used to kill it with SIGBUS), no temporary left."""
from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from tests.badinput.harness import Case, check_api, check_cli, check_error_line, del_field, raw_doc, read_doc, set_field

pytest.importorskip("tvm")

from edgekit.cli import main  # noqa: E402
from edgekit.errors import EdgekitError  # noqa: E402
from edgekit.runtime import METADATA, open_session  # noqa: E402
from edgekit.runtime.artifact import Artifact  # noqa: E402

SHAPE = [1, 1, 4, 4]


def _onnx(path, nodes, inputs, outputs, inits=()):
    import onnx
    from onnx import helper

    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, list(inits)),
                              opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def arts(tmp_path_factory):
    """Compiled once per module: `img` (x [1,1,4,4] -> relu -> y) and `empty` (a zero-size output)."""
    from onnx import TensorProto, helper, numpy_helper

    from edgekit.compile import compile_model

    d = tmp_path_factory.mktemp("runtime_arts")
    vi = helper.make_tensor_value_info
    _onnx(d / "img.onnx", [helper.make_node("Relu", ["x"], ["y"], name="relu")],
          [vi("x", TensorProto.FLOAT, SHAPE)], [vi("y", TensorProto.FLOAT, SHAPE)])
    zero = [numpy_helper.from_array(np.array([0], np.int64), n) for n in ("s", "e", "a")]
    _onnx(d / "empty.onnx", [helper.make_node("Slice", ["x", "s", "e", "a"], ["y"], name="slice")],
          [vi("x", TensorProto.FLOAT, [2, 4])], [vi("y", TensorProto.FLOAT, [0, 4])], zero)
    compile_model(d / "img.onnx", "x86-64", d / "img", committed_db=False)
    compile_model(d / "empty.onnx", "x86-64", d / "empty", committed_db=False)
    return d


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Good and bad --input files for the `img` artifact."""
    d = tmp_path_factory.mktemp("runtime_inputs")
    rng = np.random.default_rng(0)
    x = rng.standard_normal(SHAPE).astype(np.float32)
    np.save(d / "x.npy", x)
    np.save(d / "x24.npy", np.ones((2, 4), np.float32))
    raw = (d / "x.npy").read_bytes()
    np.savez(d / "good.npz", x=x)
    npz = (d / "good.npz").read_bytes()
    (d / "random.npy").write_bytes(bytes(rng.integers(0, 256, 300, dtype=np.uint8)))
    (d / "zero.npy").write_bytes(b"")
    (d / "truncated.npy").write_bytes(raw[:-20])
    np.save(d / "object.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    np.save(d / "shape.npy", np.zeros((1, 1, 5, 4), np.float32))
    np.save(d / "float64.npy", x.astype(np.float64))
    np.save(d / "int32.npy", x.astype(np.int32))
    np.save(d / "scalar.npy", np.float32(1))
    np.save(d / "strings.npy", np.array(["a", "b"]))
    (d / "random.npz").write_bytes(bytes(rng.integers(0, 256, 300, dtype=np.uint8)))
    (d / "zero.npz").write_bytes(b"")
    (d / "truncated.npz").write_bytes(npz[: len(npz) // 2])
    np.savez(d / "object.npz", x=np.array([None, 1], dtype=object))
    np.savez(d / "wrongkey.npz", image=x)
    np.savez(d / "extrakey.npz", x=x, z=x)
    np.savez(d / "shape.npz", x=np.zeros((1, 1, 3, 3), np.float32))
    np.savez(d / "nothing.npz")
    shutil.copy(d / "x.npy", d / "npy_named.npz")
    shutil.copy(d / "good.npz", d / "npz_named.npy")
    bad_crc = bytearray(npz)
    bad_crc[npz.index(b"x.npy") + 200] ^= 0xFF  # inside the stored array data: CRC mismatch
    (d / "badcrc.npz").write_bytes(bytes(bad_crc))
    from PIL import Image

    Image.fromarray((rng.random((8, 8)) * 255).astype(np.uint8)).save(d / "ok.png")
    png = (d / "ok.png").read_bytes()
    (d / "truncated.png").write_bytes(png[: len(png) // 2])
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    (d / "zero.png").write_bytes(b"")
    (d / "text.jpg").write_bytes(b"not a jpeg at all")
    (d / "random.bmp").write_bytes(bytes(rng.integers(0, 256, 300, dtype=np.uint8)))
    (d / "x.txt").write_text("1 2 3\n")
    (d / "afolder.npy").mkdir()
    return d


@pytest.fixture(autouse=True)
def no_library_copies_left():
    """No `edgekit-<pid>-*.so` copy of a library is ever left in the temp folder."""
    pattern = os.path.join(tempfile.gettempdir(), f"edgekit-{os.getpid()}-*.so")
    yield
    assert glob.glob(pattern) == [], "a temporary copy of a library was left behind"


# ------------------------------------------------------------------ corrupting an artifact
def _meta(art: Path) -> dict:
    return read_doc(art, METADATA)


def _write_meta(art: Path, meta) -> None:
    (art / METADATA).write_text(json.dumps(meta))


setf = partial(set_field, METADATA)
delf = partial(del_field, METADATA)
raw_meta = partial(raw_doc, METADATA)


def set_library(transform):
    """Replace model.so by transform(its bytes), with the metadata's sha256 updated to match."""
    def mutate(art: Path):
        lib = art / "model.so"
        data = transform(lib.read_bytes())
        lib.write_bytes(data)
        meta = _meta(art)
        meta["sha256"] = hashlib.sha256(data).hexdigest()
        _write_meta(art, meta)
    return mutate


def patch(offset: int, fmt: str, value):
    def transform(data: bytes) -> bytes:
        out = bytearray(data)
        struct.pack_into(fmt, out, offset, value)
        return bytes(out)
    return transform


def cut_section_headers(data: bytes) -> bytes:
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    return data[: shoff + 10]  # every segment intact, the section header table cut


def outside_library(art: Path):
    other = art.parent / "other"
    other.mkdir()
    shutil.copy(art / "model.so", other / "model.so")  # exists, and is a valid library: still refused
    setf("library", "../other/model.so")(art)


def deep_outside_library(art: Path):
    other = art.parent.parent / f"other-{art.parent.name}"
    other.mkdir(exist_ok=True)
    shutil.copy(art / "model.so", other / "model.so")
    setf("library", f"../../{other.name}/model.so")(art)


def absolute_library(art: Path):
    setf("library", str((art / "model.so").resolve()))(art)


def symlink_library(art: Path):
    other = art.parent / "elsewhere.so"
    shutil.copy(art / "model.so", other)
    (art / "model.so").unlink()
    (art / "model.so").symlink_to(other)


def folder_library(art: Path):
    (art / "lib.so").mkdir()
    setf("library", "lib.so")(art)


def no_metadata(art: Path):
    (art / METADATA).unlink()


@dataclass
class ArtifactCase(Case):
    """A corruption of a copy of the artifact; `api` is what the Python API call must refuse."""

    mutate: Callable = None
    api: str = "load"  # "load": Artifact.load refuses; "session": open_session refuses


def acase(id, mutate, names, api="load"):
    return ArtifactCase(id, [], names, mutate, api).param()


LIBRARY_CASES = [
    acase("lib_truncated_half", set_library(lambda d: d[: len(d) // 2]), ["model.so", "truncated"]),
    acase("lib_truncated_to_header", set_library(lambda d: d[:64]), ["model.so", "truncated"]),
    acase("lib_truncated_to_10_bytes", set_library(lambda d: d[:10]), ["model.so", "shared library"]),
    acase("lib_empty", set_library(lambda d: b""), ["model.so", "ELF"]),
    acase("lib_text", set_library(lambda d: b"#!/bin/sh\necho not a library\n"), ["model.so", "ELF"]),
    acase("lib_random_bytes", set_library(lambda d: bytes(np.random.default_rng(1).integers(0, 256, 4096,
                                                                                          dtype=np.uint8))),
          ["model.so", "ELF"]),
    acase("lib_section_headers_cut", set_library(cut_section_headers), ["model.so", "section header"]),
    acase("lib_32_bit", set_library(patch(4, "<B", 1)), ["model.so", "64-bit"]),
    acase("lib_big_endian", set_library(patch(5, "<B", 2)), ["model.so", "little-endian"]),
    acase("lib_executable_type", set_library(patch(16, "<H", 2)), ["model.so", "shared object"]),
    acase("lib_program_headers_past_end", set_library(patch(0x20, "<Q", 1 << 40)), ["model.so", "program header"]),
    acase("lib_phentsize", set_library(patch(0x36, "<H", 32)), ["model.so", "program header"]),
    acase("lib_section_table_past_end", set_library(patch(0x28, "<Q", 1 << 40)), ["model.so", "section header"]),
    acase("lib_shstrndx", set_library(patch(0x3E, "<H", 0xFFF0)), ["model.so", "section name"]),
    acase("lib_aarch64_machine", set_library(patch(18, "<H", 183)), ["model.so", "aarch64", "target.arch"],
          api="session"),
    acase("lib_riscv_machine", set_library(patch(18, "<H", 243)), ["model.so", "riscv"], api="session"),
    acase("lib_checksum_mismatch", lambda a: (a / "model.so").write_bytes(patch(100, "<B", 0xAB)(
        (a / "model.so").read_bytes())), ["model.so", "checksum"]),
    acase("lib_missing", lambda a: (a / "model.so").unlink(), ["model.so", "missing"]),
    acase("lib_is_folder", folder_library, ["lib.so"]),
]

PATH_CASES = [
    acase("library_parent_dir", outside_library, ["library", "../other/model.so", "outside"]),
    acase("library_two_levels_up", deep_outside_library, ["library", "outside"]),
    acase("library_absolute", absolute_library, ["library", "outside"]),
    acase("library_symlink_out", symlink_library, ["library", "outside"]),
    acase("library_dot", setf("library", "."), ["library", "folder"]),
    acase("library_sub_dotdot", setf("library", "sub/../../x/model.so"), ["library", "outside"]),
    acase("library_nul", setf("library", "model\0.so"), ["library"]),
    acase("dram_image_outside", setf("dram_image", "../dram.bin"), ["dram_image", "outside"]),
    acase("dram_image_absolute", setf("dram_image", "/etc/passwd"), ["dram_image", "outside"]),
    acase("dram_image_number", setf("dram_image", 3), ["dram_image"]),
    acase("no_metadata_file", no_metadata, ["not an edgekit artifact", METADATA]),
]

META_CASES = [
    acase("meta_not_json", raw_meta(b"{not json"), [METADATA, "not valid JSON"]),
    acase("meta_empty_file", raw_meta(b""), [METADATA, "not valid JSON"]),
    acase("meta_binary", raw_meta(bytes(range(256))), [METADATA, "not valid JSON"]),
    acase("meta_deep_nesting", raw_meta(b"[" * 100000 + b"]" * 100000), [METADATA]),
    acase("meta_is_list", raw_meta(b"[1, 2]"), [METADATA, "object"]),
    acase("meta_is_string", raw_meta(b'"tvm"'), [METADATA, "object"]),
    acase("meta_missing_inputs", delf("inputs"), ["missing inputs"]),
    acase("meta_missing_target", delf("target"), ["missing target"]),
    acase("inputs_string", setf("inputs", "x"), ["field inputs", "list"]),
    acase("inputs_null", setf("inputs", None), ["field inputs"]),
    acase("inputs_object", setf("inputs", {"x": [1, 1, 4, 4]}), ["field inputs"]),
    acase("inputs_item_string", setf("inputs", ["x"]), ["inputs[0]"]),
    acase("input_no_dtype", delf("inputs", 0, "dtype"), ["inputs[0]", "dtype"]),
    acase("input_name_number", setf("inputs", 0, "name", 5), ["inputs[0].name"]),
    acase("input_name_empty", setf("inputs", 0, "name", ""), ["inputs[0].name"]),
    acase("input_names_twice", lambda a: setf("inputs", _meta(a)["inputs"] * 2)(a), ["twice"]),
    acase("shape_strings", setf("inputs", 0, "shape", ["1", "1", "4", "4"]), ["inputs[0].shape[0]", "x"]),
    acase("shape_string", setf("inputs", 0, "shape", "1,1,4,4"), ["inputs[0].shape"]),
    acase("shape_negative", setf("inputs", 0, "shape", [1, -1, 4, 4]), ["inputs[0].shape[1]"]),
    acase("shape_float", setf("inputs", 0, "shape", [1, 1.5, 4, 4]), ["inputs[0].shape[1]"]),
    acase("shape_bool", setf("inputs", 0, "shape", [True, 1, 4, 4]), ["inputs[0].shape[0]"]),
    acase("shape_null_dim", setf("inputs", 0, "shape", [1, None, 4, 4]), ["inputs[0].shape[1]"]),
    acase("shape_huge", setf("inputs", 0, "shape", [1 << 20, 1 << 20, 1 << 20]), ["inputs[0].shape"]),
    acase("dtype_unknown", setf("inputs", 0, "dtype", "float99"), ["inputs[0].dtype", "float99"]),
    acase("dtype_object", setf("outputs", 0, "dtype", "object"), ["outputs[0].dtype"]),
    acase("dtype_number", setf("inputs", 0, "dtype", 32), ["inputs[0].dtype"]),
    acase("outputs_empty", setf("outputs", []), ["field outputs"]),
    acase("outputs_object", setf("outputs", {"y": 1}), ["field outputs"]),
    acase("target_list", setf("target", ["x86-64"]), ["field target"]),
    acase("target_string", setf("target", "x86-64"), ["field target"]),
    acase("target_no_arch", delf("target", "arch"), ["target.arch"]),
    acase("target_arch_number", setf("target", "arch", 64), ["target.arch"]),
    acase("target_name_number", setf("target", "name", 1), ["target.name"]),
    acase("target_num_cores_string", setf("target", "num_cores", "two"), ["target.num_cores"]),
    acase("target_num_cores_zero", setf("target", "num_cores", 0), ["target.num_cores"]),
    acase("target_mattr_string", setf("target", "mattr", "+neon"), ["target.mattr"]),
    acase("versions_null", setf("versions", None), ["field versions"]),
    acase("versions_string", setf("versions", "0.27"), ["field versions"]),
    acase("versions_no_tvm", delf("versions", "tvm"), ["versions.tvm"]),
    acase("versions_tvm_number", setf("versions", "tvm", 27), ["versions.tvm"]),
    acase("sha256_number", setf("sha256", 12345), ["field sha256"]),
    acase("sha256_short", setf("sha256", "abc"), ["field sha256"]),
    acase("sha256_null", setf("sha256", None), ["field sha256"]),
    acase("format_version_string", setf("format_version", "1"), ["format_version"]),
    acase("format_version_2", setf("format_version", 2), ["format 2"]),
    acase("format_version_bool", setf("format_version", True), ["format_version"]),
    acase("kind_accel", setf("kind", "accel"), ["accel"]),
    acase("kind_number", setf("kind", 7), ["field kind"]),
    acase("library_number", setf("library", 42), ["field library"]),
    acase("library_empty", setf("library", ""), ["field library"]),
    acase("library_null", setf("library", None), ["field library"]),
    acase("zoo_string", setf("zoo", "pose"), ["field zoo"]),
    acase("zoo_preprocess_list", setf("zoo", {"preprocess": [1, 2]}), ["zoo.preprocess"]),
    acase("zoo_scale_string", setf("zoo", {"preprocess": {"scale": "x"}}), ["zoo.preprocess.scale"]),
    acase("zoo_mean_nan", setf("zoo", {"preprocess": {"mean": [float("nan")]}}), ["zoo.preprocess.mean"]),
]


def _corrupt(arts, tmp_path, case: ArtifactCase, name: str = "img") -> Path:
    art = tmp_path / "w" / "a"
    art.parent.mkdir()
    shutil.copytree(arts / name, art)
    case.mutate(art)
    return art


@pytest.mark.parametrize("case", LIBRARY_CASES + PATH_CASES + META_CASES)
def test_run_refuses_bad_artifact(arts, inputs, tmp_path, capsys, case):
    art = _corrupt(arts, tmp_path, case)
    (tmp_path / "out").mkdir()
    check_cli(["run", art, "--input", inputs / "x.npy", "--output", tmp_path / "out" / "y.npz"],
              capsys, tmp_path, case.names)


@pytest.mark.parametrize("case", LIBRARY_CASES + PATH_CASES + META_CASES)
def test_api_refuses_bad_artifact(arts, tmp_path, case):
    art = _corrupt(arts, tmp_path, case)
    if case.api == "load":
        check_api(lambda: Artifact.load(art), tmp_path, case.names)
    check_api(lambda: open_session(art), tmp_path, case.names)


@pytest.mark.parametrize("case", LIBRARY_CASES[:8] + PATH_CASES[:3] + META_CASES[8:12])
def test_bench_refuses_bad_artifact(arts, tmp_path, capsys, case):
    art = _corrupt(arts, tmp_path, case)
    check_cli(["bench", art, "--warmup", "0", "--repeat", "1", "--json-file", tmp_path / "b.json"],
              capsys, tmp_path, case.names)


def test_truncated_library_runs_nothing_in_a_child_process(arts, inputs, tmp_path):
    """The original crash: a truncated model.so (checksum updated) killed `edgekit run` with SIGBUS."""
    import subprocess
    import sys

    art = tmp_path / "a"
    shutil.copytree(arts / "img", art)
    set_library(lambda d: d[: len(d) // 2])(art)
    before = set(glob.glob(os.path.join(tempfile.gettempdir(), "edgekit-*.so")))
    out = subprocess.run([sys.executable, "-m", "edgekit", "run", str(art), "--input", str(inputs / "x.npy")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().startswith("edgekit: error:") and "truncated" in out.stderr
    assert set(glob.glob(os.path.join(tempfile.gettempdir(), "edgekit-*.so"))) <= before


def test_stale_library_copies_of_dead_processes_are_removed(tmp_path):
    from edgekit.runtime.session import remove_stale_copies

    dead = tmp_path / "edgekit-999999999-abcd1234.so"   # no such pid
    live = tmp_path / f"edgekit-{os.getppid()}-abcd1234.so"
    old = tmp_path / "edgekit-zz9x_1q.so"               # an older edgekit's name, no pid
    other = tmp_path / "edgekit-notes.txt"
    for p in (dead, live, old, other):
        p.write_bytes(b"x")
    os.utime(old, (0, 0))
    assert remove_stale_copies(tmp_path) == 2
    assert not dead.exists() and not old.exists() and live.exists() and other.exists()


# ------------------------------------------------------------------ bad --input files
INPUT_CASES = [
    Case("missing", ["nothere.npy"], ["nothere.npy", "no such file"]),
    Case("folder", ["afolder.npy"], ["afolder.npy", "folder"]),
    Case("unsupported_suffix", ["x.txt"], ["x.txt", ".txt"]),
    Case("random_npy", ["random.npy"], ["random.npy"]),
    Case("zero_byte_npy", ["zero.npy"], ["zero.npy"]),
    Case("truncated_npy", ["truncated.npy"], ["truncated.npy"]),
    Case("object_npy", ["object.npy"], ["object.npy", "object"]),
    Case("wrong_shape_npy", ["shape.npy"], ["shape.npy", "input 'x'", "[1, 1, 5, 4]"]),
    Case("float64_npy", ["float64.npy"], ["float64.npy", "float64"]),
    Case("int32_npy", ["int32.npy"], ["int32.npy", "int32"]),
    Case("scalar_npy", ["scalar.npy"], ["scalar.npy", "shape []"]),
    Case("string_npy", ["strings.npy"], ["strings.npy"]),
    Case("npz_named_npy", ["npz_named.npy"], ["npz_named.npy", ".npz"]),
    Case("random_npz", ["random.npz"], ["random.npz"]),
    Case("zero_byte_npz", ["zero.npz"], ["zero.npz"]),
    Case("truncated_npz", ["truncated.npz"], ["truncated.npz"]),
    Case("object_npz", ["object.npz"], ["object.npz", "'x'", "object"]),
    Case("bad_crc_npz", ["badcrc.npz"], ["badcrc.npz", "'x'"]),
    Case("wrong_key_npz", ["wrongkey.npz"], ["wrongkey.npz", "missing", "image"]),
    Case("extra_key_npz", ["extrakey.npz"], ["extrakey.npz", "unknown", "z"]),
    Case("wrong_shape_npz", ["shape.npz"], ["shape.npz", "input 'x'"]),
    Case("empty_npz", ["nothing.npz"], ["nothing.npz", "no arrays"]),
    Case("npy_named_npz", ["npy_named.npz"], ["npy_named.npz", ".npy"]),
    Case("truncated_png", ["truncated.png"], ["truncated.png", "image"]),
    Case("corrupt_png", ["corrupt.png"], ["corrupt.png", "image"]),
    Case("zero_byte_png", ["zero.png"], ["zero.png", "image"]),
    Case("text_jpg", ["text.jpg"], ["text.jpg", "image"]),
    Case("random_bmp", ["random.bmp"], ["random.bmp", "image"]),
]


@pytest.mark.parametrize("case", [c.param() for c in INPUT_CASES])
def test_run_refuses_bad_input(arts, inputs, tmp_path, capsys, case):
    check_cli(["run", arts / "img", "--input", inputs / case.argv[0], "--output", tmp_path / "y.npz"],
              capsys, tmp_path, case.names)


def test_image_for_a_model_without_an_image_input(arts, inputs, tmp_path, capsys):
    check_cli(["run", arts / "empty", "--input", inputs / "ok.png", "--output", tmp_path / "y.npz"],
              capsys, tmp_path, ["ok.png", "NCHW"])


# ------------------------------------------------------------------ flags and outputs
# argv after `run ART --input X.npy` (OUT stands for the test's output folder, IN for the inputs folder)
RUN_FLAG_CASES = [
    Case("threads_negative", ["--threads", "-5"], ["--threads", "-5"]),
    Case("threads_zero", ["--threads", "0"], ["--threads"]),
    Case("threads_text", ["--threads", "many"], ["--threads", "many"]),
    Case("output_txt", ["--output", "OUT/y.txt"], ["--output", ".npz"]),
    Case("output_is_input", ["--output", "IN/x.npy"], ["x.npy", "input"]),
    Case("output_missing_folder", ["--output", "OUT/no/y.npz"], ["does not exist"]),
    Case("output_is_folder", ["--output", "OUT/adir.npz"], ["adir.npz", "folder"]),
    Case("json_file_missing_folder", ["--output", "OUT/y.npz", "--json-file", "OUT/no/r.json"],
         ["--json-file", "does not exist"]),
    Case("json_file_is_output", ["--output", "OUT/y.npz", "--json-file", "OUT/y.npz"], ["y.npz", "same file"]),
    Case("json_file_is_input", ["--output", "OUT/y.npz", "--json-file", "IN/x.npy"], ["x.npy", "input"]),
    Case("picture_not_png", ["--output", "OUT/y.npz", "--picture", "OUT/p.jpg"], ["--picture", ".png"]),
    Case("picture_is_output", ["--output", "OUT/y.npz", "--picture", "OUT/y.png", "--json-file", "OUT/y.png"],
         ["y.png", "same file"]),
    Case("device_not_hostport", ["--output", "OUT/y.npz", "--device", "board"], ["--device", "HOST:PORT"]),
    Case("device_and_tracker", ["--output", "OUT/y.npz", "--device", "127.0.0.1:1", "--tracker", "127.0.0.1:2",
                                "--key", "k"], ["--device", "--tracker"]),
    Case("tracker_without_key", ["--output", "OUT/y.npz", "--tracker", "127.0.0.1:9190"], ["--key"]),
    Case("device_unreachable", ["--output", "OUT/y.npz", "--device", "127.0.0.1:FREE"], ["unreachable"]),
]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fill(argv, out: Path, inp: Path):
    return [str(a).replace("OUT", str(out)).replace("IN/", f"{inp}/").replace("FREE", str(_free_port()))
            for a in argv]


@pytest.mark.parametrize("case", [c.param() for c in RUN_FLAG_CASES])
def test_run_refuses_bad_flags(arts, inputs, tmp_path, capsys, case):
    (tmp_path / "adir.npz").mkdir()
    check_cli(["run", arts / "img", "--input", inputs / "x.npy", *_fill(case.argv, tmp_path, inputs)],
              capsys, tmp_path, case.names)


def test_picture_is_never_the_input_image(arts, inputs, tmp_path, capsys):
    art = tmp_path / "a"
    shutil.copytree(arts / "img", art)
    shutil.copy(inputs / "ok.png", tmp_path / "ok.png")
    setf("zoo", {"task": "depth"})(art)
    check_cli(["run", art, "--input", tmp_path / "ok.png", "--output", tmp_path / "ok.npz", "--picture",
               tmp_path / "ok.png"], capsys, tmp_path, ["ok.png", "input"])


BENCH_FLAG_CASES = [
    Case("iters_negative", ["--iters", "-5"], ["--repeat/--iters", "-5"]),
    Case("repeat_zero", ["--repeat", "0"], ["--repeat", "at least 1"]),
    Case("repeat_text", ["--repeat", "ten"], ["--repeat", "ten"]),
    Case("warmup_negative", ["--warmup", "-1"], ["--warmup", "negative"]),
    Case("seed_negative", ["--seed", "-3"], ["--seed"]),
    Case("threads_negative", ["--threads", "-2"], ["--threads"]),
    Case("compare_missing", ["--compare", "OUT/none.onnx"], ["--compare", "none.onnx"]),
    Case("compare_folder", ["--compare", "OUT/adir.npz"], ["--compare", "adir.npz"]),
    Case("compare_with_device", ["--compare", "OUT/none.onnx", "--device", "127.0.0.1:9"], ["--compare", "--device"]),
    Case("json_file_missing_folder", ["--json-file", "OUT/no/b.json"], ["--json-file", "does not exist"]),
    Case("json_file_is_library", ["--json-file", "ART/model.so"], ["--json-file", "input"]),
    Case("json_file_is_folder", ["--json-file", "OUT/adir.npz"], ["--json-file", "folder"]),
]


@pytest.mark.parametrize("case", [c.param() for c in BENCH_FLAG_CASES])
def test_bench_refuses_bad_flags(arts, tmp_path, capsys, case):
    art = tmp_path / "art"
    shutil.copytree(arts / "img", art)
    (tmp_path / "adir.npz").mkdir()
    argv = [a.replace("ART", str(art)) for a in _fill(case.argv, tmp_path, tmp_path)]
    check_cli(["bench", art, "--warmup", "0", "--repeat", "1", *argv] if not any(
        f in case.argv for f in ("--repeat", "--iters", "--warmup")) else ["bench", art, *argv],
        capsys, tmp_path, case.names)


def test_bench_api_refuses_bad_counts(arts, tmp_path):
    from edgekit.commands.bench import bench

    check_api(lambda: bench(arts / "img", repeat=-5), tmp_path, ["--repeat"])
    check_api(lambda: bench(arts / "img", warmup=-1), tmp_path, ["--warmup"])
    check_api(lambda: bench(arts / "img", threads=0), tmp_path, ["--threads"])


def test_a_failed_picture_leaves_neither_output(arts, inputs, tmp_path, capsys, monkeypatch):
    """outputs.npz and the PNG are one OutputSet: a failure while drawing writes neither."""
    from edgekit.runtime import images

    art = tmp_path / "a"
    shutil.copytree(arts / "img", art)
    setf("zoo", {"task": "depth"})(art)

    def broken(*_args, **_kw):
        raise EdgekitError("--picture: drawing failed")
    monkeypatch.setattr(images, "save_picture", broken)
    before = sorted(p.name for p in art.iterdir())
    assert main(["run", str(art), "--input", str(inputs / "x.npy")]) == 2
    check_error_line(capsys.readouterr().err, ["drawing failed"])
    # (the folder's mtime changes: the temporaries were created, then removed)
    assert sorted(p.name for p in art.iterdir()) == before
    assert not (art / "outputs.npz").exists() and not (art / "outputs.png").exists()


# ------------------------------------------------------------------ what must work
def test_zero_size_output_runs(arts, tmp_path, capsys, inputs):
    code = main(["run", str(arts / "empty"), "--input", str(inputs / "x24.npy"), "--output",
                 str(tmp_path / "y.npz"), "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    doc = json.loads(out.out)
    assert doc["outputs"]["y"] == {"shape": [0, 4], "dtype": "float32", "min": None, "max": None}
    assert np.load(tmp_path / "y.npz")["y"].shape == (0, 4)
    code = main(["run", str(arts / "empty"), "--input", str(inputs / "x24.npy"), "--output", str(tmp_path / "z.npy")])
    out = capsys.readouterr()
    assert code == 0 and "empty" in out.out, out.err


def test_run_writes_outputs_picture_and_json_file(arts, inputs, tmp_path, capsys):
    art = tmp_path / "a"
    shutil.copytree(arts / "img", art)
    setf("zoo", {"task": "depth", "preprocess": {"scale": 1.0}})(art)
    code = main(["run", str(art), "--input", str(inputs / "ok.png"), "--json-file", str(tmp_path / "r.json")])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "saved" in out.out and not out.out.lstrip().startswith("{")  # the table, JSON in the file
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["saved"] == str(art / "outputs.npz") and doc["picture"] == str(art / "outputs.png")
    assert np.load(art / "outputs.npz")["y"].shape == tuple(SHAPE)
    assert (art / "outputs.png").read_bytes()[:4] == b"\x89PNG"


def test_bench_json_convention(arts, tmp_path, capsys):
    code = main(["bench", str(arts / "img"), "--warmup", "0", "--iters", "2", "--json",
                 "--json-file", str(tmp_path / "b.json")])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert json.loads(out.out)["runs"] == 2 == json.loads((tmp_path / "b.json").read_text())["runs"]


# ------------------------------------------------------------------ fuzzing the metadata
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 40), 1 << 40) | st.floats(allow_nan=True)
    | st.text(max_size=12) | st.sampled_from(["float32", "x86_64", "../model.so", "model.so", "tvm", ""]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12)
FIELDS = ["format_version", "kind", "library", "sha256", "inputs", "outputs", "target", "versions", "zoo",
          "dram_image"]
NESTED = [("inputs", 0, "name"), ("inputs", 0, "shape"), ("inputs", 0, "dtype"), ("outputs", 0, "shape"),
          ("outputs", 0, "dtype"), ("target", "arch"), ("target", "num_cores"), ("versions", "tvm"),
          ("inputs", 0, "shape", 0)]


@pytest.fixture(scope="module")
def fuzz_art(arts, tmp_path_factory):
    art = tmp_path_factory.mktemp("fuzz") / "a"
    shutil.copytree(arts / "img", art)
    return art, _meta(art)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(top=st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=3),
       nested=st.dictionaries(st.sampled_from(NESTED), json_values, max_size=3),
       drop=st.sets(st.sampled_from(FIELDS), max_size=2))
def test_fuzzed_metadata_loads_or_fails_cleanly(fuzz_art, top, nested, drop):
    import copy

    art, good = fuzz_art
    meta = copy.deepcopy(good)
    for path, value in nested.items():
        node = meta
        try:
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            pass
    meta.update(top)
    for key in drop:
        meta.pop(key, None)
    _write_meta(art, meta)
    try:
        loaded = Artifact.load(art)
    except EdgekitError as exc:
        assert "\n" not in str(exc)
        return
    # What loaded must be usable by the code that reads the metadata, without other exceptions.
    assert loaded.library.is_file()
    for spec in loaded.inputs + loaded.outputs:
        np.dtype(spec["dtype"]), tuple(spec["shape"])
    small = all(int(np.prod(s["shape"])) <= 100_000 for s in loaded.inputs)
    for check in (lambda: loaded.check_runtime("0.27.0"), lambda: loaded.check_library("x86_64"),
                  lambda: loaded.validate({s["name"]: np.zeros(s["shape"], s["dtype"]) for s in loaded.inputs})
                  if small else None):
        try:
            check()
        except EdgekitError:
            pass
