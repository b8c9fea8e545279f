"""Where every derived artefact of a run came from, so that nothing stale is ever used.

A run is identified by the :func:`fingerprint` of its resolved config (``config.json``),
which its checkpoint also carries. The run directory's ``provenance.json`` maps each
derived artefact (``summary.json``, ``activations``, ``probes.csv``, ``cells.csv``...) to
its origin: the stage that wrote it, the fingerprint and checkpoint step it was computed
from, and the settings of the stages it depends on (``probe``, ``census``)::

    {"probes.csv": {"stage": "probe", "fingerprint": "3f9a...", "step": 1000,
                    "probe": {"n_sequences": 256, ...}}, ...}

A stage writes its artefacts inside :func:`rewriting`: first every artefact it writes (or
wrote before) is marked pending and deleted, and only when all are complete is their new
origin recorded. A kill at any point therefore leaves a complete record or a pending one,
never an old record beside new data. Readers call :func:`require`; a fresh training run
calls :func:`clear`. Every stage that writes into a run directory must do so under
:func:`lab.lock.run_lock` and record its artefacts here, or the tables refuse them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lab.io import read_json, remove, write_json

MANIFEST = "provenance.json"


class StaleError(ValueError):
    """An artefact does not come from the run's current config, checkpoint or settings."""


def fingerprint(config: dict[str, Any]) -> str:
    """sha256 (hex) of ``config`` as :func:`canonical` JSON."""
    return hashlib.sha256(canonical(config).encode()).hexdigest()


def canonical(value: Any) -> str:
    """``value`` as canonical JSON (sorted keys, no spaces): equal values, equal text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def origin(stage: str, fingerprint: str, step: int, **settings: dict[str, Any]) -> dict:
    """The origin record of an artefact written by ``stage`` from the checkpoint of run
    ``fingerprint`` at ``step``, with the settings of the stages it depends on (as JSON
    values, so that it compares equal to what ``provenance.json`` gives back)."""
    return json.loads(
        canonical({"stage": stage, "fingerprint": fingerprint, "step": step, **settings})
    )


def read_manifest(run_dir: Path) -> dict[str, dict[str, Any]]:
    """artefact name -> origin (or ``{"stage": ..., "pending": True}``); {} if none."""
    path = Path(run_dir) / MANIFEST
    return read_json(path, "provenance record") if path.is_file() else {}


@contextmanager
def rewriting(run_dir: Path, names: Iterable[str], made_from: dict[str, Any]) -> Iterator[None]:
    """Replace the artefacts of stage ``made_from["stage"]``: those it wrote before and
    ``names`` are marked pending and deleted on entry; on a clean exit ``names`` are
    recorded as made from ``made_from`` (an :func:`origin`). An error leaves them pending."""
    run_dir, names = Path(run_dir), list(names)
    stage = made_from["stage"]
    manifest = read_manifest(run_dir)
    replaced = sorted({n for n, entry in manifest.items() if entry["stage"] == stage} | set(names))
    manifest.update({name: {"stage": stage, "pending": True} for name in replaced})
    write_json(run_dir / MANIFEST, manifest)
    for name in replaced:
        remove(run_dir / name)
    yield
    for name in replaced:
        del manifest[name]
    manifest.update({name: made_from for name in names})
    write_json(run_dir / MANIFEST, manifest)


def clear(run_dir: Path) -> None:
    """Delete every recorded artefact of the run, and the record (a fresh start)."""
    run_dir = Path(run_dir)
    for name in read_manifest(run_dir):
        remove(run_dir / name)
    (run_dir / MANIFEST).unlink(missing_ok=True)


def problem(run_dir: Path, name: str, **expected: Any) -> str | None:
    """Why artefact ``name`` of ``run_dir`` is not complete and made from ``expected``
    (keys of an :func:`origin`; settings compared field by field), or None if it is."""
    entry = read_manifest(run_dir).get(name)
    if entry is None:
        return "nothing records which checkpoint it came from (made by hand or by an older lab)"
    if entry.get("pending"):
        return f"it is incomplete (its {entry['stage']} stage was interrupted or failed)"
    found = []
    for key, want in expected.items():
        have = entry.get(key)
        if have == want:
            continue
        if key == "fingerprint":
            found.append(f"run config {str(have)[:12]} (the run's is {want[:12]})")
        elif key == "step":
            found.append(f"checkpoint step {have} (the run's is {want})")
        elif isinstance(want, dict) and isinstance(have, dict):
            found += [
                f"{key}.{field}={have.get(field)!r} (now {want.get(field)!r})"
                for field in differences(have, want)
            ]
        else:
            found.append(f"{key}={have!r} (now {want!r})")
    return f"it was made from {', '.join(found)}" if found else None


def require(run_dir: Path, name: str, remedy: str, **expected: Any) -> dict[str, Any]:
    """The origin of artefact ``name``; StaleError (naming the file, what differs and
    ``remedy``) unless it is complete and made from ``expected`` (see :func:`problem`)."""
    reason = problem(run_dir, name, **expected)
    if reason is not None:
        raise StaleError(f"{Path(run_dir) / name}: {reason}; {remedy}")
    return read_manifest(run_dir)[name]


def differences(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts (``train.lr``)."""
    keys = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            keys += differences(x, y, f"{prefix}{key}.")
        elif x != y:
            keys.append(f"{prefix}{key}")
    return keys
