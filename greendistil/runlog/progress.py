"""What an earlier attempt at a run finished, read from its run log: the basis of `greendistil run --resume`.

A stage is done when its last record says `ok`; a benchmark stage when each of its windows is. The models
that done stages wrote (their `artifacts`) are what later stages start from. A stage that was interrupted
or failed runs again as a new segment, from its last training-state checkpoint when there is one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from greendistil.config import Config, StageConfig
from greendistil.errors import RunDirError

TRAINING_KINDS = ("pretrain", "finetune", "distill")  # stages whose later stages start from the model they saved


class RunAlreadyComplete(Exception):
    """`--resume` of a run whose every stage is done: nothing to do (the CLI exits 0)."""


@dataclass
class RunProgress:
    """The status of each window (record `stage`) in log order, and the models the done stages wrote."""

    statuses: dict[str, list[str]] = field(default_factory=dict)  # window -> status of each segment
    artifacts: dict[str, Path] = field(default_factory=dict)  # role -> model folder, from done stages

    @classmethod
    def from_records(cls, run_dir: Path, records: list[dict[str, Any]]) -> RunProgress:
        progress = cls()
        for record in records:
            name = str(record.get("stage"))
            progress.statuses.setdefault(name, []).append(str(record.get("status")))
            if record.get("status") == "ok":
                if record.get("kind") in TRAINING_KINDS and not record.get("artifacts"):
                    raise RunDirError(f"--resume: {str(run_dir)!r} holds a finished {record.get('kind')} stage "
                                      f"{name!r} whose record names no saved model (written before records kept "
                                      "their artifacts); later stages cannot start from it: start the run over "
                                      "with --force")
                for role, folder in (record.get("artifacts") or {}).items():
                    progress.artifacts[role] = run_dir / folder
        return progress

    def window_done(self, window: str) -> bool:
        return self.statuses.get(window, [""])[-1] == "ok"

    def is_done(self, stage: StageConfig) -> bool:
        return all(self.window_done(window.name) for window in stage.windows())

    def next_segment(self, window: str) -> int:
        return len(self.statuses.get(window, [])) + 1

    def check_not_complete(self, config: Config, run_dir: Path) -> None:
        """Raise RunAlreadyComplete when every configured stage is done."""
        if all(self.is_done(stage) for stage in config.stages):
            raise RunAlreadyComplete(f"run {str(run_dir)!r} is already complete ({len(config.stages)} stages ok); "
                                     "nothing to resume")

