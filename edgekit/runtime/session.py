"""Run an artifact: a Session loads it once and runs it many times.

`LocalSession` runs in this process with the TVM runtime. A remote session
(`edgekit.runtime.remote`, TVM RPC to a board) has the same methods, so
`run` and `bench` do not care where the model executes:

    run(feeds) -> {output name: np.ndarray}
    time(feeds, warmup, repeat) -> [seconds per run]
"""
from __future__ import annotations

import os
import platform
import time

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.runtime.artifact import Artifact


def _flatten(result) -> list:
    """VM result (a tensor or a nested tuple of tensors) -> list of tensors."""
    if hasattr(result, "numpy"):
        return [result]
    out = []
    for item in result:
        out.extend(_flatten(item))
    return out


TEMP_PREFIX = "edgekit-"  # private copies of libraries: edgekit-<pid>-<random>.so in the temp folder
STALE_UNOWNED_SECONDS = 3600.0


def _pid_alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's live process
    return True


def remove_stale_copies(folder=None) -> int:
    """Remove library copies left by processes that died between copying and unlinking them
    (a crash, SIGKILL): those named with a pid that no longer runs, and old unnamed ones."""
    import os
    import re
    import tempfile
    import time
    from pathlib import Path

    folder = Path(folder or tempfile.gettempdir())
    removed = 0
    pattern = re.compile(rf"^{TEMP_PREFIX}(?:(\d+)-)?[A-Za-z0-9_]+\.so$")
    try:
        entries = list(folder.glob(f"{TEMP_PREFIX}*.so"))
    except OSError:
        return 0
    for path in entries:
        match = pattern.match(path.name)
        if not match:
            continue
        try:
            st = path.lstat()
            if st.st_uid != os.getuid() or not path.is_file():
                continue
            if match.group(1):
                if int(match.group(1)) == os.getpid() or _pid_alive(int(match.group(1))):
                    continue
            elif time.time() - st.st_mtime < STALE_UNOWNED_SECONDS:
                continue  # an older edgekit's copy (no pid in the name): only when clearly abandoned
            path.unlink()
            removed += 1
        except (OSError, ValueError):
            continue
    return removed


def _load_fresh(runtime, library, check=None):
    """Load `library` from a private copy: dlopen returns an already-loaded library of the
    same path, so a recompiled artifact at the same path would otherwise run the old code.

    The copy is what gets mapped, so `check(copy)` validates it (ELF structure, machine) right
    before dlopen; the copy is removed whatever happens (the loaded mapping stays valid), and
    copies left by processes that died (a crash cannot run `finally`) are cleaned up here."""
    import os
    import shutil
    import tempfile

    remove_stale_copies()
    fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-", suffix=".so")
    os.close(fd)
    try:
        shutil.copyfile(library, tmp)
        if check is not None:
            check(tmp)
        return runtime.load_module(tmp)
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass


def reserve_threads(requested: int | None, compiled_for: int | None) -> int | None:
    """The runtime threads a local session uses: `requested`, else TVM_NUM_THREADS when set,
    else the core count the artifact was compiled for.

    TVM creates a process's thread pool once, at its first parallel call (running a model, or a
    compile folding constants), with TVM_NUM_THREADS workers (default: the physical cores, 1 on a
    2-vCPU machine); runtime.config_threadpool can then only use fewer. So before anything runs,
    the variable is set to cover every core (or the request, if larger); sessions then pick their
    count with config_threadpool. A pool made before that stays its size. `compile_tvm` calls this
    too, since a compile in the same process makes the pool first."""
    env = os.environ.get("TVM_NUM_THREADS", "")
    current = int(env) if env.isdigit() and int(env) > 0 else None
    threads = requested or current or compiled_for
    pool = max(threads or 0, current or os.cpu_count() or 1)
    if pool != current:
        os.environ["TVM_NUM_THREADS"] = str(pool)
    return threads


class Session:
    """What every session offers; subclasses implement `_call`."""

    artifact: Artifact

    def _call(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        raise NotImplementedError

    def run(self, feeds) -> dict[str, np.ndarray]:
        arrays = self.artifact.validate(feeds)
        values = self._call(arrays)
        names = [o["name"] for o in self.artifact.outputs]
        if len(values) != len(names):
            raise EdgekitError(f"{self.artifact.folder}: the library returned {len(values)} outputs, "
                               f"metadata lists {len(names)}; the artifact is inconsistent, recompile")
        return dict(zip(names, values))

    def time(self, feeds, warmup: int = 5, repeat: int = 50) -> list[float]:
        arrays = self.artifact.validate(feeds)
        return self._time(arrays, warmup, repeat)

    def _time(self, arrays, warmup, repeat) -> list[float]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class LocalSession(Session):
    """The artifact loaded into this process (TVM runtime + numpy only)."""

    def __init__(self, artifact: Artifact, num_threads: int | None = None):
        threads = reserve_threads(num_threads, artifact.meta.get("target", {}).get("num_cores"))
        import tvm
        from tvm import runtime

        artifact.check_runtime(tvm.__version__)
        host = platform.machine()
        artifact.check_library(host)
        self.artifact = artifact
        self.num_threads = threads
        if threads:
            config = tvm.get_global_func("runtime.config_threadpool", allow_missing=True)
            if config is not None:
                config(1, int(threads))
        try:
            lib = _load_fresh(runtime, artifact.library, check=lambda copy: artifact.check_library(host, copy))
            from tvm.runtime.vm import VirtualMachine  # runtime-only import path

            self._vm = VirtualMachine(lib, tvm.cpu())
            self._main = self._vm["main"]
        except EdgekitError:
            raise
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise EdgekitError(f"{artifact.library}: cannot be loaded by this TVM runtime ({first})") from None
        self._device = tvm.cpu()

    def _inputs(self, arrays):
        from tvm import runtime

        return [runtime.tensor(a, self._device) for a in arrays]

    def _call(self, arrays):
        result = self._main(*self._inputs(arrays))
        return [t.numpy() for t in _flatten(result)]

    def _time(self, arrays, warmup, repeat):
        args = self._inputs(arrays)
        for _ in range(max(0, warmup)):
            self._main(*args)
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            self._main(*args)
            times.append(time.perf_counter() - start)
        return times
