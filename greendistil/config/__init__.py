"""The typed, frozen configuration: `load_config(path, overrides)` -> `Config`."""

from greendistil.config.corpus import CorpusSection, CorpusSource, MaskingSection
from greendistil.config.load import SECTIONS, Config, apply_override, build_config, load_config
from greendistil.config.stages import (STAGE_KINDS, BenchmarkStage, DistillStage, EvaluateStage, FinetuneStage,
                                       PretrainStage, Role, StageConfig, TrainingStage, WindowSpec)
from greendistil.config.suite import (SuiteSection, SuiteStep, TaskOverrides, for_task, is_shared,
                                      is_suite, run_tasks, suite_steps)
from greendistil.config.tables import (CarbonSection, Device, RunSection, StudentInit, StudentSection, TaskSection,
                                       TeacherSection, TeacherSource)

__all__ = [
    "SECTIONS", "STAGE_KINDS", "BenchmarkStage", "CarbonSection", "Config", "CorpusSection", "CorpusSource", "Device",
    "DistillStage", "EvaluateStage", "FinetuneStage", "MaskingSection", "PretrainStage", "Role", "RunSection",
    "StageConfig", "StudentInit", "SuiteSection", "SuiteStep", "TaskOverrides", "StudentSection", "TaskSection", "TeacherSection", "TeacherSource",
    "TrainingStage", "WindowSpec", "apply_override", "build_config", "for_task", "is_shared",
    "is_suite", "load_config", "run_tasks", "suite_steps",
]
