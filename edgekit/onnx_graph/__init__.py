"""Load, validate and execute ONNX graphs (an ONNX -> torch op table with autograd)."""
from edgekit.onnx_graph.model import check_supported, load_model, prepare_model  # noqa: F401
