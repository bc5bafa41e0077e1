"""Small helpers shared by the arm64 tests (importable, unlike conftest)."""
from __future__ import annotations

import socket

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def wait_registered(tracker: str, key: str, count: int, timeout: float = 60.0) -> None:
    """Block until `count` devices of `key` are registered at the tracker."""
    import time

    from edgekit.runtime import remote

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if remote.devices_for_key(remote.tracker_summary(tracker), key) >= count:
            return
        time.sleep(0.3)
    raise AssertionError(f"{count} devices with key {key} never registered at {tracker}")
