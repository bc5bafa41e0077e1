"""Bad inputs to `edgekit simulate` and the accelerator program API (`Program.load`,
`Program.from_assembly`, `read_feeds`, `run_model`): each one a single `edgekit: error:` line that
names the file and the field, line or tensor at fault, exit 2, no traceback, nothing written."""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgekit.cli import main
from edgekit.compile.accel import Program, golden, isa
from edgekit.compile.accel.program import read_feeds
from edgekit.errors import EdgekitError
from tests.badinput.harness import Case, check_api, check_cli, del_field, raw_doc, read_doc, set_field

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
X_SHAPE = (1, 8, 8, 8)   # the conv program's input x (uint8)


def _npy(path: Path, arr, **kw) -> Path:
    np.save(path, arr, **kw)
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A program folder `prog` (3x3 conv, input x, output y), its expected output, and input files."""
    from edgekit.hw.tb import programs as P

    d = tmp_path_factory.mktemp("simulate")
    conv, expected = P.conv_layer()
    conv.save(d / "prog")
    np.save(d / "expected.npy", expected)
    x = conv.inputs[0].read(conv.dram)
    rng = np.random.default_rng(0)
    _npy(d / "x.npy", x)
    np.savez(d / "x.npz", x=x)
    raw, npz = (d / "x.npy").read_bytes(), (d / "x.npz").read_bytes()
    (d / "random.npy").write_bytes(bytes(rng.integers(0, 256, 300, dtype=np.uint8)))
    (d / "empty.npy").write_bytes(b"")
    (d / "truncated.npy").write_bytes(raw[:-40])
    _npy(d / "object.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    _npy(d / "strings.npy", np.full(X_SHAPE, "a"))
    _npy(d / "complex.npy", np.zeros(X_SHAPE, np.complex64))
    _npy(d / "shape.npy", np.zeros((1, 8, 8, 4), np.uint8))
    _npy(d / "scalar.npy", np.uint8(3))
    for name, value in (("nan", np.nan), ("inf", np.inf), ("frac", 1.5), ("big", 300.0), ("neg", -1.0)):
        arr = np.zeros(X_SHAPE, np.float32)
        arr[0, 1, 2, 3] = value
        _npy(d / f"{name}.npy", arr)
    _npy(d / "int16.npy", np.full(X_SHAPE, 256, np.int16))
    np.savez(d / "wrongname.npz", image=x)
    np.savez(d / "extra.npz", x=x, z=x)
    np.savez(d / "object.npz", x=np.array([None, 1], dtype=object))
    np.savez(d / "nothing.npz")
    (d / "truncated.npz").write_bytes(npz[: len(npz) // 2])
    bad_crc = bytearray(npz)
    bad_crc[npz.index(b"x.npy") + 200] ^= 0xFF   # inside the stored array: CRC mismatch
    (d / "badcrc.npz").write_bytes(bytes(bad_crc))
    shutil.copy(d / "x.npz", d / "npz_named.npy")
    (d / "x.txt").write_text("1 2 3\n")
    (d / "afolder.npy").mkdir()
    return d


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A compiled model (conv 3->8 3x3 + ReLU on [1, 3, 8, 8]) and its input files."""
    from edgekit.compile.accel.compiler import compile_accel
    from tests.accel_compiler import nets

    d = tmp_path_factory.mktemp("simulate_model")
    g = nets.GraphBuilder()
    m = g.model([1, 3, 8, 8], [g.node("Relu", [g.conv("x", 3, 8, 3)])])
    compile_accel(nets.quantize(m, d / "m.q.onnx"), d / "m")
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    _npy(d / "x.npy", x)
    _npy(d / "small.npy", x[:, :, :4, :4])
    np.savez(d / "wrongname.npz", image=x)
    bad = x.copy()
    bad[0, 0, 0, 0] = np.nan
    _npy(d / "nan.npy", bad)
    _npy(d / "huge.npy", np.full(x.shape, 1e300))   # float64 beyond float32: inf after conversion
    return d


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "p"
    shutil.copytree(src, dst)
    return dst


# ------------------------------------------------------------------ program.json mutations
def _doc(prog: Path) -> dict:
    return read_doc(prog, "program.json")


setf = partial(set_field, "program.json")
delf = partial(del_field, "program.json")
raw_program = partial(raw_doc, "program.json")


def image(transform):
    def mutate(prog: Path):
        (prog / "dram.bin").write_bytes(transform((prog / "dram.bin").read_bytes()))
    return mutate


def image_outside(name: str):
    """A valid DRAM image beside the folder, named by a path that leaves it."""
    def mutate(prog: Path):
        shutil.copy(prog / "dram.bin", prog.parent / "dram.bin")
        setf("dram_image", name.replace("ABS", str(prog.parent.resolve() / "dram.bin")))(prog)
    return mutate


def image_symlink_out(prog: Path):
    shutil.copy(prog / "dram.bin", prog.parent / "elsewhere.bin")
    (prog / "dram.bin").unlink()
    (prog / "dram.bin").symlink_to(prog.parent / "elsewhere.bin")


