"""User-facing errors: one line, exit code 2, never a traceback."""


class EdgekitError(Exception):
    """A problem with the user's input (file, model, shape, path...).

    The message must name the thing at fault (the file, the ONNX node and
    op, the tensor and its shape) and fit on one line.
    """

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def require(condition: bool, message: str) -> None:
    """Raise EdgekitError(message) unless condition holds."""
    if not condition:
        raise EdgekitError(message)


def warn(message: str) -> None:
    """One line `edgekit: warning: ...` on stderr: something the user should know, not an error."""
    import sys

    print(f"edgekit: warning: {' '.join(str(message).split())}", file=sys.stderr)
