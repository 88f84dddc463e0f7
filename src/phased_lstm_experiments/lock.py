"""The lock of an output folder: one command at a time trains into it.

Two commands on one ``--out`` would train the same runs side by side, write the same
checkpoints and results, and both report success (the last writer wins). The lock is an
advisory ``flock`` on a file in the folder, which the kernel releases when its process ends,
however it ends; the file holds the holder's PID and start time for the message of the command
that finds the folder in use. A file left by a process that died (``kill -9``, a crash) holds no
lock any more: the next command takes it over and says so. The file is removed on exit, so a
finished folder holds only results.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from .files import ExperimentError

LOCK_NAME = ".phased-lstm.lock"


def lock_path(out: Path) -> Path:
    return Path(out) / LOCK_NAME


def _holder(text: str) -> str:
    """``PID n, started T`` from the lock file's text, as far as it can be read."""
    try:
        data = json.loads(text)
        return f"PID {int(data['pid'])}, started {data['started']}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown: the lock file is unreadable"


@contextlib.contextmanager
def folder_lock(out: Path, note: Callable[[str], None]) -> Iterator[None]:
    """Hold the lock of ``out`` (created if missing) for the block.

    Raises :class:`ExperimentError` naming ``--out`` and the holder's PID and start time when
    another live process holds it; calls ``note`` with a line when it takes over the lock of a
    process that is gone, or when the file system cannot lock (the block then runs unlocked).
    """
    try:
        import fcntl
    except ImportError:  # not a POSIX system: no advisory locks to take
        yield
        return
    path = lock_path(out)
    out.mkdir(parents=True, exist_ok=True)
    while True:
        fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            text = _read(fd)
            os.close(fd)
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise ExperimentError(
                    f"--out {out} is in use by another phased-lstm command ({_holder(text)}); "
                    "wait for it to end, stop it, or choose another folder"
                ) from None
            note(
                f"--out {out}: cannot lock the folder ({error.strerror or error}); make sure "
                "no other command writes it meanwhile"
            )
            fd = None
            break
        # The holder before us may have removed the file between our open and our lock:
        # then we hold the lock of a file nobody else will open; start again.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    if fd is None:
        yield
        return
    try:
        left = _read(fd)
        if left.strip():
            note(f"--out {out}: took over the lock of {_holder(left)}, which is no longer running")
        started = datetime.datetime.now().astimezone().isoformat(sep=" ", timespec="seconds")
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "started": started}).encode(), 0)
        yield
    finally:
        # Removed while still held, so that no other command can lock the file on its way out.
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)


def _read(fd: int) -> str:
    with contextlib.suppress(OSError):
        return os.pread(fd, 4096, 0).decode(errors="replace")
    return ""


__all__ = ["LOCK_NAME", "folder_lock", "lock_path"]
