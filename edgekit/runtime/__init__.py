"""edgekit.runtime: load a compiled artifact and run it, with the TVM runtime and numpy only.

    from edgekit.runtime import open_session
    with open_session("build/litepose") as s:
        outputs = s.run({"image": x})          # {output name: np.ndarray}

Local sessions run in this process; with `device="HOST:PORT"` or
`tracker="HOST:PORT", key=KEY` the artifact runs on a board over TVM RPC
(`edgekit.runtime.remote`). No torch, no onnx: this package runs on a board.
"""
from __future__ import annotations

from edgekit.device.serve import parse_address
from edgekit.errors import EdgekitError
from edgekit.runtime.artifact import METADATA, Artifact
from edgekit.runtime.session import LocalSession, Session

__all__ = ["Artifact", "METADATA", "Session", "LocalSession", "load", "open_session"]


def load(folder, *, verify_checksum: bool = True) -> Artifact:
    return Artifact.load(folder, verify_checksum=verify_checksum)


def open_session(folder, *, device: str | None = None, tracker: str | None = None, key: str | None = None,
                 num_threads: int | None = None) -> Session:
    """A session on this machine, on a board (`device`), or on a board from a tracker.

    `folder` is an artifact folder or an already loaded `Artifact`."""
    artifact = folder if isinstance(folder, Artifact) else load(folder)
    if device and tracker:
        raise EdgekitError("give either --device HOST:PORT or --tracker HOST:PORT --key KEY, not both")
    if tracker and not key:
        raise EdgekitError("--tracker needs --key (the device key the board registered with)")
    if device:
        parse_address(device, "--device")
    if tracker:
        parse_address(tracker, "--tracker")
    if device or tracker:
        try:
            from edgekit.runtime import remote
        except ImportError:
            raise EdgekitError("remote execution is not available in this installation "
                               "(edgekit.runtime.remote is missing)") from None
        return remote.open_remote_session(artifact, device=device, tracker=tracker, key=key,
                                           num_threads=num_threads)
    return LocalSession(artifact, num_threads=num_threads)
