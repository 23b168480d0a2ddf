"""Taps on a BERT-like encoder's self-attention: the query, key and value projections' outputs of chosen
layers, as the model computes them in its forward pass.

Forward hooks go on the projections of the layers asked for only, and come off when the taps close, so a
stage whose terms read one layer slows no other layer and leaves the model as it was. The attention itself
keeps its fused kernel; the terms recompute the distributions they need from the tapped queries and keys
(see `train.intermediate`).
"""

from __future__ import annotations

from collections.abc import Iterable
from types import TracebackType

import torch

from greendistil.errors import ModelSourceError

PARTS = ("query", "key", "value")


def encoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The transformer layers of a BERT-like encoder (`<base>.encoder.layer`), for any head on top."""
    base = getattr(model, "base_model", model)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise ModelSourceError(f"cannot read the layers of a {type(model).__name__}: the intermediate terms need a "
                               "BERT-like encoder (encoder.layer.N: BERT, RoBERTa, ELECTRA, MiniLM)")
    return layers


class AttentionTaps:
    """Keeps the outputs (B, T, H) of the `parts` projections of `layers` from each forward pass.

    `take()` hands over what the last forward pass produced and forgets it. A context manager: the hooks
    are removed on exit, also when the stage fails.
    """

    def __init__(self, model: torch.nn.Module, layers: Iterable[int], parts: Iterable[str] = PARTS) -> None:
        self.layers, self.parts = tuple(sorted(set(layers))), tuple(parts)
        unknown = sorted(set(self.parts) - set(PARTS))
        if unknown:
            raise ValueError(f"unknown attention parts {unknown}; valid: {', '.join(PARTS)}")
        self._outputs: dict[tuple[int, str], torch.Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        modules = encoder_layers(model) if self.layers else []
        for index in self.layers:
            attention = modules[index].attention.self
            for part in self.parts:
                self._handles.append(getattr(attention, part).register_forward_hook(self._keeper(index, part)))

    def _keeper(self, layer: int, part: str):  # type: ignore[no-untyped-def]
        def keep(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            self._outputs[(layer, part)] = output  # (B, T, H)
        return keep

    def take(self) -> dict[tuple[int, str], torch.Tensor]:
        """(layer, part) -> (B, T, H) from the last forward pass; the taps are empty afterwards."""
        outputs, self._outputs = self._outputs, {}
        return outputs

    @property
    def num_hooks(self) -> int:
        return len(self._handles)

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._outputs.clear()

    def __enter__(self) -> AttentionTaps:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()
