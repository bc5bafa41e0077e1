"""Simulation, in one home: accelerator programs and whole compiled models, on the golden
model (`edgekit.compile.accel.golden`) or on the Verilator build of `hw/rtl`.

  program.py      a program folder or .s file: `run_golden`, `run_rtl`
  model.py        a compiled model folder (`edgekit compile --target accel`): the step loop
                  (host steps + accelerator segments), checked bit for bit against the
                  integer reference
  run_program.py  cocotb test module: one program on the RTL (started by program.run_rtl)
  rtl_model.py    cocotb test module: a compiled model on the RTL (started by model.run_rtl)

It depends on `edgekit.compile.accel` (ISA, programs, golden model) and on the testbench
components of `edgekit.hw.tb`; the compiler depends on neither.
"""
