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


class BudgetExceeded(BaseException):
    """A budget (`run.max_energy_kwh`, `stages.<name>.max_co2_kg`, ...) would be crossed by the next step.

    Not an Exception, so that no `except Exception` in a stage swallows it: the open window records
    'stopped-budget' with what was spent, and the CLI exits with its own code (3). `key` is the dotted
    config key, `limit` and `spent` are in its unit (kWh, kg CO2eq or s); `checked_against` is the
    provenance of the energy figure the budget was checked against (measured or estimated).
    """

    def __init__(self, *, key: str, limit: float, spent: float, unit: str, checked_against: str) -> None:
        super().__init__(f"{key} = {limit:.6g} {unit} reached: {spent:.6g} {unit} spent "
                         f"(energy {checked_against})")
        self.key, self.limit, self.spent, self.unit, self.checked_against = key, limit, spent, unit, checked_against

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:  # picklable (DDP ranks receive rank 0's verdict)
        return _budget_exceeded, (self.key, self.limit, self.spent, self.unit, self.checked_against)


def _budget_exceeded(key: str, limit: float, spent: float, unit: str, checked_against: str) -> BudgetExceeded:
    return BudgetExceeded(key=key, limit=limit, spent=spent, unit=unit, checked_against=checked_against)