def image_folder(prog: Path):
    (prog / "sub").mkdir()
    setf("dram_image", "sub")(prog)


@dataclass
class ProgramCase(Case):
    mutate: Callable = None


def pcase(id, mutate, names):
    return ProgramCase(id, [], ["program.json"] + names, mutate).param()


DRAM = 1 << 16
PROGRAM_CASES = [pcase(f"missing_{k}", delf(k), [k]) for k in
                 ("format", "version", "insn_addr", "insn_count", "dram_size", "dram_image")] + [
    pcase("format_other", setf("format", "onnx"), ["format", "onnx"]),
    pcase("format_number", setf("format", 1), ["format"]),
    pcase("version_2", setf("version", 2), ["version"]),
    pcase("version_string", setf("version", "1"), ["version"]),
    pcase("version_bool", setf("version", True), ["version"]),
    pcase("insn_addr_negative", setf("insn_addr", -16), ["insn_addr", "-16"]),
    pcase("insn_addr_string", setf("insn_addr", "1408"), ["insn_addr"]),
    pcase("insn_addr_bool", setf("insn_addr", False), ["insn_addr"]),
    pcase("insn_addr_float", setf("insn_addr", 1408.0), ["insn_addr"]),
    pcase("insn_addr_null", setf("insn_addr", None), ["insn_addr"]),
    pcase("insn_addr_misaligned", setf("insn_addr", 1416), ["insn_addr", "multiple of 16"]),
    pcase("insn_addr_past_dram", setf("insn_addr", DRAM), ["insn_addr", "outside"]),
    pcase("insn_count_zero", setf("insn_count", 0), ["insn_count"]),
    pcase("insn_count_negative", setf("insn_count", -1), ["insn_count"]),
    pcase("insn_count_string", setf("insn_count", "16"), ["insn_count"]),
    pcase("insn_count_float", setf("insn_count", 16.5), ["insn_count"]),
    pcase("insn_count_past_dram", setf("insn_count", DRAM), ["insn_count", "outside"]),
    pcase("insn_count_huge", setf("insn_count", 1 << 62), ["insn_count", "outside"]),
    pcase("dram_size_zero", setf("dram_size", 0), ["dram_size"]),
    pcase("dram_size_negative", setf("dram_size", -DRAM), ["dram_size"]),
    pcase("dram_size_string", setf("dram_size", "65536"), ["dram_size"]),
    pcase("dram_size_not_words", setf("dram_size", DRAM - 4), ["dram_size", "multiple of 8"]),
    pcase("dram_size_above_image", setf("dram_size", 2 * DRAM), ["dram.bin", "truncated", "dram_size"]),
    pcase("dram_size_below_image", setf("dram_size", DRAM - 8), ["dram.bin", "longer", "dram_size"]),
    pcase("dram_size_beyond_address_space", setf("dram_size", 1 << 40), ["dram_size"]),
    pcase("image_parent_dir", image_outside("../dram.bin"), ["dram_image", "inside"]),
    pcase("image_absolute", image_outside("ABS"), ["dram_image", "inside"]),
    pcase("image_sub_dotdot", image_outside("sub/../../dram.bin"), ["dram_image", "inside"]),
    pcase("image_symlink_out", image_symlink_out, ["dram_image", "leads outside", "elsewhere.bin"]),
    pcase("image_etc_passwd", setf("dram_image", "/etc/passwd"), ["dram_image", "inside"]),
    pcase("image_number", setf("dram_image", 3), ["dram_image"]),
    pcase("image_empty_name", setf("dram_image", ""), ["dram_image"]),
    pcase("image_nul", setf("dram_image", "dram\0.bin"), ["dram_image"]),
    pcase("image_missing", setf("dram_image", "nothere.bin"), ["dram_image", "nothere.bin", "not a file"]),
    pcase("image_is_folder", image_folder, ["dram_image", "not a file"]),
    pcase("image_dot", setf("dram_image", "."), ["dram_image"]),
    pcase("image_truncated", image(lambda b: b[:-100]), ["dram.bin", "truncated"]),
    pcase("image_empty", image(lambda b: b""), ["truncated"]),
    pcase("image_longer", image(lambda b: b + bytes(8)), ["longer"]),
    pcase("hw_string", setf("hw", "N=8"), ["hw"]),
    pcase("hw_list", setf("hw", [8]), ["hw"]),
    pcase("hw_unknown_key", setf("hw", "CLOCK", 100), ["hw.CLOCK"]),
    pcase("hw_n_7", setf("hw", "N", 7), ["hw.N", "8, 16, 32"]),
    pcase("hw_n_string", setf("hw", "N", "8"), ["hw.N"]),
    pcase("hw_n_bool", setf("hw", "N", True), ["hw.N"]),
    pcase("hw_depth_zero", setf("hw", "ACT_DEPTH", 0), ["hw.ACT_DEPTH"]),
    pcase("hw_depth_huge", setf("hw", "WGT_DEPTH", 1 << 40), ["hw.WGT_DEPTH"]),
    pcase("hw_burst_beyond_axi", setf("hw", "MAX_BURST", 1000), ["hw.MAX_BURST", "256"]),
    pcase("hw_depth_float", setf("hw", "ACC_DEPTH", 1024.0), ["hw.ACC_DEPTH"]),
    pcase("inputs_object", setf("inputs", {"x": 0}), ["field inputs"]),
    pcase("inputs_item_string", setf("inputs", ["x"]), ["inputs[0]"]),
    pcase("input_no_name", delf("inputs", 0, "name"), ["inputs[0].name"]),
    pcase("input_name_number", setf("inputs", 0, "name", 5), ["inputs[0].name"]),
    pcase("input_name_empty", setf("inputs", 0, "name", ""), ["inputs[0].name"]),
    pcase("input_no_addr", delf("inputs", 0, "addr"), ["inputs[0].addr", "tensor x"]),
    pcase("input_addr_negative", setf("inputs", 0, "addr", -8), ["inputs[0].addr", "tensor x"]),
    pcase("input_addr_string", setf("inputs", 0, "addr", "0"), ["inputs[0].addr"]),
    pcase("input_outside_dram", setf("inputs", 0, "addr", DRAM - 8), ["inputs[0]", "tensor x", "outside"]),
    pcase("input_shape_string", setf("inputs", 0, "shape", "1,8,8,8"), ["inputs[0].shape"]),
    pcase("input_shape_negative", setf("inputs", 0, "shape", [1, -8, 8, 8]), ["inputs[0].shape[1]"]),
    pcase("input_shape_zero", setf("inputs", 0, "shape", [1, 0, 8, 8]), ["inputs[0].shape[1]"]),
    pcase("input_shape_bool", setf("inputs", 0, "shape", [True, 8, 8, 8]), ["inputs[0].shape[0]"]),
    pcase("input_shape_float", setf("inputs", 0, "shape", [1, 8, 8, 8.5]), ["inputs[0].shape[3]"]),
    pcase("input_shape_huge", setf("inputs", 0, "shape", [1 << 30, 1 << 30, 1 << 30]), ["inputs[0]", "outside"]),
    pcase("input_dtype_unknown", setf("inputs", 0, "dtype", "float99"), ["inputs[0].dtype", "float99"]),
    pcase("input_dtype_object", setf("inputs", 0, "dtype", "object"), ["inputs[0].dtype"]),
    pcase("input_dtype_string_type", setf("inputs", 0, "dtype", "U8"), ["inputs[0].dtype"]),
    pcase("input_dtype_number", setf("inputs", 0, "dtype", 8), ["inputs[0].dtype"]),
    pcase("input_layout_number", setf("inputs", 0, "layout", 4), ["inputs[0].layout"]),
    pcase("inputs_twice", lambda p: setf("inputs", _doc(p)["inputs"] * 2)(p), ["inputs", "twice"]),
    pcase("output_outside_dram", setf("outputs", 0, "addr", DRAM), ["outputs[0]", "tensor y", "outside"]),
    pcase("outputs_null", setf("outputs", None), ["field outputs"]),
    pcase("meta_list", setf("meta", [1]), ["field meta"]),
    pcase("doc_not_json", raw_program(b"{not json"), ["not valid JSON"]),
    pcase("doc_empty", raw_program(b""), ["not valid JSON"]),
    pcase("doc_binary", raw_program(bytes(range(256))), ["UTF-8"]),
    pcase("doc_list", raw_program(b"[1, 2]"), ["object"]),
    pcase("doc_deep_nesting", raw_program(b"[" * 100000 + b"]" * 100000), ["JSON"]),
    pcase("doc_missing", lambda p: (p / "program.json").unlink(), ["no program.json"]),
]


