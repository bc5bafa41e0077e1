"""`edgekit simulate`: run an accelerator program on the golden model or the RTL and print counters."""
from __future__ import annotations

from pathlib import Path

from edgekit.commands import add_command, add_json_flags, non_negative_int, positive_int, print_json
from edgekit.errors import EdgekitError

EXAMPLES = """\
  edgekit simulate build/prog --golden                  (program folder: program.json + dram.bin)
  edgekit simulate build/prog --rtl --json-file r.json  (cocotb + Verilator; first run builds the RTL)
  edgekit simulate kernel.s --golden --json             (bare assembly; counters as JSON on stdout)
  edgekit simulate build/prog --rtl --waves run.vcd     (VCD waveform of the whole run)
  edgekit simulate build/prog --golden --input x.npz --outputs out/  (inputs by name; outputs as .npy)
  edgekit simulate build/m-accel --golden --input x.npy --json  (compiled model: checked vs intref)
  edgekit simulate build/m-accel --golden --compare build/m-nofuse --plot layers.png
"""

DEFAULT_DRAM = 1 << 16
DEFAULT_MAX_CYCLES = 10_000_000


def register(subparsers):
    p = add_command(subparsers, "simulate",
                    "Run an accelerator program (program folder or .s file) on the golden model or the RTL.",
                    EXAMPLES, simulate)
    p.add_argument("program", help="program folder (program.json + dram.bin) or an assembly .s file")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--golden", action="store_true", help="instruction-level golden model (fast)")
    mode.add_argument("--rtl", action="store_true", help="the Verilog RTL under cocotb + Verilator")
    add_json_flags(p)
    p.add_argument("--outputs", default=None, metavar="DIR",
                   help="save the output tensors as NAME.npy in this folder (created; other files kept)")
    p.add_argument("--input", default=None, metavar="X.npy",
                   help="input tensors: .npy (one input) or .npz (by input name); a program folder's "
                        "are written into its DRAM image (default: the image's own data), a compiled "
                        "model's are its float inputs (default: seeded random normal)")
    p.add_argument("--waves", default=None, metavar="FILE.vcd", help="(--rtl) write a VCD waveform")
    p.add_argument("--dram-size", type=positive_int, default=None,
                   help=f"(.s files) DRAM bytes, a multiple of 8 (default {DEFAULT_DRAM})")
    p.add_argument("--max-cycles", type=positive_int, default=None,
                   help=f"(--rtl) give up after this many cycles (default {DEFAULT_MAX_CYCLES:,}; "
                        "compiled models: 50,000,000 per segment)")
    p.add_argument("--seed", type=non_negative_int, default=0,
                   help="(--rtl) memory back-pressure/latency seed; 0 = ideal memory")
    g = p.add_argument_group("compiled models (edgekit compile --target accel)")
    g.add_argument("--compare", default=None, metavar="FOLDER",
                   help="a second build of the same model (e.g. --no-fusion) run alongside, side by side")
    g.add_argument("--plot", default=None, metavar="FILE.png", help="per-layer cycles and DRAM traffic picture")
    g.add_argument("--no-check", dest="check", action="store_false",
                   help="skip the bit-exact comparison with the integer reference")


def load_program(path: str, dram_size: int | None = None):
    from edgekit.compile.accel import Program

    p = Path(path)
    if p.is_dir():
        return Program.load(p)
    if not p.is_file():
        raise EdgekitError(f"{path}: no such program folder or assembly file")
    if p.suffix not in (".s", ".asm"):
        raise EdgekitError(f"{path}: expected a program folder or a .s assembly file")
    try:
        return Program.from_assembly(p.read_bytes().decode("utf-8"), dram_size or DEFAULT_DRAM)
    except UnicodeDecodeError:
        raise EdgekitError(f"{path}: not assembly text (not UTF-8)") from None
    except EdgekitError as exc:
        raise EdgekitError(f"{path}: {exc}") from None


def check_flags(args, compiled: bool) -> None:
    """Refuse flags that do not apply to this kind of program, before any work."""
    folder = Path(args.program).is_dir()
    not_a_model = "it is not a compiled model (edgekit compile --target accel)"
    wrong = [("--waves", args.waves, compiled or not args.rtl,
              "only --rtl runs of a program folder or .s file write a waveform"),
             ("--dram-size", args.dram_size, folder,
              "its program.json sets the DRAM size; --dram-size is for .s files"),
             ("--input", args.input, not folder, "an assembly file declares no input tensors"),
             ("--compare", args.compare, not compiled, not_a_model),
             ("--plot", args.plot, not compiled, not_a_model),
             ("--no-check", not args.check, not compiled, not_a_model)]
    for flag, given, refused, why in wrong:
        if given and refused:
            raise EdgekitError(f"{flag} does not apply to {args.program}: {why}")
    if args.plot:
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:
            raise EdgekitError(f"--plot {args.plot}: needs matplotlib (pip install 'edgekit[eval]')")


