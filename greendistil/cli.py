"""`greendistil run|runs`: argument parsing, exit codes and printing. Nothing else in the package prints.

Exit codes: 0 ok; 1 a stage failed; 2 bad input (one line on stderr, no traceback); 130 SIGINT; 143 SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import signal
import sys
import warnings
from pathlib import Path
from types import FrameType
from typing import Sequence

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_SIGINT, EXIT_SIGTERM = 0, 1, 2, 130, 143


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    _quiet_libraries(args.verbose)
    from greendistil.errors import GreendistilError

    try:
        return args.handler(args)
    except GreendistilError as err:
        print(f"greendistil: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="greendistil", description="Energy- and carbon-aware distillation.")
    parser.add_argument("-v", "--verbose", action="store_true", help="show library logs (codecarbon, transformers)")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the stages of a config, each measured into the run log")
    run.add_argument("config", type=Path, help="a TOML config, e.g. configs/base.toml")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config key, e.g. --set task.max_train_examples=500 (repeatable)")
    run.add_argument("--run-id", help="name the run directory (default: <run.name>-<UTC time>-<random>)")
    run.add_argument("--force", action="store_true", help="reuse an existing run directory")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.set_defaults(handler=_cmd_run)
    report = commands.add_parser("report", help="write a Green AI report (markdown + PNG) from run logs")
    report.add_argument("paths", nargs="+", type=Path, help="run directories or runs roots")
    report.add_argument("--out", type=Path, required=True, help="the report folder, e.g. reports/base")
    report.set_defaults(handler=_cmd_report)
    runs = commands.add_parser("runs", help="a table of the runs under a folder")
    runs.add_argument("paths", nargs="+", type=Path, help="run directories or a runs root")
    runs.set_defaults(handler=_cmd_runs)
    return parser


def _cmd_run(args: argparse.Namespace) -> int:
    from greendistil import training
    from greendistil.config import load_config
    from greendistil.errors import StageError
    from greendistil.measure.window import RunInterrupted
    from greendistil.pipeline import run_pipeline

    config = load_config(args.config, args.overrides)
    if args.no_progress:
        training.SHOW_PROGRESS = False
    previous = signal.signal(signal.SIGTERM, _raise_interrupted)
    command = shlex.join(["greendistil", *sys.argv[1:]])
    try:
        run_dir = run_pipeline(config, run_id=args.run_id, force=args.force, command=command)
    except StageError as err:
        print(f"greendistil: stage failed: {err}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("greendistil: interrupted (SIGINT); the stage's record is marked 'interrupted'", file=sys.stderr)
        return EXIT_SIGINT
    except RunInterrupted:
        print("greendistil: interrupted (SIGTERM); the stage's record is marked 'interrupted'", file=sys.stderr)
        return EXIT_SIGTERM
    finally:
        signal.signal(signal.SIGTERM, previous)
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


def _cmd_report(args: argparse.Namespace) -> int:
    from greendistil.report import write_report

    print(f"report: {write_report(list(args.paths), args.out)}")
    return EXIT_OK


def _cmd_runs(args: argparse.Namespace) -> int:
    from greendistil.errors import GreendistilError
    from greendistil.runlog import load_runs

    frame = load_runs(args.paths)
    if frame.empty:
        raise GreendistilError(f"no runs found under {', '.join(map(str, args.paths))}; "
                               "give a run directory (holding records.jsonl) or a folder of them")
    print(_format_records(frame))
    return EXIT_OK


def _summary_table(run_dir: Path) -> str:
    from greendistil.runlog import load_runs

    return _format_records(load_runs(run_dir))


def _format_records(frame) -> str:
    metric_columns = [c for c in frame.columns if c.startswith("metric.") and c.endswith((".accuracy", ".score",
                      ".mcc", ".f1", ".pearson", ".spearman"))]
    columns = ["run_id", "stage", "role", "status", "duration_s", "flops", "energy_kwh", "co2_kg", *metric_columns]
    table = frame[[c for c in columns if c in frame.columns]].copy()
    for column, fmt in (("duration_s", "{:.1f}"), ("flops", "{:.3g}"), ("energy_kwh", "{:.3g}"), ("co2_kg", "{:.3g}")):
        if column in table:
            table[column] = table[column].map(lambda v, f=fmt: "-" if v is None or v != v else f.format(v))
    for column in metric_columns:
        table[column] = table[column].map(lambda v: "-" if v is None or v != v else f"{v:.4f}")
    table.columns = [c.removeprefix("metric.") for c in table.columns]
    return table.to_string(index=False)


def _raise_interrupted(signal_number: int, frame: FrameType | None) -> None:
    from greendistil.measure.window import RunInterrupted

    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not tear the record being written
    raise RunInterrupted(signal_number)


def _quiet_libraries(verbose: bool) -> None:
    """codecarbon and transformers are chatty; their logs are noise unless asked for."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if verbose:
        return
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", module="codecarbon")
    logging.getLogger("codecarbon").setLevel(logging.ERROR)
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