@pytest.mark.parametrize("case", PROGRAM_CASES)
def test_cli_refuses_bad_program(work, tmp_path, capsys, case):
    prog = _copy(work / "prog", tmp_path)
    case.mutate(prog)
    check_cli(["simulate", prog, "--golden", "--json-file", tmp_path / "r.json", "--outputs", tmp_path / "out"],
              capsys, tmp_path, case.names)


@pytest.mark.parametrize("case", PROGRAM_CASES)
def test_api_refuses_bad_program(work, tmp_path, case):
    prog = _copy(work / "prog", tmp_path)
    case.mutate(prog)
    check_api(lambda: Program.load(prog), tmp_path, case.names)


def test_negative_insn_addr_no_longer_runs_zero_instructions(work, tmp_path, capsys):
    """The original bug: insn_addr -16 ran no instruction and reported success (exit 0)."""
    prog = _copy(work / "prog", tmp_path)
    setf("insn_addr", -16)(prog)
    line = check_cli(["simulate", prog, "--golden"], capsys, tmp_path, ["insn_addr"])
    assert ">= 0" in line


# ------------------------------------------------------------------ assembly text
ASM_CASES = [
    ("unknown_instruction", "finish\nfence\nbogus x=1\n", ["line 3", "bogus"]),
    ("field_without_value", "load buf=act sram\n", ["line 1", "sram"]),
    ("unknown_field", "fence\ngemm foo=1\n", ["line 2", "foo"]),
    ("value_out_of_range", "\n\nload ysize=5000\n", ["line 3", "ysize"]),
    ("value_not_a_number", "fence\nload dram=xyz\n", ["line 2", "xyz"]),
    ("value_fraction", "gemm outer=1.5\n", ["line 1", "1.5"]),
    ("unsigned_negative", "fence\n\ngemm outer=-1\n", ["line 3", "outer"]),
    ("insn_without_word", "finish\n.insn\n", ["line 2", ".insn"]),
    ("insn_bad_word", ".insn zz\n", ["line 1", "zz"]),
    ("enum_unknown_name", "load buf=foo\n", ["line 1", "buf=foo"]),
    ("line_after_comments", "# a comment\n\nfinish\n  load  buf=act  sram=1 bad\n", ["line 4", "bad"]),
    ("no_instructions", "", ["no instructions"]),
    ("only_comments", "# nothing\n   \n# here\n", ["no instructions"]),
]


