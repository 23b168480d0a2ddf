"""FLOPs: counted with torch's FlopCounterMode on a sample of steps and extrapolated, or the analytic 6*N*T.

A counted step costs ~1.5x a plain one (torch dispatches every op through Python; benchmarks/overhead.py
measures it), so a stage counts a few steps (``FlopSampler.should_count``) and extrapolates the rest by padded
tokens, per component: the teacher's forward passes and the student's training steps are separate components,
because a distillation step spends FLOPs on both (counting only the student undercounts distillation by about
2/3). A short stage counts fewer leading steps (``MAX_LEADING_SHARE``), so that counting stays well under 1%
of its time.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from greendistil.runtime.rng import rng_states, set_rng_states

logger = logging.getLogger(__name__)

T = TypeVar("T")
COUNTER_NAME = "torch-flop-counter"
# The leading steps counted are at most this share of a stage's steps (at least one): at ~1.5x a plain step,
# counting 3 of a 63-step stage's steps cost it 2% of its time; 1 costs 0.7%. Against every step counted,
# configs/quick.toml's extrapolated FLOPs were -0.39% (finetune) and -0.37% (distill) from the first 3 steps,
# -0.52% and -0.48% from the first alone.
MAX_LEADING_SHARE = 0.01


def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)  # shapes (B, heads, T, head_dim)


def _cpu_sdpa_backward_flop(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                            **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


# torch's FlopCounterMode has formulas for the GPU attention kernels but not for the CPU flash-attention
# kernel that scaled_dot_product_attention uses on CPU: without these, attention FLOPs would silently be 0.
CPU_ATTENTION_FORMULAS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flop,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward_flop,
}


def new_flop_counter() -> FlopCounterMode:
    """A silent FlopCounterMode that also knows the CPU attention kernels."""
    return FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FORMULAS)


def count_flops(fn: Callable[[], T]) -> tuple[T, int]:
    """Run ``fn()`` once under ``FlopCounterMode`` and return ``(its result, total FLOPs)``.

    Exceptions raised while ``fn`` runs propagate unchanged, even ones the counter's dispatch hooks might
    have caused: telling them apart would mean re-running ``fn``, and a training step cannot safely run
    twice (the optimizer may already have stepped). Failures of the counter's own bookkeeping (entering
    or leaving the mode, ``get_total_flops``) never lose the step's result: they log a warning and
    return 0 FLOPs, which ``FlopSampler.add_counted`` treats as "not counted", never as a free step.
    """
    counter = new_flop_counter()
    try:
        counter.__enter__()
    except Exception as error:
        logger.warning("FLOP counter failed to start (%s: %s); this step runs uncounted", type(error).__name__, error)
        return fn(), 0
    try:
        result = fn()
    except BaseException:
        try:
            counter.__exit__(*sys.exc_info())
        except Exception as exit_error:  # the step's own error is the one worth raising
            logger.warning("FLOP counter failed to stop: %s: %s", type(exit_error).__name__, exit_error)
        raise
    try:
        counter.__exit__(None, None, None)
        return result, int(counter.get_total_flops())
    except Exception as error:
        logger.warning("FLOP counter bookkeeping failed (%s: %s); step reported as uncounted", type(error).__name__, error)
        return result, 0


@dataclass
class _Component:
    counted_flops: int = 0
    counted_tokens: int = 0
    uncounted_tokens: int = 0
    num_counted: int = 0
    num_uncounted: int = 0

    def total_flops(self) -> int | None:
        """Counted FLOPs plus uncounted tokens at the counted FLOPs/token; None if nothing to scale by."""
        if self.uncounted_tokens == 0:
            return self.counted_flops if self.num_counted else None
        if self.counted_tokens == 0:
            return None
        # Integer arithmetic, rounded half up: exact for any size.
        extra = (self.counted_flops * self.uncounted_tokens + self.counted_tokens // 2) // self.counted_tokens
        return self.counted_flops + extra


class FlopSampler:
    """Chooses the steps to count and extrapolates the others by padded tokens, per component.

    A step adds each of its components once (``add_counted`` on a counted step, ``add_uncounted``
    otherwise), e.g. ``"teacher_forward"`` and ``"student_train"``; ``num_steps`` is the largest number
    of steps any component saw. Extrapolating by padded tokens (batch size x padded length) is exact for
    the linear layers, which dominate; attention's length-squared term is scaled linearly.
    """

    def __init__(self, *, sample_steps: int = 3, sample_every: int = 200, num_steps: int | None = None) -> None:
        """`num_steps`: the steps this sampler will see, when known; the leading steps counted are then at most
        `MAX_LEADING_SHARE` of them (at least one), so a short stage does not spend percents on counting."""
        if sample_steps < 0:
            raise ValueError(f"sample_steps must be >= 0, got {sample_steps}")
        if sample_every < 1:
            raise ValueError(f"sample_every must be >= 1 (1 counts every step), got {sample_every}")
        if num_steps is not None and sample_every > 1:
            sample_steps = min(sample_steps, max(1, int(MAX_LEADING_SHARE * num_steps)))
        self.sample_steps = sample_steps
        self.sample_every = sample_every
        self._components: dict[str, _Component] = {}
        self._num_failed_counts = 0
        self.error: str | None = None  # set when the counter raised: no FLOP figure for this window
        self._never = False

    @classmethod
    def never(cls) -> FlopSampler:
        """A sampler that counts no step (the overhead benchmark's measurement-off side): no FLOP figure."""
        sampler = cls(sample_steps=0)
        sampler._never = True
        return sampler

    def should_count(self, step: int) -> bool:
        """True for steps ``0..sample_steps-1`` and every ``sample_every``-th step (0-based) after;
        always False once the counter has failed, or for `never()`'s sampler."""
        return self.error is None and not self._never and (step < self.sample_steps or step % self.sample_every == 0)

    def fail(self, message: str) -> None:
        """The counter itself raised: stop counting, and report no FLOPs rather than a partial sum."""
        if self.error is None:
            logger.warning("FLOP counting failed, no FLOP figure for this window: %s", message)
            self.error = message

    def add_counted(self, component: str, flops: int, padded_tokens: int) -> None:
        """Record a counted step of ``component``. 0 FLOPs for >0 tokens means the counter failed:
        the step is recorded as uncounted rather than as a free step that would drag the rate down."""
        if flops <= 0 and padded_tokens > 0:
            logger.warning("%s: counted 0 FLOPs for %d tokens; treating the step as uncounted", component, padded_tokens)
            self._num_failed_counts += 1
            self.add_uncounted(component, padded_tokens)
            return
        c = self._components.setdefault(component, _Component())
        c.counted_flops += int(flops)
        c.counted_tokens += int(padded_tokens)
        c.num_counted += 1

    def add_uncounted(self, component: str, padded_tokens: int) -> None:
        """Record an uncounted step of ``component``; its FLOPs are extrapolated from the counted ones."""
        c = self._components.setdefault(component, _Component())
        c.uncounted_tokens += int(padded_tokens)
        c.num_uncounted += 1

    @property
    def num_counted_steps(self) -> int:
        return max((c.num_counted for c in self._components.values()), default=0)

    @property
    def num_steps(self) -> int:
        return max((c.num_counted + c.num_uncounted for c in self._components.values()), default=0)

    def by_component(self) -> dict[str, int]:
        """Extrapolated FLOPs per component; a component with no counted step is left out."""
        totals = {name: c.total_flops() for name, c in self._components.items()}
        return {name: total for name, total in totals.items() if total is not None}

    def total_flops(self) -> int | None:
        """Counted plus extrapolated FLOPs over all components, or None when any component has steps but
        no counted one to extrapolate from (a partial sum would silently undercount); see ``source()``."""
        totals = [c.total_flops() for c in self._components.values()]
        if self.error is not None or not totals or None in totals:
            return None
        return sum(t for t in totals if t is not None)

    def source(self) -> str:
        """Provenance of ``total_flops()``, e.g. ``counted:torch-flop-counter(3/1250 steps sampled, ...)``."""
        if self.error is not None:
            return "unavailable:flop-counter-failed"
        if self.num_steps == 0:
            return "unavailable:no-steps"
        missing = sorted(name for name, c in self._components.items() if c.total_flops() is None)
        if missing:
            return f"unavailable:no-counted-step({','.join(missing)})"
        if all(c.num_uncounted == 0 for c in self._components.values()):
            return f"counted:{COUNTER_NAME}(all {self.num_steps} steps)"
        failed = f", {self._num_failed_counts} counts failed" if self._num_failed_counts else ""
        return (
            f"counted:{COUNTER_NAME}({self.num_counted_steps}/{self.num_steps} steps sampled{failed}, "
            "extrapolated by padded tokens)"
        )


class FlopScope:
    """Counts the FLOPs of the parts of one step when the sampler picked this step; else only their tokens.

    A counter that raises inside a counted part must never stop training: `reset` undoes the half-run step
    (zeroes gradients), the RNG is put back, and the part runs again uncounted, so the model ends exactly
    as it would have; the window then reports no FLOP figure and says why.
    """

    def __init__(self, sampler: FlopSampler, counted: bool, padded_tokens: int,
                 reset: Callable[[], None] | None = None) -> None:
        self.sampler, self.counted, self.padded_tokens = sampler, counted, padded_tokens
        self.reset = reset

    def run(self, component: str, fn: Callable[[], T]) -> T:
        if not self.counted or self.sampler.error is not None:
            self.sampler.add_uncounted(component, self.padded_tokens)
            return fn()
        rng = rng_states()
        try:
            result, flops = count_flops(fn)
        except Exception as err:
            if self.reset is None:
                raise
            self.sampler.fail(f"{component}: {type(err).__name__}: {err}")
            self.reset()
            set_rng_states(rng)  # the same dropout masks as the failed attempt: as if it had never run
            self.sampler.add_uncounted(component, self.padded_tokens)
            return fn()  # a genuine error of the step raises again here, uncounted
        self.sampler.add_counted(component, flops, self.padded_tokens)
        return result


def analytic_flops(*, num_nonembedding_params: int, num_tokens: int, training: bool) -> int:
    """FLOPs by the Kaplan et al. (2020) convention: 2*N*T for a forward pass, 6*N*T for a training step
    (forward + backward, the backward costing twice the forward), N = non-embedding parameters.

    The context-dependent attention term (about 2*layers*seq_len*d_model per token forward) is ignored:
    it is small next to N for BERT-sized models at seq_len <= 512. Optimizer FLOPs are not included.
    """
    if num_nonembedding_params < 0 or num_tokens < 0:
        raise ValueError(f"need num_nonembedding_params >= 0 and num_tokens >= 0, got {num_nonembedding_params}, {num_tokens}")
    return (6 if training else 2) * num_nonembedding_params * num_tokens


def count_nonembedding_params(model: torch.nn.Module, *, trainable_only: bool = False) -> int:
    """Parameters outside every ``nn.Embedding`` (word, position, token-type). A weight tied to an
    embedding (e.g. the MLM decoder) is excluded with it, as Kaplan et al. exclude the unembedding.
    ``trainable_only``: only those that require gradients (a frozen encoder's are left out)."""
    embedding_ids = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    return sum(p.numel() for p in model.parameters()
               if id(p) not in embedding_ids and (p.requires_grad or not trainable_only))
