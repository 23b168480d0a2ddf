"""The shared training loop: AdamW with linear warmup/decay, gradient clipping, sampled FLOP counting, a NaN
check at every log interval, checkpoints for `--resume`, and a progress bar.

Stages supply a step function that runs forward and backward and returns its loss terms as detached
tensors on the device; the loop owns the optimizer. The loop fills the counters of the window it is given
and never reads the device per step: loss terms are summed on the device and read once per log interval
(the only host sync of a step that logs; none on the others), and token counts come from the CPU copy of
the batch before it moves.
"""

from __future__ import annotations

import collections
import itertools
import logging
import math
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from greendistil.config import TrainingStage
from greendistil.data.batching import CPU_ONLY_KEYS, Batch, PlannedSteps, planned_steps
from greendistil.distributed import SINGLE, Dist, agree, all_finite, broadcast, gather
from greendistil.errors import ConfigError, StageError
from greendistil.measure.counters import StageCounters
from greendistil.measure.flops import FlopSampler, FlopScope
from greendistil.measure.forecast import Forecast
from greendistil.runtime.rng import rng_states
from greendistil.testing import faults
from greendistil.train.checkpoint import StateFile, TrainPosition, load_state, save_state

logger = logging.getLogger(__name__)

LossTerms = dict[str, torch.Tensor]  # name -> detached 0-d tensor on the device; "loss" is the weighted sum
StepFn = Callable[[Batch, FlopScope], LossTerms]


class TrainingWindow(Protocol):
    """What the loop needs of the measurement window it runs in: its name, its counters, a meter flush,
    and what it has spent so far (for the progress bar)."""

    stage: str
    counters: StageCounters

    def flush_meters(self) -> None: ...

    def live_scalars(self) -> dict[str, float]: ...

    def over_budget(self, steps_done: int, steps_ahead: int = 1) -> BaseException | None: ...

    def observe_step(self, step: int, *, first_step: int, total_steps: int,
                     planned: PlannedSteps | None = None, cached_from_step: int | None = None) -> Forecast | None: ...


@dataclass(frozen=True, kw_only=True)
class LogPoint:
    """One log interval of a stage, as the loop saw it (for live metrics such as TensorBoard)."""

    step: int
    total_steps: int
    losses: dict[str, float]  # mean loss terms over the interval's steps
    learning_rate: float
    examples_per_s: float  # since the segment started


@dataclass(frozen=True, kw_only=True)
class TrainSummary:
    num_steps: int
    final_loss: dict[str, float]  # mean loss terms over the last `log_every_steps` steps
    mean_loss: dict[str, float]  # mean over the whole stage
    examples_per_s: float


