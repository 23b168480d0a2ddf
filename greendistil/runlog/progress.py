"""What an earlier attempt at a run finished, read from its run log: the basis of `greendistil run --resume`.

A stage is done when its last record says `ok`; a benchmark stage when each of its windows is. In a suite a
stage is done per task, and in a multi-seed run per seed: (task, seed, stage) triples are what resume skips. The models
that done stages wrote (their `artifacts`) are what later stages start from. A stage that was interrupted
or failed runs again as a new segment, from its last training-state checkpoint when there is one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from greendistil.config import Config, SuiteStep, suite_steps
from greendistil.errors import RunDirError

TRAINING_KINDS = ("pretrain", "finetune", "distill")  # stages whose later stages start from the model they saved


class RunAlreadyComplete(Exception):
    """`--resume` of a run whose every stage is done: nothing to do (the CLI exits 0)."""


@dataclass
class RunProgress:
    """The status of each window in log order, keyed by (task, seed, record `stage`), and the models the done
    stages wrote, keyed by the task and seed of their record (None: shared by the suite's tasks, or by the
    run's seeds)."""

    statuses: dict[tuple[str | None, int | None, str], list[str]] = field(default_factory=dict)  # -> each segment's
    artifacts: dict[tuple[str | None, int | None], dict[str, Path]] = field(default_factory=dict)  # -> role -> folder

    @classmethod
    def from_records(cls, run_dir: Path, records: list[dict[str, Any]]) -> RunProgress:
        progress = cls()
        for record in records:
            task, seed, name = record.get("task"), record.get("seed"), str(record.get("stage"))
            progress.statuses.setdefault((task, seed, name), []).append(str(record.get("status")))
            if record.get("status") == "ok":
                if record.get("kind") in TRAINING_KINDS and not record.get("artifacts"):
                    raise RunDirError(f"--resume: {str(run_dir)!r} holds a finished {record.get('kind')} stage "
                                      f"{name!r} whose record names no saved model (written before records kept "
                                      "their artifacts); later stages cannot start from it: start the run over "
                                      "with --force")
                for role, folder in (record.get("artifacts") or {}).items():
                    progress.artifacts.setdefault((task, seed), {})[role] = run_dir / folder
        return progress

    def window_done(self, task: str | None, window: str, seed: int | None = None) -> bool:
        return (self._segments(task, seed, window) or [""])[-1] == "ok"

    def is_done(self, step: SuiteStep) -> bool:
        return all(self.window_done(step.task, window.name, step.seed) for window in step.stage.windows())

    def next_segment(self, task: str | None, window: str, seed: int | None = None) -> int:
        return len(self._segments(task, seed, window)) + 1

    def _segments(self, task: str | None, seed: int | None, window: str) -> list[str]:
        # A record without a task is a suite's shared stage, or a record from before records named their task
        # (a single-task run): stage names are unique within a run, so it can be taken for the task's own.
        # Seeds never fall back: seed None is a single-seed run's, or a stage shared by every seed.
        return self.statuses.get((task, seed, window)) or self.statuses.get((None, seed, window), [])

    def check_not_complete(self, config: Config, run_dir: Path) -> None:
        """Raise RunAlreadyComplete when every (task, stage) of the config is done."""
        steps = suite_steps(config)
        if all(self.is_done(step) for step in steps):
            raise RunAlreadyComplete(f"run {str(run_dir)!r} is already complete ({len(steps)} stages ok); "
                                     "nothing to resume")