def input_files(args) -> list:
    """Every file the command reads: no output may be one of them."""
    files = [args.program, args.input, args.compare]
    for folder in (args.program, args.compare):
        if folder and Path(folder).is_dir():
            files += [Path(folder) / name for name in program_files(Path(folder) / "program.json")]
    return files


def program_files(meta_file: Path) -> list[str]:
    """The files of a program folder that program.json names (its DRAM image, a compiled model's
    source); a broken program.json names only itself (Program.load then says what is wrong)."""
    from edgekit.jsondoc import read_object

    try:
        doc = read_object(meta_file)
    except (EdgekitError, OSError):
        return ["program.json"]
    meta = doc.get("meta") if isinstance(doc.get("meta"), dict) else {}
    names = ["program.json", "program.s", doc.get("dram_image"), meta.get("source")]
    return [name for name in names if isinstance(name, str) and name and "\0" not in name]


def feed_inputs(program, path) -> None:
    """Write the --input arrays into the program's input tensors in DRAM (the others keep the image's)."""
    from edgekit.compile.accel.program import read_feeds

    specs = {t.name: (t.shape, t.dtype) for t in program.inputs}
    if not specs:
        raise EdgekitError(f"--input {path}: the program declares no inputs (program.json field inputs)")
    tensors = {t.name: t for t in program.inputs}
    for name, value in read_feeds(path, specs, need_all=False).items():
        tensors[name].write(program.dram, value)


def format_table(result: dict) -> str:
    lines = [f"engine: {result['engine']}   error: {result['error']}"
             + (f" at instruction {result['error_pc']}" if result["error"] != "none" else "")]
    width = max(len(k) for k in result["counters"])
    for key, value in result["counters"].items():
        lines.append(f"  {key:<{width}}  {value:>14,}")
    c = result["counters"]
    if c.get("cycles"):
        lines.append(f"  {'mac utilization':<{width}}  {c['mac_busy'] / c['cycles']:>14.1%}")
    if "estimated_cycles" in result:
        est = result["estimated_cycles"]
        lines.append(f"  estimated cycles (4-cycle memory): overlapped {est['overlapped']:,}, "
                     f"serial {est['serial']:,}")
    return "\n".join(lines)


def simulate_program(args, waves: Path | None) -> tuple[dict, str, dict, int]:
    """A program folder or .s file: (JSON document, table, output tensors, exit code)."""
    from edgekit.hw.sim.program import check_rtl_config, run_golden, run_rtl

    program = load_program(args.program, args.dram_size)
    if args.input:
        feed_inputs(program, args.input)
    if args.golden:
        result = run_golden(program)
    else:
        check_rtl_config(program)
        result = run_rtl(program, waves, args.max_cycles or DEFAULT_MAX_CYCLES, args.seed)
        if waves:
            result["waves"] = str(args.waves)
    dram = result.pop("dram")
    tensors = {t.name: t.read(dram) for t in program.outputs}
    return result, format_table(result), tensors, 0 if result["error"] == "none" else 1


def npy_files(tensors: dict) -> dict:
    """{file name: array}: a tensor's name as a file name in the --outputs folder (ONNX names hold
    '/', and no name may climb out of the folder)."""
    files = {}
    for name, value in tensors.items():
        file = (name.replace("/", "_").replace("\\", "_").replace("\0", "_").lstrip(".") or "_") + ".npy"
        if file in files:
            raise EdgekitError(f"--outputs: tensors {files[file][0]!r} and {name!r} would both be saved as {file}")
        files[file] = (name, value)
    return {file: value for file, (_, value) in files.items()}


def simulate(args) -> int:
    import numpy as np

    from edgekit.fileio import OutputSet, save_json
    from edgekit.hw.sim.model import is_compiled_model, simulate_compiled_model

    compiled = is_compiled_model(args.program)
    check_flags(args, compiled)
    # Every output (JSON file, tensors folder, plot, waveform) is planned here and renamed into place
    # together at the end: any error on the way leaves each destination as it was.
    with OutputSet(inputs=input_files(args)) as out:
        json_tmp = out.file(args.json_file, "--json-file") if args.json_file else None
        outputs_tmp = out.folder(args.outputs, "--outputs folder", merge=True) if args.outputs else None
        plot_tmp = out.file(args.plot, "--plot", suffix=".png") if args.plot else None
        waves_tmp = out.file(args.waves, "--waves", suffix=".vcd") if args.waves else None
        if compiled:
            document, table, tensors, code = simulate_compiled_model(args, plot=plot_tmp)
        else:
            document, table, tensors, code = simulate_program(args, waves_tmp)
        if outputs_tmp is not None:
            for file, value in npy_files(tensors).items():
                np.save(outputs_tmp / file, np.asarray(value), allow_pickle=False)
        if json_tmp is not None:
            save_json(document, json_tmp)
    if not print_json(args, document):
        print(table)
    return code