@pytest.mark.parametrize("text,names", [c[1:] for c in ASM_CASES], ids=[c[0] for c in ASM_CASES])
def test_cli_refuses_bad_assembly(tmp_path, capsys, text, names):
    (tmp_path / "k.s").write_text(text)
    check_cli(["simulate", tmp_path / "k.s", "--golden", "--json-file", tmp_path / "r.json"], capsys, tmp_path,
              ["k.s"] + names)


@pytest.mark.parametrize("text,names", [c[1:] for c in ASM_CASES], ids=[c[0] for c in ASM_CASES])
def test_api_refuses_bad_assembly(tmp_path, text, names):
    check_api(lambda: Program.from_assembly(text), tmp_path, names)


@pytest.mark.parametrize("size", [0, -8, 12, True, 1 << 40, 4096.0])
def test_api_refuses_bad_dram_size(tmp_path, size):
    check_api(lambda: Program.from_assembly("finish\n", size), tmp_path, ["DRAM size"])


def _asm_file(tmp_path: Path, name: str, data: bytes) -> Path:
    (tmp_path / name).write_bytes(data)
    return tmp_path / name


ASM_FILE_CASES = [
    Case("not_utf8", ["bin.s"], ["bin.s", "UTF-8"]),
    Case("wrong_suffix", ["kernel.txt"], ["kernel.txt", ".s assembly"]),
    Case("missing_file", ["missing.s"], ["missing.s", "no such"]),
]


@pytest.mark.parametrize("case", [c.param() for c in ASM_FILE_CASES])
def test_cli_refuses_bad_assembly_file(tmp_path, capsys, case):
    _asm_file(tmp_path, "bin.s", bytes(range(128, 256)))
    _asm_file(tmp_path, "kernel.txt", b"finish\n")
    check_cli(["simulate", tmp_path / case.argv[0], "--golden"], capsys, tmp_path, case.names)


# ------------------------------------------------------------------ --input files
INPUT_CASES = [
    Case("random_bytes", ["random.npy"], ["random.npy"]),
    Case("empty_file", ["empty.npy"], ["empty.npy"]),
    Case("truncated_npy", ["truncated.npy"], ["truncated.npy"]),
    Case("object_npy", ["object.npy"], ["object.npy", "objects"]),
    Case("strings", ["strings.npy"], ["strings.npy", "not numeric"]),
    Case("complex", ["complex.npy"], ["complex.npy", "not numeric"]),
    Case("wrong_shape", ["shape.npy"], ["shape.npy", "'x'", "[1, 8, 8, 4]", "[1, 8, 8, 8]"]),
    Case("scalar", ["scalar.npy"], ["scalar.npy", "'x'", "shape []"]),
    Case("nan", ["nan.npy"], ["nan.npy", "'x'", "NaN"]),
    Case("inf", ["inf.npy"], ["inf.npy", "'x'", "inf"]),
    Case("fractions", ["frac.npy"], ["frac.npy", "'x'", "fractions"]),
    Case("above_uint8", ["big.npy"], ["big.npy", "'x'", "uint8 range"]),
    Case("negative_for_uint8", ["neg.npy"], ["neg.npy", "'x'", "uint8 range"]),
    Case("int16_above_uint8", ["int16.npy"], ["int16.npy", "256"]),
    Case("wrong_name", ["wrongname.npz"], ["wrongname.npz", "'image'"]),
    Case("extra_name", ["extra.npz"], ["extra.npz", "'z'"]),
    Case("object_npz", ["object.npz"], ["object.npz", "objects"]),
    Case("no_arrays", ["nothing.npz"], ["nothing.npz", "no arrays"]),
    Case("truncated_npz", ["truncated.npz"], ["truncated.npz"]),
    Case("bad_crc", ["badcrc.npz"], ["badcrc.npz"]),
    Case("npz_named_npy", ["npz_named.npy"], ["npz_named.npy"]),
    Case("text_file", ["x.txt"], ["x.txt", ".npy"]),
    Case("folder", ["afolder.npy"], ["afolder.npy", "folder"]),
    Case("missing", ["missing.npy"], ["missing.npy", "no such file"]),
]


