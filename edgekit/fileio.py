"""Write files and folders atomically: a temporary sibling, then rename.

Nothing half-written is ever left at the destination: on any exception the
temporary is removed and the destination keeps its previous content.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path

from edgekit.errors import EdgekitError


def check_writable(path: str | os.PathLike, what: str = "output") -> Path:
    """Fail with a one-line error, before any work starts, if `path` cannot be written."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise EdgekitError(f"cannot write {what} {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise EdgekitError(f"cannot write {what} {path}: folder {parent} is not writable")
    if path.is_dir() and not path.is_symlink():
        raise EdgekitError(f"cannot write {what} {path}: it is a folder")
    return path


def check_folder_writable(path: Path, what: str = "folder") -> Path:
    """Fail with a one-line error if folder `path` cannot be (re)created; return its parent."""
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise EdgekitError(f"cannot write {what} {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise EdgekitError(f"cannot write {what} {path}: folder {parent} is not writable")
    if path.exists() and not path.is_dir():
        raise EdgekitError(f"cannot write {what} {path}: a file of that name exists")
    return parent


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ""):
    """Yield a temporary file path next to `path`; rename it into place on success."""
    with OutputSet() as out:
        yield out.file(path, suffix=suffix)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike):
    """Yield a temporary folder next to `path`; it replaces `path` on success."""
    with OutputSet() as out:
        yield out.folder(path, "folder")


def save_json(obj, path: str | os.PathLike) -> None:
    import json

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o):
    import numpy as np

    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


class OutputSet:
    """Every output of one command, written to temporary siblings and renamed together.

    Plan each destination with `file()` / `folder()` (which checks it can be
    written and that no two outputs, and no output and input, are the same
    path), write to the temporary paths they return, then `commit()`. Until the
    commit nothing at any destination changes; on an exception (or SIGTERM,
    which the CLI turns into one) every temporary is removed. Use it as a
    context manager: `with OutputSet(inputs=[model]) as out: ...`.
    """

    def __init__(self, inputs=()):
        self._inputs = {os.path.realpath(p): str(p) for p in inputs if p}
        self._planned: dict[str, str] = {}
        self._temps: list[tuple[Path, Path, str]] = []  # (temporary, destination, "file"|"folder"|"merge")

    def _plan(self, path, what: str) -> Path:
        path = Path(path)
        key = os.path.realpath(path)
        if key in self._inputs:
            raise EdgekitError(f"{what} {path} is also an input ({self._inputs[key]}): choose another file name")
        if key in self._planned:
            raise EdgekitError(f"{what} {path} is the same file as the {self._planned[key]}: choose another name")
        self._planned[key] = f"{what} {path}"
        return path

    @classmethod
    def precheck(cls, planned, inputs=()) -> None:
        """Every check `file()` makes on `planned` [(path, what)] (writable, not an input, no two
        the same), without creating a temporary: for a command whose slow work comes first."""
        probe = cls(inputs)
        for path, what in planned:
            if path:
                check_writable(probe._plan(path, what), what)

    def check_inputs(self, paths, what: str = "input") -> None:
        """Refuse inputs found after the outputs were planned (e.g. the files a glob names)."""
        for p in paths:
            key = os.path.realpath(p)
            if key in self._planned:
                raise EdgekitError(f"{self._planned[key]} is also an {what} ({p}): choose another file name")
            self._inputs.setdefault(key, str(p))

    def file(self, path, what: str = "output", suffix: str = "") -> Path:
        path = check_writable(self._plan(path, what), what)
        parent = path.parent if str(path.parent) else Path(".")
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or path.suffix, dir=parent)
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())
        self._temps.append((Path(tmp), path, "file"))
        return Path(tmp)

    def folder(self, path, what: str = "output folder", merge: bool = False) -> Path:
        """A temporary folder that replaces `path` on commit (`merge`: whose entries are moved into it)."""
        path = self._plan(path, what)
        parent = check_folder_writable(path, what)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=parent))
        os.chmod(tmp, 0o777 & ~_umask())
        self._temps.append((tmp, path, "merge" if merge else "folder"))
        return tmp

    def commit(self) -> None:
        for tmp, dest, kind in self._temps:
            if kind == "merge":
                dest.mkdir(exist_ok=True)
                for entry in tmp.iterdir():
                    target = dest / entry.name
                    if target.is_dir() and not target.is_symlink():
                        shutil.rmtree(target)
                    os.replace(entry, target)
                shutil.rmtree(tmp, ignore_errors=True)
            elif kind == "folder" and dest.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old.", dir=dest.parent))
                os.replace(dest, old / "x")
                os.replace(tmp, dest)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, dest)
        self._temps = []

    def discard(self) -> None:
        for tmp, _, kind in self._temps:
            if kind != "file":
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        self._temps = []

    def __enter__(self) -> "OutputSet":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
            return
        targets = ", ".join(str(dest) for _, dest, _ in self._temps)
        self.discard()
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise EdgekitError(f"no space left to write {targets or 'the output'}: free some space or "
                               "write elsewhere") from None
