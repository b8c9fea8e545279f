"""Files that are never half-written: write to a temporary path, then rename. Errors of a
write (a full disk) name the file; what a killed writer left behind (``*.tmp``) is removed
by :func:`remove_temporaries` when the next one starts."""

from __future__ import annotations

import csv
import json
import os
import shutil
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

import torch
from safetensors.torch import save

TEMPORARY = "*.tmp"
"""Names of unfinished writes: ``.<name>.<pid>.tmp`` files and ``<name>.tmp`` directories."""


@contextmanager
def naming(path: Path, *aliases: Path) -> Iterator[None]:
    """Re-raise an OSError that names no file (``write`` on a full disk), or names one of
    ``aliases`` (a temporary file), as one naming ``path``, with the same errno (and so the
    same subclass)."""
    try:
        yield
    except OSError as error:
        named = error.filename is not None and os.fspath(error.filename) not in map(str, aliases)
        if named or error.errno is None:
            raise
        raise OSError(error.errno, error.strerror, str(path)) from error


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp_path)`` then rename the result onto ``path``; on any error the
    temporary file is removed, ``path`` is left as it was and the error names ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with naming(path, tmp):
            write(tmp)
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_tensors(
    path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> None:
    """``tensors`` as a safetensors file at ``path``, atomically. Written by Python, not by
    safetensors' own writer, whose errors (a full disk) are no OSError and name no file."""
    data = save(tensors, metadata=metadata)
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def remove_temporaries(directory: Path) -> list[Path]:
    """Delete the unfinished writes (:data:`TEMPORARY`) in ``directory``; return them. Only
    the directory's owner may call this (see :mod:`lab.lock`)."""
    removed = sorted(Path(directory).glob(TEMPORARY))
    for path in removed:
        remove(path)
    return removed


def remove(path: Path) -> None:
    """Delete the file or directory at ``path``, if there is one."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


class LineLog:
    """A file that grows one line at a time (``metrics.jsonl``), each line flushed as it is
    written; errors name the file. A line torn by a full disk or a kill is the reader's to
    drop (see :func:`read_json_lines`)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        with naming(self.path):
            self.file: TextIO = open(self.path, "a")

    def write(self, line: str) -> None:
        with naming(self.path):
            self.file.write(line + "\n")
            self.file.flush()

    def __enter__(self) -> LineLog:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        try:
            self.file.close()
        except OSError:
            if kind is None:
                raise  # after a failed write, closing fails again: keep the first error


def write_json(path: Path, obj: Any) -> None:
    """``obj`` as indented JSON at ``path``, atomically."""
    text = json.dumps(obj, indent=2) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text))


def read_json_lines(path: Path) -> list[Any]:
    """The JSON values of a JSON-lines file, one a line. A torn last line (its writer was
    killed, or the disk filled, in the middle of it) is dropped with a warning; a bad line
    anywhere else is an error naming the file and the line."""
    path = Path(path)
    lines = path.read_text(errors="replace").splitlines()
    values = []
    for number, line in enumerate(lines, 1):
        try:
            values.append(json.loads(line))
        except json.JSONDecodeError as error:
            if number < len(lines):
                raise ValueError(f"{path}:{number}: not a JSON line ({error})") from error
            warnings.warn(f"{path}: dropped its torn last line {line[:60]!r}", stacklevel=2)
    return values


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
