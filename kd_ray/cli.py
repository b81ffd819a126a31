"""The ``kd-ray`` command line (README.md#command-line): ``sweep``, ``status``, ``report``.

User errors (config, data, checkpoints, results directory, cluster) print one line and exit 2,
with no traceback; a sweep in which some trials failed exits 1 after writing everything that
finished. Ctrl-C stops the sweep, says how to continue it (``--resume``) and exits 130.
Credentials in a results URI are never printed.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shlex
import sys
from collections.abc import Sequence

from kd_ray.errors import KdRayError

EXIT_USER_ERROR = 2
EXIT_TRIALS_FAILED = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command stopped by Ctrl-C


def _print_plan(cfg, plan) -> None:
    datasets = ", ".join(d.key for d in cfg.datasets)
    print(f"sweep {cfg.name!r} on {datasets}: teacher {cfg.teacher.arch}, student {cfg.student.arch}")
    print(f"\nteachers ({len(plan.teachers)}), each trained once:")
    for t in plan.teachers:
        print(f"  {t.name:<4} {t.teacher_id}")
    print(f"\nstudent trials ({len(plan.trials)}):")
    for t in plan.trials:
        print(f"  {t.trial_id}")


def _plan_summary(plan) -> str:
    """The dry run's last line, which scripts and tests read."""
    return f"{len(plan.teachers)} teachers, {len(plan.trials)} student trials"


def _print_cohorts(cfg, plan, *, gpus: int | None, cpus: float | None) -> None:
    """The cost of the plan on a cluster of ``gpus`` GPUs or ``cpus`` CPUs: runs, GPU-hours,
    makespan against its lower bound, saving against one run per trial (kd_ray.cohort)."""
    from kd_ray.cohort import packs_teachers, plan_cohorts, slots_for

    where = f"{gpus} GPU(s)" if gpus is not None else f"{cpus:g} CPU(s)"
    slots = slots_for(cfg, gpus=gpus, cpus=cpus)
    # The teachers as the sweep launched from here would cut them (docs/architecture.md#teacher-packs).
    packed = packs_teachers(cfg, joined=bool(os.environ.get("RAY_ADDRESS")))
    print(f"\ncost on {where} ({slots} concurrent run(s)):")
    print(plan_cohorts(plan, cfg, slots, pack_teachers=packed).format())


def _sweep(args: argparse.Namespace) -> int:
    from kd_ray.overrides import load_config_with_overrides
    from kd_ray.plan import plan_sweep

    cfg = with_trackers(load_config_with_overrides(args.config, args.overrides), args.trackers)
    plan = plan_sweep(cfg)
    if args.dry_run:
        _print_plan(cfg, plan)
        if args.gpus is not None or args.cpus is not None:
            _print_cohorts(cfg, plan, gpus=args.gpus, cpus=args.cpus)
        print(f"\n{_plan_summary(plan)}")
        return 0
    from kd_ray.orchestration.preflight import check_ray_address
    from kd_ray.trackers import check_trackers

    results = args.results or cfg.results
    check_trackers(cfg, results)  # a tracker's package missing: one line naming the extra
    check_ray_address(os.environ.get("RAY_ADDRESS"))  # in seconds, before anything is written
    from kd_ray.orchestration.sweep import run_sweep

    if os.environ.get("RAY_ADDRESS"):
        from kd_ray.errors import ClusterError
        from kd_ray.storage import JOINED_CLUSTER_CREDENTIALS, has_credentials

        if has_credentials(results):
            raise ClusterError(JOINED_CLUSTER_CREDENTIALS)
    outcome = run_sweep(
        cfg,
        results,
        resume=args.resume,
        verbose=0 if args.quiet else 1,
        partial_reports=not args.no_report,
    )
    print(
        f"kd-ray: sweep {cfg.name!r}: {outcome.ok} trial(s) ok, {outcome.failed} failed"
        f" ({outcome.skipped} already finished); teachers trained {outcome.teachers_trained},"
        f" reused {outcome.teachers_reused}; results in {outcome.sweep_uri}"
    )
    if not args.no_report and outcome.local_dir is not None:
        from kd_ray.report import write_report

        print(f"kd-ray: report: {write_report(outcome.local_dir)}")
    if outcome.failed:
        print(
            f"kd-ray: {outcome.failed} trial(s) failed; their reasons are in the `error` column of "
            f"{outcome.sweep_uri}/trials.parquet",
            file=sys.stderr,
        )
        return EXIT_TRIALS_FAILED
    return 0


