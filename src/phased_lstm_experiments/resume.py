"""What ``--resume`` checks before it continues a folder's runs: that every checkpoint it will
continue from can be read.

A ``last.ckpt`` cut short (a full disk, a copy interrupted) otherwise ended the command in
torch's ``PytorchStreamReader failed reading zip archive`` traceback in the middle of the runs.
Here it is found before any training, and the user chooses: restore the file, or pass
``--restart-broken`` to train that run again from scratch (the broken file is kept beside,
renamed, never deleted); the other runs still resume.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from .config import ExperimentConfig, pending_runs, run_name
from .files import ExperimentError
from .run import checkpoint_path
from .tasks import get_task

BROKEN_SUFFIX = ".broken"


def _unreadable(path: Path) -> str | None:
    """Why the checkpoint at ``path`` cannot be loaded, or None when it can."""
    try:
        torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # whatever torch or pickle raises on a damaged file
        # Its first sentence: torch goes on for lines about what may have caused it.
        text = str(error).strip().split("\n")[0].split(". ")[0]
        return text[:160] or type(error).__name__
    return None


def _aside(path: Path) -> Path:
    """A free name beside ``path`` for its broken copy: ``last.ckpt.broken``, ``.broken.2``..."""
    target = path.with_name(path.name + BROKEN_SUFFIX)
    count = 1
    while target.exists():
        count += 1
        target = path.with_name(f"{path.name}{BROKEN_SUFFIX}.{count}")
    return target


def check_checkpoints(
    config: ExperimentConfig,
    out: Path,
    results: dict,
    *,
    restart_broken: bool,
    note: Callable[[str], None],
) -> None:
    """Check the checkpoint of every run of ``config`` that ``--resume`` will continue.

    An unreadable one raises :class:`ExperimentError` naming the file and the two ways on, or,
    with ``restart_broken``, is renamed aside (``note`` says where) so that its run starts again.
    """
    broken = []
    for run in pending_runs(get_task(config.experiment), config, results):
        path = checkpoint_path(out, run_name(*run))
        if path.exists() and (reason := _unreadable(path)) is not None:
            broken.append((run_name(*run), path, reason))
    if not broken:
        return
    if not restart_broken:
        name, path, reason = broken[0]
        more = f" (and {len(broken) - 1} more runs' checkpoints)" if len(broken) > 1 else ""
        raise ExperimentError(
            f"--resume: the checkpoint {path} is unreadable ({reason}){more}; restore the "
            f"file, or pass --restart-broken to train {name} again from scratch (the broken "
            f"file is kept as {path.name + BROKEN_SUFFIX}) while the other runs resume"
        )
    for name, path, reason in broken:
        target = _aside(path)
        path.rename(target)
        note(f"--restart-broken: {name} starts again from scratch; its unreadable checkpoint "
             f"({reason}) is kept as {target}")  # fmt: skip


__all__ = ["check_checkpoints"]
