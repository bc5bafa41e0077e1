"""The edgekit accelerator back-end: ISA (single source), assembler, program container, golden model."""
from . import asm, isa
from .program import Program, ProgramBuilder, Tensor

__all__ = ["asm", "isa", "Program", "ProgramBuilder", "Tensor"]
