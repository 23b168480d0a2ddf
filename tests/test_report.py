"""The Green AI report: figures in the tables from records with known numbers, markings, Pareto, PNGs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image

from greendistil.data.grid import grid_intensity
from greendistil.errors import GreendistilError
from greendistil.report import plots, tables, write_report
from greendistil.report.compare import teacher_student
from greendistil.report.costs import cost_totals, model_points, pareto_optimal
from greendistil.report.frame import iter_runs, load_report_frame
from greendistil.report.markdown import fmt_number, fmt_si

from builders import (INTENSITY, PUE, full_run, markdown_tables, merged_row, pick, section_of, stage_record, table_row,
                      table_rows, write_run)


def failed_run(root: Path, run_id: str = "broken", task: str = "sst2") -> Path:
    """Finetune ok, distill failed with a StageError, evaluate interrupted (no scores)."""
    finetune = stage_record(run_id, "finetune", "finetune", "teacher", cpu=0.1, gpu=None, ram=0.1, flops=1e14,
                            num_examples=500)
    distill = stage_record(run_id, "distill", "distill", "student", cpu=0.05, gpu=None, ram=0.05, flops=None,
                           num_examples=120, status="failed", error_type="StageError", error_message="NaN loss")
    evaluate = stage_record(run_id, "evaluate", "evaluate", "teacher+student", cpu=None, gpu=None, ram=None,
                            flops=None, num_examples=0, status="interrupted", error_type="RunInterrupted",
                            cpu_energy_source="unavailable:codecarbon-error",
                            ram_energy_source="unavailable:codecarbon-error")
    return write_run(root, run_id, task, [finetune, distill, evaluate])


def test_cost_table_rows_totals_and_markings(tmp_path: Path) -> None:
    full_run(tmp_path, "alpha")
    text = tables.cost_section(load_report_frame([tmp_path]))
    finetune = merged_row(text, "finetune")
    assert finetune["status"] == "ok" and finetune["parameters"] == "100 M" and finetune["examples"] == "1,000"
    assert finetune["CPU kWh"] == "0.3 (est.)[^estimated-tdp-load-model]"
    assert finetune["GPU kWh"] == "0.5 (meas.)[^measured-nvml-counter]"
    assert finetune["RAM kWh"] == "0.2 (est.)[^estimated-ram-model]"
    assert finetune["total kWh"] == "1 (est.+meas.)" and finetune["kg CO2eq"] == fmt_number(0.6)
    assert finetune["grid g/kWh"].startswith("400[^configured-") and finetune["PUE"] == "1.5"
    evaluate = merged_row(text, "evaluate")
    assert evaluate["GPU kWh"] == "n/a[^unavailable-no-nvml-library]"  # not measured: n/a, never 0
    assert "teacher 0.9 · student 0.87 · retention 96.7%" == evaluate["dev scores"]
    # The student's cost includes the teacher's training; the run total includes evaluation.
    produce = merged_row(text, "**to produce the student** (finetune + distill)")
    assert produce["total kWh"] == "1.6 (est.+meas.)"
    assert produce["kg CO2eq"] == fmt_number(1.6 * PUE * INTENSITY / 1000)
    total = merged_row(text, "**run total**")
    assert total["FLOPs"].startswith(fmt_number(6e14 + 4.5e14 + 3e12))
    assert total["GPU kWh"] == "0.8 (meas.), n/a in 1 stage(s)" and total["total kWh"].startswith("1.7 ")
    assert total["kg CO2eq"] == fmt_number(1.7 * PUE * INTENSITY / 1000)
    for label in ("estimated-tdp-load-model", "measured-nvml-counter", "estimated-ram-model",
                  "unavailable-no-nvml-library", "counted-torch-flop-counter"):
        assert text.count(f"[^{label}]:") == 1, label  # one footnote per distinct source
    assert "TDP × (0.1 + 0.9 · load³)" in text and "never counted as 0" in text


def test_failed_and_interrupted_stages_are_marked_not_dropped(tmp_path: Path) -> None:
    failed_run(tmp_path)
    frame = load_report_frame([tmp_path])
    text = tables.cost_section(frame)
    assert merged_row(text, "distill")["status"] == "⚠ failed: StageError"
    interrupted = merged_row(text, "evaluate")
    assert interrupted["status"] == "⚠ interrupted: RunInterrupted" and interrupted["total kWh"] == "n/a"
    total = merged_row(text, "**run total**")
    assert total["status"] == "⚠ 2 not ok"
    assert total["total kWh"].startswith("0.3 ")  # the failed stage's energy counts
    assert "[^unavailable-codecarbon-error]:" in text
    # Nothing to compare without scores, but every section still renders.
    assert "n/a" in tables.teacher_student_section(frame)
    assert "broken" in tables.environment_section(frame)


def test_teacher_student_ratios_and_published_reference(tmp_path: Path) -> None:
    full_run(tmp_path, "alpha")
    frame = load_report_frame([tmp_path])
    comparison = teacher_student(frame)
    assert comparison.param_ratio == pytest.approx(0.5)
    assert comparison.teacher.train_flops_per_example == pytest.approx(6e11)
    assert comparison.train_flops_per_example_ratio == pytest.approx(0.75)
    assert comparison.inference_flops_ratio == pytest.approx(0.5)  # 1e10 vs 2e10 per example (100 each)
    assert comparison.score_retention == pytest.approx(0.87 / 0.9)
    assert comparison.train_energy_ratio == pytest.approx(0.6)
    text = tables.teacher_student_section(frame)
    ratios = ("teacher", "student", "student / teacher")
    assert pick(table_row(text, "parameters"), *ratios) == ["100 M", "50.0 M", "0.5×"]
    assert table_row(text, "dev score")["student / teacher"] == "96.7% retained"
    assert table_row(text, "… student-only")["student"] == fmt_number(2.5e11)
    assert "incl. teacher forward" in table_row(text, "energy to train")["student"]
    reference = section_of(text, "### Published reference")
    assert "Sanh" in reference and "not measured by greendistil" in reference
    paper = ("BERT-base", "DistilBERT", "DistilBERT / BERT-base")
    assert table_row(reference, "parameters") == {"": "parameters", **dict(zip(paper, ["110 M", "66.0 M", "0.6×"]))}
    assert table_row(reference, "GLUE dev macro-score") == {
        "": "GLUE dev macro-score", **dict(zip(paper, ["79.5", "77.0", "96.9% retained"]))}
    assert "1.63× faster" in table_row(reference, "inference time")["DistilBERT / BERT-base"]
    assert "60% faster" in reference


def test_what_if_table_is_kwh_times_pue_times_intensity(tmp_path: Path) -> None:
    full_run(tmp_path, "alpha")
    text = tables.regions_section(load_report_frame([tmp_path]))
    facility_kwh = 1.7 * PUE
    (grids,) = markdown_tables(text)  # one run, one table
    intensities = []
    for code in ("SWE", "FRA", "USA", "IND"):
        intensity, _ = grid_intensity(code, None)
        (row,) = [r for r in grids if f"({code})" in r["grid"]]
        assert row["g CO2eq/kWh"] == fmt_number(intensity)
        assert row["g CO2eq"] == fmt_number(facility_kwh * intensity)
        assert row["kg CO2eq"] == fmt_number(facility_kwh * intensity / 1000)
        intensities.append(float(row["g CO2eq/kWh"]))
    assert "(USA) — this run" in text
    assert all(re.fullmatch(r".+ \([A-Z]{3}\)( — this run)?", r["grid"]) for r in grids), grids
    values = [float(r["g CO2eq/kWh"]) for r in grids]
    assert values == sorted(values) and len(grids) >= 8  # lowest intensity first


def test_pareto_front_across_runs_and_tasks_not_mixed(tmp_path: Path) -> None:
    full_run(tmp_path, "cheap", scale=0.5, teacher_score=0.80, student_score=0.78)
    full_run(tmp_path, "dear", scale=2.0, teacher_score=0.92, student_score=0.90)
    full_run(tmp_path, "waste", scale=3.0, teacher_score=0.79, student_score=0.70)  # dominated by both
    full_run(tmp_path, "other-task", task="rte", scale=0.1, teacher_score=0.99, student_score=0.98)
    frame = load_report_frame([tmp_path])
    assert pareto_optimal([1, 2, 3, None], [0.5, 0.9, 0.4, 1.0]) == [True, True, False, False]
    text = tables.across_runs_section(frame)
    sst2 = section_of(text, "### Task `sst2`")
    assert "other-task" not in sst2 and "other-task" in section_of(text, "### Task `rte`")
    marks = {(row["run"], row["model"]): pick(row, "Pareto: FLOPs", "Pareto: kWh") for row in table_rows(sst2)}
    assert set(marks) == {(run, model) for run in ("cheap", "dear", "waste") for model in ("teacher", "student")}
    assert marks[("cheap", "teacher")] == ["★", "★"]  # cheapest model of all
    assert marks[("dear", "teacher")] == ["★", "★"]  # best score
    assert marks[("waste", "teacher")] == ["", ""]
    points = {(p.run_id, p.role): p for p in model_points(frame)}
    assert points[("cheap", "student")].energy_kwh == pytest.approx(0.8)  # teacher's training included
    assert points[("cheap", "teacher")].energy_kwh == pytest.approx(0.5)
    totals = section_of(text, "### Total cost of all runs")
    everything = table_row(totals, "**all tasks**")
    assert pick(everything, "runs", "stages") == ["4", "12"]
    assert everything["kWh"] == fmt_number(1.7 * (0.5 + 2 + 3 + 0.1))
    assert table_row(totals, "`rte`")["kWh"] == fmt_number(0.17)


def test_single_run_has_no_comparison_but_lists_environment(tmp_path: Path) -> None:
    full_run(tmp_path, "alpha")
    frame = load_report_frame([tmp_path])
    assert "One run only" in tables.across_runs_section(frame)
    env = tables.environment_section(frame)
    assert table_row(env, "command")["value"] == "`greendistil run configs/alpha.toml`"
    assert table_row(env, "git sha")["value"] == "`abc1234`"
    assert table_row(env, "config hash")["value"] == "`cafe1234`"
    assert table_row(env, "hardware: cpu_model")["value"] == "Test CPU" and "torch 2.13.0" in env


def test_write_report_writes_markdown_and_readable_pngs(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    full_run(runs, "alpha")
    failed_run(runs)
    alpha = runs / "alpha"
    (alpha / "power.csv").write_text("stage,elapsed_s,device,power_w,source\n" + "".join(
        f"finetune,{t},0,{200 + t},measured:nvml-power-samples\n" for t in range(0, 100, 10)), encoding="utf-8")
    report = write_report([runs], tmp_path / "out", name="test report")
    text = report.read_text(encoding="utf-8")
    assert report == tmp_path / "out" / "report.md" and text.startswith("# Green AI report: test report")
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(images) == 2 * 3 + 1  # energy, power, teacher-student per run; score-vs-cost per task
    for name in images:
        path = report.parent / name
        assert path.is_file() and path.stat().st_size < 300_000, name
        with Image.open(path) as image:
            assert image.width > 200 and image.height > 200, name


def test_power_plot_without_samples_draws_mean_power(tmp_path: Path) -> None:
    full_run(tmp_path, "alpha")
    records = next(iter_runs(load_report_frame([tmp_path])))
    path = plots.plot_power(records, tmp_path / "alpha", tmp_path / "power.png")
    import matplotlib.image

    assert matplotlib.image.imread(path).shape[:2] == (500, 800)


def test_no_runs_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(GreendistilError, match="no runs found under .*records.jsonl"):
        write_report([tmp_path], tmp_path / "out")
    with pytest.raises(GreendistilError, match="does not exist"):
        write_report([tmp_path / "missing"], tmp_path / "out")


def test_totals_never_turn_missing_into_zero(tmp_path: Path) -> None:
    failed_run(tmp_path)
    records = load_report_frame([tmp_path])
    assert cost_totals(records[records["stage"] == "evaluate"]).energy_kwh is None
    assert fmt_si(None) == "n/a" and fmt_number(float("nan")) == "n/a"
