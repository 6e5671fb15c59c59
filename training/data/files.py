"""Line-oriented file reading shared by the readers and ``Dataset.load``.

One place knows about gzip, encodings, progress bars and line numbers, so that every malformed line in
any format is reported the same way: ``path:line: what is wrong``.
"""

from __future__ import annotations

import ast
import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm

from training.errors import DataError

__all__ = ["field", "find_one", "parse_json_line", "parse_record", "read_lines", "require_dir"]

#: files larger than this get a progress bar (on a terminal)
PROGRESS_BYTES = 20_000_000


def require_dir(path: Path) -> Path:
    if not path.is_dir():
        raise DataError(f"{path} is not a folder")
    return path


def find_one(folder: Path, patterns: list[str], what: str) -> Path:
    """The single file in ``folder`` matching the first pattern that matches anything."""
    for pattern in patterns:
        matches = sorted(folder.glob(pattern))
        if len(matches) > 1:
            names = ", ".join(m.name for m in matches)
            raise DataError(f"{folder}: several {what} files ({names}); point the source at one of them")
        if matches:
            return matches[0]
    raise DataError(f"{folder}: no {what} file (looked for {', '.join(patterns)})")


def read_lines(path: Path, encoding: str = "utf-8") -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, line)`` of a text or .gz file without its line end, skipping blank lines."""
    if not path.is_file():
        raise DataError(f"{path} does not exist")
    opener: Any = gzip.open if path.suffix == ".gz" else open
    quiet = True if path.stat().st_size < PROGRESS_BYTES else None  # None: only on a terminal
    try:
        with opener(path, "rt", encoding=encoding, newline="") as f:
            for line_no, line in enumerate(
                tqdm(f, desc=path.name, unit=" lines", disable=quiet, leave=False), start=1
            ):
                line = line.rstrip("\r\n")
                if line.strip():
                    yield line_no, line
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise DataError(f"{path}: cannot be read ({exc})") from exc


def parse_json_line(path: Path, line_no: int, line: str) -> dict[str, Any]:
    """One JSON object per line, or a DataError naming the line."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{line_no}: not valid JSON ({exc.msg})") from exc
    if not isinstance(row, dict):
        raise DataError(f"{path}:{line_no}: expected a JSON object")
    return row


def parse_record(path: Path, line_no: int, line: str) -> dict[str, Any]:
    """A JSON object or a Python-literal dict (the 2014 Amazon dumps are not strict JSON).

    ``ast.literal_eval`` only builds literals, never calls anything, so it is safe on untrusted input.
    """
    try:
        return parse_json_line(path, line_no, line)
    except DataError:
        pass
    try:
        row = ast.literal_eval(line)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise DataError(f"{path}:{line_no}: neither JSON nor a Python literal dict") from None
    if not isinstance(row, dict):
        raise DataError(f"{path}:{line_no}: expected an object")
    return row


def field(row: dict[str, Any], name: str, kind: Any, where: str) -> Any:
    """``row[name]`` if it is an instance of ``kind``, else a DataError naming ``where`` and the field."""
    value = row.get(name)
    if not isinstance(value, kind):
        expected = getattr(kind, "__name__", str(kind))
        raise DataError(f"{where}: field {name!r} is {value!r}, expected {expected}")
    return value