@pytest.mark.parametrize("case", [c.param() for c in INPUT_CASES])
def test_cli_refuses_bad_input(work, tmp_path, capsys, case):
    check_cli(["simulate", work / "prog", "--golden", "--input", work / case.argv[0], "--outputs", tmp_path / "out",
               "--json-file", tmp_path / "r.json"], capsys, tmp_path, ["--input"] + case.names)


@pytest.mark.parametrize("case", [c.param() for c in INPUT_CASES])
def test_api_refuses_bad_input(work, tmp_path, case):
    specs = {"x": (X_SHAPE, "uint8")}
    check_api(lambda: read_feeds(work / case.argv[0], specs, need_all=False), tmp_path, case.names)


# ------------------------------------------------------------------ flags and output paths
# argv placeholders, filled in per test: PROG (a copy of the program), TMP (the test's folder, which
# also holds k.s, adir/, afile, hw16/ (a program for N=16), bare/ (no inputs) and renamed/ (its DRAM
# image named image.bin)), WORK (input files).
FLAG_CASES = [
    Case("dram_size_zero", ["TMP/k.s", "--golden", "--dram-size", "0"], ["--dram-size", "at least 1"]),
    Case("dram_size_text", ["TMP/k.s", "--golden", "--dram-size", "64k"], ["--dram-size", "64k"]),
    Case("dram_size_negative", ["TMP/k.s", "--golden", "--dram-size", "-8"], ["--dram-size"]),
    Case("dram_size_not_words", ["TMP/k.s", "--golden", "--dram-size", "12"], ["k.s", "DRAM size 12", "multiple of 8"]),
    Case("dram_size_huge", ["TMP/k.s", "--golden", "--dram-size", str(1 << 40)], ["k.s", "DRAM size"]),
    Case("dram_size_for_folder", ["PROG", "--golden", "--dram-size", "4096"], ["--dram-size", "does not apply"]),
    Case("max_cycles_zero", ["PROG", "--rtl", "--max-cycles", "0"], ["--max-cycles"]),
    Case("max_cycles_text", ["PROG", "--rtl", "--max-cycles", "lots"], ["--max-cycles", "lots"]),
    Case("seed_negative", ["PROG", "--rtl", "--seed", "-1"], ["--seed"]),
    Case("waves_without_rtl", ["PROG", "--golden", "--waves", "TMP/w.vcd"], ["--waves", "does not apply"]),
    Case("compare_for_program", ["PROG", "--golden", "--compare", "PROG"], ["--compare", "not a compiled model"]),
    Case("plot_for_program", ["PROG", "--golden", "--plot", "TMP/p.png"], ["--plot", "not a compiled model"]),
    Case("no_check_for_program", ["PROG", "--golden", "--no-check"], ["--no-check"]),
    Case("input_for_assembly", ["TMP/k.s", "--golden", "--input", "WORK/x.npy"], ["--input", "does not apply"]),
    Case("input_for_program_without_inputs", ["TMP/bare", "--golden", "--input", "WORK/x.npy"],
         ["--input", "no inputs"]),
    Case("no_engine", ["PROG"], ["--golden", "--rtl"]),
    Case("two_engines", ["PROG", "--golden", "--rtl"], ["--rtl"]),
    Case("old_json_file_form", ["PROG", "--golden", "--json", "TMP/r.json"], ["r.json"]),
    Case("unknown_flag", ["PROG", "--golden", "--jsn"], ["--jsn"]),
    Case("missing_program", ["TMP/nothere", "--golden"], ["nothere", "no such"]),
    Case("rtl_for_other_hardware", ["TMP/hw16", "--rtl"], ["--rtl", "hw.N"]),
    # output paths
    Case("json_file_folder_missing", ["PROG", "--golden", "--json-file", "TMP/no/r.json"],
         ["--json-file", "does not exist"]),
    Case("json_file_is_folder", ["PROG", "--golden", "--json-file", "TMP/adir"], ["--json-file", "folder"]),
    Case("json_file_is_program_json", ["PROG", "--golden", "--json-file", "PROG/program.json"],
         ["--json-file", "input"]),
    Case("json_file_is_image", ["PROG", "--golden", "--json-file", "PROG/dram.bin"], ["--json-file", "input"]),
    Case("json_file_is_renamed_image", ["TMP/renamed", "--golden", "--json-file", "TMP/renamed/image.bin"],
         ["--json-file", "input"]),
    Case("json_file_is_assembly", ["TMP/k.s", "--golden", "--json-file", "TMP/k.s"], ["--json-file", "input"]),
    Case("json_file_is_input", ["PROG", "--golden", "--input", "WORK/x.npy", "--json-file", "WORK/x.npy"],
         ["--json-file", "input"]),
    Case("outputs_parent_missing", ["PROG", "--golden", "--outputs", "TMP/no/out"], ["--outputs", "does not exist"]),
    Case("outputs_is_a_file", ["PROG", "--golden", "--outputs", "TMP/afile"], ["--outputs", "file"]),
    Case("outputs_is_program_folder", ["PROG", "--golden", "--outputs", "PROG"], ["--outputs", "input"]),
    Case("outputs_same_as_json_file", ["PROG", "--golden", "--outputs", "TMP/r", "--json-file", "TMP/r"], ["same"]),
    Case("waves_folder_missing", ["PROG", "--rtl", "--waves", "TMP/no/w.vcd"], ["--waves", "does not exist"]),
    Case("waves_same_as_json_file", ["PROG", "--rtl", "--waves", "TMP/w.vcd", "--json-file", "TMP/w.vcd"],
         ["same"]),
]


