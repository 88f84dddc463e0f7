"""Files of an output folder: atomic writes (the library's writer, with the folder made first),
and the check that ``--out`` can be written at all.

Kept apart from the runner so that the report (and anything else that writes a file) needs no
Lightning.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from phased_lstm.data import write_atomic as _write_atomic


class ExperimentError(Exception):
    """A mistake the user can fix; the CLI prints its message alone, without a traceback."""


class Interrupted(ExperimentError):
    """The command was stopped (SIGTERM, Ctrl-C) and can be continued with ``--resume``."""


def write_atomic(path: Path, text: str | bytes) -> None:
    """Write a file so that a reader (or a crash) never sees it half written, making its folder
    first: the library's :func:`phased_lstm.data.write_atomic`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, text)


def write_json(path: Path, data: object) -> None:
    write_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def check_writable(out: Path) -> None:
    """Raise :class:`ExperimentError` naming ``--out`` unless files can be made in ``out``.

    Nothing is left behind: a folder that does not exist yet is not created (``--dry-run``
    must not create it); instead a temporary folder is made and removed in its nearest
    existing parent. Trying is the only test that holds everywhere: permission bits say
    nothing to root, and a read-only mount or ``/proc`` refuses whatever the bits say.
    """
    ancestor = out
    while not ancestor.exists():
        if ancestor.parent == ancestor:
            break
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        what = "is not a folder" if ancestor == out else f"lies under {ancestor}, which is a file"
        raise ExperimentError(f"--out {out} {what}; choose a folder")
    try:
        probe = tempfile.mkdtemp(dir=ancestor, prefix=".phased-lstm-probe-")
    except OSError as error:
        where = "" if ancestor == out else f" (in {ancestor})"
        raise ExperimentError(
            f"--out {out} cannot be written{where}: {error.strerror or error}; "
            "choose another folder"
        ) from None
    shutil.rmtree(probe, ignore_errors=True)


__all__ = ["ExperimentError", "Interrupted", "check_writable", "write_atomic", "write_json"]
