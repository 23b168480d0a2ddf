"""Holding SIGINT/SIGTERM while something must not be torn: a record, a checkpoint, a saved model.

A signal's exception raised inside torch.save or save_pretrained is replaced by the writer's own error when
it unwinds (torch: "unexpected pos ..."), and one raised while a record is half-written would tear the run
log. So such writes run with the signals noted instead of acted on; when the block ends the handlers are
put back and the first signal noted is delivered to them, unless the caller dropped it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from dataclasses import dataclass, field
from types import FrameType
from typing import Callable, Iterator

HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass
class HeldSignals:
    """The signals that arrived while held, in order; `drop()` discards them instead of delivering the first."""

    received: list[int] = field(default_factory=list)
    deliver: bool = True

    def drop(self) -> None:
        self.deliver = False


@contextlib.contextmanager
def signals_deferred() -> Iterator[HeldSignals]:
    """Note SIGINT/SIGTERM until the block ends, then deliver the first one noted (see `HeldSignals.drop`).

    Outside the main thread signals cannot be handled there, and the block runs as it is.
    """
    held = HeldSignals()
    if threading.current_thread() is not threading.main_thread():
        yield held
        return
    previous = {sig: signal.signal(sig, lambda number, frame: held.received.append(number)) for sig in HELD_SIGNALS}
    try:
        yield held
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if held.received and held.deliver:
            os.kill(os.getpid(), held.received[0])  # now, with the run's own handler back in place


@contextlib.contextmanager
def signals_raise(on_sigterm: Callable[[int], BaseException]) -> Iterator[None]:
    """Inside the block SIGTERM raises `on_sigterm(signal number)` and SIGINT `KeyboardInterrupt` (set
    explicitly: a process started in the background by a non-interactive shell inherits SIGINT ignored).

    The first signal to arrive decides, even when several arrive while a long C call (a torch kernel) holds
    the interpreter: Python would then run their handlers in signal-number order, SIGINT first, so the
    order of arrival is read from the wakeup fd, where the C-level handler writes each signal as it comes.
    After the first, further signals are swallowed until the process exits, so the exit code is the first
    signal's whatever else arrives while the run shuts down. A block that ends otherwise (done, or another
    error) puts the previous handlers back.
    """
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    os.set_blocking(write_fd, False)
    first: list[int] = []

    def handler(number: int, frame: FrameType | None) -> None:
        if not first:
            try:
                arrived = os.read(read_fd, 64)
            except BlockingIOError:
                arrived = b""
            first.append(arrived[0] if arrived else number)
        # Ignored at the C level, not by a Python function: the interpreter resets its Python handlers to the
        # default while it finalizes, and a signal arriving then would kill the process (exit -2, not 143).
        # A signal already pending when this runs finds no handler to call and is dropped.
        for sig in HELD_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        raise on_sigterm(first[0]) if first[0] == signal.SIGTERM else KeyboardInterrupt

    previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        if not first:
            for sig, old in previous.items():
                signal.signal(sig, old)
        signal.set_wakeup_fd(previous_fd)
        os.close(read_fd)
        os.close(write_fd)
