"""Files that are never half-written: write to a temporary path, then rename."""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp_path)`` then rename the result onto ``path``; on any error the
    temporary file is removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, obj: Any) -> None:
    """``obj`` as indented JSON at ``path``, atomically."""
    text = json.dumps(obj, indent=2) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text))


def read_json(path: Path, what: str = "file") -> Any:
    """The JSON at ``path``; errors name the file and say what was expected there."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no {what} here")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not a readable {what} ({error})") from error


def replace_dir(tmp: Path, final: Path) -> None:
    """Move the finished directory ``tmp`` onto ``final`` (removing what was there)."""
    shutil.rmtree(final, ignore_errors=True)
    Path(tmp).rename(final)


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """Rows (dicts with the same keys, in the first row's order) as CSV, atomically; no
    rows give an empty file."""
    fields = list(rows[0]) if rows else []

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            if not rows:
                return
            writer = csv.DictWriter(f, fieldnames=fields, extrasaction="raise")
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(path, write)
