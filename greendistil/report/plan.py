"""A plan (`greendistil plan`) as a text table: per stage and in total, every figure a forecast."""

from __future__ import annotations

from typing import Any


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def plan_table(plan: dict[str, Any]) -> str:
    """The plan's stages (work, FLOPs, duration, kWh by component, CO2) and its total, with the calibration's
    cost and what every figure is."""
    header = ("stage", "kind", "steps", "examples", "padded tok", "FLOPs", "duration s", "kWh", "g CO2eq")
    rows = []
    for e in plan["stages"]:
        whose = ", ".join([*([str(e["task"])] if e.get("task") else []),
                           *([f"seed {e['seed']}"] if e.get("seed") is not None else [])])
        name = f"{e['window']} ({whose})" if whose else e["window"]
        rows.append((name, e["kind"], _fmt(e.get("num_steps"), "d"), _fmt(e.get("num_examples"), "d"),
                     _fmt(e.get("num_padded_tokens"), "d"), _fmt(e.get("flops"), ".3g"), _fmt(e.get("duration_s"), ".1f"),
                     _fmt(e.get("energy_kwh"), ".3g"), _fmt(e["co2_kg"] * 1000 if e.get("co2_kg") is not None else None,
                                                           ".3g")))
    total = plan["total"]
    rows.append(("total", "", "", "", "", _fmt(total.get("flops"), ".3g"), _fmt(total.get("duration_s"), ".1f"),
                 _fmt(total.get("energy_kwh"), ".3g"),
                 _fmt(total["co2_kg"] * 1000 if total.get("co2_kg") is not None else None, ".3g")))
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in (header, *rows)]
    bases = sorted({b for e in plan["stages"] for b in (e.get("energy_basis") or {}).values() if b})
    calibration = plan["calibration"]
    lines += ["", f"every figure is a forecast (methods in the plan file), from a calibration on this machine that "
              f"took {calibration['duration_s']:.1f} s ({calibration['calibrate_steps']} timed steps per training "
              f"stage); energy calibrated on: {', '.join(bases) or 'no energy meter'}; CO2 at "
              f"{plan['intensity_g_per_kwh']:.1f} g/kWh x PUE {plan['pue']:g}"]
    return "\n".join(lines)
