"""What ``--resume`` checks before it continues a folder's runs: that every checkpoint it will
continue from can be read.

A ``last.ckpt`` cut short (a full disk, a copy interrupted) otherwise ended the command in
torch's ``PytorchStreamReader failed reading zip archive`` traceback in the middle of the runs.
Here it is found before any training, and the user chooses: restore the file, or pass
``--restart-broken`` to train that run again from scratch (the broken file is kept beside,
renamed, never deleted); the other runs still resume. The learning-rate sweep's folders
(``OUT/sweep/lr-RATE``) that the command will continue are checked the same way.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from .config import ExperimentConfig, pending_runs, run_name
from .files import ExperimentError
from .run import checkpoint_path
from .sweep import sweep_config, sweep_folder
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


def _folders(config: ExperimentConfig, out: Path, results: dict) -> Iterator[tuple]:
    """(config, folder, results) of ``out`` and of each sweep folder that ``--resume`` will
    continue: started (it has a config.json) while the sweep has not chosen every model's rate."""
    yield config, out, results
    chosen = results.get("learning_rates", {})
    if not config.lr_sweep or all(model in chosen for model in config.models):
        return
    for rate in config.lr_sweep:
        folder = sweep_folder(out, rate)
        if not (folder / "config.json").exists():
            continue
        try:
            runs = json.loads((folder / "results.json").read_text()).get("runs", {})
        except (OSError, ValueError, AttributeError):
            runs = {}  # none yet; an unreadable file is refused when the folder is resumed
        yield sweep_config(config, rate), folder, {"runs": runs}


def check_checkpoints(
    config: ExperimentConfig,
    out: Path,
    results: dict,
    *,
    restart_broken: bool,
    note: Callable[[str], None],
) -> None:
    """Check the checkpoint of every run of ``config`` that ``--resume`` will continue, the
    sweep's runs included.

    An unreadable one raises :class:`ExperimentError` naming the file and the two ways on, or,
    with ``restart_broken``, is renamed aside (``note`` says where) so that its run starts again.
    """
    broken = []
    task = get_task(config.experiment)
    for folder_config, folder, recorded in _folders(config, out, results):
        for run in pending_runs(task, folder_config, recorded):
            path = checkpoint_path(folder, run_name(*run))
            if path.exists() and (reason := _unreadable(path)) is not None:
                name = (
                    run_name(*run)
                    if folder == out
                    else f"{folder.relative_to(out)}/{run_name(*run)}"
                )
                broken.append((name, path, reason))
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
