"""Error types. The CLI turns every `GreendistilError` into one line on stderr and exit code 2."""

from __future__ import annotations


class GreendistilError(Exception):
    """An expected error caused by the user's input or environment: printed as one line, exit code 2."""


class ConfigError(GreendistilError):
    """A config key is unknown, has the wrong type, or is out of range."""


class DataError(GreendistilError):
    """GLUE or corpus data is missing or malformed."""


class ModelSourceError(GreendistilError):
    """A teacher or student model source cannot be resolved or loaded."""


class RunDirError(GreendistilError):
    """The run directory cannot be created, is not writable, or already exists."""


class StageError(Exception):
    """A stage failed while running (e.g. a NaN loss). Not a user-input error: exit code 1."""


class RunInterrupted(BaseException):
    """Raised in the main thread by the CLI's SIGTERM handler; like KeyboardInterrupt, not an Exception, so
    that no `except Exception` in a stage swallows it. The window that is open records 'interrupted'."""

    def __init__(self, signal_number: int) -> None:
        super().__init__(f"interrupted by signal {signal_number}")
        self.signal_number = signal_number