def _fill(argv, **places) -> list[str]:
    out = []
    for arg in argv:
        for key, value in places.items():
            arg = arg.replace(key, str(value))
        out.append(arg)
    return out


@pytest.mark.parametrize("case", [c.param() for c in FLAG_CASES])
def test_cli_refuses_bad_flags_and_output_paths(work, tmp_path, capsys, case):
    prog = _copy(work / "prog", tmp_path)
    (tmp_path / "k.s").write_text("finish\n")
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("keep me\n")
    renamed = lambda p: ((p / "dram.bin").rename(p / "image.bin"), setf("dram_image", "image.bin")(p))  # noqa: E731
    for name, mutate in (("hw16", setf("hw", "N", 16)), ("bare", setf("inputs", [])), ("renamed", renamed)):
        shutil.copytree(prog, tmp_path / name)
        mutate(tmp_path / name)
    check_cli(["simulate", *_fill(case.argv, PROG=prog, TMP=tmp_path, WORK=work)], capsys, tmp_path, case.names)


# ------------------------------------------------------------------ compiled models
def model_meta(*path_and_value):
    *path, value = path_and_value
    return setf("meta", *path, value)


MODEL_CASES = [
    pcase("source_outside", model_meta("source", "../m.q.onnx"), ["meta.source", "inside"]),
    pcase("source_missing", model_meta("source", "gone.onnx"), ["meta.source", "gone.onnx", "not a file"]),
    pcase("source_number", model_meta("source", 1), ["meta.source"]),
    pcase("steps_object", model_meta("steps", {}), ["meta.steps"]),
    pcase("step_kind_unknown", model_meta("steps", 0, "kind", "gpu"), ["meta.steps[0].kind", "gpu"]),
    pcase("step_insn_addr_outside", model_meta("steps", 1, "insn_addr", 0), ["meta.steps[1].insn_addr"]),
    pcase("step_insn_count_zero", model_meta("steps", 1, "insn_count", 0), ["meta.steps[1].insn_count"]),
    pcase("step_insn_count_past_end", model_meta("steps", 1, "insn_count", 1000), ["meta.steps[1].insn_count"]),
    pcase("step_macs_string", model_meta("steps", 1, "macs", "many"), ["meta.steps[1].macs"]),
    pcase("step_op_unknown", model_meta("steps", 0, "op", "nope"), ["meta.steps[0].op", "nope"]),
    pcase("tensor_outside_dram", model_meta("tensors", "x__q", "addr", 1 << 20), ["meta.tensors.x__q", "outside"]),
    pcase("tensor_channels_string", model_meta("tensors", "x__q", "c", "3"), ["meta.tensors.x__q.c"]),
    pcase("tensor_shape_mismatch", model_meta("tensors", "x__q", "shape", [1, 3, 4, 4]), ["meta.tensors.x__q.shape"]),
    pcase("tensor_type_unknown", model_meta("tensors", "x__q", "type", "int7"), ["meta.tensors.x__q.type", "int7"]),
    pcase("tensor_zero_point_huge", model_meta("tensors", "x__q", "zero_point", 1000),
          ["meta.tensors.x__q.zero_point"]),
    pcase("tensor_view_unknown", model_meta("tensors", "x__q", "view", "nhwc"), ["meta.tensors.x__q.view"]),
    pcase("outputs_not_computed", model_meta("outputs", ["nowhere"]), ["meta.outputs", "nowhere"]),
    pcase("outputs_string", model_meta("outputs", "relu4"), ["meta.outputs"]),
]


@pytest.mark.parametrize("case", MODEL_CASES)
def test_cli_refuses_bad_compiled_model(model, tmp_path, capsys, case):
    folder = _copy(model / "m", tmp_path)
    case.mutate(folder)
    check_cli(["simulate", folder, "--golden", "--json-file", tmp_path / "r.json", "--outputs", tmp_path / "out",
               "--plot", tmp_path / "layers.png"], capsys, tmp_path, case.names)


