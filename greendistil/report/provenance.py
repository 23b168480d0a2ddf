"""Where each figure in the report comes from: the `*_source` strings of the records, explained.

Energy sources are written by the meters (`measured:rapl`, `estimated:tdp-load-model`, ...), FLOPs sources
by the FLOP sampler (`counted:torch-flop-counter(3/40 steps sampled, ...)`). The report marks every energy
figure with its kind (measured / estimated / not available) and one footnote per distinct source.
"""

from __future__ import annotations

import re
from typing import Iterable, Literal

import pandas as pd

SourceKind = Literal["measured", "estimated", "unavailable", "counted", "unknown"]

_SOURCE_NOTES: dict[str, str] = {
    "measured:rapl": "measured: CPU energy read by codecarbon from the Intel RAPL energy counters.",
    "measured:windows-emi": "measured: CPU energy read by codecarbon from the Windows Energy Meter Interface.",
    "measured:intel-power-gadget": "measured: CPU energy read by codecarbon through Intel Power Gadget.",
    "measured:powermetrics": "measured: CPU energy read by codecarbon from Apple's powermetrics.",
    "measured:nvml-counter": "measured: GPU energy from the difference of NVML's total-energy counter across "
                             "the stage (Volta and newer GPUs).",
    "measured:nvml-power-samples": "measured: GPU power sampled through NVML and integrated over the stage "
                                   "(older GPUs without an energy counter; coarser than the counter).",
    "estimated:tdp-load-model": "estimated: RAPL counters were not available, so codecarbon modelled CPU power "
                                "as TDP × (0.1 + 0.9 · load³) from the CPU's rated TDP and its measured load. "
                                "A model, not a measurement: treat it as a rough figure.",
    "estimated:tdp": "estimated: codecarbon assumed a constant share of the CPU's rated TDP, whatever the load.",
    "estimated:ram-model": "estimated: codecarbon modelled RAM power from the installed memory size; RAM "
                           "energy is never measured.",
    "counted:torch-flop-counter": "counted: FLOPs counted with torch.utils.flop_counter.FlopCounterMode on "
                                  "sampled steps and extrapolated to the other steps by padded tokens.",
}

KIND_MARKS: dict[str, str] = {"measured": "meas.", "estimated": "est.", "counted": "counted", "unknown": "?"}


def source_kind(source: str | None) -> SourceKind:
    """'measured', 'estimated', 'counted', 'unavailable' (also for a missing source) or 'unknown'."""
    if not source:
        return "unavailable"
    prefix = source.split(":", 1)[0]
    if prefix in ("measured", "estimated", "unavailable", "counted"):
        return prefix  # type: ignore[return-value]
    return "unknown"


def source_key(source: str | None) -> str:
    """The method without per-record detail: 'counted:torch-flop-counter(3/4 steps)' -> 'counted:torch-flop-counter'."""
    return (source or "unavailable:no-source").split("(", 1)[0]


def describe_source(source: str | None) -> str:
    """One sentence saying how a figure with this source was obtained."""
    key = source_key(source)
    if key in _SOURCE_NOTES:
        return _SOURCE_NOTES[key]
    if key.startswith("codecarbon:energy-mix:"):
        return (f"grid carbon intensity of {key.rsplit(':', 1)[1]} from codecarbon's offline energy-mix data "
                "(a yearly country average, not the grid's real-time intensity).")
    if key.startswith("configured:"):
        return f"grid carbon intensity set in the run's config (`{key.split(':', 1)[1]}`)."
    kind = source_kind(source)
    if kind == "unavailable":
        reason = key.split(":", 1)[1] if ":" in key else "no source recorded"
        return (f"not measured ({reason}): shown as n/a and left out of every sum. "
                "An absent figure is never counted as 0.")
    if kind in ("measured", "estimated", "counted"):
        return f"{kind}: method '{key.split(':', 1)[1]}' (see the meter's documentation)."
    return f"origin '{key}' is not one greendistil knows: treat the figure as an estimate."


def footnote_label(source: str | None) -> str:
    """A markdown footnote label for a source: 'estimated:tdp-load-model' -> 'estimated-tdp-load-model'."""
    return re.sub(r"[^a-z0-9]+", "-", source_key(source).lower()).strip("-")


def footnote_ref(source: str | None) -> str:
    """The markdown reference to a source's footnote: '[^estimated-ram-model]'."""
    return f"[^{footnote_label(source)}]"


def mark(text: str, source: str | None) -> str:
    """A figure with its provenance: '1.2e-06 (est.)[^estimated-ram-model]', or 'n/a[^unavailable-...]'."""
    kind = source_kind(source)
    label = footnote_ref(source)
    if kind == "unavailable":
        return f"n/a{label}"
    return f"{text} ({KIND_MARKS[kind]}){label}"


def footnotes(sources: list[str | None]) -> str:
    """Markdown footnote definitions, one per distinct source method, in first-seen order."""
    seen: dict[str, str | None] = {}
    for source in sources:
        seen.setdefault(footnote_label(source), source)
    return "\n".join(f"[^{label}]: `{source_key(source)}`: {describe_source(source)}"
                     for label, source in seen.items())


ENERGY_SOURCE_COLUMNS = ("cpu_energy_source", "gpu_energy_source", "ram_energy_source")


def kinds_suffix(sources: Iterable[str | None]) -> str:
    """' (est.)', ' (meas.+est.)', ...: the kinds of a sum's parts ("" when none was measured or estimated)."""
    kinds = sorted({source_kind(s) for s in sources} - {"unavailable"})
    return f" ({'+'.join(KIND_MARKS[k] for k in kinds)})" if kinds else ""


def energy_kinds(records: pd.DataFrame) -> str:
    """' (est.)', ' (meas.+est.)', ...: the kinds of the energy figures summed over these records."""
    return kinds_suffix(s for column in ENERGY_SOURCE_COLUMNS if column in records for s in records[column].dropna())
