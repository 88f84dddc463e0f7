"""The registry of experiments: one module per experiment, one :class:`Task` instance each.

``TASKS`` maps the name given to ``phased-lstm reproduce NAME`` to its task, in the order of the
CLI's help. To add an experiment, write ``tasks/NAME.py`` with a ``Task`` subclass and its
instance ``TASK`` (see :mod:`.base` for the interface; a larger experiment is a package,
``tasks/NAME/``, as ``nmnist`` and ``fusion``), then list it below. The runner, the report and the
CLI look tasks up here; the configuration (:mod:`..config`) never imports the registry: where it
needs a task's answer, the caller hands it the task.
"""

from __future__ import annotations

from ..config import ExperimentConfig
from . import adding, freq, freq2, fusion, nmnist
from .base import FigureSpec, Run, SyntheticTask, Task, TaskOption, collate_trimmed

TASKS: dict[str, Task] = {
    module.TASK.name: module.TASK for module in (freq, freq2, adding, nmnist, fusion)
}


def get_task(name: str) -> Task:
    """The task called ``name``; a ValueError lists the valid names."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"experiment must be one of {', '.join(TASKS)}, got {name!r}") from None


def preset_config(experiment: str, preset: str) -> ExperimentConfig:
    """The configuration of ``experiment`` under ``preset``, before explicit CLI options."""
    return get_task(experiment).preset_config(preset)


__all__ = [
    "TASKS",
    "FigureSpec",
    "Run",
    "SyntheticTask",
    "Task",
    "TaskOption",
    "collate_trimmed",
    "get_task",
    "preset_config",
]
