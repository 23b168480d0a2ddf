"""`runtime.signals.signals_raise`: the first signal to arrive decides, even when several arrive during one
long C call (where Python would run their handlers in signal-number order, SIGINT's first)."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import torch

from greendistil.runtime.signals import signals_raise


class Stopped(Exception):
    def __init__(self, number: int) -> None:
        super().__init__(number)
        self.number = number


def send_later(*signals: int, delay_s: float = 0.05) -> threading.Thread:
    def send() -> None:
        time.sleep(delay_s)
        for number in signals:
            os.kill(os.getpid(), number)
            time.sleep(0.01)
    thread = threading.Thread(target=send)
    thread.start()
    return thread


def long_product_size(seconds: float) -> int:
    """The size of a square matrix product that takes at least `seconds` in one C call here."""
    size = 128
    while True:
        a = torch.randn(size, size)
        start = time.perf_counter()
        a @ a
        if time.perf_counter() - start > seconds / 8:
            return size * 2  # 8x the work
        size *= 2


@pytest.mark.parametrize("order, expected", [((signal.SIGTERM, signal.SIGINT), Stopped),
                                             ((signal.SIGINT, signal.SIGTERM), KeyboardInterrupt)])
def test_the_first_signal_to_arrive_decides(order: tuple[int, int], expected: type[BaseException]) -> None:
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    size = long_product_size(0.8)
    a = torch.randn(size, size)
    try:
        with pytest.raises(expected):
            with signals_raise(Stopped):
                sender = send_later(*order)
                a @ a  # both signals arrive while this runs
                time.sleep(1.0)  # if the C call ended first, the signals land here
        sender.join()
        # After the first signal, more are swallowed, not raised: ignored at the C level, which the interpreter
        # keeps while it finalizes (a Python handler is reset to the default there, and a late signal would
        # kill the process: exit -2 instead of the first signal's code).
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN == signal.getsignal(signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def test_a_block_that_ends_puts_the_handlers_back() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with signals_raise(Stopped):
        assert signal.getsignal(signal.SIGTERM) is not before
    assert signal.getsignal(signal.SIGTERM) is before