@pytest.mark.parametrize("case", MODEL_CASES)
def test_api_refuses_bad_compiled_model(model, tmp_path, case):
    from edgekit.hw.sim.model import run_model

    folder = _copy(model / "m", tmp_path)
    case.mutate(folder)
    check_api(lambda: run_model(folder), tmp_path, case.names)


MODEL_FLAG_CASES = [
    Case("input_shape", ["--input", "MODEL/small.npy"], ["small.npy", "'x'", "[1, 3, 4, 4]", "[1, 3, 8, 8]"]),
    Case("input_name", ["--input", "MODEL/wrongname.npz"], ["wrongname.npz", "'image'"]),
    Case("input_nan", ["--input", "MODEL/nan.npy"], ["nan.npy", "NaN"]),
    Case("input_beyond_float32", ["--input", "MODEL/huge.npy"], ["huge.npy", "float32"]),
    Case("compare_plain_program", ["--compare", "WORK/prog"], ["--compare", "not a compiled-model"]),
    Case("compare_missing", ["--compare", "MODEL/nothere"], ["--compare", "nothere"]),
    Case("plot_folder_missing", ["--plot", "TMP/no/l.png"], ["--plot", "does not exist"]),
    Case("plot_same_as_json_file", ["--plot", "TMP/l.png", "--json-file", "TMP/l.png"], ["same"]),
    Case("json_file_is_source_model", ["--json-file", "MODEL/m/model.q.onnx"], ["--json-file", "input"]),
    Case("waves_for_model", ["--rtl", "--waves", "TMP/w.vcd"], ["--waves", "does not apply"]),
    Case("dram_size_for_model", ["--dram-size", "4096"], ["--dram-size"]),
]


@pytest.mark.parametrize("case", [c.param() for c in MODEL_FLAG_CASES])
def test_cli_refuses_bad_compiled_model_flags(model, work, tmp_path, capsys, case):
    engine = [] if "--rtl" in case.argv else ["--golden"]
    check_cli(["simulate", model / "m", *engine, *_fill(case.argv, MODEL=model, TMP=tmp_path, WORK=work)],
              capsys, tmp_path, case.names)


@pytest.mark.parametrize("name,feeds", [
    ("not_a_dict", [np.zeros((1, 3, 8, 8), np.float32)]),
    ("wrong_shape", {"x": np.zeros((1, 3, 4, 4), np.float32)}),
    ("missing_input", {}),
    ("unknown_input", {"x": np.zeros((1, 3, 8, 8), np.float32), "y": np.zeros(1)}),
    ("nan", {"x": np.full((1, 3, 8, 8), np.nan, np.float32)}),
    ("strings", {"x": np.full((1, 3, 8, 8), "a")}),
])
def test_api_refuses_bad_feeds(model, tmp_path, name, feeds):
    from edgekit.hw.sim.model import run_model

    check_api(lambda: run_model(model / "m", feeds), tmp_path, ["feeds"])


# ------------------------------------------------------------------ what works, and what is written
def test_golden_run_writes_json_file_outputs_and_prints_json(work, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine\n")
    code = main(["simulate", str(work / "prog"), "--golden", "--json", "--json-file", str(tmp_path / "r.json"),
                 "--outputs", str(tmp_path / "out"), "--input", str(work / "x.npz")])
    out = capsys.readouterr().out
    assert code == 0
    assert json.loads(out) == json.loads((tmp_path / "r.json").read_text())
    assert json.loads(out)["error"] == "none"
    assert (np.load(tmp_path / "out" / "y.npy") == np.load(work / "expected.npy")).all()
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "r.json"]   # no temporary left


def test_a_json_file_in_the_program_folder_can_be_rewritten(work, tmp_path, capsys):
    """Only the files program.json names are inputs: a result written beside them is not one."""
    prog = _copy(work / "prog", tmp_path)
    for _ in range(2):
        assert main(["simulate", str(prog), "--golden", "--json-file", str(prog / "r.json")]) == 0
    assert json.loads((prog / "r.json").read_text())["error"] == "none"


def test_input_is_written_into_the_program_dram(work, tmp_path, capsys):
    np.save(tmp_path / "zeros.npy", np.zeros(X_SHAPE, np.uint8))
    assert main(["simulate", str(work / "prog"), "--golden", "--input", str(tmp_path / "zeros.npy"),
                 "--outputs", str(tmp_path / "out")]) == 0
    assert not (np.load(tmp_path / "out" / "y.npy") == np.load(work / "expected.npy")).all()
    assert "macs" in capsys.readouterr().out   # the table, since no --json


def test_a_failure_after_planning_leaves_no_output(work, tmp_path, capsys, monkeypatch):
    """The JSON file, the tensors folder and nothing else: one OutputSet, so an error while writing the
    second output leaves neither (and no temporary)."""
    import edgekit.commands.simulate as sim

    def broken(tensors):
        raise EdgekitError("y: simulated failure while saving")
    monkeypatch.setattr(sim, "npy_files", broken)
    check_cli(["simulate", work / "prog", "--golden", "--json-file", tmp_path / "r.json",
               "--outputs", tmp_path / "out"], capsys, tmp_path, ["simulated failure"])
    assert list(tmp_path.iterdir()) == []


