"""How a command is stopped: SIGTERM and Ctrl-C raise KeyboardInterrupt in the main process (runs
stop at their last finished epoch, ready for ``--resume``), the signal is remembered for the
exit status, and child processes started in a block ignore the terminal's Ctrl-C.
"""

from __future__ import annotations

import contextlib
import signal


@contextlib.contextmanager
def children_ignore_sigint():
    """Processes started within the block ignore SIGINT from their start (the disposition is
    inherited through exec): a terminal's Ctrl-C reaches this process only, which stops them."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


# The signal that stopped this process, for its exit status (128 + the signal's number).
_stopped_by: int | None = None


def _raise_keyboard_interrupt(signum, frame) -> None:
    global _stopped_by
    _stopped_by = signum
    raise KeyboardInterrupt


def stopping_signal() -> int | None:
    """The signal (SIGINT, SIGTERM) received within :func:`sigterm_interrupts`, if any."""
    return _stopped_by


@contextlib.contextmanager
def sigterm_interrupts():
    """Within the block, SIGTERM (``kill``, ``timeout``, a batch scheduler's time limit) stops a
    run like Ctrl-C does: at the last finished epoch, ready for ``--resume``. A background job
    started from a script ignores SIGINT, so SIGTERM is how it is stopped. Either signal is
    remembered (:func:`stopping_signal`): shells and schedulers read 128 + its number."""
    global _stopped_by
    _stopped_by = None  # a process may run several commands (the tests do)
    handled = [signal.SIGTERM]
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        handled.append(signal.SIGINT)  # never where it is ignored (a background job)
    previous = {signum: signal.signal(signum, _raise_keyboard_interrupt) for signum in handled}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
