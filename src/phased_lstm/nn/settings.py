"""The keyword settings of the Phased LSTM modules: one frozen, validated dataclass.

:class:`TimeGateSettings` holds what both :class:`~phased_lstm.PhasedLSTMCell` and
:class:`~phased_lstm.PhasedLSTM` take as keyword-only arguments; its defaults are the modules'
defaults. :func:`setting` makes the module attribute that reads (and, where allowed, writes)
one of its fields.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from .. import _checks
from ..ops import check_backend

DEFAULT_PERIOD_RANGE = (math.e, math.e**3)


def _float(value: object) -> str:
    return f"{value:g}"


@dataclass(frozen=True)
class TimeGateSettings:
    """The keyword-only settings of :class:`PhasedLSTMCell` and :class:`PhasedLSTM`, validated.

    Its defaults are the modules' defaults (the authors': r_on 0.05, leak 1e-3, periods
    ``exp(U(1, 3))``); the repr of a module shows the settings that differ from them. See
    :class:`PhasedLSTM` for what each one means.
    """

    peepholes: bool = False
    r_on: float = 0.05
    leak: float = 1e-3
    period_range: tuple[float, float] = DEFAULT_PERIOD_RANGE
    shift_range: tuple[float, float] | None = None
    learn_period: bool = True
    learn_shift: bool = True
    learn_r_on: bool = False
    grad_clip: float | None = field(default=None, metadata={"format": _float})
    backend: str = "auto"

    def __post_init__(self) -> None:
        checked = {
            "peepholes": _checks.check_bool("peepholes", self.peepholes),
            "r_on": _checks.check_r_on(self.r_on),
            "leak": _checks.check_leak(self.leak),
            "period_range": _checks.check_range("period_range", self.period_range, positive=True),
            "shift_range": None
            if self.shift_range is None
            else _checks.check_range("shift_range", self.shift_range, positive=False),
            "learn_period": _checks.check_bool("learn_period", self.learn_period),
            "learn_shift": _checks.check_bool("learn_shift", self.learn_shift),
            "learn_r_on": _checks.check_bool("learn_r_on", self.learn_r_on),
            "grad_clip": _checks.check_grad_clip(self.grad_clip),
            "backend": check_backend(self.backend),
        }
        if checked["learn_r_on"] and checked["r_on"] == 1.0:
            raise ValueError(
                "r_on must be < 1 when learn_r_on=True (its logit would be infinite), got 1.0; "
                "use learn_r_on=False for a fixed r_on of 1"
            )
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    def repr_parts(self) -> list[str]:
        """``name=value`` for every setting that differs from its default."""
        parts = []
        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name)
            if value != spec.default:
                text = spec.metadata.get("format", repr)(value)
                parts.append(f"{spec.name}={text}")
        return parts


DEFAULT = TimeGateSettings()


def settings_from(arguments: dict) -> TimeGateSettings:
    """The settings among a constructor's arguments (its ``locals()``): the keyword-only
    arguments of both modules are exactly the fields of :class:`TimeGateSettings`."""
    return TimeGateSettings(
        **{f.name: arguments[f.name] for f in dataclasses.fields(TimeGateSettings)}
    )


def setting(name: str, *, settable: bool, attribute: str | None = None) -> property:
    """A module attribute that reads (and, validated, writes) one field of ``settings``."""
    attribute = attribute or name

    def get(self):
        return getattr(self.settings, name)

    def set_(self, value):
        self.settings = dataclasses.replace(self.settings, **{name: value})

    def refuse(self, value):
        raise AttributeError(
            f"{attribute} is fixed at construction (it decides which parameters exist); "
            "build a new module to change it"
        )

    return property(get, set_ if settable else refuse, doc=f"``settings.{name}``")


__all__ = ["DEFAULT_PERIOD_RANGE", "TimeGateSettings"]
