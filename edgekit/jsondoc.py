"""Reading the JSON documents edgekit writes and reads back (artifact metadata, program.json).

Both are inputs a user can hand-edit, copy from elsewhere or corrupt, so every field is
checked before anything trusts it, and every failure is one EdgekitError naming the file
and the field (`inputs[0].shape[2]`). Paths in a document must stay inside its folder: a
document copied from elsewhere must not make edgekit load `../../other/model.so` or read
`/etc/passwd` as a DRAM image.
"""
from __future__ import annotations

import json
from pathlib import Path

from edgekit.errors import EdgekitError

_MISSING = object()


def is_int(value) -> bool:
    """A JSON integer: `true` is not 1 here."""
    return isinstance(value, int) and not isinstance(value, bool)


def shown(value) -> str:
    text = json.dumps(value) if isinstance(value, (str, int, float, bool, type(None))) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def read_object(path: Path, what: str = "") -> dict:
    """The JSON object in `path`, or a one-line EdgekitError (`what` prefixes the reason)."""
    try:
        doc = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise EdgekitError(f"{path}: {what}not valid JSON (not UTF-8 text)") from None
    except json.JSONDecodeError as exc:
        raise EdgekitError(f"{path}: {what}not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except RecursionError:
        raise EdgekitError(f"{path}: {what}not valid JSON (nested too deeply)") from None
    if not isinstance(doc, dict):
        raise EdgekitError(f"{path}: {what}a JSON object expected, got {shown(doc)}")
    return doc


def inside_folder(folder: Path, name, field: str, doc_path, folder_word: str = "folder") -> Path:
    """`folder / name`, refused unless it stays inside `folder` (no absolute path, no `..`, no
    symbolic link that leads out) and names a file, not the folder itself."""
    if not (isinstance(name, str) and name.strip() and "\0" not in name):
        raise EdgekitError(f"{doc_path}: field {field} must be a file name inside the {folder_word}, "
                           f"got {shown(name)}")
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts:
        raise EdgekitError(f"{doc_path}: field {field} {name!r} points outside the {folder_word} {folder}: "
                           "it must name a file inside it")
    path = folder / rel
    try:
        real, root = path.resolve(), folder.resolve()
    except (OSError, RuntimeError):
        raise EdgekitError(f"{doc_path}: field {field} {name!r} cannot be resolved (a symbolic link loop?)") \
            from None
    if root not in real.parents and real != root:
        raise EdgekitError(f"{doc_path}: field {field} {name!r} leads outside the {folder_word} "
                           f"(to {real}): it must name a file inside it")
    if real == root:
        raise EdgekitError(f"{doc_path}: field {field} {name!r} names the {folder_word}, not a file in it")
    return path


class DocCheck:
    """Field checks of one JSON document, each failing with the file and the field named."""

    def __init__(self, doc_path: Path):
        self.doc_path = doc_path

    def fail(self, field: str, what: str, value=_MISSING):
        got = "it is missing" if value is _MISSING else f"got {shown(value)}"
        raise EdgekitError(f"{self.doc_path}: field {field} must be {what}, {got}")

    def get(self, obj: dict, key: str, field: str, default=_MISSING):
        if key not in obj:
            if default is _MISSING:
                raise EdgekitError(f"{self.doc_path}: field {field} is missing")
            return default
        return obj[key]

    def integer(self, value, field: str, lo: int = 0, hi: int | None = None, multiple: int = 1) -> int:
        if not is_int(value) or value < lo or (hi is not None and value > hi):
            self.fail(field, f"an integer in [{lo}, {hi}]" if hi is not None else f"an integer >= {lo}", value)
        if value % multiple:
            self.fail(field, f"a multiple of {multiple}", value)
        return value

    def text(self, value, field: str) -> str:
        if not (isinstance(value, str) and value and "\0" not in value):
            self.fail(field, "a non-empty string", value)
        return value

    def of_type(self, value, field: str, kind: type, what: str):
        if not isinstance(value, kind):
            self.fail(field, what, value)
        return value

    def file_inside(self, folder: Path, value, field: str, folder_word: str = "folder") -> Path:
        path = inside_folder(folder, value, field, self.doc_path, folder_word)
        if not path.is_file():
            raise EdgekitError(f"{self.doc_path}: field {field}: {value!r} is not a file in {folder}")
        return path