def make_optimizer(model: torch.nn.Module, *, learning_rate: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW; biases and LayerNorm weights (1-D tensors) are not decayed, as in BERT."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    try:
        # The fused kernel is ~7.5x faster than the per-tensor loop on a 2-core CPU (benchmarks/optimizer.py).
        return torch.optim.AdamW(groups, lr=learning_rate, fused=True)
    except (RuntimeError, TypeError):  # a device or dtype without a fused kernel
        return torch.optim.AdamW(groups, lr=learning_rate)


def linear_schedule(optimizer: torch.optim.Optimizer, *, total_steps: int,
                    warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up to the peak learning rate, then linear decay to 0 at `total_steps`."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class LossLog:
    """Loss terms kept on the device: summed since the last read, and the last `window` steps' values.

    `read()` brings them to the host in one transfer (one sync), at log intervals, checkpoints and the
    end; a non-finite sum there stops the stage, naming the steps it covers.
    """

    def __init__(self, position: TrainPosition, window: int) -> None:
        self.totals = dict(position.loss_sums)  # host floats, through the last read
        self.recent: collections.deque[dict[str, torch.Tensor | float]] = collections.deque(
            position.recent_losses, maxlen=window)
        self._pending: dict[str, torch.Tensor] = {}
        self._first_pending_step = position.step + 1

    def add(self, terms: LossTerms) -> None:
        for key, value in terms.items():
            self._pending[key] = self._pending[key] + value if key in self._pending else value
        self.recent.append(dict(terms))

    def read(self, *, step: int, stage: str, dist: Dist, device: torch.device) -> dict[str, float]:
        """Move the pending sums into `totals` and the recent values to floats; returns the means of the
        steps read. Raises StageError when the loss summed over them is not finite (on any rank)."""
        keys = list(self._pending)
        recent_keys = [(i, k) for i, row in enumerate(self.recent) for k, v in row.items()
                       if isinstance(v, torch.Tensor)]
        values = [self._pending[k] for k in keys] + [self.recent[i][k] for i, k in recent_keys]
        floats = torch.stack([v.float() for v in values]).tolist() if values else []  # CPU-GPU sync point
        sums = dict(zip(keys, floats[:len(keys)]))
        for (i, k), value in zip(recent_keys, floats[len(keys):]):
            self.recent[i][k] = value
        first, self._first_pending_step, self._pending = self._first_pending_step, step + 1, {}
        if not all_finite(dist, sums.get("loss", 0.0), device):  # DDP: every rank stops at this interval
            where = (f"loss is {sums['loss']}" if not math.isfinite(sums.get("loss", 0.0))
                     else "loss on another rank is not finite")
            raise StageError(f"stage {stage!r}: {where} in steps {first}-{step}; lower the learning rate or "
                             "check the data")
        for key, value in sums.items():
            self.totals[key] = self.totals.get(key, 0.0) + value
        count = max(step - first + 1, 1)
        return {key: value / count for key, value in sums.items()}

    def recent_floats(self) -> list[dict[str, float]]:
        """The last steps' terms as floats (after a `read()`)."""
        return [{k: float(v) for k, v in row.items()} for row in self.recent]


def train(*, cfg: TrainingStage, model: torch.nn.Module, loader: DataLoader, step_fn: StepFn,
          window: TrainingWindow, analytic_flops_per_token: float, state: StateFile | None = None,
          dist: Dist = SINGLE, show_progress: bool | None = None,
          on_log: Callable[[LogPoint], None] | None = None, max_steps: int | None = None,
          count_flops: bool = True, teacher_cached: bool = False) -> TrainSummary:
    """Train `model` for `cfg.epochs` over `loader`, recording counts and FLOPs into `window.counters`.

    `analytic_flops_per_token` (e.g. 6N for training, + 2N_teacher for distillation) is multiplied by the
    padded tokens of each batch: padding is computed too. With `state`, the training state is checkpointed
    every `cfg.checkpoint_every_steps` steps and at epoch ends, and (under `--resume`) an existing state is
    continued exactly: same data order, same RNG, same schedule. The counters hold this segment's work only.
    `show_progress`: a bar (None: only on a terminal). `on_log` gets each log interval's `LogPoint`.
    `max_steps` (a plan's calibration): stop after that many steps of the stage, its schedule unchanged, and
    before the first step a teacher cache would serve (the calibration times full steps only).
    `count_flops=False` (only the overhead benchmark's measurement-off side): no step is FLOP-counted.
    `teacher_cached`: a teacher cache serves the steps of the epochs after the one it fills (the epoch after
    the segment's start: a segment resumed mid-epoch fills the rest of that epoch and the next, the
    next's later batches being new to it, and serves from the one after), which the forecasts count lighter.

    Under DDP (`dist`), `model` is the unwrapped model (the step function runs its DDP wrapper), `loader`
    yields this rank's rows, and only rank 0 writes the training state, holding every rank's RNG state.
    """
    device = next(model.parameters()).device
    total_steps = max(1, math.ceil(len(loader) * cfg.epochs))
    optimizer = make_optimizer(model, learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay)
    scheduler = linear_schedule(optimizer, total_steps=total_steps, warmup_steps=int(cfg.warmup_ratio * total_steps))
    position = _start_position(state, model, optimizer, scheduler, window, dist)
    steps_per_epoch = len(loader)
    # The first step a teacher cache serves: a whole epoch after the first epoch boundary from here on.
    cached_from_step = (math.ceil(position.step / steps_per_epoch) + 1) * steps_per_epoch if teacher_cached else None
    stop_at = total_steps if max_steps is None else min(total_steps, max_steps, cached_from_step or total_steps)
    sampler = (FlopSampler(sample_steps=cfg.flop_sample_steps, sample_every=cfg.flop_sample_every,
                           num_steps=total_steps - position.step) if count_flops else FlopSampler.never())
    counters = window.counters
    counters.flop_sampler = sampler
    losses = LossLog(position, cfg.log_every_steps)
    step, epoch, skip = position.step, position.epoch, position.batch_in_epoch
    first_step, restore_generator = step, position.epoch_generator_state
    model.train()
    bar = tqdm(total=total_steps, initial=step, desc=window.stage, unit="step", leave=False,
               disable=(None if show_progress is None else not show_progress) if dist.is_main else True)
    start_s = time.perf_counter()
    forecast: Forecast | None = None  # the latest forecast of the segment's end (for the progress bar)
    planned = planned_steps(loader, total_steps)  # each step's shape, for the forecasts (and a plan)

    def checkpoint(batch_in_epoch: int, generator_state: torch.Tensor | None) -> None:
        losses.read(step=step, stage=window.stage, dist=dist, device=device)
        _checkpoint(state, model, optimizer, scheduler, window, dist, TrainPosition(
            step=step, epoch=epoch, batch_in_epoch=batch_in_epoch, epoch_generator_state=generator_state,
            loss_sums=losses.totals, recent_losses=losses.recent_floats(), world_size=dist.world_size))

    stop = _budget_stop(window, 0, step, total_steps, cfg.log_every_steps, dist)
    if stop is not None:  # spent before the first step (e.g. a resume with the budget unchanged)
        bar.close()
        raise stop
    while step < stop_at:
        if hasattr(loader.batch_sampler, "set_epoch"):
            loader.batch_sampler.set_epoch(epoch)
        generator = getattr(loader, "generator", None)  # the shuffled order of a plain DataLoader
        if restore_generator is not None and generator is not None:
            generator.set_state(restore_generator)
        restore_generator = None
        epoch_generator_state = generator.get_state() if generator is not None else None
        batch_in_epoch = skip
        for cpu_batch in _batches(loader, skip):
            if step >= stop_at:
                break
            num_examples, num_tokens = cpu_batch["input_ids"].shape[0], int(cpu_batch["attention_mask"].numpy().sum())
            batch = {k: v if k in CPU_ONLY_KEYS else v.to(device, non_blocking=True) for k, v in cpu_batch.items()}
            padded_tokens = batch["input_ids"].numel()
            scope = FlopScope(sampler, sampler.should_count(step - first_step), padded_tokens,
                              reset=lambda: optimizer.zero_grad(set_to_none=True))
            losses.add(step_fn(batch, scope))
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            batch_in_epoch += 1
            counters.add_batch(num_examples=num_examples, num_tokens=num_tokens, num_padded_tokens=padded_tokens,
                               analytic_flops_per_token=analytic_flops_per_token)
            bar.update(1)
            forecast = window.observe_step(step, first_step=first_step, total_steps=total_steps, planned=planned,
                                           cached_from_step=cached_from_step) or forecast
            if step % cfg.log_every_steps == 0 or step == stop_at:
                interval = losses.read(step=step, stage=window.stage, dist=dist, device=device)
                rate = counters.num_examples / max(time.perf_counter() - start_s, 1e-9)
                _show_interval(bar, interval, rate, window, forecast)
                if on_log is not None:
                    on_log(LogPoint(step=step, total_steps=total_steps, losses=interval, examples_per_s=rate,
                                    learning_rate=float(scheduler.get_last_lr()[0])))
            faults.point(f"step:{window.stage}:{step}")
            checkpointed = (state is not None and step < total_steps and cfg.checkpoint_every_steps > 0
                            and step % cfg.checkpoint_every_steps == 0)
            if checkpointed:
                checkpoint(batch_in_epoch, epoch_generator_state)
            stop = _budget_stop(window, step - first_step, step, total_steps, cfg.log_every_steps, dist)
            if stop is not None:  # the next step would cross a budget: keep this position, then stop
                if state is not None and not checkpointed:
                    checkpoint(batch_in_epoch, epoch_generator_state)
                bar.close()
                raise stop
        epoch, skip = epoch + 1, 0
        if state is not None and step < stop_at and cfg.checkpoint_at_epoch_end:
            checkpoint(0, generator.get_state() if generator is not None else None)
    bar.close()  # the last step logged: nothing is pending
    elapsed_s = time.perf_counter() - start_s
    return TrainSummary(num_steps=step, final_loss=_mean(losses.recent_floats()),
                        mean_loss={k: v / max(step, 1) for k, v in losses.totals.items()},
                        examples_per_s=counters.num_examples / max(elapsed_s, 1e-9))


def _budget_stop(window: TrainingWindow, steps_done: int, step: int, total_steps: int, log_every_steps: int,
                 dist: Dist) -> BaseException | None:
    """The budget the next step would cross, else None; checked before the segment's first step too
    (`steps_done` = 0). One process checks after every step. Under DDP the check is at each log interval, on
    every rank (the spend so far sums the ranks' readings), and rank 0's verdict goes to all, so that all
    ranks stop after the same step."""
    if step >= total_steps:
        return None
    if not dist.enabled:
        return window.over_budget(steps_done, 1)
    if steps_done and step % log_every_steps:
        return None
    verdict = window.over_budget(steps_done, log_every_steps)
    return broadcast(dist, verdict if dist.is_main else None)


def _show_interval(bar: tqdm, interval: dict[str, float], rate: float, window: TrainingWindow,
                   forecast: Forecast | None = None) -> None:
    """Loss, examples/s and the energy spent so far on the progress bar (when it shows), with the segment's
    forecast energy and duration once one is made."""
    if bar.disable:
        return
    postfix = {"loss": f"{interval.get('loss', float('nan')):.4f}", "ex_s": f"{rate:.0f}"}
    energy_kwh = window.live_scalars().get("energy_kwh")
    if energy_kwh is not None:
        postfix["kWh"] = f"{energy_kwh:.3g}"
        if forecast is not None and forecast.energy_kwh is not None:
            postfix["kWh"] += f"/{forecast.energy_kwh:.3g} forecast"
    if forecast is not None:
        postfix["forecast_s"] = f"{forecast.duration_s:.0f}"
        if forecast.run_energy_kwh is not None:
            postfix["run_kWh"] = f"{forecast.run_energy_kwh:.3g} forecast"
    bar.set_postfix(postfix)


def _batches(loader: DataLoader, skip: int) -> Iterator[Batch]:
    """The epoch's batches after the first `skip` (those a resumed stage had trained on before it stopped)."""
    if not skip:
        return iter(loader)
    # Starting an epoch draws a seed from torch's RNG; the checkpoint's RNG state was saved after this
    # epoch's draw, so the resumed epoch must not draw again, or dropout would differ from an unbroken run.
    rng = torch.get_rng_state()
    batches = itertools.islice(loader, skip, None)
    torch.set_rng_state(rng)
    return batches


def _start_position(state: StateFile | None, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, window: TrainingWindow,
                    dist: Dist) -> TrainPosition:
    """Step 0, or (resuming) where the stage's last checkpoint left it."""
    fresh = TrainPosition(step=0, epoch=0, batch_in_epoch=0, epoch_generator_state=None, loss_sums={},
                          recent_losses=[])
    if state is None or not state.resume or not state.path.is_file():
        return fresh
    position = load_state(state.path, model=model, optimizer=optimizer, scheduler=scheduler, rank=dist.rank)
    if position.world_size != dist.world_size:
        raise ConfigError(f"stage {window.stage!r}: its checkpoint was written by {position.world_size} process(es), "
                          f"this run has {dist.world_size}; resume with the same count (torchrun --nproc-per-node "
                          f"x --nnodes = {position.world_size}; 1 = plain `greendistil run --resume`)")
    window.counters.resumed_from_step = position.step
    logger.info("%s: resumed from the checkpoint at step %d", window.stage, position.step)
    return position


def _checkpoint(state: StateFile | None, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                scheduler: torch.optim.lr_scheduler.LRScheduler, window: TrainingWindow, dist: Dist,
                position: TrainPosition) -> None:
    assert state is not None
    # Every rank's RNG goes into rank 0's one atomic file: a resumed rank draws the dropout it would have drawn.
    rank_rngs = gather(dist, rng_states()) if dist.enabled else None
    agree(dist, lambda: save_state(state.path, model=model, optimizer=optimizer, scheduler=scheduler,
                                   position=position, rank_rngs=rank_rngs), what=f"checkpoint of {window.stage!r}")
    window.counters.num_checkpoints += 1
    window.flush_meters()  # codecarbon's CSV gets a row now, not only when the stage ends


def _mean(rows: list[dict[str, float]]) -> dict[str, float]:
    if not rows:
        return {}
    return {key: sum(r[key] for r in rows) / len(rows) for key in rows[0]}