def test_compiled_model_json_plot_and_outputs(model, tmp_path, capsys):
    code = main(["simulate", str(model / "m"), "--golden", "--input", str(model / "x.npy"), "--json",
                 "--plot", str(tmp_path / "l.png"), "--outputs", str(tmp_path / "out")])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0 and doc["bit_exact"] is True
    assert (tmp_path / "l.png").stat().st_size > 1000
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["relu4.npy"]


def test_output_names_cannot_leave_the_outputs_folder():
    from edgekit.commands.simulate import npy_files

    files = npy_files({"/head/conv_out": 1, "../../etc/x": 2, "..": 3})
    assert sorted(files) == sorted(["_.npy", "_.._etc_x.npy", "_head_conv_out.npy"])
    with pytest.raises(EdgekitError, match="both"):
        npy_files({"a/b": 1, "a_b": 2})


# ------------------------------------------------------------------ fuzzing
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 40), 1 << 40) | st.floats(allow_nan=True)
    | st.text(max_size=8) | st.sampled_from([0, 8, 16, 1408, 65536, "dram.bin", "../dram.bin", "int8", "<i4"]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=8)
FIELDS = ["format", "version", "insn_addr", "insn_count", "dram_size", "dram_image", "hw", "inputs", "outputs",
          "meta"]
TENSOR_FIELDS = ["name", "addr", "shape", "dtype", "layout"]
HW_FIELDS = list(isa.HW_DEFAULTS) + ["X"]


@pytest.fixture(scope="module")
def fuzz_prog(work, tmp_path_factory):
    prog = tmp_path_factory.mktemp("fuzz") / "prog"
    shutil.copytree(work / "prog", prog)
    return prog


@SETTINGS
@given(top=st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=2),
       tensor=st.dictionaries(st.sampled_from(TENSOR_FIELDS), json_values, max_size=2),
       hw=st.dictionaries(st.sampled_from(HW_FIELDS), st.integers(-2, 1 << 17) | json_values, max_size=2),
       drop=st.sets(st.sampled_from(FIELDS), max_size=1))
def test_fuzzed_program_json_loads_or_fails_cleanly(work, fuzz_prog, top, tensor, hw, drop):
    doc = _doc(work / "prog")
    doc["hw"].update(hw)
    doc["inputs"][0].update(tensor)
    doc.update(top)
    for key in drop:
        doc.pop(key, None)
    (fuzz_prog / "program.json").write_text(json.dumps(doc))
    try:
        program = Program.load(fuzz_prog)
    except EdgekitError as exc:
        assert "\n" not in str(exc) and str(fuzz_prog) in str(exc), str(exc)   # names a file of the folder
        return
    # accepted: then everything the simulator relies on holds
    assert program.insn_addr % isa.INSN_BYTES == 0 and program.insn_count >= 1
    assert program.insn_addr + program.insn_count * isa.INSN_BYTES <= program.dram.size
    for t in program.inputs + program.outputs:
        assert t.addr >= 0 and t.addr + t.nbytes <= program.dram.size
        t.read(program.dram)
    golden.simulate(program.dram, program.insn_addr, min(program.insn_count, 64), program.hw)


tokens = st.sampled_from(list(isa.BY_NAME) + [".insn", "bogus", "#", "=", "0x", "buf=act", "buf=nope",
                                              "op=max", "out_type=int4"])
fields = st.builds(lambda k, v: f"{k}={v}",
                   st.sampled_from(sorted({f.name for op in isa.OPCODES for f in op.fields}) + ["zz", ""]),
                   st.integers(-(1 << 70), 1 << 70).map(str) | st.sampled_from(["", "x", "1.5", "0x1f", "act", "-"]))
lines = st.builds(lambda head, rest: " ".join([head, *rest]), tokens, st.lists(fields | tokens, max_size=4))


def _own_fields(op: isa.Opcode):
    """Mostly well-formed instructions: the op's own fields, values up to one past their range."""
    if not op.fields:
        return st.just(op.name)
    pair = st.sampled_from(op.fields).flatmap(lambda f: st.integers(f.lo - 1, f.hi + 1).map(lambda v: f"{f.name}={v}"))
    return st.lists(pair, max_size=5).map(lambda pairs: " ".join([op.name, *pairs]))


insns = st.sampled_from(isa.OPCODES).flatmap(_own_fields)


@SETTINGS
@given(text=st.lists(insns | lines | st.text(max_size=20), min_size=0, max_size=8).map("\n".join))
def test_fuzzed_assembly_assembles_or_fails_cleanly(text):
    try:
        program = Program.from_assembly(text, 4096)
    except EdgekitError as exc:
        message = str(exc)
        assert "\n" not in message and ("line " in message or "no instructions" in message), message
        return
    assert program.insn_count >= 1
    golden.simulate(program.dram, 0, min(program.insn_count, 16), program.hw)
