"""4-bit post-training quantization (QuartDepth-style) and the integer reference."""
