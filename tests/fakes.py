"""Shared fakes: a window opener without meters, a fake clock. Test modules import these, never each other."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

from greendistil.config import WindowSpec
from greendistil.measure.window import Window


class FakeClock:
    """A clock that advances only when told (`advance`), or by `step_s` on every read: timing without sleeping."""

    def __init__(self, start_s: float = 100.0, step_s: float = 0.0) -> None:
        self.now_s, self.step_s = start_s, step_s

    def __call__(self) -> float:
        self.now_s += self.step_s
        return self.now_s

    def advance(self, seconds: float) -> None:
        self.now_s += seconds


class PlainWindows:
    """An `OpenWindow` that opens bare `Window`s (no meters, no record) and keeps them, to run a stage's
    runner in-process and read its counters; `done` names windows to report as already measured."""

    def __init__(self, kind: str = "stage", done: tuple[str, ...] = ()) -> None:
        self.kind, self.done = kind, set(done)
        self.opened: list[Window] = []

    def is_done(self, spec: WindowSpec) -> bool:
        return spec.name in self.done

    @contextlib.contextmanager
    def __call__(self, spec: WindowSpec) -> Iterator[Window]:
        window = Window(spec.name, self.kind, spec.role)
        self.opened.append(window)
        yield window

    @property
    def window(self) -> Window:
        (only,) = self.opened
        return only


def attrs(**values: Any) -> Any:
    """A plain object with the given attributes."""
    return type("Attrs", (), values)()
