"""greendistil for people's own `transformers.Trainer` scripts: a callback that measures each `train()`,
`evaluate()` and `predict()` call into a greendistil run directory.

    callback = GreendistilCallback("runs/my-trainer", task="sst2")
    callback.attach(trainer)        # or Trainer(..., callbacks=[callback])
    trainer.train(); trainer.evaluate()

Each call is one measurement window and one record in greendistil's schema (status ok / failed /
interrupted; CPU/RAM energy from codecarbon's offline tracker and GPU energy from NVML, each with its
provenance; FLOPs counted with FlopCounterMode on sampled steps and extrapolated by padded tokens, beside
the 6N/2N-per-token estimate; examples and tokens counted by a forward hook), so `load_runs` and
`greendistil report` read it unchanged. Every `on_log` gets the energy (kWh), CO2 (g) and mean power (W)
spent so far in the window, so `report_to` integrations receive them; every save gets a model card.

`attach(trainer)` is the exact form: it puts the callback first (so TensorBoard, W&B, MLflow... see the
figures it adds to the logs), opens each window before the call starts and closes it when the call raises.
As a plain callback, the Trainer gives no event before an evaluation's first batch (that batch runs before
the window opens) and none when a call raises (the window is closed as failed by the next call, by an
uncaught exception, or at exit). The tracker never breaks training: its own errors are logged, and it stops.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import logging
import sys
import weakref
from pathlib import Path
from typing import Any, Callable

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from greendistil.config.tables import CarbonSection
from greendistil.data.metrics import task_score
from greendistil.data.tasks import get_task
from greendistil.errors import StageError
from greendistil.integrations.trainer_card import write_trainer_card
from greendistil.integrations.trainer_windows import TrainerSession, command_line
from greendistil.runtime.units import J_PER_KWH

logger = logging.getLogger(__name__)

LOG_KEYS = {"energy_kwh": "energy_kwh_so_far", "co2_g": "co2_g_so_far"}
TIMING_METRICS = ("runtime", "samples_per_second", "steps_per_second", "jit_compilation_time")
HUB_TO_GLUE_METRICS = {"matthews_correlation": "mcc", "pearsonr": "pearson", "spearmanr": "spearman"}


class GreendistilCallback(TrainerCallback):
    """Measures a Trainer's calls into `run_dir` (created if absent; appended to if it holds records).

    `role` is the report's name for the model ("teacher": trained on labels; "student": distilled);
    `task` a GLUE task name, so dev metrics become the task's score; `carbon` the grid and codecarbon
    settings, as the `[carbon]` table of a config.
    """

    def __init__(self, run_dir: str | Path, *, task: str | None = None, role: str = "teacher",
                 carbon: CarbonSection | None = None, flop_sample_steps: int = 3, flop_sample_every: int = 200,
                 model_cards: bool = True, nvml: Any = None) -> None:
        if task is not None:
            get_task(task)  # a wrong name fails here, at construction, naming the valid ones
        if role not in ("teacher", "student"):
            raise ValueError(f"role: {role!r} is not a role; valid: teacher, student")
        self.run_dir, self.task, self.role = Path(run_dir), task, role
        self.kind = "distill" if role == "student" else "finetune"
        self.model_cards = model_cards
        self._carbon = carbon or CarbonSection()
        self._flop_sampling = (flop_sample_steps, flop_sample_every)
        self._nvml = nvml
        self.session: TrainerSession | None = None
        self._hooked: set[int] = set()
        self._hooks: list[Any] = []
        self._first_step = 0
        self._disabled: str | None = None
        self._model: Any = None
        self._saves: list[tuple[Path, dict[str, float]]] = []
        _watch(self)

    # ---- the exact form --------------------------------------------------------------------------
    def attach(self, trainer: Any) -> GreendistilCallback:
        """Put this callback first in `trainer`'s callbacks and wrap its train/evaluate/predict/save_model
        so that each window opens before the call and closes (ok or failed) when it returns or raises."""
        handler = trainer.callback_handler
        handler.callbacks = [self, *[c for c in handler.callbacks if c is not self]]
        for name, kind in (("train", None), ("evaluate", "evaluate"), ("predict", "predict")):
            setattr(trainer, name, self._wrapped(getattr(trainer, name), trainer, kind))
        save_model = trainer.save_model

        @functools.wraps(save_model)
        def save_and_card(output_dir: str | None = None, *args: Any, **kwargs: Any) -> Any:
            result = save_model(output_dir, *args, **kwargs)
            self._guard(lambda: self._final_card(Path(output_dir or trainer.args.output_dir)))
            return result
        trainer.save_model = save_and_card
        return self

    def _wrapped(self, call: Callable[..., Any], trainer: Any, kind: str | None) -> Callable[..., Any]:
        @functools.wraps(call)
        def measured(*args: Any, **kwargs: Any) -> Any:
            if kind is not None:
                self._guard(lambda: self._begin(kind, trainer.model, trainer.args))
            try:
                return call(*args, **kwargs)
            except BaseException as err:
                self._failed(err, training_call=kind is None)
                raise
        return measured

    def _failed(self, error: BaseException, *, training_call: bool) -> None:
        """A wrapped call raised: its window records it (an evaluation inside train() leaves train's open)."""
        session = self.session
        if session is not None and session.open is not None and (training_call or not session.open.training):
            self._guard(lambda: session.end(error))

    # ---- Trainer events --------------------------------------------------------------------------
    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       **kwargs: Any) -> None:
        self._first_step = state.global_step
        self._guard(lambda: self._begin("train", kwargs.get("model"), args, resumed_from=state.global_step))

    def on_step_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                      **kwargs: Any) -> None:
        self._guard(lambda: self.session and self.session.begin_step(state.global_step - self._first_step))

    def on_pre_optimizer_step(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                              **kwargs: Any) -> None:
        self._guard(lambda: self.session and self.session.end_step_flops())

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    **kwargs: Any) -> None:
        self._guard(lambda: self.session and self.session.end_step())

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        if logs is not None:
            self._guard(lambda: logs.update(self._log_figures()))

    def on_prediction_step(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                           **kwargs: Any) -> None:
        if self.session is None or self.session.open is None:  # a plain callback: no earlier event
            self._guard(lambda: self._begin("evaluate", kwargs.get("model") or self._model, args))

    def on_evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    metrics: dict[str, float] | None = None, **kwargs: Any) -> None:
        self._guard(lambda: self._evaluated(metrics or {}, state))

    def on_predict(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                   metrics: dict[str, float] | None = None, **kwargs: Any) -> None:
        self._guard(lambda: self._evaluated(metrics or {}, state))

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                **kwargs: Any) -> None:
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        self._guard(lambda: self._checkpoint_card(folder))

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kwargs: Any) -> None:
        self._guard(lambda: self._train_ended(state))

    # ---- what the events do ----------------------------------------------------------------------
    def _begin(self, base_name: str, model: Any, args: TrainingArguments, resumed_from: int = 0) -> None:
        session = self._session(args)
        if session.open is not None and base_name != "train":
            return  # attach() opened it already, or an evaluation inside train(): the training window's
        if model is not None:
            self._model = model
            self._hook(model)
        kind = self.kind if base_name == "train" else "evaluate"
        opened = session.begin(base_name, kind=kind, role=self.role, model=model)
        counters = opened.window.counters
        counters.details["trainer"] = _trainer_settings(args)
        if resumed_from:
            counters.resumed_from_step = resumed_from

    def _session(self, args: TrainingArguments) -> TrainerSession:
        if self.session is None:
            settings = args.to_json_string() if hasattr(args, "to_json_string") else repr(args)
            self.session = TrainerSession(
                self.run_dir, carbon=self._carbon, task=self.task, command=command_line(),
                config_hash=hashlib.sha256(settings.encode()).hexdigest()[:16],
                flop_sample_steps=self._flop_sampling[0], flop_sample_every=self._flop_sampling[1], nvml=self._nvml)
        return self.session

    def _hook(self, model: Any) -> None:
        if id(model) in self._hooked or self.session is None:
            return
        self._hooked.add(id(model))
        session = self.session
        self._hooks.append(model.register_forward_pre_hook(
            lambda m, a, k: self._guard(lambda: session.count_forward(m, a, k)), with_kwargs=True))
        self._hooks.append(model.register_forward_hook(
            lambda m, a, k, o: self._guard(lambda: session.forward_done(m, a, k, o)), with_kwargs=True))

    def _log_figures(self) -> dict[str, float]:
        """Energy, CO2 and mean power of the open window so far, for the Trainer's logs."""
        if self.session is None or self.session.open is None:
            return {}
        window = self.session.open.window
        reading = window.so_far()
        if reading is None or window.run is None:
            return {}
        live = reading.scalars(pue=window.run.pue, intensity_g_per_kwh=window.run.intensity_g_per_kwh)
        figures = {new: live[old] for old, new in LOG_KEYS.items() if old in live}
        if reading.energy_kwh is not None and reading.elapsed_s > 0:
            figures["power_w_mean"] = reading.energy_kwh * J_PER_KWH / reading.elapsed_s
        return figures

    def _evaluated(self, metrics: dict[str, float], state: TrainerState) -> None:
        session = self.session
        if session is None or session.open is None:
            return
        current = session.open
        if current.training:  # an evaluation during train(): its metrics go with the training window
            current.window.counters.details.setdefault("evaluations", []).append(
                {"step": state.global_step, **{k: v for k, v in metrics.items() if isinstance(v, (int, float))}})
            return
        current.window.counters.metrics.update(self._role_metrics(metrics))
        current.window.counters.details["trainer_metrics"] = {k: v for k, v in metrics.items()
                                                             if isinstance(v, (int, float))}
        session.end()

    def _role_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        """`eval_accuracy` -> `<role>.accuracy`; with a task, `<role>.score` as greendistil's evaluate has it."""
        found: dict[str, float] = {}
        for key, value in metrics.items():
            name = key.split("_", 1)[1] if key.startswith(("eval_", "test_")) else key
            ours = key in LOG_KEYS.values() or key == "power_w_mean"  # what on_log added to these very metrics
            if isinstance(value, (int, float)) and not name.endswith(TIMING_METRICS) and name != "epoch" and not ours:
                found[HUB_TO_GLUE_METRICS.get(name, name)] = float(value)
        scored = {f"{self.role}.{name}": value for name, value in found.items()}
        if self.task is not None:
            task = get_task(self.task)
            if all(m in found for m in task.metrics):
                scored[f"{self.role}.score"] = task_score(task, found)
        return scored

    def _train_ended(self, state: TrainerState) -> None:
        if self.session is None or self.session.open is None:
            return
        summary = next((e for e in reversed(state.log_history) if "train_runtime" in e), {})
        details = self.session.open.window.counters.details
        details["trainer_summary"] = {k: v for k, v in summary.items() if isinstance(v, (int, float))}
        details["trainer_flos_estimate"] = float(state.total_flos)
        record = self.session.end()
        if record is not None and self.model_cards:
            for folder, live in self._saves:
                write_trainer_card(folder, run_dir=self.run_dir, record=record, live=live, task=self.task, role=self.role,
                                   model=self._model)
            self._saves = []

    def _checkpoint_card(self, folder: Path) -> None:
        """A checkpoint's cost is the window's so far: kept now, its card written once the record is."""
        if self.model_cards and self.session is not None and self.session.open is not None:
            self._saves.append((folder, self.session.live_scalars()))

    def _final_card(self, folder: Path) -> None:
        if not self.model_cards or self.session is None:
            return
        from greendistil.runlog.store import read_records

        trained = [r for r in read_records(self.run_dir) if r.get("kind") == self.kind]
        if trained:
            write_trainer_card(folder, run_dir=self.run_dir, record=trained[-1], live=None, task=self.task, role=self.role,
                               model=self._model)

    # ---- never break training --------------------------------------------------------------------
    def _guard(self, work: Callable[[], Any]) -> None:
        if self._disabled is not None:
            return
        try:
            work()
        except Exception as err:
            self._disabled = f"{type(err).__name__}: {err}"
            logger.warning("greendistil callback stopped measuring (%s); training goes on", self._disabled)
            if self.session is not None:
                self.session.end(StageError(f"the greendistil callback failed: {self._disabled}"))

    def close(self) -> None:
        """Close any open window (as failed) and release the run directory; called at exit too."""
        for hook in self._hooks:
            hook.remove()
        self._hooks, self._hooked = [], set()
        if self.session is not None:
            self.session.close()


def _trainer_settings(args: TrainingArguments) -> dict[str, Any]:
    keys = ("num_train_epochs", "max_steps", "learning_rate", "per_device_train_batch_size",
            "per_device_eval_batch_size", "gradient_accumulation_steps", "seed", "bf16", "fp16")
    return {key: getattr(args, key) for key in keys if hasattr(args, key)}


_live_callbacks: weakref.WeakSet[GreendistilCallback] = weakref.WeakSet()


def _watch(callback: GreendistilCallback) -> None:
    """Have uncaught exceptions and the interpreter's exit close `callback`'s open window (installed once,
    by the first callback: importing this module changes nothing)."""
    if not _live_callbacks:
        previous = sys.excepthook

        def excepthook(kind: type[BaseException], error: BaseException, tb: Any) -> None:
            for live in list(_live_callbacks):
                if live.session is not None and live.session.open is not None:
                    live.session.end(error)  # failed, or interrupted for KeyboardInterrupt
            previous(kind, error, tb)
        if not getattr(sys.excepthook, "greendistil", False):
            excepthook.greendistil = True  # type: ignore[attr-defined]
            sys.excepthook = excepthook
            atexit.register(lambda: [live.close() for live in list(_live_callbacks)])
    _live_callbacks.add(callback)
