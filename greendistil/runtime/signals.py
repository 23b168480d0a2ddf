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
from typing import Iterator

from greendistil.errors import RunInterrupted

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
def signals_raise() -> Iterator[None]:
    """Inside the block SIGTERM raises `RunInterrupted` and SIGINT `KeyboardInterrupt` (set explicitly: a
    process started in the background by a non-interactive shell inherits SIGINT ignored).

    After the first of them, further signals stay ignored until the process exits, so the exit code is the
    first signal's whatever else arrives while the run shuts down. A block that ends otherwise (done, or
    another error) puts the previous handlers back.
    """
    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, _raise_interrupted),
                signal.SIGINT: signal.signal(signal.SIGINT, _raise_keyboard_interrupt)}
    interrupted = False
    try:
        yield
    except BaseException as err:
        interrupted = isinstance(err, (KeyboardInterrupt, RunInterrupted))
        raise
    finally:
        if not interrupted:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _raise_interrupted(signal_number: int, frame: FrameType | None) -> None:
    _ignore_further_signals()
    raise RunInterrupted(signal_number)


def _raise_keyboard_interrupt(signal_number: int, frame: FrameType | None) -> None:
    _ignore_further_signals()
    raise KeyboardInterrupt


def _ignore_further_signals() -> None:
    """After the first SIGINT/SIGTERM the run is shutting down: a second one (of either kind) must not cut
    short the writing of the stopped stage's record."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
