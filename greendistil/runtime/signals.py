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
from typing import Iterator

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
