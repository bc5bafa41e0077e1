"""The bad-input contract, checked one case at a time.

A user error must: exit with code 2 (the API: raise EdgekitError), print one
line `edgekit: error: ...` on stderr that names the thing at fault, print no
traceback, and leave the folder it was asked to write into unchanged.
Tests are tables of `Case`s; `check_cli` runs one through `edgekit.cli.main`
in-process (an uncaught exception fails the test: that is a traceback).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from edgekit.cli import main
from edgekit.errors import EdgekitError


@dataclass
class Case:
    """One bad input: `argv` for the CLI; `names` are words the error line must contain."""

    id: str
    argv: list
    names: list = field(default_factory=list)

    def param(self):
        return pytest.param(self, id=self.id)


def snapshot(folder: Path) -> dict:
    """Every path under `folder` with its size and mtime: a change shows as a difference."""
    state = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(root) / name
            st = path.lstat()
            state[str(path.relative_to(folder))] = (st.st_size, st.st_mtime_ns)
    return state


def check_error_line(err: str, names=()) -> str:
    err = err.strip()
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("edgekit: error:")]
    assert len(errors) == 1, f"expected one 'edgekit: error:' line, got:\n{err}"
    for name in names:
        assert str(name).lower() in errors[0].lower(), f"{name!r} not named in: {errors[0]}"
    return errors[0]


def check_cli(argv, capsys, folder: Path, names=()) -> str:
    """Run `edgekit ARGV`; assert the bad-input contract; return the error line."""
    before = snapshot(folder)
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    captured = capsys.readouterr()
    assert code == 2, f"exit {code}, stderr: {captured.err}"
    line = check_error_line(captured.err, names)
    assert snapshot(folder) == before, f"{folder} changed after a failed command: {line}"
    return line


def check_api(call, folder: Path, names=()) -> str:
    """Call `call()`; it must raise EdgekitError naming `names` and leave `folder` unchanged."""
    before = snapshot(folder)
    with pytest.raises(EdgekitError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    for name in names:
        assert str(name).lower() in message.lower(), f"{name!r} not named in: {message}"
    assert snapshot(folder) == before, f"{folder} changed after a failed call: {message}"
    return message


# Mutations of a JSON document in a folder (artifact metadata, program.json): each returns a
# callable `mutate(folder)` for a table of corrupted inputs.
def read_doc(folder: Path, doc_name: str) -> dict:
    return json.loads((Path(folder) / doc_name).read_text())


def edit_doc(doc_name: str, path, change):
    """mutate(folder) applying change(parent, last key) at doc[path...] (keys / indices)."""
    def mutate(folder: Path):
        doc = read_doc(folder, doc_name)
        node = doc
        for key in path[:-1]:
            node = node[key]
        change(node, path[-1])
        (Path(folder) / doc_name).write_text(json.dumps(doc))
    return mutate


def set_field(doc_name: str, *path_and_value):
    """mutate(folder) setting doc[path...] = value (the last item is the value)."""
    *path, value = path_and_value
    return edit_doc(doc_name, path, lambda node, key: node.__setitem__(key, value))


def del_field(doc_name: str, *path):
    return edit_doc(doc_name, path, lambda node, key: node.__delitem__(key))


def raw_doc(doc_name: str, data: bytes):
    """mutate(folder) replacing the document by `data`."""
    return lambda folder: (Path(folder) / doc_name).write_bytes(data)