def with_trackers(cfg, names: Sequence[str]):
    """``cfg`` with the trackers ``--tracker`` names turned on (a configured one keeps its settings)."""
    if not names:
        return cfg
    from kd_ray.config import (
        MlflowTrackerConfig,
        TensorBoardTrackerConfig,
        TrackersConfig,
        WandbTrackerConfig,
    )

    defaults = {
        "mlflow": MlflowTrackerConfig,
        "tensorboard": TensorBoardTrackerConfig,
        "wandb": WandbTrackerConfig,
    }
    trackers = cfg.trackers or TrackersConfig()
    on = {n: defaults[n]() for n in names if getattr(trackers, n) is None}
    return cfg.model_copy(update={"trackers": trackers.model_copy(update=on)})


def _status(args: argparse.Namespace) -> int:
    from kd_ray.status import format_status, sweep_status

    print(format_status(sweep_status(args.results_dir)))
    return 0


def _report(args: argparse.Namespace) -> int:
    from kd_ray.report import write_report

    print(f"kd-ray: report: {write_report(args.results_dir, args.output)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from kd_ray.config import TRACKER_NAMES

    parser = argparse.ArgumentParser(
        prog="kd-ray", description="Ensemble knowledge-distillation sweeps on Ray."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sweep = sub.add_parser("sweep", help="run (or plan) a sweep from a YAML config")
    sweep.add_argument("config", help="sweep config, e.g. experiments/demo.yaml")
    sweep.add_argument(
        "--dry-run", action="store_true", help="print the teachers and student trials; start nothing"
    )
    size = sweep.add_mutually_exclusive_group()
    size.add_argument(
        "--gpus", type=int, help="with --dry-run: also print what the plan costs on N GPUs (docs/cohorts.md)"
    )
    size.add_argument("--cpus", type=float, help="with --dry-run: also print what the plan costs on N CPUs")
    sweep.add_argument("--resume", action="store_true", help="continue an interrupted sweep of the same name")
    sweep.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set student.train.lr=0.05 --set 'grid.seeds=[0,1,2]' "
        "(repeatable; VALUE is YAML; validated like the file and saved in config.yaml)",
    )
    sweep.add_argument(
        "--tracker",
        dest="trackers",
        action="append",
        default=[],
        choices=TRACKER_NAMES,
        help="also log every trial and teacher to this experiment tracker (repeatable; its settings "
        "and store location: the config's `trackers` section, else under RESULTS/NAME; docs/trackers.md)",
    )
    sweep.add_argument("--results", help="results directory or URI (default: the config's `results`)")
    sweep.add_argument(
        "--no-report",
        action="store_true",
        help="write no HTML report: neither the partial ones during the sweep nor the final one",
    )
    sweep.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="one progress line (runs done, ETA) instead of the progress table and per-trial lines",
    )
    sweep.set_defaults(func=_sweep)
    status = sub.add_parser(
        "status", help="where a sweep stands: each trial's status, epoch, val accuracy; failures; ETA"
    )
    status.add_argument("results_dir", help="a sweep's results directory or URI, RESULTS/NAME")
    status.set_defaults(func=_status)
    report = sub.add_parser("report", help="write the interactive HTML report of a sweep")
    report.add_argument("results_dir", help="a sweep's results directory, RESULTS/NAME")
    report.add_argument("-o", "--output", help="output HTML file (default: RESULTS/NAME/report.html)")
    report.set_defaults(func=_report)
    return parser


def _resume_command(args: argparse.Namespace) -> str:
    """The command that continues the interrupted sweep ``args`` describes."""
    from kd_ray.storage import redact

    words = ["kd-ray", "sweep", args.config]
    for override in args.overrides:  # the same effective config, or --resume refuses it
        words += ["--set", redact(override)]
    for name in args.trackers:  # the tracker runs continue
        words += ["--tracker", name]
    if args.results:
        words += ["--results", redact(args.results)]
    return " ".join(shlex.quote(w) for w in words) + " --resume"


def _stop_ray() -> None:
    """Stop Ray (and a private cluster) now, so the line that follows is the last one printed.

    Ray's actors' buffered output would otherwise keep streaming after the error line.
    """
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return
    # Stopping anyway: whatever a failed shutdown leaves, the exit reaps.
    with contextlib.suppress(Exception, KeyboardInterrupt):
        ray.shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="kd-ray: %(message)s")
    # -q: the progress line says what the per-trial info lines would (warnings still show).
    quiet = getattr(args, "quiet", False)
    logging.getLogger("kd_ray").setLevel(logging.WARNING if quiet else logging.INFO)
    try:
        return args.func(args)
    except KdRayError as err:
        from kd_ray.storage import redact

        _stop_ray()
        message = " ".join(redact(str(err)).split())  # one line, whatever the message held
        print(f"kd-ray: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        _stop_ray()
        if args.command == "sweep":
            print(
                "kd-ray: interrupted; the sweep stopped. Finished trials are saved and unfinished ones "
                f"continue from their last epoch with: {_resume_command(args)}",
                file=sys.stderr,
            )
        else:
            print("kd-ray: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
