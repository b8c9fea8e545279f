"""The one command line of the lab; every ``make`` target calls it.

    python -m studies STAGE [--preset small] [--study NAME ...] [--model NAME ...]
                            [--task NAME ...] [--seed N ...] [--set KEY=VALUE ...]

STAGE is one of ``plan`` (list the runs; ``--estimate`` also measures their costs here and
projects their wall time, :mod:`studies.estimate`), ``train``, ``probe``, ``census``, ``analyze``,
``causal``, ``tables``, ``figures`` (tables, then figures), ``report`` (a Markdown results
section from the tables; ``--readme`` puts it into README.md), or ``sweep`` (every stage, one
Ray task per run, at every point of the ``--grid`` axes and of the preset's ``[sweep]`` table;
see :mod:`studies.sweep`); ``paper`` is ``sweep``, and with ``--serial`` both run every stage
in this process instead (for debugging). The selection flags narrow the preset's runs alike
for every stage: ``--model`` matches an arm name (``transformer-rope``) or an architecture
(``transformer``); ``--task`` selects the studies' conditions on that task, or runs the
generic ``explore`` study on a task no study uses.
User errors print one line (``--debug`` for the traceback).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from analysis.tables import read_tables
from lab.config import ConfigError
from lab.process import prepare_process
from models.checkpoint import CheckpointError
from studies.estimate import print_estimate
from studies.pipeline import STAGE_FUNCTIONS, figures_stage, tables_stage
from studies.plan import Selection, plan
from studies.report import report, write_report
from studies.sweep import load_base, load_sweep, sweep

COMMANDS = (
    "plan",
    "train",
    "probe",
    "census",
    "analyze",
    "causal",
    "tables",
    "figures",
    "paper",
    "sweep",
    "report",
)
README = Path(__file__).resolve().parent.parent / "README.md"
USER_ERRORS = (ConfigError, CheckpointError, OSError, FloatingPointError, ValueError, KeyError)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m studies", description=__doc__.split("\n\n")[0])
    p.add_argument("stage", choices=COMMANDS)
    p.add_argument("--preset", default="small", help="configs/<preset>.toml or a path")
    p.add_argument("--study", action="append", default=[], help="study name(s)")
    p.add_argument("--model", action="append", default=[], help="arm or architecture name(s)")
    p.add_argument("--task", action="append", default=[], help="task name(s)")
    p.add_argument("--seed", action="append", type=int, default=[], help="seed(s)")
    p.add_argument(
        "--set",
        action="extend",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="override a preset field, e.g. train.steps=100 study.copying.train.steps=50",
    )
    p.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=[VALUES]",
        help="sweep/paper: a hyper-parameter axis, e.g. train.lr=[1e-3,3e-3]",
    )
    p.add_argument("--serial", action="store_true", help="sweep/paper: every stage in this process")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--readme", action="store_true", help="report: also update README.md")
    p.add_argument(
        "--estimate", action="store_true", help="plan: measure here and project the wall time"
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    return p


def run(args: argparse.Namespace) -> None:
    prepare_process()
    selection = Selection(tuple(args.study), tuple(args.model), tuple(args.task), tuple(args.seed))
    if args.stage in ("sweep", "paper"):
        spec = load_sweep(args.preset, args.set, args.grid)
        outcomes = sweep(spec, selection, serial=args.serial, progress=not args.no_progress)
        if any(o.status == "failed" for o in outcomes):
            sys.exit(1)
        return
    if args.grid or args.serial:
        raise ConfigError(f"--grid and --serial are options of sweep and paper, not {args.stage}")
    if args.estimate and args.stage != "plan":
        raise ConfigError(f"--estimate is an option of plan, not {args.stage}")
    preset, raw = load_base(args.preset, args.set)
    selected = plan(preset, raw, selection)
    if not selected:
        raise ConfigError("the selection matches no run of this preset (see `plan`)")
    if args.stage == "plan":
        for planned in selected:
            print(f"{planned.label:50s} {planned.run_dir}")
        if args.estimate:
            sweep_config = load_sweep(args.preset, args.set).config
            print_estimate(selected, sweep_config.threads_per_run, sweep_config.runs_per_gpu)
        return
    results = preset.experiment_dir() / "results"
    if args.stage == "report":
        studies = list({p.study.name: p.study for p in selected}.values())
        text = report(studies, read_tables(results), command_line(args))
        write_report(text, results, README if args.readme else None)
        print(f"wrote {results / 'README.md'}" + (f" and {README}" if args.readme else ""))
        return
    if args.stage in STAGE_FUNCTIONS:
        STAGE_FUNCTIONS[args.stage](selected, progress=not args.no_progress)
    if args.stage in ("tables", "figures"):
        tables = tables_stage(plan(preset, raw), results)
        if args.stage != "tables":
            figures_stage(selected, tables, preset.experiment_dir() / "figures")


def command_line(args: argparse.Namespace) -> str:
    """The command that reproduces ``args`` (for generated reports)."""
    words = ["python -m studies", args.stage, "--preset", args.preset]
    for flag in ("study", "model", "task", "seed"):
        words += [f"--{flag} {value}" for value in getattr(args, flag)]
    if args.set:
        words += ["--set", *args.set]
    return " ".join(str(w) for w in words)


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        run(args)
    except USER_ERRORS as error:
        if args.debug:
            raise
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
