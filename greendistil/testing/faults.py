"""Named points where the kill-trial tests deliver a real signal to a real `greendistil run`.

`GREENDISTIL_SIGNAL_AT="<point>[@<n>]:<SIGNAL>"` sends SIGNAL (SIGTERM or SIGINT) to this process the n-th
time (default: first) the code passes <point>. Points: `stage-start:<stage>` (window open, models not yet
loaded), `step:<stage>:<k>` (after optimizer step k), `checkpoint-write` (state written to its temporary
file, not yet renamed), `between-stages:<stage>` (after <stage>'s record, before the next stage).
Unset (always, outside tests), `point()` is one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

ENV_VAR = "GREENDISTIL_SIGNAL_AT"
_passes: dict[str, int] = {}


def point(name: str) -> None:
    """Mark that the code is at `name`; signal this process if the environment asks for it here."""
    spec = os.environ.get(ENV_VAR)
    if not spec:
        return
    where, _, signal_name = spec.rpartition(":")
    target, _, nth = where.partition("@")
    if target != name:
        return
    _passes[name] = _passes.get(name, 0) + 1
    if _passes[name] == int(nth or 1):
        os.kill(os.getpid(), getattr(signal, signal_name))
