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
