"""Training-state checkpoints: exact round trip, atomic replacement, and signals held during the write."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

from greendistil.train.checkpoint import TEMP_SUFFIX, TrainPosition, discard_state, load_state, save_state
from greendistil.train.loop import linear_schedule, make_optimizer


def setup(seed: int) -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 2))
    optimizer = make_optimizer(model, learning_rate=0.1, weight_decay=0.01)
    return model, optimizer, linear_schedule(optimizer, total_steps=10, warmup_steps=2)


def step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler) -> None:
    model(torch.ones(3, 4)).sum().backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()


def position(step_number: int) -> TrainPosition:
    return TrainPosition(step=step_number, epoch=0, batch_in_epoch=step_number, epoch_generator_state=None,
                         loss_sums={"loss": 1.5}, recent_losses=[{"loss": 0.5}])


def test_round_trip_continues_exactly(tmp_path: Path) -> None:
    """Two steps, checkpoint, two more == two steps, reload into fresh objects, two more."""
    model, optimizer, scheduler = setup(0)
    for _ in range(2):
        step(model, optimizer, scheduler)
    save_state(tmp_path / "s.pt", model=model, optimizer=optimizer, scheduler=scheduler, position=position(2))
    for _ in range(2):
        step(model, optimizer, scheduler)
    expected = {k: v.clone() for k, v in model.state_dict().items()}

    model2, optimizer2, scheduler2 = setup(1)  # different weights and RNG until loaded
    restored = load_state(tmp_path / "s.pt", model=model2, optimizer=optimizer2, scheduler=scheduler2)
    assert restored == position(2) and scheduler2.last_epoch == 2
    for _ in range(2):
        step(model2, optimizer2, scheduler2)
    assert all(torch.equal(expected[k], v) for k, v in model2.state_dict().items())  # dropout RNG restored too


def test_a_kill_before_the_rename_keeps_the_previous_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, optimizer, scheduler = setup(0)
    path = tmp_path / "s.pt"
    save_state(path, model=model, optimizer=optimizer, scheduler=scheduler, position=position(1))

    def killed(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        save_state(path, model=model, optimizer=optimizer, scheduler=scheduler, position=position(2))
    assert path.with_name(path.name + TEMP_SUFFIX).is_file()
    assert load_state(path, model=model, optimizer=optimizer, scheduler=scheduler).step == 1
    discard_state(path)
    assert list(tmp_path.iterdir()) == []


class SignalsWhilePickled:
    """Sends SIGTERM to this process while torch.save is writing it."""

    def __reduce__(self):
        os.kill(os.getpid(), signal.SIGTERM)
        return (dict, ())


def test_a_signal_during_the_write_is_delivered_after_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the hold, the signal's exception inside torch.save surfaced as torch's 'unexpected pos' error."""
    class Interrupted(BaseException):
        pass

    def handler(number: int, frame: object) -> None:
        raise Interrupted

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        model, optimizer, scheduler = setup(0)
        path = tmp_path / "s.pt"
        bad_position = TrainPosition(step=1, epoch=0, batch_in_epoch=1, epoch_generator_state=None,
                                     loss_sums={}, recent_losses=[{"loss": SignalsWhilePickled()}])  # type: ignore[dict-item]
        monkeypatch.setattr("greendistil.train.checkpoint.faults.point", lambda name: None)
        with pytest.raises(Interrupted):
            save_state(path, model=model, optimizer=optimizer, scheduler=scheduler, position=bad_position)
        # The write completed (the file loads) before the signal was delivered; the rename did not happen,
        # so a resume would use the previous state, as after any kill before the rename.
        temp = path.with_name(path.name + TEMP_SUFFIX)
        assert torch.load(temp, weights_only=False)["position"]["step"] == 1 and not path.exists()
    finally:
        signal.signal(signal.SIGTERM, previous)
