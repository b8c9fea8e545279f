"""One writer per run directory: every stage that writes a run directory (train, probe,
census, analyze, and the sweep workers that call them) holds its lock while it does.

The lock is ``fcntl.flock`` on ``<run_dir>/.lock``: exclusive, never waited for (a second
writer fails at once, naming the holder), and released by the kernel when the holder
exits or is killed. Whoever takes it owns the directory, so it also removes the temporary
files a killed writer left behind.
"""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lab.io import remove_temporaries

LOCK_FILE = ".lock"


class RunLockedError(BlockingIOError):
    """Another process is writing the run directory."""


@contextmanager
def run_lock(run_dir: Path, create: bool = False) -> Iterator[Path]:
    """Hold ``run_dir``'s lock (creating the directory if ``create``, else it must exist);
    yield the directory. Raises RunLockedError naming the holder if another process has it."""
    run_dir = Path(run_dir)
    if create:
        run_dir.mkdir(parents=True, exist_ok=True)
    elif not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no run directory here (train the run first)")
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            raise RunLockedError(
                f"{run_dir} is in use by another process ({holder}); wait for it to finish "
                "or stop it"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        remove_temporaries(run_dir)
        yield run_dir
    finally:
        os.close(fd)  # releases the lock
