"""cocotb testbench for the edgekit accelerator (components, tests, runner)."""
