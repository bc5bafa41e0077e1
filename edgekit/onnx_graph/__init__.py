"""Load, validate and execute ONNX graphs (an ONNX -> torch op table with autograd)."""
from edgekit.onnx_graph.model import load_model, prepare_model, check_supported  # noqa: F401
